"""The public functions: the names, arguments and defaults of ``torch.nn.functional``.

Scalars and tensor arguments are validated here, before anything is launched,
with errors that name the argument; the kernels check again (TORCH_CHECK).
"""

import math
import numbers
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from . import distributed as _distributed
from . import reference as R
from ._activations import TABLE as ACTIVATIONS
from ._autograd import EAGER_AUTOGRAD, EAGER_OUTPUTS, kernel
from ._autograd import inplace as inplace_form
from ._random import (
    MIX_MODES,
    STOCHASTIC_DEPTH_MODES,
    batch_skips,
    check_p,
    keep_count,
    seed_tensor,
    subset_indices,
)
from .distributed import _batch_seed, batch_offset_active

ops = torch.ops.fastreg

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

__all__ = [
    *ACTIVATIONS, "prelu",
    "dropout", "alpha_dropout", "bias_act_dropout", "dropout_add", "drop_path", "stochastic_depth",
    "dropconnect_linear",
    "cutout", "random_erasing", "mixup", "cutmix",
]  # fmt: skip

ACTIVATION_NAMES = tuple(ACTIVATIONS)  # what bias_act_dropout takes


def _check_float(t, fn, arg="input"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastreg.{fn}: {arg} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fastreg.{fn}: {arg} must be a float32, float64, float16 or bfloat16 tensor, got {t.dtype}"
        )


def _check_number(value, fn, arg):
    if type(value) is float:  # the common case, before the ABC check (0.7 -> 0.1 us)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fastreg.{fn}: {arg} must be a real number, got {type(value).__name__}")
    return float(value)


def _needs_grad(t):
    return torch.is_grad_enabled() and t.requires_grad


def _autocast_to(t, dtype):
    """t cast to dtype inside an autocast region of t's device (mixed precision: the layer's
    float32 parameter meets a lower-precision activation), else t unchanged, so that outside
    autocast a dtype mismatch is still the caller's error."""
    if t.dtype != dtype and t.is_floating_point() and torch.is_autocast_enabled(t.device.type):
        return t.to(dtype)
    return t


def _transforming():
    """Whether a torch.func transform (grad, vmap, jacrev, jacfwd, jvp, hessian, ...) or
    forward-mode AD (a dual level) is active. fastreg's formulas do not serve them: the
    autograd.Function that torch.library generates for a registered formula, like the eager
    one here, has the old form that functorch refuses, and none has a forward-mode formula,
    so a dual tensor's tangent would be dropped without a word. There every function below
    computes its fastreg.reference specification (plain torch ops, which every transform
    supports; the same draws from the same seed), after the same argument checks."""
    if torch.compiler.is_compiling():  # traced code: the ops (dynamo traces no transform here)
        return False
    return torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0


def _draw_seed(input, generator, seed, fn, per_sample=False):
    """The seed tensor of a draw over ``input``: inside fastreg.distributed.batch_offset,
    positioned at the local batch's rows of the global one."""
    return _batch_seed(seed_tensor(input, generator, seed, fn), input, per_sample, fn)


def _check_no_batch_offset(fn):
    """Under a torch.func transform the references run, each drawing its seed inside the
    transform (a seed per slice with randomness='different'); they know no batch offset."""
    if batch_offset_active():
        raise NotImplementedError(f"fastreg.{fn}: batch_offset does not apply under torch.func transforms")


def _call(op, *args, grad=None):
    """op(*args) in eager mode: with autograd when `grad` (default: whether any tensor
    argument needs a gradient), through the op's registered formula as a plain
    autograd.Function (_autograd.EAGER_AUTOGRAD: no dispatcher round trip into Python;
    about a third of a small training step's host time), else straight to the kernel below
    autograd, both through the op's typed entry (_autograd.kernel: 2-3 us less per op call
    than torch.ops).
    Under torch.compile, the registered op itself. Returns the outputs callers use: all the
    op's, but only the first for relu, leaky_relu and bias_act_dropout and the first two for
    mix (_autograd.EAGER_OUTPUTS: the others, a 1-bit mask or a per-sample record, are only
    saved for backward, and their eager Functions do not return them)."""
    if torch.compiler.is_compiling():  # first: dynamo cannot trace _any_requires_grad
        out = op(*args)
    else:
        if grad is None:
            grad = torch.is_grad_enabled() and torch._C._any_requires_grad(*args)
        if grad:
            return EAGER_AUTOGRAD[op](*args)
        out = kernel(op, *args)
    k = EAGER_OUTPUTS.get(op)
    return out if k is None else out[0] if k == 1 else out[:k]


def _inplace_kernel(input):
    """Whether an inplace=True call runs the op's in-place form (_autograd.inplace: the
    input is the output, no fresh tensor and copy back): in eager mode, for a contiguous or
    channels_last input. Otherwise (other layouts, and under torch.compile, which reinplaces
    itself) the op writes a fresh output that is copied into the input (_maybe_inplace)."""
    if torch.compiler.is_compiling():
        return False
    return input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last)


def _for_inplace(input, inplace):
    """The reference's input when the call is in place: a copy, so that the in-place write of
    the result cannot overwrite a tensor the reference's own graph saved (silu's input)."""
    return input.clone() if inplace else input


def _maybe_inplace(input, y, inplace):
    # In-place keeps torch's semantics (the input tensor holds the result);
    # the kernel still writes a fresh tensor, then one copy.
    return input.copy_(y) if inplace else y


# --- activations: one function per row of the activation table (fastreg/_activations.py) ---


def _activation_source(row):
    """The source of the public function of an activation row: its signature (the input, the
    op's argument with its default, ``inplace`` where the op has an in-place form), the
    argument checks, the hand-off to the reference under a transform, the in-place kernel,
    and the op through ``_call``."""
    name, p = row.name, row.param
    sig = "input: Tensor"
    fwd = ""  # the op's arguments after the input
    if p is not None:
        sig += f", {p}: {'str' if row.variants else 'float'} = {row.default!r}"
        fwd = f", {p}"
    kw = f", {p}={p}" if p else ""
    if row.inplace:
        sig += ", inplace: bool = False"
        kw += ", inplace=inplace"
    lines = [
        f"def {name}({sig}) -> Tensor:",
        "    if has_torch_function_unary(input):",
        f"        return handle_torch_function({name}, (input,), input{kw})",
        f"    _check_float(input, {name!r})",
    ]
    if row.variants:
        choices = ", ".join(map(repr, row.variants))
        lines += [
            f"    if {p} not in {row.variants!r}:",
            f'        raise ValueError(f"fastreg.{name}: {p} must be one of {choices}; got {{{p}!r}}")',
        ]
    elif p is not None:
        lines.append(f"    {p} = _check_number({p}, {name!r}, {p!r})")
        if row.param_min is not None:
            lines += [
                f"    if not {p} >= {row.param_min!r}:",
                f'        raise ValueError(f"fastreg.{name}: {p} must be >= {row.param_min!r}, got {{{p}}}")',
            ]
    if row.inplace:
        lines += [
            "    if _transforming():",
            f"        return _maybe_inplace(input, R.{name}(_for_inplace(input, inplace){fwd}), inplace)",
            "    if inplace and _inplace_kernel(input):",
            f"        return inplace_form({name!r}, input{fwd})",
        ]
        if row.saves == "input":  # backward needs the input in-place overwrites: a copy, as torch's
            lines += [
                "    if inplace and _needs_grad(input):",
                f"        return input.copy_(_call(ops.{name}, input.clone(){fwd}))",
            ]
    else:
        lines += ["    if _transforming():", f"        return R.{name}(input{fwd})"]
    mask = ", _needs_grad(input)" if row.saves == "mask" else ""  # save_mask: only for backward
    lines.append(f"    y = _call(ops.{name}, input{fwd}{mask})")
    lines.append("    return _maybe_inplace(input, y, inplace)" if row.inplace else "    return y")
    return "\n".join(lines) + "\n"


def _activation_doc(row):
    torch_name = {torch.sigmoid: "torch.sigmoid", torch.tanh: "torch.tanh"}.get(
        row.torch_function, f"F.{row.name}"
    )
    args = "        input: a float tensor (float32, float64, float16, bfloat16) of any shape and layout.\n"
    if row.param is not None:
        args += f"        {row.param}: {row.param_doc}.\n"
    if row.inplace:
        args += "        inplace: write the result into ``input`` (torch's semantics; autograd-aware).\n"
    call = f"torch.randn(8, 16){', ' + repr(row.test_param) if row.param and not row.variants else ''}"
    return (
        f"``{torch_name}``: {row.summary}, elementwise.\n\n"
        f"Args:\n{args}\n"
        "Returns:\n"
        "    A tensor shaped and laid out like ``input``"
        + (" (``input`` itself when in place)" if row.inplace else "")
        + ".\n\n"
        f"Saved for backward: {row.saved_doc}.\n\n"
        f"Example:\n    >>> y = fastreg.functional.{row.name}({call})\n"
    )


def _make_activation(row):
    namespace = {}
    exec(_activation_source(row), globals(), namespace)  # noqa: S102  (generated from the table)
    fn = namespace[row.name]
    fn.__doc__ = _activation_doc(row)
    return fn


for _row in ACTIVATIONS.values():
    globals()[_row.name] = _make_activation(_row)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """``F.prelu(input, weight)``: ``x if x > 0 else w * x`` with one ``w`` per channel (dim 1).

    Args:
        input: a float tensor ``(N, C, ...)`` (or any shape with a one-element weight).
        weight: ``(C,)`` or one element, of ``input``'s dtype (cast to it under autocast).

    Returns:
        A tensor shaped and laid out like ``input`` (channels_last stays channels_last).

    Saved for backward: the input and a reference to the weight (as torch).

    Example:
        >>> y = fastreg.functional.prelu(torch.randn(4, 16, 8, 8), torch.full((16,), 0.25))
    """
    if has_torch_function((input, weight)):
        return handle_torch_function(prelu, (input, weight), input, weight)
    _check_float(input, "prelu")
    _check_float(weight, "prelu", "weight")
    weight = _autocast_to(weight, input.dtype)
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
    if _transforming():
        return R.prelu(input, weight)
    return _call(ops.prelu, input, weight)


# --- dropout family ---------------------------------------------------------------------


def _dropout(fn, alpha, input, p, training, inplace, generator, seed):
    _check_float(input, fn)
    p = check_p(p, fn)
    if not training or p == 0.0:
        return input
    if _transforming():
        _check_no_batch_offset(fn)
        reference = R.alpha_dropout if alpha else R.dropout
        y = reference(_for_inplace(input, inplace), p, True, generator=generator, seed=seed)
        return _maybe_inplace(input, y, inplace)
    s = _draw_seed(input, generator, seed, fn)
    if inplace and _inplace_kernel(input):
        return inplace_form("dropout", input, s, p, alpha)
    return _maybe_inplace(input, _call(ops.dropout, input, s, p, alpha), inplace)


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """``F.dropout(input, p, training, inplace)``: each element zeroed with probability ``p``,
    the others scaled by ``1 / (1 - p)``; the identity when not training.

    Args:
        input: a float tensor of any shape and layout.
        p: the drop probability, in [0, 1] (1 gives zeros).
        training: apply dropout (else return ``input``).
        inplace: write the result into ``input``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``: the same seed gives the same
            mask on every device (docs/randomness.md).

    Returns:
        A tensor shaped and laid out like ``input``.

    Saved for backward: the 8-byte seed only; backward regenerates the mask (torch saves a
    one-byte mask per element).

    Example:
        >>> y = fastreg.functional.dropout(torch.randn(8, 16), 0.1, seed=1234)
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout, (input,), input, p=p, training=training, inplace=inplace, generator=generator, seed=seed
        )
    return _dropout("dropout", False, input, p, training, inplace, generator, seed)


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """``F.alpha_dropout(input, p, training, inplace)``: dropout that keeps SELU's mean and
    variance (kept ``a * x + b``, dropped ``-alpha' * a``, torch's constants).

    Args:
        input: a float tensor of any shape and layout.
        p: the drop probability, in [0, 1].
        training: apply it (``False`` by default, as torch).
        inplace: write the result into ``input``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        A tensor shaped and laid out like ``input``.

    Saved for backward: the seed only.

    Example:
        >>> y = fastreg.functional.alpha_dropout(torch.randn(8, 16), 0.1, training=True)
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            alpha_dropout, (input,), input, p=p, training=training, inplace=inplace,
            generator=generator, seed=seed,
        )  # fmt: skip
    return _dropout("alpha_dropout", True, input, p, training, inplace, generator, seed)


def _checked_bias(input, bias, fn):
    """bias_act_dropout's bias checked against the input (cast to its dtype under autocast)."""
    if bias is None:
        return None
    _check_float(bias, fn, "bias")
    bias = _autocast_to(bias, input.dtype)
    if bias.dtype != input.dtype:
        raise TypeError(f"fastreg.{fn}: bias has dtype {bias.dtype} but input has {input.dtype}")
    if bias.device != input.device:
        raise RuntimeError(f"fastreg.{fn}: bias is on {bias.device} but input is on {input.device}")
    if input.dim() == 0 or bias.dim() != 1 or bias.shape[0] != input.shape[-1]:
        raise ValueError(
            f"fastreg.{fn}: bias must be 1-D with input.size(-1) elements, got shape "
            f"{tuple(bias.shape)} for input shape {tuple(input.shape)}"
        )
    return bias


def _checked_activation_args(activation, negative_slope, alpha, approximate, fn):
    """bias_act_dropout's activation and its arguments checked as the activation's own
    function checks them; returns (negative_slope, alpha) as floats."""
    if activation not in ACTIVATION_NAMES:
        raise ValueError(
            f"fastreg.{fn}: activation must be one of {', '.join(ACTIVATION_NAMES)}; got {activation!r}"
        )
    slope = _check_number(negative_slope, fn, "negative_slope")
    alpha = _check_number(alpha, fn, "alpha")
    row = ACTIVATIONS[activation]
    if row.param_min is not None:
        value = {"negative_slope": slope, "alpha": alpha}[row.param]
        if not value >= row.param_min:
            raise ValueError(f"fastreg.{fn}: {row.param} must be >= {row.param_min!r}, got {value}")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"fastreg.{fn}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return slope, alpha


def bias_act_dropout(
    input: Tensor,
    bias: Tensor | None = None,
    activation: str = "relu",
    p: float = 0.0,
    training: bool = True,
    *,
    negative_slope: float = 0.01,
    alpha: float = 1.0,
    approximate: str = "none",
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """``dropout(act(input + bias), p)`` in one kernel, the bias broadcast over the last dim.

    Args:
        input: a float tensor ``(..., K)`` of any layout.
        bias: ``(K,)`` of ``input``'s dtype (cast to it under autocast), or None.
        activation: the activation's name, one of ACTIVATION_LIST.
        p: the drop probability, in [0, 1]; not training means ``p = 0``.
        training: apply dropout.
        negative_slope: leaky_relu's slope.
        alpha: elu's alpha (``>= 0``).
        approximate: gelu's form, ``'none'`` or ``'tanh'``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        A tensor shaped and laid out like ``input``.

    Saved for backward: for relu and leaky_relu a 1-bit mask and the seed (1/8 byte per
    element); for the others the input and the seed. The eager composite saves the
    activation's input or output and a byte mask.

    Example:
        >>> h, b = torch.randn(32, 512), torch.zeros(512)
        >>> y = fastreg.functional.bias_act_dropout(h, b, "gelu", p=0.1)
    """
    if has_torch_function((input, bias)):
        return handle_torch_function(
            bias_act_dropout, (input, bias), input, bias=bias, activation=activation, p=p,
            training=training, negative_slope=negative_slope, alpha=alpha, approximate=approximate,
            generator=generator, seed=seed,
        )  # fmt: skip
    fn = "bias_act_dropout"
    _check_float(input, fn)
    bias = _checked_bias(input, bias, fn)
    slope, alpha = _checked_activation_args(activation, negative_slope, alpha, approximate, fn)
    p = check_p(p, fn)
    if not training:
        p = 0.0
    if _transforming():
        _check_no_batch_offset(fn)
        return R.bias_act_dropout(
            input, bias, activation, p, True, negative_slope=slope, alpha=alpha, approximate=approximate,
            generator=generator, seed=seed,
        )  # fmt: skip
    # p = 0 keeps every element whatever the bits: no draw needed
    s = (
        _draw_seed(input, generator, seed, fn)
        if p > 0
        else torch.zeros(1, dtype=torch.int64, device=input.device)
    )
    save_mask = ACTIVATIONS[activation].saves == "mask" and (
        _needs_grad(input) or (bias is not None and _needs_grad(bias))
    )
    y = _call(ops.bias_act_dropout, input, bias, s, activation, p, slope, alpha, approximate, save_mask)
    return y


bias_act_dropout.__doc__ = bias_act_dropout.__doc__.replace("ACTIVATION_LIST", ", ".join(ACTIVATION_NAMES))


def dropout_add(
    input: Tensor,
    residual: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """``residual + dropout(input, p)`` in one kernel.

    Args:
        input: a float tensor of any shape and layout.
        residual: a tensor of ``input``'s shape, dtype and device.
        p: the drop probability, in [0, 1].
        training: apply dropout (else ``residual + input``).
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        A tensor shaped and laid out like ``input``.

    Saved for backward: the seed only; the residual's gradient is the incoming one, not a
    copy.

    Example:
        >>> y = fastreg.functional.dropout_add(torch.randn(8, 16), torch.randn(8, 16), 0.1)
    """
    if has_torch_function((input, residual)):
        return handle_torch_function(
            dropout_add, (input, residual), input, residual, p=p, training=training,
            generator=generator, seed=seed,
        )  # fmt: skip
    _check_float(input, "dropout_add")
    _check_float(residual, "dropout_add", "residual")
    if residual.shape != input.shape or residual.dtype != input.dtype or residual.device != input.device:
        raise ValueError(
            f"fastreg.dropout_add: residual must match input's shape, dtype and device, got "
            f"{tuple(residual.shape)} {residual.dtype} {residual.device} for "
            f"{tuple(input.shape)} {input.dtype} {input.device}"
        )
    p = check_p(p, "dropout_add")
    if not training or p == 0.0:
        return residual + input
    if _transforming():
        _check_no_batch_offset("dropout_add")
        return R.dropout_add(input, residual, p, True, generator=generator, seed=seed)
    return _call(ops.dropout_add, input, residual, _draw_seed(input, generator, seed, "dropout_add"), p)


def drop_path(
    input: Tensor,
    p: float = 0.0,
    training: bool = False,
    *,
    residual: Tensor | None = None,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Stochastic depth (timm's ``drop_path``): each sample along dim 0 is dropped with
    probability ``p``, the kept ones scaled by ``1 / (1 - p)``.

    Args:
        input: a float tensor ``(B, ...)`` of any layout.
        p: the drop probability per sample, in [0, 1].
        training: apply it (``False`` by default, as timm).
        residual: a tensor like ``input``: returns ``residual + drop_path(input)`` in one
            kernel.
        scale_by_keep: scale the kept samples by ``1 / (1 - p)``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        A tensor shaped and laid out like ``input``.

    Saved for backward: the seed only.

    Example:
        >>> x = torch.randn(8, 197, 384)
        >>> y = fastreg.functional.drop_path(branch(x), 0.1, True, residual=x)
    """
    if has_torch_function((input, residual)):
        return handle_torch_function(
            drop_path, (input, residual), input, p=p, training=training, residual=residual,
            scale_by_keep=scale_by_keep, generator=generator, seed=seed,
        )  # fmt: skip
    _check_float(input, "drop_path")
    if residual is not None:
        _check_float(residual, "drop_path", "residual")
        if residual.shape != input.shape or residual.dtype != input.dtype or residual.device != input.device:
            raise ValueError("fastreg.drop_path: residual must match input's shape, dtype and device")
    p = check_p(p, "drop_path")
    if not training or p == 0.0:
        return input if residual is None else residual + input
    if _transforming():
        _check_no_batch_offset("drop_path")
        return R.drop_path(
            input, p, True, residual=residual, scale_by_keep=scale_by_keep, generator=generator, seed=seed
        )
    s = _draw_seed(input, generator, seed, "drop_path", per_sample=True)
    return _call(ops.drop_path, input, residual, s, p, bool(scale_by_keep))


def _checked_stochastic_depth_args(input, branch, p, mode, residual, fn):
    _check_float(input, fn)
    if input.dim() == 0:
        raise ValueError(f"fastreg.{fn}: input must have a batch dimension (dim 0), got a 0-d tensor")
    if not callable(branch):
        raise TypeError(
            f"fastreg.{fn}: branch must be callable (a module or function), got {type(branch).__name__}"
        )
    p = check_p(p, fn)
    if mode not in STOCHASTIC_DEPTH_MODES:
        raise ValueError(f"fastreg.{fn}: mode must be 'row' or 'batch', got {mode!r}")
    if residual is None:
        return p, input
    _check_float(residual, fn, "residual")
    if residual.dim() == 0 or residual.shape[0] != input.shape[0] or residual.device != input.device:
        raise ValueError(
            f"fastreg.{fn}: residual must have input's batch size ({input.shape[0]}) and device "
            f"({input.device}), got shape {tuple(residual.shape)} on {residual.device}"
        )
    return p, residual


def _branch_output(y, residual, rows, fn, like):
    """y, checked to be ``rows`` samples shaped like the residual's (``like`` names it)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"fastreg.{fn}: branch must return a Tensor, got {type(y).__name__}")
    want = (rows, *residual.shape[1:])
    if tuple(y.shape) != want:
        raise ValueError(
            f"fastreg.{fn}: branch must return, for each sample of its input, one shaped like "
            f"{like}'s: expected {want} for {rows} samples, got {tuple(y.shape)}"
        )
    return y


def _take_rows(t, rows):
    """t.index_select(0, rows) in t's own memory layout (index_select returns a contiguous
    tensor: a channels_last activation, as ConvNeXt's, would reach the branch's convolutions
    in another layout than without stochastic depth, and run slower there)."""
    if t.dim() < 2 or t.is_contiguous():
        return t.index_select(0, rows)
    order = [0, *sorted(range(1, t.dim()), key=lambda d: -t.stride(d))]  # memory order, batch outermost
    dense = t.permute(order)
    if not dense.is_contiguous():
        return t.index_select(0, rows)
    return dense.index_select(0, rows).permute([order.index(d) for d in range(t.dim())])


class _Regather:
    """What :class:`_SavedRows` keeps for a saved copy of the rows: the packed input."""

    __slots__ = ("packed", "rows", "version")

    def __init__(self, packed, rows, version):
        self.packed, self.rows, self.version = packed, rows, version


class _SavedRows(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks for a branch that runs on ``taken = input[rows]`` when autograd
    saves ``input`` anyway: where the branch saves ``taken`` (its first convolution does),
    ``input`` and ``rows`` are kept instead and the rows regathered in backward, so the
    kept samples' input is not held twice. Every saved tensor goes through the hooks that
    were active outside (``input`` in place of ``taken``), so activation offloading,
    checkpointing and byte counting see what is really kept."""

    def __init__(self, input, rows, taken):
        self.input, self.rows, self.taken = input, rows, taken
        self.outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
        super().__init__(self._pack, self._unpack)

    @staticmethod
    def usable(taken):
        """Not traced (the compiler chooses what to save), hooks enabled, a graph recorded."""
        return (
            torch.is_grad_enabled()
            and taken.requires_grad
            and not torch.compiler.is_compiling()
            and torch._C._autograd._saved_tensors_hooks_get_disabled_error_message() is None
        )

    def __exit__(self, *args):
        super().__exit__(*args)
        self.input = self.taken = None  # the saved tensors' unpack hook holds self, not them

    def _outer_pack(self, t):
        return t if self.outer is None else self.outer[0](t)

    def _outer_unpack(self, packed):
        return packed if self.outer is None else self.outer[1](packed)

    def _is_taken(self, t):
        """t is the gathered copy, or an alias of all of it."""
        taken = self.taken
        if t is taken:
            return True
        if t.shape != taken.shape or t.dtype != taken.dtype or t.device != taken.device:
            return False
        try:
            return (
                t.stride() == taken.stride()
                and t.storage_offset() == taken.storage_offset()
                and t.untyped_storage().data_ptr() == taken.untyped_storage().data_ptr()
            )
        except (RuntimeError, NotImplementedError):  # a tensor without storage: not an alias
            return False

    def _pack(self, t):
        if not self._is_taken(t):
            return self._outer_pack(t)
        return _Regather(self._outer_pack(self.input), self.rows, self.input._version)

    def _unpack(self, packed):
        if not isinstance(packed, _Regather):
            return self._outer_unpack(packed)
        input = self._outer_unpack(packed.packed)
        if self.outer is None and input._version != packed.version:
            raise RuntimeError(
                "fastreg.stochastic_depth: the input of a branch was modified in place after "
                f"the branch ran (version {packed.version}, now {input._version}); its "
                "backward needs the original values"
            )
        return _take_rows(input, packed.rows)


class _AddRows(torch.autograd.Function):
    """``residual.index_add(0, rows, y, alpha=scale)`` saving only ``rows`` (ATen's index_add
    also saves ``y``, a tensor as large as the kept samples' branch output)."""

    @staticmethod
    def forward(ctx, residual, rows, y, scale):
        # forward(ctx, ...), not setup_context: torch binds a setup_context Function's
        # arguments with inspect.signature on every call (tens of microseconds); torch.func
        # transforms, which need setup_context, take index_add instead (_add_rows)
        ctx.scale = scale
        ctx.save_for_backward(rows)
        # out of place, index_add returns a contiguous tensor: the residual's layout is kept
        return residual.clone(memory_format=torch.preserve_format).index_add_(0, rows, y, alpha=scale)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        grad_y = _take_rows(grad, rows)
        return grad, None, (grad_y if ctx.scale == 1.0 else grad_y * ctx.scale), None


def _add_rows(residual, rows, y, scale):
    dtype = torch.promote_types(residual.dtype, y.dtype)  # both have a batch dimension
    residual, y = residual.to(dtype), y.to(dtype)
    if dtype in (torch.float16, torch.bfloat16) and scale != 1.0:
        # index_add would round alpha to the dtype first: scale in float32, as `y * scale` does
        y, scale = y * scale, 1.0
    if _transforming():
        return residual.index_add(0, rows, y, alpha=scale)
    return _AddRows.apply(residual, rows, y, scale)


def stochastic_depth(
    input: Tensor,
    branch: Callable[[Tensor], Tensor],
    p: float = 0.0,
    training: bool = False,
    *,
    mode: str = "row",
    residual: Tensor | None = None,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Stochastic depth that skips the compute of the dropped samples: returns
    ``residual + drop_path(branch(input))`` in distribution, running ``branch`` only on the
    samples it keeps (``residual`` defaults to ``input``).

    ``mode="row"``: k = max(1, round(B * (1 - p))) of the B samples, chosen uniformly without
    replacement on the input's device from fastreg's Philox stream (no host sync, static
    shapes: torch.compile(fullgraph=True) and CUDA graphs), run the branch; its output is
    added at their rows scaled by ``B / k``. ``mode="batch"``: the whole branch is skipped
    with probability ``p``, one host-side draw (docs/stochastic-depth.md: torch.compile), and
    scaled by ``1 / (1 - p)`` when run. In eval, or with ``p = 0``, the branch runs on every
    sample; with ``p = 1`` it never runs.

    Unlike per-sample drop path, the branch sees a smaller batch: a BatchNorm inside it
    normalizes over the kept samples only.

    Args:
        input: a float tensor ``(B, ...)``, the branch's input.
        branch: a callable taking ``(k, ...)`` samples of ``input`` and returning
            ``(k, ...)`` samples shaped like ``residual``'s.
        p: the drop probability, in [0, 1].
        training: apply it (``False`` by default, as timm's drop_path).
        mode: ``"row"`` or ``"batch"`` (torchvision's names).
        residual: what the branch's output is added to (default: ``input``), batch first.
        scale_by_keep: scale the branch's output by ``B / k`` (row) or ``1 / (1 - p)``
            (batch).
        generator: the generator the seed is drawn from (default: the device's; in batch
            mode, a CPU generator, default torch's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        A new tensor shaped like ``residual``, of ``residual`` and the branch output's
        promoted dtype.

    Saved for backward: the branch's own saved tensors, for the kept samples only, and
    the ``k`` row indices.

    Example:
        >>> y = fastreg.functional.stochastic_depth(x, lambda t: mlp(norm(t)), 0.2, True)
    """
    return _stochastic_depth(input, branch, p, training, mode, residual, scale_by_keep, generator, seed)


def _stochastic_depth(
    input, branch, p, training, mode, residual, scale_by_keep, generator, seed, input_saved=False
):
    """stochastic_depth; ``input_saved``: autograd saves ``input`` anyway (a ResNet block's
    downsampling shortcut does), so the branch's saved copy of its rows is regathered from it
    in backward instead of being kept (:class:`_SavedRows`)."""
    if has_torch_function((input, residual)):
        return handle_torch_function(
            stochastic_depth, (input, residual), input, branch, p=p, training=training, mode=mode,
            residual=residual, scale_by_keep=scale_by_keep, generator=generator, seed=seed,
        )  # fmt: skip
    fn = "stochastic_depth"
    p, res = _checked_stochastic_depth_args(input, branch, p, mode, residual, fn)
    like = "input" if residual is None else "residual"
    B = input.shape[0]
    if training and (p == 1.0 or (p > 0.0 and mode == "batch" and batch_skips(p, generator, seed, fn))):
        return res.clone()  # a new tensor, as on every other path
    k = keep_count(B, p) if training and mode == "row" else B
    if k >= B:
        y = _branch_output(branch(input), res, B, fn, like)
        if training and mode == "batch" and scale_by_keep and p > 0.0:
            y = y * (1.0 / (1.0 - p))
        return res + y
    s = seed_tensor(input, generator, seed, fn)
    if _transforming():
        rows = subset_indices(s, B, k, input.device)
    else:
        rows = _call(ops.stochastic_depth_subset, s, B, k, grad=False)
    taken = _take_rows(input, rows)
    if input_saved and _SavedRows.usable(taken):
        with _SavedRows(input, rows, taken):
            y = branch(taken)
    else:
        y = branch(taken)
    y = _branch_output(y, res, k, fn, like)
    return _add_rows(res, rows, y, B / k if scale_by_keep else 1.0)


def dropconnect_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    p: float = 0.5,
    training: bool = True,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """DropConnect: ``F.linear(input, weight * mask / (1 - p), bias)``, one weight mask per
    call (Wan et al.).

    Args:
        input: a float tensor ``(..., in_features)``.
        weight: ``(out_features, in_features)`` of ``input``'s dtype and device.
        bias: ``(out_features,)`` or None.
        p: the probability of dropping a weight, in [0, 1].
        training: drop weights (else ``F.linear``).
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        ``(..., out_features)``. Under autocast the three tensors are cast as ``F.linear``
        casts them.

    Saved for backward: the input and the seed; backward regenerates the masked weight
    (never stored).

    Example:
        >>> y = fastreg.functional.dropconnect_linear(torch.randn(32, 64), torch.randn(128, 64), p=0.3)
    """
    if has_torch_function((input, weight, bias)):
        return handle_torch_function(
            dropconnect_linear, (input, weight, bias), input, weight, bias=bias, p=p, training=training,
            generator=generator, seed=seed,
        )  # fmt: skip
    fn = "dropconnect_linear"
    _check_float(input, fn)
    _check_float(weight, fn, "weight")
    if torch.is_autocast_enabled(input.device.type):  # as F.linear: all three in autocast's dtype
        dtype = torch.get_autocast_dtype(input.device.type)
        input, weight = _autocast_to(input, dtype), _autocast_to(weight, dtype)
        bias = None if bias is None else _autocast_to(bias, dtype)
    if weight.dim() != 2 or input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"fastreg.{fn}: weight must be (out_features, in_features) with in_features = "
            f"input.size(-1), got {tuple(weight.shape)} for input {tuple(input.shape)}"
        )
    if weight.dtype != input.dtype or weight.device != input.device:
        raise ValueError(f"fastreg.{fn}: weight must match input's dtype and device")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != input.dtype):
        raise ValueError(f"fastreg.{fn}: bias must have shape ({weight.shape[0]},) and input's dtype")
    p = check_p(p, fn)
    if not training or p == 0.0:
        return torch.nn.functional.linear(input, weight, bias)
    if _transforming():
        return R.dropconnect_linear(input, weight, bias, p, True, generator=generator, seed=seed)
    return _call(ops.dropconnect_linear, input, weight, bias, seed_tensor(input, generator, seed, fn), p)


# --- batch augmentations --------------------------------------------------------------------

IMAGE_DTYPES = FLOAT_DTYPES + (torch.uint8,)


def _check_images(images, fn, allow_uint8=False, allow_single=False):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"fastreg.{fn}: images must be a Tensor, got {type(images).__name__}")
    if images.dtype not in (IMAGE_DTYPES if allow_uint8 else FLOAT_DTYPES):
        kind = "a float or uint8" if allow_uint8 else "a float"
        raise TypeError(f"fastreg.{fn}: images must be {kind} tensor, got {images.dtype}")
    if images.dim() != 4 and not (allow_single and images.dim() == 3):
        shapes = "(C, H, W) or (B, C, H, W)" if allow_single else "4-D (B, C, H, W)"
        raise ValueError(f"fastreg.{fn}: images must be {shapes}, got shape {tuple(images.shape)}")


def _check_placement(images, fn, random_values=False, pairs_samples=False):
    """For a DTensor of images, the placements the batch augmentations take."""
    if _distributed.DTENSOR is not None and isinstance(images, _distributed.DTENSOR):
        from ._dtensor import check_images

        check_images(images, fn, random_values, pairs_samples)


def _run_boxes(images, inplace, op, op_, args):
    """Out of place, or in place writing only the boxes (autograd needs the
    out-of-place op: the result is then copied back)."""
    if inplace and not _needs_grad(images):
        kernel(op_, images, *args)
        return images
    out = _call(op, images, *args)
    return images.copy_(out) if inplace else out


def cutout(
    images: Tensor,
    size: int,
    p: float = 1.0,
    *,
    fill: float = 0.0,
    inplace: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): per sample, with probability ``p``, a square of side
    ``size`` centred uniformly over the image, clipped at the border, set to ``fill`` on
    every channel. Every draw happens on the images' device (no host sync).

    Args:
        images: ``(B, C, H, W)`` float or uint8, contiguous or channels_last, or one
            ``(C, H, W)`` image (as a batch of one, e.g. in a Dataset's ``__getitem__``).
        size: the square's side in pixels.
        p: the probability of a box per sample.
        fill: the value written into the box.
        inplace: write only the boxes into ``images``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        The images with the boxes filled (``images`` itself when in place).

    Saved for backward: the seed only (backward zeroes the same boxes of the gradient).

    Example:
        >>> out = fastreg.functional.cutout(torch.rand(64, 3, 32, 32), 16)
    """
    if has_torch_function_unary(images):
        return handle_torch_function(
            cutout, (images,), images, size, p=p, fill=fill, inplace=inplace, generator=generator, seed=seed
        )
    _check_images(images, "cutout", allow_uint8=True, allow_single=True)
    _check_placement(images, "cutout")
    _check_size(size, "cutout")
    p = check_p(p, "cutout")
    fill = _check_number(fill, "cutout", "fill")
    if images.dtype == torch.uint8 and not 0 <= fill <= 255:
        raise ValueError(f"fastreg.cutout: fill must be in [0, 255] for uint8 images, got {fill}")
    if images.dim() == 3:  # one image: a batch of one (a view, so in place writes it)
        out = cutout(images[None], size, p, fill=fill, inplace=inplace, generator=generator, seed=seed)
        return images if inplace else out[0]
    if _transforming():
        _check_no_batch_offset("cutout")
        return R.cutout(images, size, p, fill=fill, inplace=inplace, generator=generator, seed=seed)
    s = _draw_seed(images, generator, seed, "cutout", per_sample=True)
    return _run_boxes(images, inplace, ops.cutout, ops.cutout_, (s, size, p, fill))


def _check_size(size, fn):
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"fastreg.{fn}: size must be a positive int, got {size!r}")
    return size


def _check_pair(value, fn, arg):
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value)
    ):
        raise TypeError(f"fastreg.{fn}: {arg} must be a pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _checked_erasing_args(p, scale, ratio, value, fn):
    """random_erasing's arguments checked (those that do not depend on the images):
    (p, scale, ratio, whether value is 'random', the fill value)."""
    p = check_p(p, fn)
    s0, s1 = _check_pair(scale, fn, "scale")
    r0, r1 = _check_pair(ratio, fn, "ratio")
    if not 0.0 <= s0 <= s1 <= 1.0:
        raise ValueError(f"fastreg.{fn}: scale must satisfy 0 <= scale[0] <= scale[1] <= 1, got {scale!r}")
    if not 0.0 < r0 <= r1 < math.inf:
        raise ValueError(f"fastreg.{fn}: ratio must satisfy 0 < ratio[0] <= ratio[1], got {ratio!r}")
    if isinstance(value, str):
        if value != "random":
            raise ValueError(f"fastreg.{fn}: value must be a number or 'random', got {value!r}")
        return p, (s0, s1), (r0, r1), True, 0.0
    return p, (s0, s1), (r0, r1), False, _check_number(value, fn, "value")


def random_erasing(
    images: Tensor,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    *,
    value: float | str = 0.0,
    inplace: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Random erasing (Zhong et al., 2020) with torchvision's box rule: the box's area
    fraction uniform in ``scale``, its aspect ratio log-uniform in ``ratio``, up to 10
    attempts, else no change; one box per sample (torchvision: one per batch), applied
    with probability ``p`` per sample, every draw on the images' device.

    Args:
        images: ``(B, C, H, W)`` float or uint8, contiguous or channels_last, or one
            ``(C, H, W)`` image (as a batch of one, e.g. in a Dataset's ``__getitem__``).
        p: the probability of a box per sample.
        scale: the range of the box's area as a fraction of the image's.
        ratio: the range of the box's aspect ratio.
        value: the value written, or ``'random'`` for a standard normal per pixel (float
            images; bit-identical on every device for the same seed).
        inplace: write only the boxes into ``images``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        The images with the boxes erased.

    Saved for backward: the seed only.

    Example:
        >>> out = fastreg.functional.random_erasing(torch.rand(64, 3, 224, 224), p=0.25)
    """
    if has_torch_function_unary(images):
        return handle_torch_function(
            random_erasing, (images,), images, p=p, scale=scale, ratio=ratio, value=value,
            inplace=inplace, generator=generator, seed=seed,
        )  # fmt: skip
    fn = "random_erasing"
    _check_images(images, fn, allow_uint8=True, allow_single=True)
    p, (s0, s1), (r0, r1), random, fill = _checked_erasing_args(p, scale, ratio, value, fn)
    if random and images.dtype == torch.uint8:
        raise ValueError(f"fastreg.{fn}: value='random' needs float images, got uint8")
    _check_placement(images, fn, random)
    if not random and images.dtype == torch.uint8 and not 0 <= fill <= 255:
        raise ValueError(f"fastreg.{fn}: value must be in [0, 255] for uint8 images, got {fill}")
    if images.dim() == 3:  # one image: a batch of one (a view, so in place writes it)
        out = random_erasing(
            images[None], p, scale, ratio, value=value, inplace=inplace, generator=generator, seed=seed
        )
        return images if inplace else out[0]
    if _transforming():
        _check_no_batch_offset(fn)
        return R.random_erasing(
            images, p, (s0, s1), (r0, r1), value=value if random else fill, inplace=inplace,
            generator=generator, seed=seed,
        )  # fmt: skip
    sd = _draw_seed(images, generator, seed, fn, per_sample=True)
    args = (sd, p, s0, s1, math.log(r0), math.log(r1), fill, random)
    return _run_boxes(images, inplace, ops.random_erasing, ops.random_erasing_, args)


def _check_alpha(alpha, fn, arg, allow_zero=False):
    alpha = _check_number(alpha, fn, arg)
    # (no math.isinf: under torch.compile(dynamic=True) alpha may be a SymFloat)
    if not (alpha >= 0.0 if allow_zero else alpha > 0.0) or alpha == math.inf:
        raise ValueError(f"fastreg.{fn}: {arg} must be {'>= 0' if allow_zero else '> 0'}, got {alpha}")
    return alpha


def _check_num_classes(num_classes, fn):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"fastreg.{fn}: num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _check_label_smoothing(label_smoothing, fn):
    eps = _check_number(label_smoothing, fn, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"fastreg.{fn}: label_smoothing must be in [0, 1], got {eps}")
    return eps


def _checked_target(images, target, num_classes, fn):
    """mixup's target (class indices (B,) as int64, or probabilities (B, K), detached) and
    num_classes (required with indices, K's value with probabilities), checked."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"fastreg.{fn}: target must be a Tensor, got {type(target).__name__}")
    if target.device != images.device:
        raise ValueError(f"fastreg.{fn}: target is on {target.device} but images are on {images.device}")
    if target.dim() not in (1, 2) or target.shape[0] != images.shape[0]:
        raise ValueError(
            f"fastreg.{fn}: target must be class indices (B,) or probabilities (B, K) with B = "
            f"{images.shape[0]} (the images' batch), got shape {tuple(target.shape)}"
        )
    if num_classes is not None:
        _check_num_classes(num_classes, fn)
    if target.dim() == 1:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"fastreg.{fn}: class-index target must be an integer tensor, got {target.dtype}")
        if num_classes is None:
            raise ValueError(f"fastreg.{fn}: num_classes is required when target holds class indices")
        return target.long(), num_classes
    if not target.dtype.is_floating_point:
        raise TypeError(f"fastreg.{fn}: probability target (B, K) must be a float tensor, got {target.dtype}")
    if num_classes is None:
        num_classes = target.shape[1]
    elif num_classes != target.shape[1]:
        raise ValueError(
            f"fastreg.{fn}: target has {target.shape[1]} classes but num_classes is {num_classes}"
        )
    return target.detach(), num_classes  # targets are data: no gradient flows to them


def _checked_cutmix_minmax(images, cutmix_minmax, fn):
    """cutmix_minmax as the op's (min, max) fractions, (-1, -1) for None; a range that leaves
    no box side for the image's size is an error."""
    if cutmix_minmax is None:
        return -1.0, -1.0
    cut_min, cut_max = _check_pair(cutmix_minmax, fn, "cutmix_minmax")
    H, W = images.shape[2], images.shape[3]
    if not (0.0 <= cut_min and cut_max <= 1.0 and int(H * cut_min) < int(H * cut_max)) or not (
        int(W * cut_min) < int(W * cut_max)
    ):
        raise ValueError(
            f"fastreg.{fn}: cutmix_minmax {cutmix_minmax!r} gives no box side range for a {H}x{W} image"
        )
    return cut_min, cut_max


def _mix(
    fn,
    images,
    target,
    num_classes,
    label_smoothing,
    mixup_alpha,
    cutmix_alpha,
    cutmix_minmax,
    prob,
    switch_prob,
    mode,
    correct_lam,
    inplace,
    generator,
    seed,
):
    """The one op behind mixup, cutmix and fastreg.nn.Mixup; arguments already named."""
    _check_float(images, fn, "images")
    if images.dim() != 4:
        raise ValueError(f"fastreg.{fn}: images must be 4-D (B, C, H, W), got shape {tuple(images.shape)}")
    _check_placement(images, fn, pairs_samples=True)
    target, num_classes = _checked_target(images, target, num_classes, fn)
    eps = _check_label_smoothing(label_smoothing, fn)
    if mode not in MIX_MODES:
        raise ValueError(f"fastreg.{fn}: mode must be 'batch', 'pair' or 'elem', got {mode!r}")
    cut_min, cut_max = _checked_cutmix_minmax(images, cutmix_minmax, fn)
    if _transforming():
        return R.mix(
            images, target, num_classes=num_classes, label_smoothing=eps, mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha, cutmix_minmax=cutmix_minmax, prob=prob, switch_prob=switch_prob,
            mode=mode, correct_lam=correct_lam, inplace=inplace, generator=generator, seed=seed,
        )  # fmt: skip
    s = seed_tensor(images, generator, seed, fn)
    args = (
        target,
        s,
        num_classes,
        eps,
        mixup_alpha,
        cutmix_alpha,
        cut_min,
        cut_max,
        prob,
        switch_prob,
        MIX_MODES[mode],
        bool(correct_lam),
    )
    try:
        if inplace and not _needs_grad(images):
            soft, _ = kernel(ops.mix_, images, *args)
            return images, soft
        # autograd follows the images only: probability targets are data (soft targets detached)
        out, soft = _call(ops.mix, images, *args, grad=_needs_grad(images))
    except ValueError as e:  # the kernel's label check names the op: say what the user called
        prefix = "fastreg.mixup: "
        if fn == "mixup" or not str(e).startswith(prefix):
            raise
        raise ValueError(f"fastreg.{fn}: {str(e)[len(prefix) :]}") from None
    return (images.copy_(out) if inplace else out), soft


def mixup(
    images: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    *,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    mode: str = "batch",
    inplace: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al., 2018): ``lam_i * x_i + (1 - lam_i) * x_{B-1-i}`` with
    ``lam ~ Beta(alpha, alpha)`` drawn on the device (timm's pairing).

    Args:
        images: ``(B, C, H, W)`` float, contiguous or channels_last; B may be odd (the middle
            sample is its own partner).
        target: class indices ``(B,)`` (int64) or probabilities ``(B, K)`` (float).
        alpha: the Beta distribution's parameter, ``> 0``.
        num_classes: K, required with class indices.
        label_smoothing: eps: targets ``1 - eps + eps/K`` on, ``eps/K`` off.
        mode: one lambda per ``'batch'``, per partner ``'pair'`` or per sample ``'elem'``.
        inplace: write the mixed images into ``images``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        ``(images, soft_targets)``: the mixed images and ``(B, K)`` targets mixed with the
        same lambdas (float32 for class indices).

    Saved for backward: 64 bytes per sample (its draw), nothing per pixel.

    Example:
        >>> images, soft = fastreg.functional.mixup(torch.rand(64, 3, 32, 32), labels, 0.2, num_classes=10)
    """
    if has_torch_function((images, target)):
        return handle_torch_function(
            mixup, (images, target), images, target, alpha=alpha, num_classes=num_classes,
            label_smoothing=label_smoothing, mode=mode, inplace=inplace, generator=generator, seed=seed,
        )  # fmt: skip
    alpha = _check_alpha(alpha, "mixup", "alpha")
    return _mix(
        "mixup", images, target, num_classes, label_smoothing, alpha, 0.0, None, 1.0, 0.0, mode, True,
        inplace, generator, seed,
    )  # fmt: skip


def cutmix(
    images: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    *,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    mode: str = "batch",
    correct_lam: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """CutMix (Yun et al., 2019): each sample takes a box of its partner ``B-1-i``, of side
    ``floor(H sqrt(1 - lam))`` x ``floor(W sqrt(1 - lam))``, centre uniform, clipped, with
    ``lam ~ Beta(alpha, alpha)`` drawn on the device.

    Args:
        images: ``(B, C, H, W)`` float, contiguous or channels_last.
        target: class indices ``(B,)`` (int64) or probabilities ``(B, K)`` (float).
        alpha: the Beta distribution's parameter, ``> 0``.
        num_classes: K, required with class indices.
        label_smoothing: eps, as in :func:`mixup`.
        mode: one draw per ``'batch'``, per partner ``'pair'`` or per sample ``'elem'``.
        correct_lam: the targets' lambda is the box's true kept area (after clipping).
        inplace: write only the boxes into ``images``.
        generator: the generator the seed is drawn from (default: the device's).
        seed: an explicit seed, overriding ``generator``.

    Returns:
        ``(images, soft_targets)`` as :func:`mixup`.

    Saved for backward: 64 bytes per sample.

    Example:
        >>> images, soft = fastreg.functional.cutmix(torch.rand(64, 3, 32, 32), labels, num_classes=10)
    """
    if has_torch_function((images, target)):
        return handle_torch_function(
            cutmix, (images, target), images, target, alpha=alpha, num_classes=num_classes,
            label_smoothing=label_smoothing, mode=mode, correct_lam=correct_lam, inplace=inplace,
            generator=generator, seed=seed,
        )  # fmt: skip
    alpha = _check_alpha(alpha, "cutmix", "alpha")
    return _mix(
        "cutmix", images, target, num_classes, label_smoothing, 0.0, alpha, None, 1.0, 0.0, mode,
        correct_lam, inplace, generator, seed,
    )  # fmt: skip
