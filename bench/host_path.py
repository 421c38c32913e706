"""Where the host time of one small call goes (microseconds per call, no sync in the loop).

The batch rows of the GPU benchmark were host-bound on an H200 machine (the host needed
as long to issue a mixup as the GPU to run it). This splits a call into its parts
so that the next change goes where the time is: Python checks, the seed's randint,
the op's dispatch, each kernel launch. The last rows put an activation's and dropout's
small call, inference and training step, beside eager torch's: fastreg's autograd
formulas are Python (`torch.library.register_autograd`, docs/design.md), whose per-call
cost eager's C++ autograd does not pay. Each fastreg row is timed twice: as it runs
(every op through its typed entry, fastreg._C.below) and "via torch.ops" (the entries
off: every op through torch.ops' boxed path), rows interleaved over rounds.

python bench/host_path.py [--device cuda]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastreg  # noqa: E402
import fastreg._autograd as A  # noqa: E402
import fastreg.functional as FR  # noqa: E402
import fastreg.nn as FN  # noqa: E402

ops = torch.ops.fastreg
ROUNDS = 7


def per_call_us(fn, device, n=2000, warmup=50):
    """Microseconds per call of fn, n calls after `warmup` (the device synchronized after)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n * 1e6
    if device == "cuda":
        torch.cuda.synchronize()
    return host


def _small_tensor_rows(device):
    """Activations and dropout on a small tensor: (eager and raw-op rows, fastreg rows)."""
    rows, fastreg_rows = [], []
    # an inference call, and a training step (forward + backward through autograd), fastreg
    # against eager torch
    a = torch.randn(256, device=device)
    ag = a.clone().requires_grad_()
    ga = torch.randn(256, device=device)

    def step(f):
        return lambda: torch.autograd.grad(f(ag), ag, ga)

    def infer(f):
        def run():
            with torch.no_grad():
                return f(a)

        return run

    # one op call below autograd: torch.ops' boxed path against the op's typed entry
    # (fastreg._C.below, what fastreg.functional and the autograd formulas call)
    mask = torch.empty(32, dtype=torch.uint8, device=device)

    def boxed():
        with torch._C._AutoDispatchBelowAutograd():
            return ops.leaky_relu_backward(ga, mask, 0.01)

    rows.append(("leaky_relu_backward below autograd: torch.ops", boxed))
    rows.append(
        ("leaky_relu_backward: typed entry", lambda: fastreg._C.below.leaky_relu_backward(ga, mask, 0.01))
    )
    for name, fr, ref in (
        ("leaky_relu", FR.leaky_relu, torch.nn.functional.leaky_relu),
        ("gelu", FR.gelu, torch.nn.functional.gelu),
        ("dropout p=0.1", lambda t: FR.dropout(t, 0.1), lambda t: torch.nn.functional.dropout(t, 0.1)),
    ):
        fastreg_rows.append((f"{name} inference", infer(fr)))
        rows.append((f"{name} inference: eager", infer(ref)))
        fastreg_rows.append((f"{name} fwd+bwd step", step(fr)))
        rows.append((f"{name} fwd+bwd step: eager", step(ref)))
    return rows, fastreg_rows


def timed_rows(device):
    """(name, call) of every row: torch baselines, raw ops, fastreg calls and their eager
    counterparts; a fastreg call twice, the second to run with the typed entries off."""
    # small tensors: the device work is negligible, what is timed is the host path
    x = torch.rand(8, 3, 16, 16, device=device)
    t = torch.randint(0, 10, (8,), device=device)
    one = torch.zeros(1, device=device)
    seed = torch.tensor([1], device=device)
    m = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    mix_args = (t, seed, 10, 0.1, 1.0, 0.0, -1.0, -1.0, 1.0, 0.5, 0, True)
    rows = [
        ("one tiny torch op (x.add_(0))", lambda: one.add_(0)),
        ("torch.empty(8, 3, 16, 16)", lambda: torch.empty(8, 3, 16, 16, device=device)),
        ("seed: torch.randint on device", lambda: torch.randint(-(2**63), 2**63 - 1, (1,), device=device)),
        ("raw ops.cutout_ (1 launch)", lambda: ops.cutout_(x, seed, 4, 1.0, 0.0)),
        ("raw ops.mix_ (draw, targets, pass)", lambda: ops.mix_(x, *mix_args)),
        ("raw ops.mix (autograd kernel)", lambda: ops.mix(x, *mix_args)),
    ]
    small, fastreg_small = _small_tensor_rows(device)
    rows += small
    fastreg_rows = [
        ("FR.cutout(inplace=True)", lambda: FR.cutout(x, 4, inplace=True)),
        ("FR.mixup", lambda: FR.mixup(x, t, 1.0, num_classes=10, label_smoothing=0.1)),
        ("nn.Mixup (timm recipe)", lambda: m(x, t)),
    ]
    fastreg_rows += fastreg_small
    # each fastreg call twice: through the typed entries (what it runs) and with them off
    # (every op through torch.ops' boxed path)
    for name, fn in fastreg_rows:
        rows.append((f"{name}: fastreg", fn))
        rows.append((f"{name}: fastreg via torch.ops", fn))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = p.parse_args().device
    rows = timed_rows(device)
    # rows interleaved over rounds (this machine's speed drifts by minutes); medians
    times = {name: [] for name, _ in rows}
    entries = A._ENTRIES
    for _ in range(ROUNDS):
        for name, fn in rows:
            A._ENTRIES = {} if name.endswith("via torch.ops") else entries
            try:
                times[name].append(per_call_us(fn, device, n=1000))
            finally:
                A._ENTRIES = entries
    print(f"host time per call on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}),")
    print(f"median of {ROUNDS} interleaved rounds")
    for name, _ in sorted(rows, key=lambda r: r[0].split(":")[0]):
        print(f"  {name:<50} {statistics.median(times[name]):8.1f} us", flush=True)


if __name__ == "__main__":
    main()
