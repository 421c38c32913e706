"""What fastreg does to a whole training step of a timm model: time and activation memory.

For each model and drop path rate (timm's linear schedule over the blocks), three variants of
the same model and weights:

    timm     the stock model (timm's DropPath: every sample runs every branch)
    convert  fastreg.convert(model)
    skip     fastreg.convert(model, stochastic_depth="skip"): each residual branch runs only
             on the samples its drop path keeps
    torch_subset  the same blocks running DINOv2's plain-torch subset instead of fastreg's
             (torch.randperm on the device, index_select, index_add with alpha): the peer

A step is forward, cross-entropy, backward and AdamW's step. Reported per variant: the median
step time over interleaved rounds (every variant runs a few steps in turn, round after round,
so that drift of the machine hits all alike; at least --rounds, and enough for --seconds of
steps); the speedup over timm, the median of the rounds' ratios; the bytes autograd saves
for backward in one forward (each storage once, parameters excluded); the peak memory of a
step on a GPU. Beside the speedup: the ideal 1 / (1 - mean drop probability of the blocks),
and the bound, the speedup if the dropped samples' branch work cost nothing and all else
stayed, from each residual branch's forward and backward timed alone on the whole batch,
between timm's steps timed just before and after (a model whose time is not spread evenly
over its blocks, or is partly outside them, cannot reach the ideal). Results:
bench/results/latest/train_step-<device>.json and .png, rows appended to
bench/results/train_step_history.csv.

python bench/train_step.py [--device cpu] [--models vit_small_patch16_224,...]
                           [--rates 0.1,0.2,0.4] [--batch 64] [--image 64] [--rounds 12]
                           [--seconds 6]
"""

import argparse
import contextlib
import csv
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # harness, and fastreg built in place

import harness  # noqa: E402

import fastreg  # noqa: E402

VARIANTS = ("timm", "convert", "skip", "torch_subset")
# CPU sizes run in minutes on 2 cores; a GPU gets the models' own resolution
DEFAULTS = {"cpu": {"batch": 64, "image": 64}, "cuda": {"batch": 128, "image": 224}}
MODELS = ("vit_small_patch16_224", "convnext_atto", "resnet26d")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rates", default="0.1,0.2,0.4")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--image", type=int, default=None)
    p.add_argument(
        "--rounds", type=int, default=12, help="interleaved rounds (each variant runs --steps per round)"
    )
    p.add_argument("--steps", type=int, default=1, help="timed steps per variant and round")
    p.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="more rounds, if needed, for this much timed time per variant",
    )
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from the latest results")
    return p.parse_args()


def torch_subset(block, x, branch, drop_path, residual=None, input_saved=False):
    """DINOv2's drop_add_residual_stochastic_depth in plain torch, what a user writes without
    fastreg (k = max(int(B (1 - p)), 1) samples of a device randperm), with the signature of
    the rewired blocks' fastreg._skip_blocks._skip."""
    from fastreg._skip_blocks import _drop_of

    p, scale_by_keep = _drop_of(drop_path)
    res = x if residual is None else residual
    if not block.training or p == 0.0:
        return res + branch(x)
    b = x.shape[0]
    k = max(int(b * (1 - p)), 1)
    rows = torch.randperm(b, device=x.device)[:k]
    y = branch(x[rows])
    return torch.index_add(res.to(y.dtype), 0, rows, y, alpha=b / k if scale_by_keep else 1.0)


@contextlib.contextmanager
def subset_function(variant):
    """The torch_subset variant's blocks are fastreg's skipping blocks running torch_subset
    in place of fastreg's stochastic depth while it runs."""
    if variant != "torch_subset":
        yield
        return
    from fastreg import _skip_blocks

    saved = _skip_blocks._skip
    _skip_blocks._skip = torch_subset
    try:
        yield
    finally:
        _skip_blocks._skip = saved


def build(name, rate, variant, args):
    import timm

    torch.manual_seed(0)  # the same weights for every variant
    kw = {"img_size": args.image} if "vit" in name or "deit" in name else {}
    model = timm.create_model(name, pretrained=False, num_classes=args.classes, drop_path_rate=rate, **kw)
    if variant == "convert":
        model = fastreg.convert(model)
    elif variant in ("skip", "torch_subset"):
        model = fastreg.convert(model, stochastic_depth="skip")
    return model.to(args.device).train()


def _blocks(model):
    """{name: [(branch, p)]} of the model's residual blocks of the types convert() rewires."""
    from fastreg._skip_blocks import residual_branches

    found = {name: residual_branches(m) for name, m in model.named_modules()}
    return {name: b for name, b in found.items() if b is not None}


def mean_drop_prob(model):
    """The mean drop probability over the model's residual blocks (0 for a block without a
    drop path): the fraction of block compute stochastic depth can skip."""
    probs = [max(p for _, p in branches) for branches in _blocks(model).values()]
    return statistics.fmean(probs) if probs else 0.0


def branch_ms(model, x, device, reps=5):
    """{block name: [ms]}: each residual branch's forward and backward on the whole batch,
    timed alone (median of ``reps``) on the input its block got in one forward."""
    blocks = _blocks(model)
    inputs = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[name].register_forward_pre_hook(
            lambda m, a, name=name: inputs.__setitem__(name, a[0].detach())
        )
        for name in blocks
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    times = {}
    for name, branches in blocks.items():
        times[name] = []
        for branch, _ in branches:
            t = inputs[name].clone().requires_grad_(True)

            def run(branch=branch, t=t):
                out = branch(t)
                out.backward(torch.ones_like(out))

            run()  # warm-up
            ms = []
            for _ in range(reps):
                harness.sync(device)
                t0 = time.perf_counter()
                run()
                harness.sync(device)
                ms.append((time.perf_counter() - t0) * 1e3)
            times[name].append(statistics.median(ms))
    model.zero_grad(set_to_none=True)
    return times


def branch_window(timm_runner, x, device, steps=3):
    """branch_ms of timm's model, and the median of its steps timed just before and after
    them: the two in one window of the machine's drift."""
    timm_runner.timed(steps)
    times = branch_ms(timm_runner.model, x, device)
    timm_runner.timed(steps)
    window_ms = statistics.median(timm_runner.times[-2 * steps :])
    return times, window_ms


def bound(step_ms, model, times):
    """The speedup over ``step_ms`` if the dropped samples' branch work cost nothing and all
    else stayed: step_ms / (step_ms - sum of p * branch time)."""
    skippable = sum(
        p * ms
        for name, branches in _blocks(model).items()
        for (_, p), ms in zip(branches, times[name], strict=True)
    )
    return step_ms / (step_ms - skippable)


def activation_bytes(model, x, y):
    """Bytes autograd saves in one forward: each storage once, parameters' excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = set()
    total = 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    del loss
    return total


class Runner:
    """One variant: its model, optimizer and step."""

    def __init__(self, name, rate, variant, args, x, y):
        self.variant = variant
        self.model = build(name, rate, variant, args)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x, self.y, self.device = x, y, args.device
        self.times = []

    def step(self):
        with subset_function(self.variant):
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()

    def saved_bytes(self):
        with subset_function(self.variant):
            return activation_bytes(self.model, self.x, self.y)

    def timed(self, steps):
        for _ in range(steps):
            harness.sync(self.device)
            t0 = time.perf_counter()
            self.step()
            harness.sync(self.device)
            self.times.append((time.perf_counter() - t0) * 1e3)

    def peak_mb(self):
        if torch.device(self.device).type != "cuda":
            return None
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step()
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def measure_model(name, rates, args):
    """Rows of one model: every rate and variant, the variants of a rate interleaved."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=g).to(args.device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(args.device)
    rows = []
    times = None
    for rate in rates:
        runners = {v: Runner(name, rate, v, args, x, y) for v in VARIANTS}
        if times is None:  # the branches' cost, and timm's step's, do not depend on the rate
            times, window_ms = branch_window(runners["timm"], x, args.device)
        for r in runners.values():
            r.timed(2)  # warm-up: allocator, oneDNN primitives, lazy inits
        # enough rounds that each variant runs --seconds
        rounds = max(args.rounds, math.ceil(args.seconds * 1e3 / (runners["timm"].times[-1] * args.steps)))
        for r in runners.values():
            r.times.clear()
        for _ in range(rounds):
            for r in runners.values():
                r.timed(args.steps)
        p_mean = mean_drop_prob(runners["timm"].model)
        attainable = bound(window_ms, runners["timm"].model, times)
        for variant, r in runners.items():
            rows.append({
                "model": name, "rate": rate, "mean_drop_prob": round(p_mean, 4), "variant": variant,
                "step_ms": round(statistics.median(r.times), 2), "steps": len(r.times),
                "saved_mb": round(r.saved_bytes() / 2**20, 2), "peak_mb": r.peak_mb(),
                "speedup": round(paired_speedup(runners["timm"].times, r.times, args.steps), 4),
                "ideal": round(1.0 / (1.0 - p_mean), 4),
                "bound": round(attainable, 4),
            })  # fmt: skip
            print(_line(rows[-1]), flush=True)
        del runners
    return rows


def paired_speedup(base, times, steps):
    """The median over rounds of base's time over times' in the same round: adjacent steps
    share the machine's state, so its drift cancels in each ratio."""
    per_round = [sum(base[i : i + steps]) / sum(times[i : i + steps]) for i in range(0, len(times), steps)]
    return statistics.median(per_round)


def _line(row):
    return (
        f"{row['model']:<24} rate {row['rate']:.1f} (mean p {row['mean_drop_prob']:.3f})"
        f"  {row['variant']:<8} {row['step_ms']:9.1f} ms  x{row['speedup']:.3f}"
        f" (ideal x{row['ideal']:.3f}, bound x{row['bound']:.3f})  saved {row['saved_mb']:8.1f} MiB"
    )


def _rows_of(rows, model, rate):
    return {r["variant"]: r for r in rows if r["model"] == model and r["rate"] == rate}


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r["rate"]) for r in rows))
    labels = [f"{m.split('_')[0]}\n{rate:.1f}" for m, rate in groups]
    by = [_rows_of(rows, m, rate) for m, rate in groups]
    xs = list(range(len(groups)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ax = axes[0]
    shown = {
        "convert": "convert()",
        "skip": 'convert(stochastic_depth="skip")',
        "torch_subset": "plain-torch subset",
    }
    for j, (variant, label) in enumerate(shown.items()):
        ax.bar([i + (j - 1) * 0.27 for i in xs], [g[variant]["speedup"] for g in by], 0.27, label=label)
    ax.scatter(
        xs, [g["skip"]["ideal"] for g in by], color="black", marker="_", s=300, zorder=3, label="ideal"
    )
    ax.scatter(
        xs, [g["skip"]["bound"] for g in by], color="tab:red", marker="_", s=300, zorder=3, label="bound"
    )
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("training-step speedup over timm")
    ax.set_ylim(0.5, 1.35)
    ax.legend(fontsize=7, loc="upper center", ncol=5, bbox_to_anchor=(0.5, -0.14))
    ax = axes[1]
    ax.bar(xs, [g["skip"]["saved_mb"] / g["timm"]["saved_mb"] for g in by], 0.5, color="tab:orange")
    ax.scatter(
        xs,
        [1 / g["skip"]["ideal"] for g in by],
        color="black",
        marker="_",
        s=300,
        zorder=3,
        label="1 - mean p",
    )
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("bytes saved for backward, skip / timm")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(meta):
    return (
        f"{meta['device_name']} ({meta['device']}), batch {meta['batch']}, {meta['image']} px,"
        f" {meta['date']} {meta['commit']}"
    )


def main():
    args = parse_args()
    out = os.path.join(args.out or harness.RESULTS, "latest")
    if args.plot_only:
        path = os.path.join(out, f"train_step-{harness.device_slug(args.device)}.json")
        with open(path) as f:
            results = json.load(f)
        plot(results["rows"], path.removesuffix(".json") + ".png", _title(results))
        return
    kind = torch.device(args.device).type
    for k, v in DEFAULTS[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    harness.steady_cpu_allocator()
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    for name in args.models.split(","):
        rows += measure_model(name, rates, args)
    import timm

    slug = harness.device_slug(args.device)
    meta = {
        "date": datetime.date.today().isoformat(), "commit": harness.current_commit(), "device": slug,
        "device_name": harness.device_name(args.device), "torch": torch.__version__, "timm": timm.__version__,
        "batch": args.batch, "image": args.image, "rounds": args.rounds, "seconds": args.seconds,
        "steps_per_round": args.steps, "threads": torch.get_num_threads(),
    }  # fmt: skip
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"train_step-{slug}.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    plot(rows, os.path.join(out, f"train_step-{slug}.png"), _title(meta))
    history = os.path.join(args.out or harness.RESULTS, "train_step_history.csv")
    fields = ["date", "commit", "device", "device_name", "torch", "timm", "batch", "image", *rows[0]]
    new = not os.path.exists(history)
    with open(history, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**meta, **r})


if __name__ == "__main__":
    main()
