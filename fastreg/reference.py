"""Plain-PyTorch references: the executable specification of every fastreg op.

Same names and signatures as ``fastreg.functional``. Half types compute in
float32 and round once, as the kernels do.
"""

import math

import torch

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu"]

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
