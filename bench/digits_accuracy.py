"""Does stochastic depth that skips the compute train as well as timm's DropPath?

A small timm VisionTransformer (patch 4, 32 px, 6 blocks) trained on scikit-learn's digits
(8x8 images upscaled to 32x32; 1437 train, 360 test, a fixed split) for a few epochs with
AdamW, at drop path rate 0.3, with timm's DropPath, with fastreg.convert(model) (fastreg's
activations and per-sample drop path) and with fastreg.convert(model,
stochastic_depth="skip"), for several seeds (the seed sets the
weights, the batch order and the drop draws). Prints each run's test accuracy and the mean
and standard deviation per variant; writes bench/results/latest/digits_accuracy-<device>.json.

python bench/digits_accuracy.py [--seeds 0,1,2,3,4] [--epochs 30] [--rate 0.3]
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import harness  # noqa: E402

import fastreg  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rate", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--variants", default="timm,convert,skip", help="timm, convert (convert() alone), skip")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    return p.parse_args()


def digits(device):
    """(train images, train labels, test images, test labels): 32x32, one channel."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    train, test = order[:1437], order[1437:]
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)


def model_for(variant, seed, rate):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=3,
        mlp_ratio=2.0, drop_path_rate=rate,
    )  # fmt: skip
    if variant == "timm":
        return model
    return fastreg.convert(model, stochastic_depth="skip" if variant == "skip" else None)


def train(variant, seed, data, args):
    xtr, ytr, xte, yte = data
    model = model_for(variant, seed, args.rate).to(args.device)
    steps = args.epochs * ((len(ytr) + args.batch - 1) // args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the drop draws
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(ytr), generator=g).split(args.batch):
            idx = idx.to(args.device)
            loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return acc, time.perf_counter() - t0


def main():
    args = parse_args()
    data = digits(args.device)
    variants = args.variants.split(",")
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in variants:
            acc, seconds = train(variant, seed, data, args)
            runs.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "test_accuracy": round(acc, 4),
                    "seconds": round(seconds, 1),
                }
            )
            print(f"{variant:<5} seed {seed}: test accuracy {acc:.4f} ({seconds:.0f} s)", flush=True)
    summary = {}
    for variant in variants:
        accs = [r["test_accuracy"] for r in runs if r["variant"] == variant]
        summary[variant] = {
            "mean": round(statistics.fmean(accs), 4),
            "stdev": round(statistics.stdev(accs), 4),
        }
        secs = statistics.fmean(r["seconds"] for r in runs if r["variant"] == variant)
        s = summary[variant]
        print(f"{variant:<5} mean {s['mean']:.4f} +- {s['stdev']:.4f}  ({secs:.0f} s a run)")
    slug = harness.device_slug(args.device)
    out = os.path.join(args.out or harness.RESULTS, "latest")
    os.makedirs(out, exist_ok=True)
    meta = {
        "date": datetime.date.today().isoformat(), "commit": harness.current_commit(), "device": slug,
        "epochs": args.epochs, "rate": args.rate, "batch": args.batch,
    }  # fmt: skip
    with open(os.path.join(out, f"digits_accuracy-{slug}.json"), "w") as f:
        json.dump({**meta, "summary": summary, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
