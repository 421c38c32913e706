"""fastreg.convert(model): swap torch.nn modules for their fastreg equivalents, in place."""

import torch

from . import nn as fnn

# torch.nn type -> builds the fastreg module from the old one (same arguments,
# same parameters). Only exact types are swapped: a subclass may change forward.
_MODULES = {
    torch.nn.Sigmoid: lambda m: fnn.Sigmoid(),
    torch.nn.Tanh: lambda m: fnn.Tanh(),
    torch.nn.ReLU: lambda m: fnn.ReLU(m.inplace),
    torch.nn.LeakyReLU: lambda m: fnn.LeakyReLU(m.negative_slope, m.inplace),
    torch.nn.ELU: lambda m: fnn.ELU(m.alpha, m.inplace) if m.alpha >= 0 else None,
    torch.nn.SELU: lambda m: fnn.SELU(m.inplace),
    torch.nn.GELU: lambda m: fnn.GELU(m.approximate),
    torch.nn.SiLU: lambda m: fnn.SiLU(m.inplace),
    torch.nn.PReLU: lambda m: _prelu(m),
    torch.nn.Dropout: lambda m: fnn.Dropout(m.p, m.inplace),
    torch.nn.AlphaDropout: lambda m: fnn.AlphaDropout(m.p, m.inplace),
}


def _timm_types():
    """timm's modules with a fastreg equivalent, when timm is installed: DropPath and the
    activation layers its factory builds from names (`get_act_layer('gelu')` is timm's GELU,
    not nn.GELU: ConvNeXt's MLPs, the sigmoid gates of its squeeze-excite blocks)."""
    try:
        from timm.layers import DropPath
        from timm.layers import activations as act
    except ImportError:
        return {}
    types = {
        DropPath: lambda m: fnn.DropPath(m.drop_prob, getattr(m, "scale_by_keep", True)),
        act.GELU: lambda m: fnn.GELU(),  # its `inplace` argument is unused
        act.GELUTanh: lambda m: fnn.GELU("tanh"),
        act.Swish: lambda m: fnn.SiLU(m.inplace),  # x * sigmoid(x)
        act.PReLU: lambda m: _prelu(m),
        # fastreg's Sigmoid and Tanh, like torch's, have no in-place form: those stay
        act.Sigmoid: lambda m: None if m.inplace else fnn.Sigmoid(),
        act.Tanh: lambda m: None if m.inplace else fnn.Tanh(),
    }
    try:
        from timm.layers.activations_me import SwishMe
    except ImportError:
        return types
    types[SwishMe] = lambda m: fnn.SiLU()  # out of place whatever its `inplace`
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

    Swapped: nn.Sigmoid, Tanh, ReLU, LeakyReLU, PReLU (keeping its weight), ELU
    (alpha >= 0), SELU, GELU, SiLU, Dropout, AlphaDropout; when timm is installed,
    timm's DropPath, GELU, GELUTanh, Swish, SwishMe, PReLU and (out of place) Sigmoid
    and Tanh; when torchvision is installed, its StochasticDepth in 'row' mode. Only
    exact types are swapped. A model that is itself such a module is returned as its
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
