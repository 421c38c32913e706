"""In-place calls (`inplace=True`) against torch's in-place ops, on the CPU or a GPU.

torchvision's ResNets and VGGs build `nn.ReLU(inplace=True)`, so `fastreg.convert` of such a
model runs every ReLU in place. Times (median of interleaved rounds, milliseconds per call):
an inference call under `torch.no_grad()` on a tensor that stays the same (in place, it stays
in the last-level cache on this project's CPU, as a layer's output does between layers), and
a training step (in place on a fresh non-leaf, then backward). Not part of `make bench`'s
table: the kernels are the out-of-place ones, run with the input as the output.

python bench/inplace.py [--device cuda] [--numel N]
"""

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastreg.functional as FR  # noqa: E402
from bench.host_path import per_call_us  # noqa: E402

CASES = {
    "relu": (lambda t: FR.relu(t, inplace=True), lambda t: F.relu(t, inplace=True)),
    "leaky_relu": (
        lambda t: FR.leaky_relu(t, 0.01, inplace=True),
        lambda t: F.leaky_relu(t, 0.01, inplace=True),
    ),
    "elu": (lambda t: FR.elu(t, inplace=True), lambda t: F.elu(t, inplace=True)),
    "silu": (lambda t: FR.silu(t, inplace=True), lambda t: F.silu(t, inplace=True)),
    "dropout p=0.1": (lambda t: FR.dropout(t, 0.1, inplace=True), lambda t: F.dropout(t, 0.1, inplace=True)),
}


def per_call_ms(fn, device, n):
    return per_call_us(fn, device, n, warmup=3) / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--numel", type=int, default=None, help="elements (CPU 2^22, GPU 2^26)")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    n = a.numel or (1 << 26 if a.device == "cuda" else 1 << 22)
    calls = 50 if a.device == "cuda" else 20
    print(f"in-place calls on {a.device}, {n} elements, ms per call (median of {a.rounds} rounds)")
    print(f"{'op':<16}{'dtype':<10}{'inference: fastreg':>20}{'torch':>9}{'ratio':>7}"
          f"{'step: fastreg':>15}{'torch':>9}{'ratio':>7}")  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(n, device=a.device).to(dtype)
        w = torch.randn(n, device=a.device).to(dtype).requires_grad_()
        g = torch.randn(n, device=a.device).to(dtype)
        for name, (fr, ref) in CASES.items():

            def infer(f):
                def run():
                    with torch.no_grad():
                        f(x)

                return run

            def step(f):
                return lambda: torch.autograd.grad(f(w * 1), w, g)

            rows = {"fi": infer(fr), "ti": infer(ref), "fs": step(fr), "ts": step(ref)}
            times = {k: [] for k in rows}
            for _ in range(a.rounds):
                for k, fn in rows.items():
                    x.copy_(torch.randn(n, device=a.device))  # each round from fresh values
                    times[k].append(per_call_ms(fn, a.device, calls))
            m = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{name:<16}{str(dtype).split('.')[1]:<10}{m['fi']:>20.3f}{m['ti']:>9.3f}"
                f"{m['ti'] / m['fi']:>7.2f}{m['fs']:>15.3f}{m['ts']:>9.3f}{m['ts'] / m['fs']:>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
