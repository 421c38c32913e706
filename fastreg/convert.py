"""fastreg.convert(model): swap torch.nn modules for their fastreg equivalents, in place."""

import torch

from . import nn as fnn
from ._activations import TABLE as ACTIVATIONS


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
    try:
        from torchvision.ops import StochasticDepth
    except ImportError:
        return {}
    return {StochasticDepth: lambda m: fnn.DropPath(m.p, True) if m.mode == "row" else None}


def _prelu(m):
    new = fnn.PReLU(m.num_parameters, device="meta")
    new.weight = m.weight  # the same Parameter: optimizers and state_dict keep it
    return new


def _replacement(module, extra):
    build = _MODULES.get(type(module)) or extra.get(type(module))
    if build is None:
        return None
    new = build(module)
    if new is not None:
        new.train(module.training)
    return new


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every module that has a fastreg equivalent; return the model.
    Parameters (PReLU's weight) are the same objects, so optimizers and ``state_dict`` keys
    are unchanged, and eval-mode outputs equal the original model's.

    Swapped: torch.nn's module of every activation of the table (fastreg.nn: Sigmoid,
    Tanh, ReLU, LeakyReLU, ELU with alpha >= 0, SELU, GELU, SiLU, ...), PReLU (keeping
    its weight), Dropout, AlphaDropout; when timm is installed, timm's DropPath, PReLU and
    the activation modules the table names (GELU, GELUTanh, Swish, SwishMe, out-of-place
    Sigmoid and Tanh, ...); when torchvision is installed, its StochasticDepth in 'row'
    mode. Only exact types are swapped. A model that is itself such a module is returned as its
    replacement.

    Example:
        >>> model = fastreg.convert(timm.create_model("convnext_atto"))
    """
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
