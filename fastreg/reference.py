"""Plain-PyTorch references: the executable specification of every fastreg op.

Same names and signatures as ``fastreg.functional``. Half types compute in
float32 and round once, as the kernels do.
"""

import math

import torch

from ._random import (
    KIND_BLEND,
    KIND_CUT,
    MIX_MODES,
    STREAM_ELEMENT,
    STREAM_ERASE_VALUE,
    STREAM_SAMPLE,
    check_p,
    cutout_boxes,
    erase_boxes,
    keep_threshold,
    memory_index,
    mix_draws,
    normals,
    philox_words,
    seed_tensor,
)

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu",
    "dropout", "alpha_dropout", "bias_act_dropout", "dropout_add", "drop_path", "dropconnect_linear",
    "cutout", "random_erasing", "mixup", "cutmix",
]  # fmt: skip

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _opmath(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _finish(input, y, inplace=False):
    y = y.to(input.dtype)
    return input.copy_(y) if inplace else y


def sigmoid(input):
    # torch.sigmoid, not 1 / (1 + exp(-x)): that quotient's derivative, exp(-x) / (1 + exp(-x))^2,
    # is inf / inf = NaN where exp(-x) overflows (x < -88 in float32), and torch.func transforms
    # and forward AD differentiate this reference (fastreg.functional)
    return _finish(input, torch.sigmoid(_opmath(input)))


def tanh(input):
    return _finish(input, torch.tanh(_opmath(input)))


def relu(input, inplace=False):
    x = _opmath(input)
    return _finish(input, torch.where(x <= 0, torch.zeros_like(x), x), inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    x = _opmath(input)
    return _finish(input, torch.where(x > 0, x, x * negative_slope), inplace)


def prelu(input, weight):
    x, w = _opmath(input), _opmath(weight)
    if w.numel() > 1:  # one weight per channel, channels on dim 1
        w = w.reshape([1, -1] + [1] * (x.dim() - 2))
    return _finish(input, torch.where(x > 0, x, w * x))


def _expm1_neg(x):
    """expm1(min(x, 0)), as the kernels compute ELU's negative branch: where x > 0 selects the
    other branch, this one's derivative is then exp(0) = 1 rather than exp(x), which overflows
    to inf for large x and makes the unselected branch's zero gradient 0 * inf = NaN."""
    return torch.expm1(torch.where(x > 0, torch.zeros_like(x), x))  # (clamp passes no gradient at 0)


def elu(input, alpha=1.0, inplace=False):
    x = _opmath(input)
    return _finish(input, torch.where(x > 0, x, alpha * _expm1_neg(x)), inplace)


def selu(input, inplace=False):
    x = _opmath(input)
    return _finish(input, SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * _expm1_neg(x)), inplace)


def gelu(input, approximate="none"):
    x = _opmath(input)
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return _finish(input, 0.5 * x * (1 + torch.tanh(inner)))
    return _finish(input, 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))


def silu(input, inplace=False):
    x = _opmath(input)
    return _finish(input, x * torch.sigmoid(x), inplace)  # (not x / (1 + exp(-x)): see sigmoid)


# --- dropout family: the same bits as the kernels (fastreg/_random.py, csrc/philox.h) ---------

ALPHA_DROPOUT_ALPHA = 1.7580993408473766


def keep_mask(input, seed, p, stream=STREAM_ELEMENT):
    """Bool tensor shaped like input: True where the element is kept."""
    words = philox_words(seed, stream, memory_index(input))
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
    y = _dropout_with_seed(input, seed_tensor(input, generator, seed, "dropout"), p)
    return input.copy_(y) if inplace else y


def alpha_dropout(input, p=0.5, training=False, inplace=False, *, generator=None, seed=None):
    """torch's alpha dropout: kept x -> a*x + alpha*a*p, dropped -> -alpha*a*(1-p)."""
    p = check_p(p, "alpha_dropout")
    if not training or p == 0.0:
        return input
    s = seed_tensor(input, generator, seed, "alpha_dropout")
    x = _opmath(input)
    A = ALPHA_DROPOUT_ALPHA
    a = 1.0 / math.sqrt((A * A * p + 1.0) * (1.0 - p)) if p < 1.0 else 0.0  # p = 1: zeros
    keep = keep_mask(input, s, p)
    kept = x * _scalar(a, x) + _scalar(A * a * p, x)
    return _finish(input, torch.where(keep, kept, _scalar(-A * a * (1.0 - p), x)), inplace)


def bias_act_dropout(
    input, bias=None, activation="relu", p=0.0, training=True, *,
    negative_slope=0.01, alpha=1.0, approximate="none", generator=None, seed=None,
):  # fmt: skip
    p = check_p(p, "bias_act_dropout")
    if not training:
        p = 0.0
    s = seed_tensor(input, generator, seed, "bias_act_dropout") if p > 0 else None
    z = _opmath(input) + (_opmath(bias) if bias is not None else 0)
    kwargs = {"leaky_relu": {"negative_slope": negative_slope}, "elu": {"alpha": alpha},
              "gelu": {"approximate": approximate}}.get(activation, {})  # fmt: skip
    a = globals()[activation](z, **kwargs)
    if p == 0.0:
        return _finish(input, a)
    keep = keep_mask(input, s, p)
    return _finish(input, torch.where(keep, a * _scalar(_inverted_scale(p), a), _scalar(0.0, a)))


def dropout_add(input, residual, p=0.5, training=True, *, generator=None, seed=None):
    p = check_p(p, "dropout_add")
    if not training or p == 0.0:
        return residual + input
    s = seed_tensor(input, generator, seed, "dropout_add")
    return _finish(input, _opmath(residual) + _dropped(input, s, p))  # one rounding, in opmath


def drop_path(input, p=0.0, training=False, *, residual=None, scale_by_keep=True, generator=None, seed=None):
    p = check_p(p, "drop_path")
    if not training or p == 0.0:
        return input if residual is None else residual + input
    s = seed_tensor(input, generator, seed, "drop_path")
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


def dropconnect_linear(input, weight, bias=None, p=0.5, training=True, *, generator=None, seed=None):
    p = check_p(p, "dropconnect_linear")
    if not training or p == 0.0:
        return torch.nn.functional.linear(input, weight, bias)
    s = seed_tensor(input, generator, seed, "dropconnect_linear")
    return torch.nn.functional.linear(input, _dropout_with_seed(weight, s, p), bias)


def _box_mask(apply, y0, y1, x0, x1, H, W, device):
    """(B, 1, H, W) bool: inside each sample's box."""
    B = apply.shape[0]
    rows = torch.arange(H, device=device).view(1, H, 1)
    cols = torch.arange(W, device=device).view(1, 1, W)
    inside = apply.view(B, 1, 1) & (rows >= y0.view(B, 1, 1)) & (rows < y1.view(B, 1, 1))
    return (inside & (cols >= x0.view(B, 1, 1)) & (cols < x1.view(B, 1, 1))).unsqueeze(1)


def cutout(images, size, p=1.0, *, fill=0.0, inplace=False, generator=None, seed=None):
    s = seed_tensor(images, generator, seed, "cutout")
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
    s = seed_tensor(images, generator, seed, "random_erasing")
    B, _, H, W = images.shape
    boxes = erase_boxes(
        s, B, H, W, p, scale[0], scale[1], math.log(ratio[0]), math.log(ratio[1]), images.device
    )
    inside = _box_mask(*boxes, H, W, images.device)
    if isinstance(value, str):  # 'random': the normal of each element's memory position
        fill = normals(s, STREAM_ERASE_VALUE, memory_index(images)).to(images.dtype)
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
    s = seed_tensor(images, generator, seed, "mixup")
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
