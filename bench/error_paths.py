"""Diagnostic for the GPU check: does a C++ exception raised by a fastreg op reach Python?

Each case runs in its own child interpreter (a crash there is reported, not fatal).
With --gdb, the first case that crashes is rerun under cuda-gdb for a native backtrace.
Prints one line per case; exit status 1 if any case crashed.
"""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    ("torch's own error, fastreg loaded", "cpu", "torch.ones(2) + torch.ones(3)"),
    ("CPU op, TypeError", "cpu", "ops.sigmoid(torch.arange(6))"),
    ("CPU op, ValueError", "cpu", "ops.elu(torch.randn(4), -1.0)"),
    ("CUDA op, TypeError", "cuda", "ops.sigmoid(torch.arange(6, device='cuda'))"),
    ("CUDA op, ValueError", "cuda", "ops.elu(torch.randn(4, device='cuda'), -1.0)"),
    (
        "CUDA dropout, ValueError",
        "cuda",
        "ops.dropout(torch.randn(4, device='cuda'), torch.tensor([1], device='cuda'), 2.0, False)",
    ),
    (
        "CUDA batch op, ValueError",
        "cuda",
        "ops.cutout(torch.rand(2, 3, 8, 8, device='cuda'), torch.tensor([1], device='cuda'), 0, 1.0, 0.0)",
    ),
]


def script(expr):
    return (
        "import torch, fastreg\n"
        "ops = torch.ops.fastreg\n"
        "try:\n"
        f"    {expr}\n"
        "    print('NO EXCEPTION')\n"
        "except Exception as e:\n"
        "    print('raised', type(e).__name__, str(e).splitlines()[0][:100])\n"
    )


def main():
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    crashed = []
    for name, device, expr in CASES:
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                print(f"{name:<36} skipped (no CUDA)")
                continue
        res = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", script(expr)],
            capture_output=True,
            text=True,
            env=env,
        )
        out = res.stdout.strip() or f"CRASHED rc {res.returncode}: {res.stderr.strip()[-300:]}"
        print(f"{name:<36} {out}", flush=True)
        if res.returncode != 0:
            crashed.append(expr)
    if crashed and "--gdb" in sys.argv and shutil.which("cuda-gdb"):
        print("== cuda-gdb backtrace of:", crashed[0], flush=True)
        gdb = [
            "cuda-gdb",
            "-batch",
            "-ex",
            "run",
            "-ex",
            "bt 40",
            "--args",
            sys.executable,
            "-c",
            script(crashed[0]),
        ]
        res = subprocess.run(gdb, capture_output=True, text=True, env=env, timeout=120)
        lines = (res.stdout + res.stderr).splitlines()
        keep = [ln for ln in lines if ln.startswith("#") or "signal" in ln.lower()]
        print("\n".join(keep[-60:]))
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
