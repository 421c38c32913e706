"""fastreg under torch.distributed.

Single process: positioned seeds (a shard draws the whole tensor's bits), their element
map, batch_offset, and the DTensor registration. Two processes (gloo on the CPU, NCCL with
two GPUs; tests/distributed_scenarios.py, spawned once for the module): DTensor placements,
tensor parallelism, DDP, FSDP2 and seeds across ranks.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICES

import fastreg
import fastreg.functional as F
import fastreg.reference as R
from fastreg._random import global_index
from fastreg.distributed import batch_offset, element_position, positioned_seed, sample_position

SEED = 2024
ops = torch.ops.fastreg


def _seed(device, value=SEED):
    return torch.full((1,), value, dtype=torch.int64, device=device)


# --- positioned seeds: a shard draws the bits of its place in the whole tensor --------------

SHAPE = (6, 70, 33)  # 13860 elements: many 256-element CPU chunks, runs across them
SHARDS = {
    "rows 0-3 (dim 0)": (slice(0, 4),),
    "rows 4-5 (dim 0, odd offset)": (slice(4, 6),),
    "dim 1": (slice(None), slice(17, 61)),
    "last dim, uneven": (slice(None), slice(None), slice(5, 30)),
    "two dims": (slice(None), slice(3, 50), slice(7, 33)),
    "three dims": (slice(1, 5), slice(20, 70), slice(0, 31)),
    "one element": (slice(3, 4), slice(9, 10), slice(32, 33)),
    "the whole tensor": (slice(None),),
}


def _offsets(sl):
    return [s.start or 0 for s in sl] + [0] * (len(SHAPE) - len(sl))


def _shard_seed(device, x, sl, per_sample=False):
    offsets = _offsets(sl)
    if per_sample:
        return positioned_seed(_seed(device), sample_position(offsets[0]))
    return positioned_seed(_seed(device), element_position(SHAPE, tuple(x[sl].shape), offsets))


ELEMENT_OPS = {
    "dropout": lambda x, s: ops.dropout(x, s, 0.4, False),
    "alpha dropout": lambda x, s: ops.dropout(x, s, 0.3, True),
    "dropout backward": lambda x, s: ops.dropout_backward(x, s, 0.4, False),
    "dropout_add": lambda x, s: ops.dropout_add(x, x * 0.5, s, 0.4),
    "bias relu dropout": lambda x, s: ops.bias_act_dropout(x, None, s, "relu", 0.3, 0.01, 1.0, "none", False)[
        0
    ],
    "bias gelu dropout": lambda x, s: ops.bias_act_dropout(x, None, s, "gelu", 0.3, 0.01, 1.0, "none", False)[
        0
    ],
    "bias gelu dropout backward": lambda x, s: ops.bias_act_dropout_backward(
        x, x * 0.5, None, s, "gelu", 0.3, 0.01, 1.0, "none"
    )[0],
}
SAMPLE_OPS = {
    "drop path": lambda x, s: ops.drop_path(x, None, s, 0.5, True),
    "drop path backward": lambda x, s: ops.drop_path_backward(x, s, 0.5, True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shard", list(SHARDS))
@pytest.mark.parametrize("op", list(ELEMENT_OPS) + list(SAMPLE_OPS))
def test_shard_with_positioned_seed_equals_whole_tensor(device, shard, op):
    """A shard run with its positioned seed gives, bit for bit, its part of the op on the
    whole tensor (contiguous shard or a strided view of the whole)."""
    fn = {**ELEMENT_OPS, **SAMPLE_OPS}[op]
    sl = SHARDS[shard]
    if op in SAMPLE_OPS and any(s != slice(None) for s in sl[1:]):
        sl = sl[:1]  # per-sample draws: samples are what a shard splits
    x = torch.randn(SHAPE, device=device)
    whole = fn(x, _seed(device))
    s = _shard_seed(device, x, sl, per_sample=op in SAMPLE_OPS)
    assert torch.equal(fn(x[sl].contiguous(), s), whole[sl])
    assert torch.equal(fn(x[sl], s), whole[sl])
    if device == "cuda":  # and the CPU's bits
        assert torch.equal(fn(x[sl].cpu(), s.cpu()), whole[sl].cpu())


@pytest.mark.parametrize("shard", list(SHARDS))
def test_reference_with_positioned_seed_equals_kernels(shard):
    sl = SHARDS[shard]
    x = torch.randn(SHAPE)
    local = x[sl]
    s = _shard_seed("cpu", x, sl)
    for p in (0.0, 0.4, 1.0):
        assert torch.equal(R.dropout(local, p, seed=s), ops.dropout(local, s, p, False))
    b = torch.randn(local.shape[-1])
    y = R.bias_act_dropout(local, b, "relu", 0.3, seed=s)  # relu: exact in both
    assert torch.equal(y, ops.bias_act_dropout(local, b, s, "relu", 0.3, 0.01, 1.0, "none", False)[0])
    ps = _shard_seed("cpu", x, sl[:1], per_sample=True)
    assert torch.equal(
        R.drop_path(x[sl[:1]], 0.5, True, seed=ps), ops.drop_path(x[sl[:1]], None, ps, 0.5, True)
    )


def test_element_position_maps_every_element():
    """The map of a position sends each local row-major index to the global index of the
    element it holds, for random shapes and boxes (up to four sharded dimensions)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ndim = int(torch.randint(1, 6, (), generator=g))
        shape = [int(torch.randint(1, 6, (), generator=g)) for _ in range(ndim)]
        box = []
        for n in shape:
            a = int(torch.randint(0, n, (), generator=g))
            box.append(slice(a, int(torch.randint(a + 1, n + 1, (), generator=g))))
        index = torch.arange(torch.Size(shape).numel()).reshape(shape)[tuple(box)]
        position = element_position(shape, tuple(index.shape), [s.start for s in box])
        seed = positioned_seed(_seed("cpu"), position)
        assert torch.equal(global_index(seed, torch.arange(index.numel())), index.flatten())


def test_positions_of_whole_tensors_and_limits():
    assert element_position((4, 5), (4, 5), [0, 0]) is None
    assert sample_position(0) is None and sample_position(3) == [3]
    assert positioned_seed(_seed("cpu"), None).numel() == 1
    with pytest.raises(NotImplementedError, match="more than 4 dimensions"):
        element_position((2,) * 6, (2,) + (1,) * 5, [0] * 6)
    with pytest.raises(ValueError, match="already positioned"):
        positioned_seed(positioned_seed(_seed("cpu"), [4]), [4])


@pytest.mark.parametrize("length", [3, 12])
def test_malformed_seed_is_refused(length):
    x = torch.randn(8)
    seed = torch.zeros(length, dtype=torch.int64)
    with pytest.raises(TypeError, match="fastreg.dropout: seed must be a one-element"):
        ops.dropout(x, seed, 0.5, False)
    with pytest.raises(TypeError, match="fastreg.dropconnect_linear: seed must be a one-element"):
        ops.dropconnect_linear(torch.randn(2, 4), torch.randn(3, 4), None, seed, 0.5)
    two_d = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="fastreg.drop_path: seed"):
        ops.drop_path(x, None, two_d, 0.5, True)
    with pytest.raises(TypeError, match="fastreg.cutout: seed must be a one-element"):
        ops.cutout(torch.randn(1, 1, 4, 4), torch.zeros(4, dtype=torch.int64), 2, 1.0, 0.0)
    with pytest.raises(TypeError, match="fastreg.mix: seed must be a one-element"):
        ops.mix(torch.randn(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64),
                3, 0.0, 1.0, 0.0, -1.0, -1.0, 1.0, 0.0, 0, True)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [0.5, "random"])
def test_shard_of_samples_draws_its_samples_boxes(device, value):
    """Cutout and random erasing on samples [first, first + n) with the seed [seed, first]
    give those samples' part of the whole batch's result (random erasing's noise too), as
    the reference does; contiguous and channels_last."""
    noise = value == "random"
    lr = (math.log(0.3), math.log(3.3))  # the op takes log ratios, as fastreg.functional passes them
    for layout in (torch.contiguous_format, torch.channels_last):
        images = torch.randn(7, 3, 9, 9, device=device).to(memory_format=layout)
        seed = _seed(device)
        whole_cut = ops.cutout(images, seed, 4, 0.8, 0.5)
        whole_erased = ops.random_erasing(images, seed, 1.0, 0.02, 0.33, *lr, 0.5, noise)
        for first, stop in ((0, 3), (3, 7), (6, 7)):
            part, s = images[first:stop].clone(), positioned_seed(seed, [first])
            assert torch.equal(ops.cutout(part, s, 4, 0.8, 0.5), whole_cut[first:stop])
            erased = ops.random_erasing(part, s, 1.0, 0.02, 0.33, *lr, 0.5, noise)
            assert torch.equal(erased, whole_erased[first:stop])
            assert torch.equal(
                R.random_erasing(part, 1.0, (0.02, 0.33), (0.3, 3.3), value=value, seed=s), erased
            )
            assert torch.equal(R.cutout(part, 4, 0.8, fill=0.5, seed=s), whole_cut[first:stop])


def test_noise_erasing_of_a_shard_needs_samples_outermost():
    images = torch.randn(8, 3, 4, 4).transpose(0, 1)  # dense, samples not outermost
    before = images.clone()
    seed = positioned_seed(_seed("cpu"), [2])
    with pytest.raises(ValueError, match="fastreg.random_erasing_: value='random' on a shard"):
        ops.random_erasing_(images, seed, 1.0, 0.02, 0.33, -1.2, 1.2, 0.0, True)
    assert torch.equal(images, before)


def test_reference_refuses_positioned_seeds_where_kernels_do():
    seed = positioned_seed(_seed("cpu"), [8, 2, 3])
    with pytest.raises(TypeError, match="fastreg.cutout: seed must be a one-element"):
        R.cutout(torch.randn(2, 1, 4, 4), 2, seed=seed)
    with pytest.raises(TypeError, match="fastreg.stochastic_depth: seed must be a one-element"):
        R.stochastic_depth(torch.randn(4, 3), torch.nn.Identity(), 0.5, True, seed=seed)


def test_inplace_dropout_of_a_strided_shard_is_refused():
    x = torch.randn(6, 8).t()  # not row-major: a shard's draw order is
    before = x.clone()
    seed = positioned_seed(_seed("cpu"), [0, 3, 5])
    with pytest.raises(ValueError, match="fastreg.dropout_: a shard"):
        ops.dropout_(x, seed, 0.5, False)
    assert torch.equal(x, before)


# --- batch_offset: data-parallel ranks draw the whole batch's bits ---------------------------

BATCH_OPS = {
    "dropout": lambda x: F.dropout(x, 0.4),
    "alpha_dropout": lambda x: F.alpha_dropout(x, 0.4, True),
    "dropout_add": lambda x: F.dropout_add(x, x * 2, 0.4),
    "bias_act_dropout": lambda x: F.bias_act_dropout(x, None, "relu", 0.4),
    "drop_path": lambda x: F.drop_path(x, 0.5, True),
    "cutout": lambda x: F.cutout(x, 2, 0.7),
    "random_erasing": lambda x: F.random_erasing(x, 0.7),
    "random_erasing noise": lambda x: F.random_erasing(x, 0.7, value="random"),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", list(BATCH_OPS))
def test_batch_offset_draws_the_whole_batch_rows(op, layout):
    """Each slice of the batch, run inside batch_offset(start) with the same generator state,
    gives the rows of the whole batch's result, forward and backward."""
    fn = BATCH_OPS[op]
    x = torch.randn(8, 3, 5, 6)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    whole_x = x.clone().requires_grad_(True)
    torch.manual_seed(5)
    whole = fn(whole_x)
    whole.backward(torch.ones_like(whole))
    for start, stop in ((0, 3), (3, 8)):
        part = x[start:stop].clone().requires_grad_(True)
        torch.manual_seed(5)
        with batch_offset(start):
            y = fn(part)
            y.backward(torch.ones_like(y))
        assert torch.equal(y, whole[start:stop])
        assert torch.equal(part.grad, whole_x.grad[start:stop])


def test_batch_offset_leaves_other_draws_alone():
    """DropConnect's weight mask, and everything outside the context, draw as before; the
    context nests and restores."""
    x, w = torch.randn(4, 6), torch.randn(5, 6)
    with batch_offset(2):
        with batch_offset(0):
            inner = F.dropout(x, 0.5, seed=1)
        outer = F.dropout(x, 0.5, seed=1)
        masked = F.dropconnect_linear(x, w, None, 0.5, seed=1)
    assert torch.equal(inner, F.dropout(x, 0.5, seed=1))
    assert not torch.equal(outer, inner)
    assert torch.equal(masked, F.dropconnect_linear(x, w, None, 0.5, seed=1))
    assert torch.equal(F.dropout(x, 0.5, seed=1), inner)


def test_batch_offset_under_compile():
    """A compiled function follows the context (dynamo guards on it): inside, outside, and
    after, it gives what eager gives."""
    fn = lambda x: F.dropout(x, 0.5, seed=3) + F.drop_path(x, 0.5, True, seed=4)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    x = torch.randn(4, 8)
    assert torch.equal(compiled(x), fn(x))
    with batch_offset(4):
        inside = fn(x)
        assert torch.equal(compiled(x), inside)
    assert not torch.equal(inside, fn(x))
    assert torch.equal(compiled(x), fn(x))


def test_batch_offset_bad_input():
    for start in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="fastreg.distributed.batch_offset: start"):
            with batch_offset(start):
                pass
    with batch_offset(2):
        with pytest.raises(NotImplementedError, match="fastreg.dropout: batch_offset does not apply"):
            torch.func.vmap(lambda t: F.dropout(t, 0.5), randomness="different")(torch.randn(3, 4))
        with pytest.raises(ValueError, match="fastreg.dropout: inside batch_offset the input needs"):
            F.dropout(torch.tensor(1.0), 0.5)


# --- DTensor registration -------------------------------------------------------------------

REGISTRATION = """
import sys
import torch
{first}
{second}
from torch.distributed.tensor import DTensor
handlers = DTensor._op_dispatcher._custom_op_handlers
print(torch.ops.fastreg.dropout.default in handlers, torch.ops.fastreg.drop_path_backward.default in handlers)
"""


@pytest.mark.parametrize("order", ["fastreg first", "torch.distributed.tensor first"])
def test_dtensor_registration_in_either_import_order(order):
    a, b = "import fastreg", "import torch.distributed.tensor"
    first, second = (a, b) if order == "fastreg first" else (b, a)
    run = subprocess.run(
        [sys.executable, "-c", REGISTRATION.format(first=first, second=second)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["True", "True"]


def test_every_op_is_registered_with_dtensor():
    """Each op under torch.ops.fastreg has a DTensor handler or a sharding rule (but the
    test-only ops, and stochastic_depth_subset, whose only tensor is its seed)."""
    from torch.distributed.tensor import DTensor

    handlers = DTensor._op_dispatcher._custom_op_handlers
    rules = DTensor._op_dispatcher.sharding_propagator.op_strategy_funcs
    names = [
        n
        for n in dir(ops)
        if not n.startswith("_") and isinstance(getattr(ops, n), torch._ops.OpOverloadPacket)
    ]
    missing = [
        n
        for n in names
        if n != "stochastic_depth_subset" and getattr(ops, n).default not in {**handlers, **rules}
    ]
    assert len(names) > 40 and not missing


def test_failed_registration_warns_and_leaves_the_import_working():
    code = (
        "import warnings, fastreg\n"
        "def fail(): raise RuntimeError('no')\n"
        "fastreg.distributed._register_dtensor = fail\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from torch.distributed.tensor import DTensor\n"
        "print(any('not registered with DTensor' in str(w.message) for w in caught))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr[-2000:]


def test_import_does_not_load_dtensor():
    """torch.distributed.tensor costs most of a second to import: fastreg does not."""
    code = "import sys, fastreg; print('torch.distributed.tensor' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr[-2000:]


# --- two processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Every scenario of tests/distributed_scenarios.py, run once on 2 spawned ranks."""
    tmp = tmp_path_factory.mktemp("distributed")
    script = Path(__file__).with_name("distributed_scenarios.py")
    run = subprocess.run(
        [sys.executable, str(script), str(tmp / "init"), str(tmp / "rank")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return [torch.load(tmp / f"rank{r}", weights_only=False) for r in range(2)]


def _checks(scenarios, name, at_least):
    """The scenario's named checks on both ranks (its traceback if it raised)."""
    out = []
    for rank, results in enumerate(scenarios):
        checks = results[name]
        assert "error" not in checks, f"rank {rank}:\n{checks.get('error')}"
        out.append(checks)
        assert sum(isinstance(v, bool) for v in checks.values()) >= at_least
    return out


def _all_hold(scenarios, name, at_least, expected_false=()):
    for rank, checks in enumerate(_checks(scenarios, name, at_least)):
        failed = [k for k, v in checks.items() if isinstance(v, bool) and v != (k not in expected_false)]
        assert not failed, f"rank {rank}: {failed}"


SCENARIO_CHECKS = {  # each scenario's docstring says what its checks are
    "dtensor_random": 100,  # random ops on each placement equal the whole tensor's
    "dtensor_grad_layout": 9,  # backward with gradients placed otherwise
    "dtensor_ops": 170,  # activations, PReLU, the raw op, DropConnect, batch ops
    "tensor_parallel": 12,  # the Megatron-style MLP equals the single-process block
    "ddp": 8,  # DDP equals one process over the whole batch
    "fsdp": 9,  # FSDP2 trains like the unsharded model; state_dict round-trips
}


@pytest.mark.parametrize("name", list(SCENARIO_CHECKS))
def test_scenario_checks_hold(scenarios, name):
    """Every named check of the scenario holds on both ranks (at least as many as listed)."""
    _all_hold(scenarios, name, at_least=SCENARIO_CHECKS[name])


def test_seeds_across_ranks_behave_as_torch(scenarios):
    apart = ("apart/fastreg same on ranks", "apart/torch same on ranks")
    _all_hold(scenarios, "seeds", at_least=6, expected_false=apart)
    # rank 1 without batch_offset draws rank 0's rows, not its own
    assert scenarios[1]["seeds"]["without batch_offset, the first rows"] is True


def test_fastreg_exports_distributed():
    assert fastreg.distributed.batch_offset is batch_offset


@pytest.mark.parametrize("example", ["train_ddp.py", "train_tp.py"])
def test_example_runs_with_torchrun(example, tmp_path):
    """The examples, as the README runs them: torchrun, 2 processes (gloo on the CPU)."""
    script = Path(__file__).parents[1] / "examples" / example
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         "--steps", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-1000:] + run.stderr[-4000:]  # stdout: how far it got
    losses = [float(line.split()[-1]) for line in run.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 3 and all(0 < v < 100 for v in losses)
