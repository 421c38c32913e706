"""fastreg.convert(model): swap torch.nn modules for their fastreg equivalents, in place;
fastreg.unconvert(model): swap them back."""

import torch

from . import _skip_blocks
from . import nn as fnn
from ._activations import TABLE as ACTIVATIONS
from ._optional import timm_drop_path, torchvision_stochastic_depth


def _activation_builder(row, fixed=None):
    """Builds fastreg's module of an activation row from a torch (or timm) module: the row's
    argument and ``inplace`` taken from the module's attributes, then `fixed` (a value None
    drops that attribute). None where the module cannot be swapped: an argument fastreg
    refuses (ELU's negative alpha), or an in-place module whose op has no in-place form."""
    cls = fnn.ACTIVATION_MODULES[row.name]
    fixed = fixed or {}

    def build(m):
        kw = {}
        if row.param is not None and hasattr(m, row.param):
            kw[row.param] = getattr(m, row.param)
        if getattr(m, "inplace", False) and "inplace" not in fixed:
            if not row.inplace:
                return None
            kw["inplace"] = True
        kw.update(fixed)
        kw = {k: v for k, v in kw.items() if v is not None}
        if row.param_min is not None and not kw.get(row.param, row.param_min) >= row.param_min:
            return None
        return cls(**kw)

    return build


# torch.nn type -> builds the fastreg module from the old one (same arguments, same
# parameters). Only exact types are swapped: a subclass may change forward.
_MODULES = {row.torch_module: _activation_builder(row) for row in ACTIVATIONS.values()}
_MODULES.update({
    torch.nn.PReLU: lambda m: _prelu(m),
    torch.nn.Dropout: lambda m: fnn.Dropout(m.p, m.inplace),
    torch.nn.AlphaDropout: lambda m: fnn.AlphaDropout(m.p, m.inplace),
})  # fmt: skip


def _timm_types():
    """timm's modules with a fastreg equivalent, when timm is installed: DropPath, PReLU and
    the activation layers its factory builds from names, which the table's rows name
    (`get_act_layer('gelu')` is timm's GELU, not nn.GELU: ConvNeXt's MLPs, the sigmoid gates
    of its squeeze-excite blocks)."""
    try:
        from timm.layers import DropPath
        from timm.layers import activations as act
    except ImportError:
        return {}
    try:
        from timm.layers import activations_me as act_me
    except ImportError:
        act_me = None
    types = {
        DropPath: lambda m: fnn.DropPath(m.drop_prob, getattr(m, "scale_by_keep", True)),
        act.PReLU: lambda m: _prelu(m),
    }
    for row in ACTIVATIONS.values():
        for cls_name, fixed in row.timm.items():
            cls = getattr(act, cls_name, None) or getattr(act_me, cls_name, None)
            if cls is not None:
                types[cls] = _activation_builder(row, fixed)
    return types


def _torchvision_types():
    """torchvision's StochasticDepth in 'row' mode (one decision per sample, scaled by
    1 / (1 - p): timm's drop_path), when torchvision is installed; 'batch' mode stays."""
    StochasticDepth = torchvision_stochastic_depth()
    if StochasticDepth is None:
        return {}
    return {StochasticDepth: lambda m: fnn.DropPath(m.p, True) if m.mode == "row" else None}


def _prelu(m):
    new = fnn.PReLU(m.num_parameters, device="meta")
    new.weight = m.weight  # the same Parameter: optimizers and state_dict keep it
    return new


# the attribute of a converted module that holds the module it replaced (set through
# object.__setattr__: not a submodule, so not in state_dict, parameters() or repr)
_SOURCE = "_fastreg_source"


def _replacement(module, extra):
    build = _MODULES.get(type(module)) or extra.get(type(module))
    if build is None:
        return None
    new = build(module)
    if new is not None:
        new.train(module.training)
        object.__setattr__(new, _SOURCE, module)
    return new


def convert(model: torch.nn.Module, *, stochastic_depth: str | None = None) -> torch.nn.Module:
    """Replace, in place, every module that has a fastreg equivalent; return the model.
    Parameters (PReLU's weight) are the same objects, so optimizers and ``state_dict`` keys
    are unchanged, and eval-mode outputs equal the original model's.

    Swapped: torch.nn's module of every activation of the table (fastreg.nn: Sigmoid,
    Tanh, ReLU, LeakyReLU, ELU with alpha >= 0, SELU, GELU, SiLU, ...), PReLU (keeping
    its weight), Dropout, AlphaDropout; when timm is installed, timm's DropPath, PReLU and
    the activation modules the table names (GELU, GELUTanh, Swish, SwishMe, out-of-place
    Sigmoid and Tanh, ...); when torchvision is installed, its StochasticDepth in 'row'
    mode. Only exact types are swapped. A model that is itself such a module is returned as its
    replacement. :func:`unconvert` undoes it.

    ``stochastic_depth="skip"`` also rewires timm's residual blocks that have a drop path
    (VisionTransformer and DeiT ``Block``, ``ConvNeXtBlock``, ResNet ``BasicBlock`` and
    ``Bottleneck``) so that in training each branch runs only on the samples its drop path
    keeps (:func:`fastreg.functional.stochastic_depth`, row mode, the drop path's ``p``).
    The blocks keep their submodules and ``state_dict`` keys; eval outputs are unchanged.
    Other module types holding a drop path are left as they are, with a warning naming them.

    Example:
        >>> model = fastreg.convert(timm.create_model("convnext_atto"))
    """
    if stochastic_depth not in (None, "skip"):
        raise ValueError(
            f"fastreg.convert: stochastic_depth must be None or 'skip', got {stochastic_depth!r}"
        )
    if stochastic_depth == "skip":
        _skip_blocks.rewire(model)
    extra = {**_timm_types(), **_torchvision_types()}
    top = _replacement(model, extra)
    if top is not None:
        return top
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _replacement(child, extra)
            if new is not None:
                setattr(parent, name, new)
    return model


# the arguments a converted module may have had changed since (a dropout schedule): copied
# back into the module it replaced
_HYPERPARAMETERS = ("p", "inplace", "negative_slope", "alpha", "approximate", "drop_prob", "scale_by_keep")


def _restored(module):
    """The module a converted one replaced, its arguments and training mode brought up to
    date (PReLU's weight is the same Parameter)."""
    source = module.__dict__[_SOURCE]
    for name in _HYPERPARAMETERS:
        if hasattr(source, name) and hasattr(module, name):
            setattr(source, name, getattr(module, name))
    if isinstance(module, fnn.DropPath) and not hasattr(source, "drop_prob"):
        source.p = module.drop_prob  # torchvision's StochasticDepth
    if isinstance(module, torch.nn.PReLU):
        source.weight = module.weight
    return source.train(module.training)


def _as_class(module, cls, drop=()):
    """module's state (parameters, buffers, hooks, arguments) under the plain class cls."""
    plain = cls.__new__(cls)
    plain.__dict__.update({k: v for k, v in module.__dict__.items() if k not in drop and k != _SOURCE})
    return plain


def _plain_drop_path(module):
    DropPath, StochasticDepth = timm_drop_path(), torchvision_stochastic_depth()
    if DropPath is not None:
        return DropPath(module.drop_prob, module.scale_by_keep).train(module.training)
    if StochasticDepth is not None and module.scale_by_keep:
        return StochasticDepth(module.drop_prob, "row").train(module.training)
    return None


def _plain(module, path):
    """The plain torch (or timm) module for a fastreg module; None for others."""
    if isinstance(module, _skip_blocks.SkipBlock):  # a rewired timm block: its timm class
        return _as_class(module, module._fastreg_base)
    if not type(module).__module__.startswith("fastreg."):
        return None
    if _SOURCE in module.__dict__:
        return _restored(module)
    cls = type(module)
    if cls in fnn.ACTIVATION_MODULES.values() or cls in (fnn.PReLU, fnn.Dropout, fnn.AlphaDropout):
        return _as_class(module, cls.__bases__[0])
    if cls is fnn.DropConnectLinear:  # its eval form: the Linear
        return _as_class(module, torch.nn.Linear, drop=("p",))
    if cls in (fnn.Cutout, fnn.RandomErasing):  # eval: the images unchanged
        return torch.nn.Identity()
    plain = _plain_drop_path(module) if cls is fnn.DropPath else None
    if plain is None:
        raise TypeError(
            f"fastreg.unconvert: {path or 'the model'} is fastreg.nn.{cls.__name__}, which has "
            "no plain torch module equivalent"
            + (" (timm or torchvision would give one)" if cls is fnn.DropPath else "")
        )
    return plain


def unconvert(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`convert`, in place, for a model that must run without fastreg: every
    module convert replaced gets back the module it replaced (its type, timm's included,
    with arguments changed since copied back); a fastreg module built directly becomes its
    torch.nn base class (activations, PReLU, Dropout, AlphaDropout), ``nn.Linear``
    (DropConnectLinear, its eval form), ``nn.Identity`` (Cutout and RandomErasing, whose eval
    form it is) or timm's ``DropPath`` (else torchvision's ``StochasticDepth``). The
    ``state_dict`` is unchanged (parameters are the same objects) and so are eval-mode
    outputs. Blocks rewired by ``stochastic_depth="skip"`` get their timm class back.
    BiasActDropout, Mixup and StochasticDepth have no torch module equivalent: a model that holds
    one raises TypeError, naming its path, before anything is swapped. Returns the model (a
    model that is itself such a module is returned as its replacement).

    Example:
        >>> model = fastreg.unconvert(fastreg.convert(torchvision.models.resnet18()))
    """
    swaps = []
    for parent_path, parent in model.named_modules():
        for name, child in parent.named_children():
            path = f"{parent_path}.{name}" if parent_path else name
            plain = _plain(child, path)
            if plain is not None:
                swaps.append((parent, name, plain))
    top = _plain(model, "")
    for parent, name, plain in swaps:
        setattr(parent, name, plain)
    return model if top is None else top
