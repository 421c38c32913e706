"""Fake (meta) kernels and autograd formulas of every fastreg op.

Each op's whole life is on one screen: the fake kernel that tells torch.compile
the output's shape and layout, what setup_context saves for backward (docs/design.md),
and the backward, written with fastreg's own backward ops. `_register_autograd`
registers each formula with torch.library and also wraps the same two functions in a
plain torch.autograd.Function (EAGER_AUTOGRAD), which fastreg.functional applies in
eager mode for its lower host time per call.
"""

import torch
from torch.library import register_autograd
from torch.library import register_fake as _register_fake

from . import _C
from ._activations import TABLE as ACTIVATIONS
from ._random import check_seed_tensor
from .reference import bias_act_param, mix_pixels

ops = torch.ops.fastreg


def check_same_device(name, arg_names, args):
    """The device check of the C++ kernels, for the Python-level kernels (fake, composite):
    every tensor argument on the first one's device, else a RuntimeError naming both."""
    first = None
    for arg, value in zip(arg_names, args, strict=False):
        if not isinstance(value, torch.Tensor):
            continue
        if first is None:
            first = (arg, value.device)
        elif value.device != first[1]:
            raise RuntimeError(f"fastreg.{name}: {arg} is on {value.device} but {first[0]} is on {first[1]}")


def register_fake(qualname):
    """torch.library.register_fake with the kernels' device check first: a meta tensor among
    CPU or CUDA ones dispatches to the fake kernel (Meta outranks both), which without the
    check returned meta tensors for a call that mixes devices instead of raising."""
    name = qualname.split("::")[1]
    arg_names = [a.name for a in getattr(ops, name).default._schema.arguments]

    def decorator(fn):
        def fake(*args, **kwargs):
            check_same_device(name, arg_names, args)
            return fn(*args, **kwargs)

        _register_fake(qualname, fake)
        return fn

    return decorator


# op packet and its default overload -> the op's typed entry below autograd (csrc/fastreg.cpp)
_ENTRIES = {}
for _name in dir(_C.below):
    if not _name.startswith("_"):
        _ENTRIES[getattr(ops, _name)] = _ENTRIES[getattr(ops, _name).default] = getattr(_C.below, _name)


def kernel(op, *args):
    """op(*args) below autograd: the kernel, with no autograd formula around it. Through
    the op's typed entry (fastreg._C.below: typed argument conversion and dispatcher handle,
    2-3 us less per call than torch.ops' boxed path) unless an argument or an active mode
    has a __torch_function__ (a tensor subclass, a TorchFunctionMode), which only torch.ops
    honours. Both go through the dispatcher, so dispatch modes and fake tensors see the op."""
    if torch.compiler.is_compiling():  # traced: the op itself (dynamo cannot trace an entry)
        return op(*args)
    entry = _ENTRIES.get(op)
    if entry is None or torch._C._has_torch_function(args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return entry(*args)


def _like_layout(grad, stride):
    """grad laid out with the forward output's strides (mask order is memory order)."""
    if grad.stride() == stride or all(
        s == r or n <= 1 for n, s, r in zip(grad.shape, grad.stride(), stride, strict=True)
    ):
        return grad
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


# op packet -> apply of a torch.autograd.Function holding the op's registered formula
EAGER_AUTOGRAD = {}
# op packet -> how many of the op's first outputs its eager Function returns, where not all
EAGER_OUTPUTS = {}
# op name -> (setup_context, backward): its formula, which the in-place forms reuse
FORMULAS = {}


def _bw(op, *args):
    """A backward op called from a first-order formula. With create_graph=True (grad mode
    on inside backward) through autograd, so that its own formula (the second-order ones
    at the end of this file) records the graph; otherwise straight to the kernel below
    autograd, skipping the library's Python autograd kernel that the op now has (a
    dispatcher round trip into Python: 7-10 us more per small training step when every
    backward op went through it, bench/host_path.py)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    return kernel(op, *args)


def _register_autograd(name, backward, setup_context, eager_outputs=None):
    """The op's autograd formula, registered with torch.library (what torch.compile traces,
    opcheck checks and direct ``torch.ops.fastreg`` calls use), and the same two functions
    as a plain ``torch.autograd.Function``, which ``fastreg.functional`` applies in eager
    mode: it skips the dispatcher's round trip into Python and the library wrapper's
    argument handling, about a third of a small training step's host time (bench/host_path.py).
    With `eager_outputs` = k, the Function returns only the op's first k outputs (the one
    the caller uses when k is 1; the others, a 1-bit mask or a per-sample record, are only
    saved for backward): each autograd output costs ~1.5 us of a small step's host time."""
    register_autograd(f"fastreg::{name}", backward, setup_context=setup_context)
    FORMULAS[name] = (setup_context, backward)
    op = getattr(ops, name).default

    if eager_outputs is None:

        def forward(ctx, *args):
            output = kernel(op, *args)  # the kernel, not the autograd kernel again
            setup_context(ctx, args, output)
            return output

        eager_backward = backward
    else:
        k, rest = eager_outputs, (None,) * (len(op._schema.returns) - eager_outputs)
        EAGER_OUTPUTS[getattr(ops, name)] = k

        def forward(ctx, *args):
            output = kernel(op, *args)
            setup_context(ctx, args, output)
            return output[0] if k == 1 else output[:k]

        def eager_backward(ctx, *grads):
            return backward(ctx, *grads, *rest)

    # forward(ctx, ...) form: a separate setup_context staticmethod would make every
    # apply bind the arguments through inspect.signature (~10 us per call)
    function = type(
        f"{name}_function",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(eager_backward)},
    )
    EAGER_AUTOGRAD[getattr(ops, name)] = function.apply


# --- activations (the table, fastreg/_activations.py) that save their output or input -------
# name -> True when backward takes the output, False when it takes the input.
SAVES_OUTPUT = {n: row.saves == "output" for n, row in ACTIVATIONS.items() if row.saves != "mask"}


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
        return (_bw(backward_op, grad, saved, *ctx.params),) + (None,) * len(ctx.params)

    _register_autograd(name, backward, setup_context)


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
        ctx.set_materialize_grads(False)  # no zero "gradient" of the uint8 mask output

    def backward(ctx, grad, _grad_mask):
        if grad is None:  # the output's gradient is undefined (grads are not materialized)
            return (None,) * (len(ctx.params) + 2)
        (mask,) = ctx.saved_tensors
        grad = _like_layout(grad, ctx.stride)
        return (_bw(backward_op, grad, mask, *ctx.params),) + (None,) * (len(ctx.params) + 1)

    _register_autograd(name, backward, setup_context, eager_outputs=1)


MASK_ACTIVATIONS = tuple(n for n, row in ACTIVATIONS.items() if row.saves == "mask")
for _name in MASK_ACTIVATIONS:
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
    return _bw(ops.prelu_backward.default, grad, input, weight)


_register_autograd("prelu", _prelu_backward, _prelu_setup)


# --- dropout family: the seed is saved, never a mask ---------------------------------------
@register_fake("fastreg::dropout")
def _dropout_fake(input, seed, p, alpha):
    return torch.empty_like(input)


@register_fake("fastreg::dropout_backward")
def _dropout_backward_fake(grad, seed, p, alpha):
    return torch.empty_like(grad)


def _dropout_setup(ctx, inputs, output):
    _, seed, ctx.p, ctx.alpha = inputs
    ctx.stride = output.stride()
    ctx.save_for_backward(seed)


def _dropout_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    grad = _like_layout(grad, ctx.stride)
    return _bw(ops.dropout_backward.default, grad, seed, ctx.p, ctx.alpha), None, None, None


_register_autograd("dropout", _dropout_backward, _dropout_setup)


@register_fake("fastreg::dropout_add")
def _dropout_add_fake(input, residual, seed, p):
    return torch.empty_like(input)


def _dropout_add_setup(ctx, inputs, output):
    _, _, seed, ctx.p = inputs
    ctx.stride = output.stride()
    ctx.save_for_backward(seed)


def _dropout_add_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    grad = _like_layout(grad, ctx.stride)
    # the residual's gradient is the incoming one itself: no copy
    return _bw(ops.dropout_backward.default, grad, seed, ctx.p, False), grad, None, None


_register_autograd("dropout_add", _dropout_add_backward, _dropout_add_setup)


@register_fake("fastreg::stochastic_depth_subset")
def _stochastic_depth_subset_fake(seed, batch, keep):
    if not (seed.dtype == torch.int64 and seed.numel() == 1):
        raise TypeError("fastreg.stochastic_depth_subset: seed must be a one-element int64 tensor")
    if not 0 <= keep <= batch:
        raise ValueError(
            f"fastreg.stochastic_depth_subset: keep must be in [0, batch], got {keep} of {batch}"
        )
    return seed.new_empty((keep,))


@register_fake("fastreg::drop_path")
def _drop_path_fake(input, residual, seed, p, scale_by_keep):
    return torch.empty_like(input)


@register_fake("fastreg::drop_path_backward")
def _drop_path_backward_fake(grad, seed, p, scale_by_keep):
    return torch.empty_like(grad)


def _drop_path_setup(ctx, inputs, output):
    _, residual, seed, ctx.p, ctx.scale_by_keep = inputs
    ctx.has_residual = residual is not None
    ctx.stride = output.stride()
    ctx.save_for_backward(seed)


def _drop_path_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    grad = _like_layout(grad, ctx.stride)
    grad_input = _bw(ops.drop_path_backward.default, grad, seed, ctx.p, ctx.scale_by_keep)
    return grad_input, (grad if ctx.has_residual else None), None, None, None


_register_autograd("drop_path", _drop_path_backward, _drop_path_setup)


@register_fake("fastreg::bias_act_dropout")
def _bias_act_dropout_fake(input, bias, seed, activation, p, negative_slope, alpha, approximate, save_mask):
    nbytes = (input.numel() + 7) // 8 if (save_mask and activation in MASK_ACTIVATIONS) else 0
    return torch.empty_like(input), input.new_empty((nbytes,), dtype=torch.uint8)


@register_fake("fastreg::bias_act_dropout_backward")
def _bias_act_dropout_backward_fake(
    grad, saved, bias, seed, activation, p, negative_slope, alpha, approximate
):
    db = grad.new_empty((bias.shape[0],) if bias is not None else (0,))
    return torch.empty_like(grad), db


def _bias_act_dropout_setup(ctx, inputs, output):
    input, bias, seed, ctx.activation, ctx.p, ctx.slope, ctx.alpha, ctx.approximate, _ = inputs
    y, mask = output
    ctx.stride = y.stride()
    ctx.has_bias = bias is not None
    # relu / leaky_relu: the 1-bit mask; the others: the input
    saved = mask if ctx.activation in MASK_ACTIVATIONS else input
    ctx.save_for_backward(saved, bias, seed)
    ctx.set_materialize_grads(False)  # no zero "gradient" of the uint8 mask output


def _bias_act_dropout_backward(ctx, grad, _grad_mask):
    if grad is None:  # the output's gradient is undefined (grads are not materialized)
        return (None,) * 9
    saved, bias, seed = ctx.saved_tensors
    grad = _like_layout(grad, ctx.stride)
    dx, db = _bw(
        ops.bias_act_dropout_backward.default,
        *(grad, saved, bias, seed, ctx.activation, ctx.p, ctx.slope, ctx.alpha, ctx.approximate),
    )
    return dx, (db if ctx.has_bias else None), None, None, None, None, None, None, None


_register_autograd("bias_act_dropout", _bias_act_dropout_backward, _bias_act_dropout_setup, eager_outputs=1)


# --- DropConnect: a composite of the dropout kernel and ATen's matmul ----------------------
def _check_dropconnect(name, input, weight, bias, seed, grad=None):
    """The composite's checks, before its ops run (their errors would name them, not it)."""
    args = ("input", input), ("weight", weight), ("bias", bias), ("seed", seed), ("grad", grad)
    check_same_device(name, *zip(*args, strict=True))
    for arg, t in args:
        if t is not None and arg != "seed" and t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"fastreg.{name}: {arg} must be a float32, float64, float16 or bfloat16 tensor, got {t.dtype}"
            )
    check_seed_tensor(seed, name)
    for arg, t in args[1:3] + args[4:]:
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"fastreg.{name}: {arg} has dtype {t.dtype} but input has dtype {input.dtype}")
    if weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"fastreg.{name}: weight must be 2-D (out_features, in_features) with in_features = "
            f"input.size(-1); got weight {tuple(weight.shape)}, input {tuple(input.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"fastreg.{name}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}"
        )
    if grad is not None and tuple(grad.shape) != tuple(input.shape[:-1]) + (weight.shape[0],):
        raise ValueError(
            f"fastreg.{name}: grad has shape {tuple(grad.shape)} but the output has "
            f"{tuple(input.shape[:-1]) + (weight.shape[0],)}"
        )


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dropconnect_linear(input, weight, bias, seed, p):
    _check_dropconnect("dropconnect_linear", input, weight, bias, seed)
    masked = ops.dropout(weight, seed, p, False)  # freed when the product is done
    return torch.nn.functional.linear(input, masked, bias)


torch.library.impl("fastreg::dropconnect_linear", "CompositeExplicitAutograd", _dropconnect_linear)


def _dropconnect_linear_backward_impl(grad, input, weight, seed, p):
    _check_dropconnect("dropconnect_linear_backward", input, weight, None, seed, grad)
    masked = ops.dropout(weight, seed, p, False)  # regenerated from the seed
    grad_input = grad.matmul(masked)
    g2 = grad.reshape(-1, grad.shape[-1])
    grad_masked = g2.t().matmul(input.reshape(-1, input.shape[-1]))
    # the mask's memory order is the weight's dense order
    grad_masked = _like_layout(grad_masked, torch.empty_like(weight).stride())
    grad_weight = ops.dropout_backward(grad_masked, seed, p, False)
    return grad_input, grad_weight, g2.sum(0)


# (the call form: the decorator form returns None, and backward calls this function itself
# to build a differentiable graph for create_graph=True)
torch.library.impl(
    "fastreg::dropconnect_linear_backward", "CompositeExplicitAutograd", _dropconnect_linear_backward_impl
)


@register_fake("fastreg::dropconnect_linear")
def _dropconnect_linear_fake(input, weight, bias, seed, p):
    _check_dropconnect("dropconnect_linear", input, weight, bias, seed)
    return input.new_empty(input.shape[:-1] + (weight.shape[0],))


@register_fake("fastreg::dropconnect_linear_backward")
def _dropconnect_linear_backward_fake(grad, input, weight, seed, p):
    _check_dropconnect("dropconnect_linear_backward", input, weight, None, seed, grad)
    return torch.empty_like(input), torch.empty_like(weight), grad.new_empty((weight.shape[0],))


def _dropconnect_setup(ctx, inputs, output):
    input, weight, bias, seed, ctx.p = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, seed)


def _dropconnect_backward(ctx, grad):
    input, weight, seed = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the composite, differentiable through its ops
        gi, gw, gb = _dropconnect_linear_backward_impl(grad, input, weight, seed, ctx.p)
    else:
        gi, gw, gb = _bw(ops.dropconnect_linear_backward.default, grad, input, weight, seed, ctx.p)
    return gi, gw, (gb if ctx.has_bias else None), None, None


_register_autograd("dropconnect_linear", _dropconnect_backward, _dropconnect_setup)


# --- cutout: backward is the same boxes, filled with 0, on the gradient -------------------
@register_fake("fastreg::cutout")
def _cutout_fake(images, seed, size, p, fill):
    return torch.empty_like(images)


@register_fake("fastreg::cutout_")
def _cutout_inplace_fake(images, seed, size, p, fill):
    return None


def _cutout_setup(ctx, inputs, output):
    _, seed, ctx.size, ctx.p, _ = inputs
    ctx.save_for_backward(seed)


def _cutout_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    return _bw(ops.cutout.default, grad, seed, ctx.size, ctx.p, 0.0), None, None, None, None


_register_autograd("cutout", _cutout_backward, _cutout_setup)


# --- random erasing: backward erases the same boxes of the gradient with 0 ----------------
@register_fake("fastreg::random_erasing")
def _erase_fake(images, seed, p, s0, s1, r0, r1, value, random):
    return torch.empty_like(images)


@register_fake("fastreg::random_erasing_")
def _erase_inplace_fake(images, seed, p, s0, s1, r0, r1, value, random):
    return None


def _erase_setup(ctx, inputs, output):
    _, seed, *ctx.rule, _, _ = inputs
    ctx.save_for_backward(seed)


def _erase_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    g = _bw(ops.random_erasing.default, grad, seed, *ctx.rule, 0.0, False)
    return (g,) + (None,) * 8


_register_autograd("random_erasing", _erase_backward, _erase_setup)


# --- mixup / cutmix: backward reads each sample's draw from the params output --------------
# (B x 8 float64, a few bytes per sample; nothing per pixel is saved).
@register_fake("fastreg::mix")
def _mix_fake(images, target, seed, num_classes, *rest):
    B = images.shape[0]
    dtype = torch.float32 if target.dim() == 1 else target.dtype
    soft = images.new_empty((B, num_classes), dtype=dtype)
    return torch.empty_like(images), soft, images.new_empty((B, 8), dtype=torch.float64)


@register_fake("fastreg::mix_")
def _mix_inplace_fake(images, target, seed, num_classes, *rest):
    B = images.shape[0]
    dtype = torch.float32 if target.dim() == 1 else target.dtype
    return images.new_empty((B, num_classes), dtype=dtype), images.new_empty((B, 8), dtype=torch.float64)


@register_fake("fastreg::mix_backward")
def _mix_backward_fake(grad, params):
    return torch.empty_like(grad)


def _mix_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(output[2])
    ctx.set_materialize_grads(False)  # no zero "gradients" of the soft targets and params


def _mix_backward(ctx, grad_images, grad_soft, grad_params):
    (params,) = ctx.saved_tensors
    g = None if grad_images is None else _bw(ops.mix_backward.default, grad_images, params)
    return (g,) + (None,) * 12


_register_autograd("mix", _mix_backward, _mix_setup, eager_outputs=2)


# --- in-place forms (inplace=True): the input is the output -------------------------------
# relu_, leaky_relu_ (return the mask), elu_, selu_, silu_, dropout_: for dense inputs in
# eager mode (fastreg.functional); under torch.compile the out-of-place op and a copy are
# traced instead. They have no autograd formula of their own: `inplace` applies the
# out-of-place op's setup_context and backward in a Function that marks the input dirty,
# as a custom in-place Function does, so autograd sees an in-place op (version counter,
# views, "a leaf Variable that requires grad is being used in an in-place operation").
def _mask_inplace_fake(input, *params_and_save_mask):
    return input.new_empty(((input.numel() + 7) // 8 if params_and_save_mask[-1] else 0,), dtype=torch.uint8)


INPLACE_OPS = tuple(n for n, row in ACTIVATIONS.items() if row.inplace) + ("dropout",)
for _name in INPLACE_OPS:
    _mask = _name in MASK_ACTIVATIONS  # relu_ and leaky_relu_ return their mask
    register_fake(f"fastreg::{_name}_")(_mask_inplace_fake if _mask else (lambda input, *params: None))

# name -> (in-place op, whether it returns a mask, whether its Function takes a copy of the
# input, apply of its Function)
_INPLACE = {}


def _register_inplace(name):
    op_ = getattr(ops, name + "_").default
    mask = len(op_._schema.returns) == 1  # relu_ and leaky_relu_ return their mask
    setup_context, backward = FORMULAS[name]
    # silu's backward needs the input, which the in-place write overwrites: `inplace` hands
    # the Function a copy made under autograd (so that double backward reaches x through
    # it), as torch's in-place silu saves a copy of its input
    saves_input = SAVES_OUTPUT.get(name) is False

    def forward(ctx, x, *params):
        if mask:  # the out-of-place op's inputs end with save_mask, its output is (y, mask)
            setup_context(ctx, (x, *params, True), (x, kernel(op_, x, *params, True)))
        elif saves_input:  # params[0]: the copy of x that `inplace` made before
            kernel(op_, x, *params[1:])
            setup_context(ctx, params, x)
        else:
            kernel(op_, x, *params)
            setup_context(ctx, (x, *params), x)
        ctx.n_inputs = 1 + len(params)
        ctx.mark_dirty(x)
        return x

    def inplace_backward(ctx, grad):
        grads = backward(ctx, grad, None) if mask else backward(ctx, grad)
        if saves_input:  # the gradient is x's; the copy was data for backward
            return (grads[0], None) + grads[1 : ctx.n_inputs - 1]
        return grads[: ctx.n_inputs]

    function = type(
        f"{name}_inplace_function",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(inplace_backward)},
    ).apply
    _INPLACE[name] = (op_, mask, saves_input, function)


for _name in INPLACE_OPS:
    _register_inplace(_name)


def inplace(name, x, *params):
    """The in-place form of op `name` on x (dense, eager mode; its parameters without
    save_mask), returning x: straight to the kernel when x needs no gradient, else through
    the Function above."""
    op_, mask, saves_input, function = _INPLACE[name]
    if torch.is_grad_enabled() and x.requires_grad:
        return function(x, x.clone(), *params) if saves_input else function(x, *params)
    kernel(op_, x, *params, *((False,) if mask else ()))
    return x


# --- second order: formulas of the backward ops ---------------------------------------------
# What create_graph=True differentiates (gradient penalties, Hessian-vector products). Each
# backward op is linear in its incoming gradient, so that part of its gradient is the same
# backward op applied to the new incoming gradient (the regenerated dropout mask, the 1-bit
# mask); the part through the saved tensor (the output or the input, which carry their graph
# back to the forward op) is written with torch ops, so these formulas are differentiable in
# turn. Registered with torch.library only: the first-order formulas call the backward ops
# through the dispatcher whenever a graph is being built (_bw).
def _derivative(fn, x, order, *params):
    """The order-th derivative of the scalar function fn(t, *params) at each element of x, by
    torch.func (so it is differentiable in turn, and x's graph is kept)."""
    if x.numel() == 0:
        return torch.zeros_like(x)
    f = lambda t: fn(t, *params)  # noqa: E731
    for _ in range(order):
        f = torch.func.grad(f)
    return torch.func.vmap(f)(x.reshape(-1)).reshape(x.shape)


def _act_d2(activation, z, negative_slope=0.01, alpha=1.0, approximate="none"):
    """The activation's second derivative at its input z (the outer chain rule's factor)."""
    params = bias_act_param(activation, negative_slope, alpha, approximate)
    return _derivative(ACTIVATIONS[activation].formula, z, 2, *params)


def _saved_d(name, saved, params):
    """d backward(g, saved) / d saved, divided by g: backward is g * f'(x), written in the
    output y (grad_from_output) for the activations that save their output."""
    row = ACTIVATIONS[name]
    if row.saves == "output":
        return _derivative(row.grad_from_output, saved, 1, *params)
    return _derivative(row.formula, saved, 2, *params)


def _register_saved_double(name):
    backward_op = getattr(ops, name + "_backward").default

    def setup_context(ctx, inputs, output):
        grad, saved, *ctx.params = inputs
        ctx.save_for_backward(grad, saved)

    def backward(ctx, gg):
        grad, saved = ctx.saved_tensors
        g_grad = g_saved = None
        if ctx.needs_input_grad[0]:
            g_grad = backward_op(gg, saved, *ctx.params)
        if ctx.needs_input_grad[1]:
            g_saved = gg * grad * _saved_d(name, saved, ctx.params)
        return (g_grad, g_saved) + (None,) * len(ctx.params)

    register_autograd(f"fastreg::{name}_backward", backward, setup_context=setup_context)


for _name in SAVES_OUTPUT:
    _register_saved_double(_name)


def _register_linear_double(name, n_params):
    """A backward op linear in its first argument, with nothing else differentiable
    (the mask activations' mask, the dropout seed): its gradient is itself, applied to the
    new incoming gradient laid out like the first argument (whose memory order the mask's
    bits follow)."""
    backward_op = getattr(ops, name).default

    def setup_context(ctx, inputs, output):
        grad, *ctx.rest = inputs
        ctx.stride = grad.stride()

    def backward(ctx, gg):
        return (backward_op(_like_layout(gg, ctx.stride), *ctx.rest),) + (None,) * n_params

    register_autograd(f"fastreg::{name}", backward, setup_context=setup_context)


_register_linear_double("relu_backward", 1)  # (grad, mask)
_register_linear_double("leaky_relu_backward", 2)  # (grad, mask, negative_slope)
_register_linear_double("dropout_backward", 3)  # (grad, seed, p, alpha)
_register_linear_double("drop_path_backward", 3)  # (grad, seed, p, scale_by_keep)


def _channel_view(t, like):
    """PReLU's weight-shaped t broadcast along dim 1 of `like` (or to all of it)."""
    if like.dim() >= 2 and t.numel() > 1:
        return t.reshape((-1,) + (1,) * (like.dim() - 2))
    return t.reshape(())


def _prelu_double_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _prelu_double_backward(ctx, gg_input, gg_weight):
    # prelu_backward: dx = g * (x > 0 ? 1 : w); dw = sum of g * x where x <= 0, per channel
    grad, input, weight = ctx.saved_tensors
    neg = ~(input > 0)  # the kernels: x > 0 ? x : w * x (NaN takes the weight)
    w = _channel_view(weight, input)
    zero = torch.zeros((), dtype=input.dtype, device=input.device)
    g_grad = g_input = g_weight = None
    if ctx.needs_input_grad[0]:
        terms = [torch.where(neg, gg_input * w, gg_input)] if gg_input is not None else []
        if gg_weight is not None:
            terms.append(torch.where(neg, input * _channel_view(gg_weight, input), zero))
        g_grad = sum(terms[1:], terms[0]) if terms else None
    if ctx.needs_input_grad[1] and gg_weight is not None:
        g_input = torch.where(neg, grad * _channel_view(gg_weight, input), zero)
    if ctx.needs_input_grad[2] and gg_input is not None:
        part = torch.where(neg, grad * gg_input, zero)
        dims = [d for d in range(input.dim()) if not (d == 1 and weight.numel() > 1)]
        g_weight = part.sum(dims).reshape(weight.shape) if dims else part.reshape(weight.shape)
    return g_grad, g_input, g_weight


register_autograd("fastreg::prelu_backward", _prelu_double_backward, setup_context=_prelu_double_setup)


def _bias_act_dropout_double_setup(ctx, inputs, output):
    grad, saved, bias, seed, ctx.activation, ctx.p, ctx.slope, ctx.alpha, ctx.approximate = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(grad, saved, bias, seed)


def _bias_act_dropout_double_backward(ctx, gg_input, gg_bias):
    # dx = D(g) * a'(z), z = x + bias, D the dropout (keep * 1/(1-p)); db = dx summed per channel
    grad, saved, bias, seed = ctx.saved_tensors
    act, p = ctx.activation, ctx.p
    h = gg_input
    if gg_bias is not None and ctx.has_bias:
        h = gg_bias.expand(grad.shape) if h is None else h + gg_bias
    if h is None:
        return (None,) * 9
    mask_act = act in MASK_ACTIVATIONS
    h = _like_layout(h, grad.stride())
    params = (act, p, ctx.slope, ctx.alpha, ctx.approximate)
    g_grad = g_saved = g_bias = None
    if ctx.needs_input_grad[0]:  # D and a'(z) are diagonal: the same op on h
        g_grad = ops.bias_act_dropout_backward(h, saved, bias, seed, *params)[0]
    if not mask_act and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        z = saved + bias if ctx.has_bias else saved
        # the kernel's keep bits follow the memory order of the dense input
        kept = ops.dropout(_like_layout(grad, torch.empty_like(saved).stride()), seed, p, False)
        g_z = h * kept * _act_d2(act, z, ctx.slope, ctx.alpha, ctx.approximate)
        g_saved = g_z if ctx.needs_input_grad[1] else None
        if ctx.needs_input_grad[2]:
            g_bias = g_z.reshape(-1, g_z.shape[-1]).sum(0)
    return g_grad, g_saved, g_bias, None, None, None, None, None, None


register_autograd(
    "fastreg::bias_act_dropout_backward",
    _bias_act_dropout_double_backward,
    setup_context=_bias_act_dropout_double_setup,
)


def _mix_double_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _mix_double_backward(ctx, gg):
    # mix_backward applies the transpose of the forward mixing: its gradient is that mixing,
    # rebuilt from each sample's recorded draw (params: lambda, target lambda, kind, box)
    (params,) = ctx.saved_tensors
    lam, _, kind, y0, y1, x0, x1 = params[:, :7].unbind(1)
    return mix_pixels(gg, lam, kind, y0, y1, x0, x1), None


register_autograd("fastreg::mix_backward", _mix_double_backward, setup_context=_mix_double_setup)
