"""The public functions: the names, arguments and defaults of ``torch.nn.functional``.

Scalars and tensor arguments are validated here, before anything is launched,
with errors that name the argument; the kernels check again (TORCH_CHECK).
"""

import numbers

import torch

ops = torch.ops.fastreg

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu"]


def _check_float(t, fn, arg="input"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastreg.{fn}: {arg} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fastreg.{fn}: {arg} must be a float32, float64, float16 or bfloat16 tensor, got {t.dtype}"
        )


def _check_number(value, fn, arg):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fastreg.{fn}: {arg} must be a real number, got {type(value).__name__}")
    return float(value)


def _needs_grad(t):
    return torch.is_grad_enabled() and t.requires_grad


def _maybe_inplace(input, y, inplace):
    # In-place keeps torch's semantics (the input tensor holds the result);
    # the kernel still writes a fresh tensor, then one copy.
    return input.copy_(y) if inplace else y


def sigmoid(input):
    _check_float(input, "sigmoid")
    return ops.sigmoid(input)


def tanh(input):
    _check_float(input, "tanh")
    return ops.tanh(input)


def relu(input, inplace=False):
    _check_float(input, "relu")
    y, _ = ops.relu(input, _needs_grad(input))
    return _maybe_inplace(input, y, inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    _check_float(input, "leaky_relu")
    slope = _check_number(negative_slope, "leaky_relu", "negative_slope")
    y, _ = ops.leaky_relu(input, slope, _needs_grad(input))
    return _maybe_inplace(input, y, inplace)


def prelu(input, weight):
    _check_float(input, "prelu")
    _check_float(weight, "prelu", "weight")
    if weight.dtype != input.dtype:
        raise TypeError(f"fastreg.prelu: weight has dtype {weight.dtype} but input has {input.dtype}")
    if weight.device != input.device:
        raise RuntimeError(f"fastreg.prelu: weight is on {weight.device} but input is on {input.device}")
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.dim() > 1 or weight.numel() not in (1, channels):
        raise ValueError(
            f"fastreg.prelu: weight must have 1 or input.size(1) = {channels} elements in at most "
            f"one dimension, got shape {tuple(weight.shape)}"
        )
    return ops.prelu(input, weight)


def elu(input, alpha=1.0, inplace=False):
    _check_float(input, "elu")
    alpha = _check_number(alpha, "elu", "alpha")
    if not alpha >= 0:
        raise ValueError(f"fastreg.elu: alpha must be >= 0 (backward uses the output), got {alpha}")
    return _maybe_inplace(input, ops.elu(input, alpha), inplace)


def selu(input, inplace=False):
    _check_float(input, "selu")
    return _maybe_inplace(input, ops.selu(input), inplace)


def gelu(input, approximate="none"):
    _check_float(input, "gelu")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"fastreg.gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return ops.gelu(input, approximate)


def silu(input, inplace=False):
    _check_float(input, "silu")
    if inplace and _needs_grad(input):
        # backward needs the input that in-place overwrites: save a copy of it,
        # as torch's in-place silu does
        return input.copy_(ops.silu(input.clone()))
    return _maybe_inplace(input, ops.silu(input), inplace)
