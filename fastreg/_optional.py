"""Classes of the optional packages fastreg converts from (timm, torchvision): each is None
when its package is not installed."""

import importlib


def _optional(module, name):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def timm_drop_path():
    """timm.layers.DropPath, or None."""
    return _optional("timm.layers", "DropPath")


def torchvision_stochastic_depth():
    """torchvision.ops.StochasticDepth, or None."""
    return _optional("torchvision.ops", "StochasticDepth")
