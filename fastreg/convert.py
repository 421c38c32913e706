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
    """timm's DropPath, when timm is installed."""
    try:
        from timm.layers import DropPath
    except ImportError:
        return {}
    return {DropPath: lambda m: fnn.DropPath(m.drop_prob, getattr(m, "scale_by_keep", True))}


def _prelu(m):
    new = fnn.PReLU(m.num_parameters, device="meta")
    new.weight = m.weight  # the same Parameter: optimizers and state_dict keep it
    return new


def _replacement(module):
    build = _MODULES.get(type(module)) or _timm_types().get(type(module))
    if build is None:
        return None
    new = build(module)
    if new is not None:
        new.train(module.training)
    return new


def convert(model):
    """Replace, in place, every module that has a fastreg equivalent; return the model.

    Swapped: nn.Sigmoid, Tanh, ReLU, LeakyReLU, PReLU (keeping its weight), ELU
    (alpha >= 0), SELU, GELU, SiLU, Dropout, AlphaDropout, and timm's DropPath
    when timm is installed. A model that is itself such a module is returned as
    its replacement.
    """
    top = _replacement(model)
    if top is not None:
        return top
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(parent, name, new)
    return model
