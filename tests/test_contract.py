"""The contract of every raw op under torch.ops.fastreg, table-driven.

Ops are enumerated from the library (a new op without a row in contract_table.py fails
test_every_op_has_a_row). For each op, its tensor arguments get, one at a time:
a wrong dtype, a wrong device (a meta tensor; a CPU/CUDA mix where a GPU is), a wrong
rank or size where the op's schema fixes them, a non-contiguous view, an expanded
(stride 0) view, and odd strides on size-1 dimensions; and the op runs on inputs with
size-0 and size-1 dimensions. Each case either works and equals the op's reference
(plain torch and fastreg.reference, computed from the same arguments), or raises a
TypeError, ValueError or RuntimeError whose message names the op and the argument and
leaves every argument unchanged. Cases run in a child interpreter, restarted after a
crash, so that a crash fails the case it happened in instead of the test run.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CUDA
from contract_table import table

import fastreg  # noqa: F401

ops = torch.ops.fastreg


# --- cases -----------------------------------------------------------------------------------


def op_of(key):
    return getattr(ops, key.split("/")[0]).default


def tensor_args(key):
    return [
        (i, a.name)
        for i, a in enumerate(op_of(key)._schema.arguments)
        if str(a.type) in ("Tensor", "Optional[Tensor]", "Tensor?")
    ]


def noncontiguous(t):
    if t.numel() <= 1 or t.dim() == 0:
        return None
    v = torch.stack([t, t], -1)[..., 0]
    return v if not v.is_contiguous() else None


def expanded(t):
    if t.dim() == 0 or t.shape[0] <= 1:
        return None
    return t.narrow(0, 0, 1).expand(t.shape)


def odd_size_one_strides(t, stride):
    """t with the strides of its size-1 dimensions set to `stride` (0, or past the tensor):
    the same elements, a layout that is still dense."""
    if 1 not in t.shape or t.numel() == 0:
        return None
    return t.as_strided(t.shape, [stride if n == 1 else s for n, s in zip(t.shape, t.stride(), strict=True)])


def wrong_dtype(t):
    return t.to(torch.int32) if t.is_floating_point() else t.to(torch.float32)


def other_devices(base):
    out = ["meta"]
    if CUDA:
        out.append("cpu" if base == "cuda" else "cuda")
    return out


def cases(base):
    """(case id, row key, primary shape, kind, argument index, argument name, mutation)."""
    out = []
    for key, row in sorted(table().items()):
        if base not in row.devices:
            continue
        for s in row.shapes:
            out.append((f"{key}|shape{s}", key, s, "shape", None, None, None))
        args = tensor_args(key)
        for i, name in args:
            for kind in ("noncontiguous", "expanded"):
                out.append((f"{key}|{name}|{kind}", key, row.shapes[0], kind, i, name, None))
            for s in row.shapes:
                for stride in (0, 10**6):
                    out.append(
                        (f"{key}|{name}|size1_stride{stride}{s}", key, s, "size1_strides", i, name, stride)
                    )
            out.append((f"{key}|{name}|dtype", key, row.shapes[0], "dtype", i, name, None))
            for dev in other_devices(base) if len(args) > 1 else ():  # one tensor: its device is the call's
                out.append((f"{key}|{name}|device:{dev}", key, row.shapes[0], "device", i, name, dev))
            for k, _ in enumerate(row.bad_shapes.get(name, [])):
                out.append((f"{key}|{name}|shape_error{k}", key, row.shapes[0], "bad_shape", i, name, k))
    return out


def _mutate(row, args, kind, i, name, extra):
    t = args[i]
    if t is None:
        return None
    if kind == "noncontiguous":
        return noncontiguous(t)
    if kind == "expanded":
        return expanded(t)
    if kind == "size1_strides":
        return odd_size_one_strides(t, extra)
    if kind == "dtype":
        return wrong_dtype(t)
    if kind == "device":
        return t.to(extra)
    if kind == "bad_shape":
        return row.bad_shapes[name][extra](t)
    raise AssertionError(kind)


def _compare(got, want):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    if len(got) != len(want):
        return f"{len(got)} outputs, reference {len(want)}"
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if a is None or b is None:
            if a is not b:
                return f"output {k}: {a} against {b}"
            continue
        if a.device != b.device or a.shape != b.shape:
            return f"output {k}: {a.device} {tuple(a.shape)} against {b.device} {tuple(b.shape)}"
        try:
            if a.is_floating_point() or b.is_floating_point():
                torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-4, atol=1e-4, equal_nan=True)
            elif not torch.equal(a, b.to(a.dtype)):
                return f"output {k} differs"
        except AssertionError as e:
            return f"output {k}: {str(e)[:300]}"
    return None


def run_case(base, case):
    """The outcome of one case: ('ok' | 'skip' | 'mismatch' | 'error' | 'changed', detail)."""
    _, key, shape, kind, i, name, extra = case
    row = table_cache()[key]
    op = op_of(key)
    args = row.make(shape, base)
    if kind != "shape":
        m = _mutate(row, args, kind, i, name, extra)
        if m is None:
            return ("skip", "not applicable")
        args = list(args)
        args[i] = m
    before = [a.clone() if isinstance(a, torch.Tensor) and a.device.type != "meta" else a for a in args]
    try:
        got = op(*args)
    except (TypeError, ValueError, RuntimeError, IndexError, NotImplementedError) as e:
        for a, b in zip(args, before, strict=True):
            if isinstance(a, torch.Tensor) and a.device.type != "meta" and not torch.equal(a, b):
                if not (a.isnan().any() and torch.equal(a.nan_to_num(), b.nan_to_num())):
                    return ("changed", f"{type(e).__name__}: {e}")
        return ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:400]}")
    if row.inplace is not None:
        got = (args[row.inplace],) + (
            tuple(got) if isinstance(got, (tuple, list)) else (() if got is None else (got,))
        )
        ref_args = list(before)
    else:
        ref_args = args
    try:
        want = row.ref(*ref_args)
    except Exception as e:  # the op accepted what the reference cannot compute
        return ("mismatch", f"op returned, reference raised {type(e).__name__}: {str(e)[:200]}")
    if row.inplace is not None and not isinstance(want, tuple):
        want = (want,)
    bad = _compare(got, want)
    return ("mismatch", bad) if bad else ("ok", "")


_TABLE = None


def table_cache():
    global _TABLE
    if _TABLE is None:
        _TABLE = table()
    return _TABLE


def child_main(base, first):
    """Runs cases[first:] and writes one JSON line per case to stdout: 'start' before the
    case runs, its outcome after (a crash leaves a start without an outcome)."""
    torch.manual_seed(0)
    all_cases = cases(base)
    crash = os.environ.get("FASTREG_CONTRACT_CRASH")  # the harness's own test: abort in this case
    for case in all_cases[first:]:
        print(json.dumps({"id": case[0], "start": True}), flush=True)
        if case[0] == crash:
            os.abort()
        outcome, detail = run_case(base, case)
        print(json.dumps({"id": case[0], "outcome": outcome, "detail": detail}), flush=True)


def run_all(base, **env_vars):
    """Every case's outcome, in children restarted after each crash."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **env_vars)
    ids = [c[0] for c in cases(base)]
    results, first = {}, 0
    while first < len(ids):
        script = f"import test_contract as t; t.child_main({base!r}, {first})"
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        started = None
        for line in res.stdout.splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("start"):
                started = rec["id"]
            else:
                results[rec["id"]] = (rec["outcome"], rec["detail"])
                started = None
        if res.returncode == 0 and started is None:
            break
        crashed = started if started is not None else (ids[first] if not results else None)
        if crashed is None:  # died between cases
            crashed = ids[len(results)] if len(results) < len(ids) else ids[-1]
        results[crashed] = ("crash", f"exit status {res.returncode}: {res.stderr[-1500:]}")
        first = ids.index(crashed) + 1
    return results


# --- the tests -------------------------------------------------------------------------------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="CUDA not available"))]
RESULTS = {}


def results_for(base):
    if base not in RESULTS:
        RESULTS[base] = run_all(base)
    return RESULTS[base]


def registered_ops():
    return sorted(
        n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastreg::")
    )


def test_every_op_has_a_row():
    keys = {k.split("/")[0] for k in table()}
    assert set(registered_ops()) == keys


def test_a_crash_fails_its_case_and_the_others_still_run():
    ids = [c[0] for c in cases("cpu")]
    victim = next(i for i in ids if i.startswith("gelu|"))
    results = run_all("cpu", FASTREG_CONTRACT_CRASH=victim)
    assert results[victim][0] == "crash" and "exit status -6" in results[victim][1]
    assert len(results) == len(ids)
    after = ids[ids.index(victim) + 1]
    assert results[after] == results_for("cpu")[after] and results[after][0] != "crash"


def _expected_names(key, row):
    op = key.split("/")[0]
    return (op,) + row.aliases


@pytest.mark.parametrize("base", DEVICES)
@pytest.mark.parametrize("key", sorted(table()))
def test_contract(base, key):
    row = table_cache()[key]
    if base not in row.devices:
        pytest.skip(f"{key} has no {base} kernel")
    results = results_for(base)
    failures, checked = [], 0
    for case in cases(base):
        if case[1] != key:
            continue
        cid, _, shape, kind, _, name, _ = case
        outcome, detail = results.get(cid, ("missing", ""))
        if outcome == "skip":
            continue
        checked += 1
        if outcome in ("crash", "mismatch", "changed", "missing"):
            failures.append(f"{cid}: {outcome}: {detail}")
            continue
        if outcome == "ok":
            if kind in ("dtype", "device"):  # a wrong dtype or device never works
                failures.append(f"{cid}: accepted")
            continue
        # an error: allowed for bad arguments, and for non-dense views of in-place targets
        if kind == "shape" or (
            kind in ("noncontiguous", "expanded", "size1_strides") and name not in row.layout_errors
        ):
            failures.append(f"{cid}: raised on valid input: {detail}")
            continue
        names = _expected_names(key, row)
        if not any(f"fastreg.{n}:" in detail for n in names) or (name not in detail):
            failures.append(f"{cid}: the message must name fastreg.{names[0]} and {name!r}: {detail}")
    assert checked > 0
    assert not failures, "\n".join(failures)
