"""Fake (meta) kernels and autograd formulas of every fastreg op.

Each op's whole life is on one screen: the fake kernel that tells torch.compile
the output's shape and layout, what setup_context saves for backward (DESIGN §4),
and the backward, written with fastreg's own backward ops.
"""

import torch
from torch.library import register_autograd, register_fake

ops = torch.ops.fastreg


def _like_layout(grad, stride):
    """grad laid out with the forward output's strides (mask order is memory order)."""
    if all(s == r or n <= 1 for n, s, r in zip(grad.shape, grad.stride(), stride, strict=True)):
        return grad
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


# --- activations that save their output or their input --------------------------------------
# name -> True when backward takes the output, False when it takes the input.
SAVES_OUTPUT = {
    "sigmoid": True,
    "tanh": True,
    "elu": True,
    "selu": True,
    "gelu": False,
    "silu": False,
}


def _register_saved(name, saves_output):
    backward_op = getattr(ops, name + "_backward").default

    @register_fake(f"fastreg::{name}")
    def _fake(input, *params):
        return torch.empty_like(input)

    @register_fake(f"fastreg::{name}_backward")
    def _fake_backward(grad, saved, *params):
        return torch.empty_like(saved)

    def setup_context(ctx, inputs, output):
        ctx.params = inputs[1:]
        ctx.save_for_backward(output if saves_output else inputs[0])

    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        return (backward_op(grad, saved, *ctx.params),) + (None,) * len(ctx.params)

    register_autograd(f"fastreg::{name}", backward, setup_context=setup_context)


for _name, _saves_output in SAVES_OUTPUT.items():
    _register_saved(_name, _saves_output)


# --- relu and leaky_relu: a 1-bit mask ----------------------------------------------------
def _register_mask(name):
    backward_op = getattr(ops, name + "_backward").default

    @register_fake(f"fastreg::{name}")
    def _fake(input, *params_and_save_mask):
        save_mask = params_and_save_mask[-1]
        nbytes = (input.numel() + 7) // 8 if save_mask else 0
        return torch.empty_like(input), input.new_empty((nbytes,), dtype=torch.uint8)

    @register_fake(f"fastreg::{name}_backward")
    def _fake_backward(grad, mask, *params):
        return torch.empty_like(grad)

    def setup_context(ctx, inputs, output):
        y, mask = output
        ctx.params = inputs[1:-1]
        ctx.stride = y.stride()
        ctx.save_for_backward(mask)

    def backward(ctx, grad, _grad_mask):
        (mask,) = ctx.saved_tensors
        grad = _like_layout(grad, ctx.stride)
        return (backward_op(grad, mask, *ctx.params),) + (None,) * (len(ctx.params) + 1)

    register_autograd(f"fastreg::{name}", backward, setup_context=setup_context)


for _name in ("relu", "leaky_relu"):
    _register_mask(_name)


# --- prelu: saves the input (and references its weight) -----------------------------------
@register_fake("fastreg::prelu")
def _prelu_fake(input, weight):
    return torch.empty_like(input)


@register_fake("fastreg::prelu_backward")
def _prelu_backward_fake(grad, input, weight):
    return torch.empty_like(input), torch.empty_like(weight, memory_format=torch.contiguous_format)


def _prelu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _prelu_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    return ops.prelu_backward(grad, input, weight)


register_autograd("fastreg::prelu", _prelu_backward, setup_context=_prelu_setup)
