"""The accuracy that docs/accuracy.md states, asserted: for every activation, direction and
dtype, fastreg's CPU kernels and its CUDA math (the functors the CUDA kernels compile,
evaluated on the CPU) within the table's bounds, in ulps against the exact function, for
|x| <= 4 and over every input. bench/accuracy.py measures; the table is its output."""

import importlib.util
import pathlib
import sys

import pytest
import torch
from conftest import CUDA

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fastreg_bench_accuracy", ROOT / "bench" / "accuracy.py")
accuracy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = accuracy
_spec.loader.exec_module(accuracy)

STATED = accuracy.parse_doc(accuracy.DOC.read_text())
DTYPES = {v: k for k, v in accuracy.DTYPE_NAMES.items()}
CASES = [(a, d, t) for a in accuracy.ACTIVATIONS for d in ("forward", "backward") for t in DTYPES]


def test_the_table_has_every_case():
    assert sorted(STATED) == sorted(CASES)


def _within(measured, stated, slack=0.0):
    return all(m <= s + slack for m, s in zip(measured, stated, strict=True))


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_within_the_stated_bounds(case):
    name, direction, dtype = case
    impls = {k: accuracy.IMPLEMENTATIONS[k] for k in ("fastreg CPU", "fastreg CUDA")}
    got = accuracy.measure(name, direction == "backward", DTYPES[dtype], impls)
    for impl, (core, every, at) in got.items():
        stated = STATED[case][impl]
        assert _within((core, every), stated), f"{impl}: {core} / {every} ulps (at {at}) > {stated}"


def test_ulps_are_measured_from_the_exact_value():
    one = torch.tensor([1.0], dtype=torch.float64)
    for dtype, eps in ((torch.float16, 2**-10), (torch.bfloat16, 2**-7), (torch.float32, 2**-23)):
        y = torch.tensor([1.0 + eps], dtype=dtype)
        assert accuracy.ulp_errors(y, one, dtype).item() == 1.0
        tiny = torch.finfo(dtype).tiny
        sub = torch.tensor([tiny * eps * 3], dtype=torch.float64)  # three subnormal steps
        assert accuracy.ulp_errors(torch.zeros(1, dtype=dtype), sub, dtype).item() == 3.0
        big = torch.tensor([torch.finfo(dtype).max * 4.0], dtype=torch.float64)
        assert accuracy.ulp_errors(torch.full((1,), float("inf"), dtype=dtype), big, dtype).item() == 0.0
        assert accuracy.ulp_errors(torch.full((1,), float("nan"), dtype=dtype), one, dtype).item() == float(
            "inf"
        )


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_cuda_kernels_within_the_stated_bounds(case):
    """The kernels themselves on a GPU: the table's CUDA column is computed on the CPU with
    the SFU's and libdevice's functions replaced (docs/accuracy.md), so the GPU gets one
    ulp of slack for the half types and four for float32 and float64."""
    name, direction, dtype = case

    def on_cuda(n, backward, s):
        return accuracy.fastreg_cpu(n, backward, s.cuda()).cpu()

    got = accuracy.measure(name, direction == "backward", DTYPES[dtype], {"fastreg CUDA": on_cuda})
    core, every, at = got["fastreg CUDA"]
    slack = 1.0 if dtype in ("float16", "bfloat16") else 4.0
    stated = STATED[case]["fastreg CUDA"]
    assert _within((core, every), stated, slack), f"{core} / {every} ulps (at {at}) > {stated} + {slack}"
