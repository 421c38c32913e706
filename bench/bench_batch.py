"""Batch-augmentation rows (forward only: augmentations run on data): fastreg against
timm's Mixup / RandomErasing, torchvision v2's MixUp / CutMix / RandomErasing, and the
best plain-torch device implementation ("eager": every draw on the device, no host sync).

Batch: 256x3x224x224 on a GPU (the issue's anchors), 64x3x64x64 on the CPU.
Byte floors (docs/benchmarks.md): mixup and Mixup 2N (read every pixel once, write it once);
cutout, random erasing and cutmix in place: the boxes' bytes (written; CutMix also
reads the partner's box) of one typical draw (seed 1234). Every implementation draws
fresh boxes and lambdas on each call (seed=None), as in training.
"""

import torch
from harness import Case

import fastreg.functional as FR
import fastreg.nn as FN
from fastreg import _random

K = 1000
SMOOTH = 0.1


def _timm():
    try:
        from timm.data.mixup import Mixup
        from timm.data.random_erasing import RandomErasing

        return Mixup, RandomErasing
    except ImportError:
        return None, None


def _tv2():
    try:
        from torchvision.transforms import v2

        return v2
    except ImportError:
        return None


def _box_mask(y0, y1, x0, x1, H, W):
    rows = torch.arange(H, device=y0.device).view(1, H, 1)
    cols = torch.arange(W, device=y0.device).view(1, 1, W)
    inside = (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
    return (inside & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))).unsqueeze(1)


def _one_hot(y, eps):
    off = eps / K
    return torch.full((y.shape[0], K), off, device=y.device).scatter_(1, y.view(-1, 1), 1 - eps + off)


def eager_mixup(x, y, alpha, mode):
    """Plain torch on the device: Beta lambdas from torch.distributions, three passes."""
    B = x.shape[0]
    n = 1 if mode == "batch" else B
    a = torch.full((n,), alpha, device=x.device)
    lam = torch.distributions.Beta(a, a).sample()
    if mode == "pair":
        lam = torch.minimum(lam, lam.flip(0))  # one value per partner pair
    lam = lam.expand(B).to(x.dtype)
    out = x * lam.view(-1, 1, 1, 1) + x.flip(0) * (1 - lam).view(-1, 1, 1, 1)
    t = _one_hot(y, SMOOTH)
    return out, t * lam.view(-1, 1).float() + t.flip(0) * (1 - lam.view(-1, 1).float())


def eager_cutmix(x, y, alpha, mode):
    """Plain torch on the device: per-sample boxes from device draws, one where() pass."""
    B, _, H, W = x.shape
    n = 1 if mode == "batch" else B
    a = torch.full((n,), alpha, device=x.device)
    lam = torch.distributions.Beta(a, a).sample().expand(B)
    side = torch.sqrt(1 - lam)
    ch, cw = (H * side).long(), (W * side).long()
    cy = torch.randint(0, H, (n,), device=x.device).expand(B)
    cx = torch.randint(0, W, (n,), device=x.device).expand(B)
    y0, y1 = (cy - ch // 2).clamp(0, H), (cy + (ch + 1) // 2).clamp(0, H)
    x0, x1 = (cx - cw // 2).clamp(0, W), (cx + (cw + 1) // 2).clamp(0, W)
    out = torch.where(_box_mask(y0, y1, x0, x1, H, W), x.flip(0), x)
    lam = 1 - ((y1 - y0) * (x1 - x0)).float() / (H * W)
    t = _one_hot(y, SMOOTH)
    return out, t * lam.view(-1, 1) + t.flip(0) * (1 - lam.view(-1, 1))


def eager_cutout(x, size):
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), device=x.device)
    cx = torch.randint(0, W, (B,), device=x.device)
    mask = _box_mask((cy - size // 2).clamp(0, H), (cy + size - size // 2).clamp(0, H),
                     (cx - size // 2).clamp(0, W), (cx + size - size // 2).clamp(0, W), H, W)  # fmt: skip
    return x.masked_fill_(mask, 0.0)


def eager_random_erasing(x):
    """One attempt per sample (area and log-aspect on the device), clamped to the image."""
    B, _, H, W = x.shape
    area = torch.empty(B, device=x.device).uniform_(0.02, 0.33) * H * W
    ratio = torch.exp(torch.empty(B, device=x.device).uniform_(-1.2040, 1.1939))
    h = torch.sqrt(area * ratio).round().long().clamp(1, H - 1)
    w = torch.sqrt(area / ratio).round().long().clamp(1, W - 1)
    y0 = (torch.rand(B, device=x.device) * (H - h + 1)).long()
    x0 = (torch.rand(B, device=x.device) * (W - w + 1)).long()
    return x.masked_fill_(_box_mask(y0, y0 + h, x0, x0 + w, H, W), 0.0)


def _box_bytes(boxes, C, e, reads=1):
    apply, y0, y1, x0, x1 = boxes
    area = ((y1 - y0) * (x1 - x0) * apply.long()).sum().item()
    return int(area * C * e * reads)


def _box_rows(x, seed, TimmErasing, v2):
    """(op, floor, impls, note) of cutout and random erasing, in place on the batch x."""
    B, C, H, W = x.shape
    e = x.element_size()
    # cutout in place (size H/4): only the boxes are written
    size = H // 4
    floor = _box_bytes(_random.cutout_boxes(seed, B, H, W, size, 1.0), C, e)
    cutout = {
        "fastreg": lambda: FR.cutout(x, size, inplace=True),
        "eager": lambda: eager_cutout(x, size),
    }
    rows = [("cutout_", floor, cutout, "in place; floor = box bytes")]
    # random erasing in place, p = 1
    floor = _box_bytes(_random.erase_boxes(seed, B, H, W, 1.0, 0.02, 0.33, -1.2040, 1.1939), C, e)
    impls = {
        "fastreg": lambda: FR.random_erasing(x, 1.0, inplace=True),
        "eager": lambda: eager_random_erasing(x),
    }
    if TimmErasing is not None:
        te = TimmErasing(probability=1.0, mode="const", device=x.device)
        impls["timm"] = lambda te=te: te(x)
    if v2 is not None:
        tv = v2.RandomErasing(p=1.0, value=0)
        impls["torchvision"] = lambda tv=tv: tv(x)
    rows.append(
        ("random_erasing_", floor, impls, "in place; floor = box bytes; torchvision: one box per batch")
    )
    return rows


def _mix_rows(x, y, mode, seed, TimmMixup, v2):
    """(op, floor, impls, note) of mixup, cutmix (in place) and fastreg.nn.Mixup in one mode."""
    B, C, H, W = x.shape
    e, N = x.element_size(), x.numel()

    def timm_mixup(mixup_alpha, cutmix_alpha):
        tm = TimmMixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            mode=mode,
            label_smoothing=SMOOTH,
            num_classes=K,
        )
        return lambda: tm(x, y)

    def bound(module):
        return lambda: module(x, y)

    # mixup: 2N (pairs read together, written together)
    impls = {
        "fastreg": lambda: FR.mixup(x, y, 1.0, num_classes=K, label_smoothing=SMOOTH, mode=mode),
        "eager": lambda: eager_mixup(x, y, 1.0, mode),
    }
    if TimmMixup is not None:
        impls["timm"] = timm_mixup(1.0, 0.0)
    if v2 is not None and mode == "batch":
        impls["torchvision"] = bound(v2.MixUp(alpha=1.0, num_classes=K))
    rows = [(f"mixup {mode}", 2 * N * e, impls, "")]
    # cutmix in place: the boxes (read from the partner, written)
    draws = _random.mix_draws(seed, B, H, W, _random.MIX_MODES[mode], 0.0, 1.0, None, 1.0, 0.5, True)
    boxes = (draws[2] == _random.KIND_CUT, *draws[3:])
    impls = {
        "fastreg": lambda: FR.cutmix(
            x, y, 1.0, num_classes=K, label_smoothing=SMOOTH, mode=mode, inplace=True
        ),
        "eager": lambda: eager_cutmix(x, y, 1.0, mode),
    }
    if TimmMixup is not None:
        impls["timm"] = timm_mixup(0.0, 1.0)
    if v2 is not None and mode == "batch":
        impls["torchvision"] = bound(v2.CutMix(alpha=1.0, num_classes=K))
    rows.append((f"cutmix_ {mode}", _box_bytes(boxes, C, e, reads=2), impls, "in place; floor = box bytes"))
    # timm's default recipe (mixup 0.8, cutmix 1.0, switch 0.5): fastreg.nn.Mixup vs timm.Mixup
    fm = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=SMOOTH, num_classes=K)
    impls = {"fastreg": lambda: fm(x, y)}
    if TimmMixup is not None:
        impls["timm"] = timm_mixup(0.8, 1.0)
    rows.append((f"Mixup {mode}", 2 * N * e, impls, "mixup .8 / cutmix 1 / switch .5"))
    return rows


def cases(device, dtypes, numel, compile_ops):
    on_gpu = torch.device(device).type == "cuda"
    B, C, H, W = (256, 3, 224, 224) if on_gpu else (64, 3, 64, 64)
    TimmMixup, TimmErasing = _timm()
    v2 = _tv2()
    seed = 1234
    out = []
    for dtype in dtypes:
        dt = str(dtype).replace("torch.", "")
        x = torch.rand(B, C, H, W, device=device, dtype=dtype)
        y = torch.randint(0, K, (B,), device=device)
        rows = _box_rows(x, seed, TimmErasing, v2)
        for mode in ("batch", "pair", "elem"):
            rows += _mix_rows(x, y, mode, seed, TimmMixup, v2)
        for op, floor, impls, note in rows:
            out.append(Case("batch", op, "fwd", dt, x.numel(), int(floor), impls, {}, note))
    return out
