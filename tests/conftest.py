import os
import subprocess
import sys

import pytest
import torch

import fastreg  # noqa: F401  (registers the ops)

CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="CUDA not available")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def saved_bytes(fn, *args):
    """Bytes of the tensors autograd saves while running fn(*args), and the tensors."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return sum(t.numel() * t.element_size() for t in saved), saved, out


def check_raw_op_errors(device, cases):
    """Calls raw ops with bad arguments in a child interpreter and asserts that each
    raises the expected Python exception with the expected words: a crash in the
    kernels' error path fails this test instead of killing the whole run.

    cases: list of (python expression using ops/x/device, exception name, words).
    """
    lines = [
        "import torch, fastreg",
        "ops = torch.ops.fastreg",
        f"device = {device!r}",
        "x = torch.randn(4, 6, device=device)",
        "failures = []",
    ]
    for expr, exc, words in cases:
        lines += [
            "try:",
            f"    {expr}",
            f"    failures.append({expr!r} + ': no exception')",
            f"except {exc} as e:",
            f"    if {words!r} not in str(e): failures.append({expr!r} + ': ' + str(e))",
        ]
    lines.append("print('FAILURES', failures)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"child crashed (rc {res.returncode}): {res.stderr[-3000:]}"
    assert "FAILURES []" in res.stdout, res.stdout
