"""Plain-PyTorch references: the executable specification of every fastreg op.

Same names and signatures as ``fastreg.functional``. Half types compute in
float32 and round once, as the kernels do.
"""

import math

import torch

from ._random import (
    STREAM_ELEMENT,
    STREAM_SAMPLE,
    check_p,
    cutout_boxes,
    keep_threshold,
    memory_index,
    philox_words,
    seed_tensor,
)

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu",
    "dropout", "alpha_dropout", "bias_act_dropout", "dropout_add", "drop_path", "dropconnect_linear",
    "cutout",
]  # fmt: skip

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _opmath(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _finish(input, y, inplace=False):
    y = y.to(input.dtype)
    return input.copy_(y) if inplace else y


def sigmoid(input):
    x = _opmath(input)
    return _finish(input, 1 / (1 + torch.exp(-x)))


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


def elu(input, alpha=1.0, inplace=False):
    x = _opmath(input)
    return _finish(input, torch.where(x > 0, x, alpha * torch.expm1(x)), inplace)


def selu(input, inplace=False):
    x = _opmath(input)
    return _finish(input, SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x)), inplace)


def gelu(input, approximate="none"):
    x = _opmath(input)
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return _finish(input, 0.5 * x * (1 + torch.tanh(inner)))
    return _finish(input, 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))


def silu(input, inplace=False):
    x = _opmath(input)
    return _finish(input, x / (1 + torch.exp(-x)), inplace)


# --- dropout family: the same bits as the kernels (fastreg/_random.py, csrc/philox.h) ---------

ALPHA_DROPOUT_ALPHA = 1.7580993408473766


def keep_mask(input, seed, p, stream=STREAM_ELEMENT):
    """Bool tensor shaped like input: True where the element is kept."""
    words = philox_words(int(seed.item()), stream, memory_index(input))
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
    words = philox_words(int(s.item()), STREAM_SAMPLE, torch.arange(samples, device=input.device))
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


def cutout(images, size, p=1.0, *, fill=0.0, inplace=False, generator=None, seed=None):
    s = seed_tensor(images, generator, seed, "cutout")
    B, _, H, W = images.shape
    apply, y0, y1, x0, x1 = cutout_boxes(int(s.item()), B, H, W, size, p, images.device)
    rows = torch.arange(H, device=images.device).view(1, H, 1)
    cols = torch.arange(W, device=images.device).view(1, 1, W)
    inside = apply.view(B, 1, 1) & (rows >= y0.view(B, 1, 1)) & (rows < y1.view(B, 1, 1))
    inside = inside & (cols >= x0.view(B, 1, 1)) & (cols < x1.view(B, 1, 1))
    out = torch.where(
        inside.unsqueeze(1), torch.tensor(fill, dtype=images.dtype, device=images.device), images
    )
    return images.copy_(out) if inplace else out
