import os
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fastreg  # noqa: F401  (registers the ops)

CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="CUDA not available")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CPU_PATH_VARIABLES = ("FASTREG_CPU_ISA", "FASTREG_CPU_STREAM_MIN_BYTES")


def child_tensors(script, path, *args, **env):
    """Runs `script` in a child interpreter (`python -c script path *args`) with the CPU
    path variables (FASTREG_CPU_ISA, FASTREG_CPU_STREAM_MIN_BYTES) unset except those
    given in env, and returns what the script saved with torch.save to its first argument.
    The CPU loops read those variables once per process, so each path needs a child."""
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    for name in CPU_PATH_VARIABLES:
        e.pop(name, None)
    e.update(env)
    res = subprocess.run(
        [sys.executable, "-c", script, str(path), *args], capture_output=True, text=True, env=e
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(path)


def run_child(script, *args, timeout=600):
    """Runs `script` in a child interpreter and returns its stdout; fails the test with the
    child's exit status and stderr when it does not exit 0 (a crash there, such as a
    SIGFPE or SIGSEGV in a kernel, fails one test instead of killing the whole run)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert res.returncode == 0, f"child exited with {res.returncode}: {res.stderr[-3000:]}"
    return res.stdout


def assert_same_bits(got, want):
    """Two lists of tensors (child_tensors) equal bit for bit, element by element."""
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), k


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


class DispatchLog(TorchDispatchMode):
    """Records the ops (OpOverloads) the dispatcher runs, and runs them."""

    def __init__(self):
        super().__init__()
        self.funcs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))


class FunctionLog(TorchFunctionMode):
    """Records the functions that reach __torch_function__, and runs them."""

    def __init__(self):
        super().__init__()
        self.funcs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))


def ops_called(fn, *args):
    """The ATen and fastreg ops (OpOverloads) that the dispatcher runs for fn(*args), in order."""
    with DispatchLog() as log:
        fn(*args)
    return log.funcs
