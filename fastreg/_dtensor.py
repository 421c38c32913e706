"""fastreg's ops on DTensors (imported by fastreg.distributed once torch.distributed.tensor
is loaded).

- Element-wise activations without a mask, their backward and in-place forms, PReLU and
  its backward: torch's sharding registration (``register_sharding``): the output keeps
  the input's placement (PReLU's weight follows the channel dimension).
- The random ops and the ops that save a 1-bit mask: a DTensor op handler (the mechanism
  torch's own loss_parallel uses) that runs the op on each local shard, with the shard's
  positioned seed (fastreg.distributed), and wraps the results. Random results therefore
  equal the op on the whole tensor bit for bit, whatever the placement. A mask is a shard's
  own bits: the handler records the placement it was made for, and backward lays the
  gradient out like that before it reads it.
- The batch augmentations: Cutout and random erasing on Replicate, Shard(0) (a shard of
  samples draws its samples' boxes) or Shard(1) images; Mixup and CutMix on Replicate or
  Shard(1); other placements raise, naming the placements they need.
"""

from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.experimental import register_sharding
from torch.distributed.tensor.placement_types import Partial, Replicate, Shard
from torch.utils.weak import WeakIdKeyDictionary

from ._activations import TABLE as ACTIVATIONS
from .distributed import element_position, positioned_seed, row_major_strides, sample_position

ops = torch.ops.fastreg

# local mask tensor -> the placements of the tensor it is the mask of
_MASKS = WeakIdKeyDictionary()


@dataclass(frozen=True)
class Rule:
    """Where an op's arguments are: the tensor its draw (or mask) runs over, the tensors
    laid out like it, its bias, seed and mask arguments (None: absent)."""

    draw: int = 0
    like: tuple = ()
    bias: int | None = None
    seed: int | None = None
    per_sample: bool = False
    mask_in: int | None = None  # a mask argument (backward of a mask op)
    mask_out: int | None = None  # the output index of the mask it makes
    inplace: bool = False


def _without_partial(t):
    if not isinstance(t, DTensor) or not any(p.is_partial() for p in t.placements):
        return t
    return t.redistribute(t.device_mesh, [Replicate() if p.is_partial() else p for p in t.placements])


def _to(t, placements, fn, arg):
    """t redistributed to placements (a plain tensor among DTensors is refused, as DTensor
    refuses it for its own ops)."""
    if not isinstance(t, DTensor):
        raise TypeError(f"fastreg.{fn}: {arg} is a torch.Tensor but the input is a DTensor")
    return t if tuple(t.placements) == tuple(placements) else t.redistribute(t.device_mesh, placements)


def _bias_placements(placements, ndim):
    """The bias runs along the last dimension: sharded like it, replicated otherwise."""
    return [Shard(0) if _on_last(p, ndim) else Replicate() for p in placements]


def _on_last(p, ndim):
    return p.is_shard() and p.dim % max(ndim, 1) == ndim - 1


def _bias_grad_placements(placements, ndim):
    out = []
    for p in placements:
        if p.is_shard():
            out.append(Shard(0) if _on_last(p, ndim) else Partial())
        else:
            out.append(Replicate())
    return out


def _mask_placements(placements):
    return [Shard(0) if p.is_shard() else Replicate() for p in placements]


def _position(x, local, per_sample):
    _, offsets = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    if per_sample:
        return sample_position(offsets[0] if x.dim() > 0 else 0)
    return element_position(tuple(x.shape), tuple(local.shape), offsets)


def _wrap(y, x, local):
    """The DTensor of a local result laid out like the shard `local` of `x`."""
    stride = x.stride() if y.stride() == local.stride() else row_major_strides(x.shape)
    return DTensor.from_local(y, x.device_mesh, x.placements, run_check=False, shape=x.shape, stride=stride)


def _prepare(rule, name, args, schema):
    """The DTensor the op runs over (mask owners' layout restored, Partial summed) and the
    other arguments laid out to match it."""
    args = list(args)
    arg_name = [a.name for a in schema.arguments]
    x = args[rule.draw]
    if rule.inplace:
        if any(p.is_partial() for p in x.placements):
            raise ValueError(f"fastreg.{name}: an in-place op needs a Shard or Replicate input, not Partial")
    else:
        x = _without_partial(x)
    if rule.mask_in is not None:
        mask = args[rule.mask_in]
        made_for = _MASKS.get(mask._local_tensor) if isinstance(mask, DTensor) else None
        if made_for is not None:
            x = _to(x, made_for, name, arg_name[rule.draw])
    args[rule.draw] = x
    for i in rule.like:
        if args[i] is not None:
            args[i] = _to(_without_partial(args[i]), x.placements, name, arg_name[i])
    if rule.bias is not None and args[rule.bias] is not None:
        bias_placements = _bias_placements(x.placements, x.dim())
        args[rule.bias] = _to(args[rule.bias], bias_placements, name, arg_name[rule.bias])
    return x, args


def _handler(name, rule):
    def handle(op_call, args, kwargs):
        schema = op_call._schema
        if kwargs:
            args = tuple(args) + tuple(kwargs[a.name] for a in schema.arguments[len(args) :])
        x, args = _prepare(rule, name, args, schema)
        local = x._local_tensor
        largs = [a._local_tensor if isinstance(a, DTensor) else a for a in args]
        if rule.seed is not None:
            largs[rule.seed] = positioned_seed(largs[rule.seed], _position(x, local, rule.per_sample))
        if rule.mask_in is not None:
            mask = largs[rule.mask_in]
            if mask.numel() < (local.numel() + 7) // 8:
                raise ValueError(
                    f"fastreg.{name}: the mask holds {mask.numel()} bytes but this shard of grad "
                    f"has {local.numel()} elements: grad is not laid out like the forward input"
                )
        out = op_call(*largs)
        return _wrap_outputs(name, rule, out, x, local, args)

    return handle


def _wrap_outputs(name, rule, out, x, local, args):
    if out is None:
        return None
    outs = out if isinstance(out, tuple) else (out,)
    wrapped = []
    for i, y in enumerate(outs):
        if i == rule.mask_out:
            m = DTensor.from_local(y, x.device_mesh, _mask_placements(x.placements), run_check=False)
            _MASKS[m._local_tensor] = tuple(x.placements)
            wrapped.append(m)
        elif i == 0:
            wrapped.append(_wrap(y, x, local))
        else:  # bias_act_dropout_backward's grad_bias
            bias = args[rule.bias]
            if bias is None:
                wrapped.append(
                    DTensor.from_local(y, x.device_mesh, [Replicate()] * x.device_mesh.ndim, run_check=False)
                )
                continue
            placements = _bias_grad_placements(x.placements, x.dim())
            wrapped.append(
                DTensor.from_local(
                    y, x.device_mesh, placements, run_check=False, shape=bias.shape, stride=(1,)
                )
            )
    return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]


RULES = {
    "dropout": Rule(seed=1),
    "dropout_": Rule(seed=1, inplace=True),
    "dropout_backward": Rule(seed=1),
    "dropout_add": Rule(like=(1,), seed=2),
    "drop_path": Rule(like=(1,), seed=2, per_sample=True),
    "drop_path_backward": Rule(seed=1, per_sample=True),
    "bias_act_dropout": Rule(bias=1, seed=2, mask_out=1),
    "bias_act_dropout_backward": Rule(like=(1,), bias=2, seed=3),
    "relu": Rule(mask_out=1),
    "leaky_relu": Rule(mask_out=1),
    "relu_": Rule(mask_out=0, inplace=True),
    "leaky_relu_": Rule(mask_out=0, inplace=True),
    "relu_backward": Rule(mask_in=1),
    "leaky_relu_backward": Rule(mask_in=1),
}


def _bias_act_backward_handler():
    """bias_act_dropout_backward's `saved` is the input (laid out like grad) or, for relu
    and leaky_relu, the mask: one rule each."""
    like = _handler("bias_act_dropout_backward", RULES["bias_act_dropout_backward"])
    masked = _handler("bias_act_dropout_backward", Rule(bias=2, seed=3, mask_in=1))

    def handle(op_call, args, kwargs):
        activation = args[4] if len(args) > 4 else kwargs["activation"]
        return (masked if ACTIVATIONS[activation].saves == "mask" else like)(op_call, args, kwargs)

    return handle


def _dropconnect(fn):
    """DropConnect is a composite (the weight's dropout, then a matmul): on DTensors it runs
    as its parts, each of which DTensor handles (the weight mask positioned like any other)."""

    def handle(op_call, args, kwargs):
        return fn(*args, **kwargs)

    return handle


# --- torch's sharding registration for the element-wise ops ---------------------------------


def _elementwise(n_tensors):
    """op(t_1, ..., t_n, *params) -> one tensor, every tensor placed alike."""

    def strategies(x, *rest):
        params = [None] * (len(rest) - (n_tensors - 1))
        out = [([Replicate()], [Replicate()] * n_tensors + params)]
        for d in range(x.ndim):
            out.append(([Shard(d)], [Shard(d)] * n_tensors + params))
        return out

    return strategies


def _elementwise_inplace(x, *rest):
    extra = [None] * len(rest)
    return [([], [Replicate()] + extra)] + [([], [Shard(d)] + extra) for d in range(x.ndim)]


def _prelu(x, weight):
    per_channel = weight.shape[0] > 1 if len(weight.shape) else False
    out = [([Replicate()], [Replicate(), Replicate()])]
    for d in range(x.ndim):
        w = Shard(0) if (per_channel and d == 1) else Replicate()
        out.append(([Shard(d)], [Shard(d), w]))
    return out


def _prelu_backward(grad, x, weight):
    per_channel = weight.shape[0] > 1 if len(weight.shape) else False
    out = [([Replicate(), Replicate()], [Replicate(), Replicate(), Replicate()])]
    for d in range(x.ndim):
        channel = per_channel and d == 1
        w = Shard(0) if channel else Replicate()
        out.append(([Shard(d), w if channel else Partial()], [Shard(d), Shard(d), w]))
    return out


def _sharded_dims(images):
    return {p.dim % max(images.dim(), 1) for p in images.placements if p.is_shard()}


def check_images(images, fn, random_values=False, pairs_samples=False):
    """The placements the batch augmentations take (raised naming ``fn``): Cutout and random
    erasing draw per sample (a shard of samples draws its samples' boxes) over whole images;
    Mixup and CutMix (``pairs_samples``) pair samples across the whole batch."""
    allowed = {1} if pairs_samples else ({0} if random_values else {0, 1})
    if not _sharded_dims(images) <= allowed:
        need = {
            frozenset({1}): "Replicate or Shard(1) (channels): it pairs samples across the whole batch",
            frozenset({0}): "Replicate or Shard(0) (samples): value='random' keys its values by "
            "position in the whole batch",
            frozenset({0, 1}): "Replicate, Shard(0) (samples) or Shard(1) (channels): its boxes "
            "span whole images",
        }[frozenset(allowed)]
        raise NotImplementedError(
            f"fastreg.{fn}: on a DTensor the images must be {need}; got {tuple(images.placements)}"
        )


def _batch_op(name, pairs_samples):
    """Cutout, random erasing, mixup/cutmix: per-sample draws over the whole batch, which a
    shard of samples or pixels does not hold; channels may be sharded."""

    def handle(op_call, args, kwargs):
        images = args[0]
        random = name.startswith("random_erasing") and (args[8] if len(args) > 8 else kwargs.get("random"))
        check_images(images, name, random, pairs_samples)
        for i, a in enumerate(args):
            if i != 0 and isinstance(a, DTensor) and not all(p.is_replicate() for p in a.placements):
                raise NotImplementedError(
                    f"fastreg.{name}: on a DTensor every argument but the images must be Replicate"
                )
        largs = [a._local_tensor if isinstance(a, DTensor) else a for a in args]
        if 0 in _sharded_dims(images):  # a shard of samples: their boxes, from seed [seed, first]
            largs[1] = positioned_seed(largs[1], _position(images, images._local_tensor, per_sample=True))
        out = op_call(*largs, **kwargs)
        return _wrap_batch(out, images)

    return handle


def _wrap_batch(out, images):
    if out is None:
        return None
    outs = out if isinstance(out, tuple) else (out,)
    mesh = images.device_mesh
    wrapped = [DTensor.from_local(outs[0], mesh, images.placements, run_check=False, shape=images.shape,
                                  stride=images.stride())]  # fmt: skip
    for t in outs[1:]:  # soft targets, per-sample params: the same on every shard
        wrapped.append(DTensor.from_local(t, mesh, [Replicate()] * mesh.ndim, run_check=False))
    return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]


def register():
    handlers = DTensor._op_dispatcher._custom_op_handlers
    for name, rule in RULES.items():
        if name != "bias_act_dropout_backward":
            handlers[getattr(ops, name).default] = _handler(name, rule)
    handlers[ops.bias_act_dropout_backward.default] = _bias_act_backward_handler()
    from . import _autograd

    handlers[ops.dropconnect_linear.default] = _dropconnect(_autograd._dropconnect_linear)
    backward = _autograd._dropconnect_linear_backward_impl
    handlers[ops.dropconnect_linear_backward.default] = _dropconnect(backward)
    for name in ("cutout", "cutout_", "random_erasing", "random_erasing_"):
        handlers[getattr(ops, name).default] = _batch_op(name, pairs_samples=False)
    for name in ("mix", "mix_", "mix_backward"):
        handlers[getattr(ops, name).default] = _batch_op(name, pairs_samples=True)
    for row in ACTIVATIONS.values():
        if row.name in ("relu", "leaky_relu"):
            continue
        register_sharding(getattr(ops, row.name).default)(_elementwise(1))
        register_sharding(getattr(ops, f"{row.name}_backward").default)(_elementwise(2))
        if row.inplace:
            register_sharding(getattr(ops, f"{row.name}_").default)(_elementwise_inplace)
    register_sharding(ops.prelu.default)(_prelu)
    register_sharding(ops.prelu_backward.default)(_prelu_backward)
