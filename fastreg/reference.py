"""Plain-PyTorch references: the executable specification of every fastreg op.

Same names and signatures as ``fastreg.functional``. Half types compute in
float32 and round once, as the kernels do.
"""

import math

import torch

from ._activations import TABLE as ACTIVATIONS
from ._random import (
    KIND_BLEND,
    KIND_CUT,
    MIX_MODES,
    STREAM_ELEMENT,
    STREAM_ERASE_VALUE,
    STREAM_SAMPLE,
    batch_skips,
    check_p,
    check_seed_tensor,
    cutout_boxes,
    erase_boxes,
    keep_count,
    keep_threshold,
    memory_index,
    mix_draws,
    normals,
    philox_words,
    seed_tensor,
    subset_indices,
)

__all__ = [
    *ACTIVATIONS, "prelu",
    "dropout", "alpha_dropout", "bias_act_dropout", "dropout_add", "drop_path", "stochastic_depth",
    "dropconnect_linear",
    "cutout", "random_erasing", "mixup", "cutmix",
]  # fmt: skip


def _opmath(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _finish(input, y, inplace=False):
    y = y.to(input.dtype)
    return input.copy_(y) if inplace else y


# --- activations: each row's formula (fastreg/_activations.py) in opmath, rounded once -----


def _make_activation(row):
    """The reference of an activation row, with fastreg.functional's signature."""
    p, inplace = row.param, row.inplace
    sig = "input" + (f", {p}={row.default!r}" if p else "") + (", inplace=False" if inplace else "")
    args = f", {p}" if p else ""
    src = (
        f"def {row.name}({sig}):\n"
        f"    return _finish(input, formula(_opmath(input){args}){', inplace' if inplace else ''})\n"
    )
    namespace = {"_finish": _finish, "_opmath": _opmath, "formula": row.formula}
    exec(src, namespace)  # noqa: S102  (generated from the table)
    fn = namespace[row.name]
    fn.__module__ = __name__
    fn.__doc__ = f"``{row.name}``: {row.summary}, in plain torch (float32 for the half types)."
    return fn


for _row in ACTIVATIONS.values():
    globals()[_row.name] = _make_activation(_row)


def prelu(input, weight):
    x, w = _opmath(input), _opmath(weight)
    if w.numel() > 1:  # one weight per channel, channels on dim 1
        w = w.reshape([1, -1] + [1] * (x.dim() - 2))
    return _finish(input, torch.where(x > 0, x, w * x))


# --- dropout family: the same bits as the kernels (fastreg/_random.py, csrc/philox.h) ---------

ALPHA_DROPOUT_ALPHA = 1.7580993408473766


def _seed(like, generator, seed, fn, positioned=True):
    """The seed tensor of a draw: ``seed`` may also be a seed tensor, used as given; for the
    dropout family a positioned one too (a shard's: fastreg.distributed), for the box ops a
    shard of samples' [seed, first] (positioned="samples"), for the others none."""
    if isinstance(seed, torch.Tensor):
        check_seed_tensor(seed, fn)
        if seed.numel() > 1 and not (positioned is True or (positioned == "samples" and seed.numel() == 2)):
            raise TypeError(f"fastreg.{fn}: seed must be a one-element int64 tensor")
        return seed
    return seed_tensor(like, generator, seed, fn)


def _draw_index(input, seed):
    """Each element's draw index (csrc/dropout_ops.h draw_order): its dense memory position;
    for a shard's positioned seed its row-major position, except for an offset along dim 0
    only, which keeps a dense layout whose samples are outermost."""
    if isinstance(seed, torch.Tensor) and seed.numel() > 1:
        dense = torch.empty_like(input)  # the layout memory_index walks
        few = dense.dim() == 0 or dense.shape[0] <= 1
        outermost = few or dense.stride(0) * dense.shape[0] == dense.numel()
        if seed.numel() > 2 or not outermost:
            return torch.arange(input.numel(), device=input.device).reshape(input.shape)
    return memory_index(input)


def keep_mask(input, seed, p, stream=STREAM_ELEMENT):
    """Bool tensor shaped like input: True where the element is kept."""
    words = philox_words(seed, stream, _draw_index(input, seed))
    return words >= keep_threshold(p)


def _scalar(value, like):
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _inverted_scale(p):
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0  # p = 1 keeps nothing


def _dropped(input, seed, p):
    """where(keep, x * 1/(1-p), 0) in opmath."""
    x = _opmath(input)
    keep = keep_mask(input, seed, p)
    return torch.where(keep, x * _scalar(_inverted_scale(p), x), _scalar(0.0, x))


def _dropout_with_seed(input, seed, p):
    return _finish(input, _dropped(input, seed, p))


def dropout(input, p=0.5, training=True, inplace=False, *, generator=None, seed=None):
    p = check_p(p, "dropout")
    if not training or p == 0.0:
        return input
    y = _dropout_with_seed(input, _seed(input, generator, seed, "dropout"), p)
    return input.copy_(y) if inplace else y


def alpha_dropout(input, p=0.5, training=False, inplace=False, *, generator=None, seed=None):
    """torch's alpha dropout: kept x -> a*x + alpha*a*p, dropped -> -alpha*a*(1-p)."""
    p = check_p(p, "alpha_dropout")
    if not training or p == 0.0:
        return input
    s = _seed(input, generator, seed, "alpha_dropout")
    x = _opmath(input)
    A = ALPHA_DROPOUT_ALPHA
    a = 1.0 / math.sqrt((A * A * p + 1.0) * (1.0 - p)) if p < 1.0 else 0.0  # p = 1: zeros
    keep = keep_mask(input, s, p)
    kept = x * _scalar(a, x) + _scalar(A * a * p, x)
    return _finish(input, torch.where(keep, kept, _scalar(-A * a * (1.0 - p), x)), inplace)


def bias_act_param(activation, negative_slope, alpha, approximate):
    """The activation's argument among bias_act_dropout's (csrc/activation_registry.h), as a
    tuple of zero or one value."""
    p = ACTIVATIONS[activation].param
    return (
        ()
        if p is None
        else ({"negative_slope": negative_slope, "alpha": alpha, "approximate": approximate}[p],)
    )


def bias_act_dropout(
    input, bias=None, activation="relu", p=0.0, training=True, *,
    negative_slope=0.01, alpha=1.0, approximate="none", generator=None, seed=None,
):  # fmt: skip
    p = check_p(p, "bias_act_dropout")
    if not training:
        p = 0.0
    s = _seed(input, generator, seed, "bias_act_dropout") if p > 0 else None
    z = _opmath(input) + (_opmath(bias) if bias is not None else 0)
    a = ACTIVATIONS[activation].formula(z, *bias_act_param(activation, negative_slope, alpha, approximate))
    if p == 0.0:
        return _finish(input, a)
    keep = keep_mask(input, s, p)
    return _finish(input, torch.where(keep, a * _scalar(_inverted_scale(p), a), _scalar(0.0, a)))


def dropout_add(input, residual, p=0.5, training=True, *, generator=None, seed=None):
    p = check_p(p, "dropout_add")
    if not training or p == 0.0:
        return residual + input
    s = _seed(input, generator, seed, "dropout_add")
    return _finish(input, _opmath(residual) + _dropped(input, s, p))  # one rounding, in opmath


def drop_path(input, p=0.0, training=False, *, residual=None, scale_by_keep=True, generator=None, seed=None):
    p = check_p(p, "drop_path")
    if not training or p == 0.0:
        return input if residual is None else residual + input
    s = _seed(input, generator, seed, "drop_path")
    x = _opmath(input)
    samples = input.shape[0] if input.dim() > 0 else 1
    words = philox_words(s, STREAM_SAMPLE, torch.arange(samples, device=input.device))
    keep = words >= keep_threshold(p)
    scale = 1.0 / (1.0 - p) if (scale_by_keep and p < 1.0) else 1.0
    factor = torch.where(keep, _scalar(scale, x), _scalar(0.0, x)).reshape((-1,) + (1,) * (x.dim() - 1))
    y = x * factor
    if residual is not None:
        y = _opmath(residual) + y
    return _finish(input, y)


def stochastic_depth(
    input,
    branch,
    p=0.0,
    training=False,
    *,
    mode="row",
    residual=None,
    scale_by_keep=True,
    generator=None,
    seed=None,
):
    """The branch runs on the samples fastreg.functional.stochastic_depth picks (row mode:
    ``_random.subset_indices``; batch mode: ``_random.batch_skips``); its output is placed
    in a zero tensor at those rows, scaled, and added to the residual."""
    p = check_p(p, "stochastic_depth")
    res = input if residual is None else residual
    if not training or p == 0.0:
        return res + branch(input)
    if p == 1.0 or (mode == "batch" and batch_skips(p, generator, seed, "stochastic_depth")):
        return res.clone()
    if mode == "batch":
        return res + branch(input) * (1.0 / (1.0 - p) if scale_by_keep else 1.0)
    B = input.shape[0]
    k = keep_count(B, p)
    if k >= B:
        return res + branch(input)
    s = _seed(input, generator, seed, "stochastic_depth", positioned=False)
    rows = subset_indices(s, B, k, input.device)
    y = branch(input[rows])
    placed = torch.zeros((B, *y.shape[1:]), dtype=y.dtype, device=y.device).index_copy(0, rows, y)
    return res + placed * (B / k if scale_by_keep else 1.0)


def dropconnect_linear(input, weight, bias=None, p=0.5, training=True, *, generator=None, seed=None):
    p = check_p(p, "dropconnect_linear")
    if not training or p == 0.0:
        return torch.nn.functional.linear(input, weight, bias)
    s = _seed(input, generator, seed, "dropconnect_linear")
    return torch.nn.functional.linear(input, _dropout_with_seed(weight, s, p), bias)


def _box_mask(apply, y0, y1, x0, x1, H, W, device):
    """(B, 1, H, W) bool: inside each sample's box."""
    B = apply.shape[0]
    rows = torch.arange(H, device=device).view(1, H, 1)
    cols = torch.arange(W, device=device).view(1, 1, W)
    inside = apply.view(B, 1, 1) & (rows >= y0.view(B, 1, 1)) & (rows < y1.view(B, 1, 1))
    return (inside & (cols >= x0.view(B, 1, 1)) & (cols < x1.view(B, 1, 1))).unsqueeze(1)


def cutout(images, size, p=1.0, *, fill=0.0, inplace=False, generator=None, seed=None):
    s = _seed(images, generator, seed, "cutout", positioned="samples")
    B, _, H, W = images.shape
    boxes = cutout_boxes(s, B, H, W, size, p, images.device)
    inside = _box_mask(*boxes, H, W, images.device)
    out = torch.where(inside, torch.tensor(fill, dtype=images.dtype, device=images.device), images)
    return images.copy_(out) if inplace else out


def random_erasing(
    images,
    p=0.5,
    scale=(0.02, 0.33),
    ratio=(0.3, 3.3),
    *,
    value=0.0,
    inplace=False,
    generator=None,
    seed=None,
):
    s = _seed(images, generator, seed, "random_erasing", positioned="samples")
    B, _, H, W = images.shape
    boxes = erase_boxes(
        s, B, H, W, p, scale[0], scale[1], math.log(ratio[0]), math.log(ratio[1]), images.device
    )
    inside = _box_mask(*boxes, H, W, images.device)
    if isinstance(value, str):  # 'random': the normal of each element's memory position
        index = memory_index(images)
        if s.numel() > 1:  # a shard of samples: its offsets in the whole batch
            index = index + s[1] * torch.empty_like(images).stride(0)
        fill = normals(s, STREAM_ERASE_VALUE, index).to(images.dtype)
    else:
        fill = torch.tensor(value, dtype=images.dtype, device=images.device)
    out = torch.where(inside, fill, images)
    return images.copy_(out) if inplace else out


def _smooth(target, num_classes, eps):
    """Label-smoothed targets in float32 (indices) or the targets' opmath (probabilities)."""
    if target.dim() == 1:
        off, on = eps / num_classes, 1.0 - eps + eps / num_classes
        hot = torch.nn.functional.one_hot(target.long(), num_classes).bool()
        f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=target.device)  # noqa: E731
        return torch.where(hot, f32(on), f32(off))
    t = _opmath(target)
    return t * _scalar(1.0 - eps, t) + _scalar(eps / num_classes, t)


def mix_pixels(images, lam, kind, y0, y1, x0, x1):
    """The images mixed with each sample's draw (lambda, kind, box rows y0:y1 and columns
    x0:x1; float64 lambda, any number type for the rest, e.g. the columns of fastreg::mix's
    params): x_i outside a cut box, the partner's x_{B-1-i} inside it, or the blend
    x_i * lam + x_p * (1 - lam), each factor rounded to the images' opmath type. Also
    mix_backward's own gradient (fastreg/_autograd.py): the map whose transpose it applies."""
    B, _, H, W = images.shape
    x = _opmath(images)
    xp = x.flip(0)
    view = (B, 1, 1, 1)
    blend = x * lam.to(x.dtype).view(view) + xp * (1.0 - lam).to(x.dtype).view(view)
    inside = _box_mask(kind == KIND_CUT, y0, y1, x0, x1, H, W, images.device)
    return torch.where((kind == KIND_BLEND).view(view), blend, torch.where(inside, xp, x)).to(images.dtype)


def mix(
    images,
    target,
    *,
    num_classes=None,
    label_smoothing=0.0,
    mixup_alpha=1.0,
    cutmix_alpha=0.0,
    cutmix_minmax=None,
    prob=1.0,
    switch_prob=0.5,
    mode="batch",
    correct_lam=True,
    inplace=False,
    generator=None,
    seed=None,
):
    """The op behind mixup, cutmix and fastreg.nn.Mixup: each sample's draw from
    ``_random.mix_draws``, then ``x_i``, the partner's pixels in the box, or the blend."""
    s = _seed(images, generator, seed, "mixup", positioned=False)
    B, _, H, W = images.shape
    num_classes = target.shape[1] if num_classes is None else num_classes
    lam, lam_t, kind, y0, y1, x0, x1 = mix_draws(
        s, B, H, W, MIX_MODES[mode], mixup_alpha, cutmix_alpha, cutmix_minmax, prob, switch_prob,
        correct_lam, images.device,
    )  # fmt: skip
    out = mix_pixels(images, lam, kind, y0, y1, x0, x1)
    y = _smooth(target, num_classes, label_smoothing)
    soft = y * lam_t.to(y.dtype).view(B, 1) + y.flip(0) * (1.0 - lam_t).to(y.dtype).view(B, 1)
    soft = soft.to(torch.float32 if target.dim() == 1 else target.dtype)
    return (images.copy_(out) if inplace else out), soft


def mixup(
    images,
    target,
    alpha=1.0,
    *,
    num_classes=None,
    label_smoothing=0.0,
    mode="batch",
    inplace=False,
    generator=None,
    seed=None,
):
    return mix(
        images, target, num_classes=num_classes, label_smoothing=label_smoothing, mixup_alpha=alpha,
        cutmix_alpha=0.0, prob=1.0, switch_prob=0.0, mode=mode, inplace=inplace, generator=generator,
        seed=seed,
    )  # fmt: skip


def cutmix(
    images,
    target,
    alpha=1.0,
    *,
    num_classes=None,
    label_smoothing=0.0,
    mode="batch",
    correct_lam=True,
    inplace=False,
    generator=None,
    seed=None,
):
    return mix(
        images, target, num_classes=num_classes, label_smoothing=label_smoothing, mixup_alpha=0.0,
        cutmix_alpha=alpha, prob=1.0, switch_prob=0.0, mode=mode, correct_lam=correct_lam, inplace=inplace,
        generator=generator, seed=seed,
    )  # fmt: skip
