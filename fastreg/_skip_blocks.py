"""``fastreg.convert(model, stochastic_depth="skip")``: timm's residual blocks with a drop
path, rewired so that in training the residual branches run only on the samples their drop
path keeps (:func:`fastreg.functional.stochastic_depth`, row mode).

A rewired block keeps its object, its submodules and its ``state_dict`` keys: only its class
changes, to a subclass of its timm class whose ``forward`` differs in training, where the
original's ``x + drop_path(branch(x))`` becomes ``stochastic_depth(x, branch, p)`` with the
drop path's own ``p`` and ``scale_by_keep``. In eval the original forward runs. Each
subclass's branches spell out the timm forward of the pinned timm version (the tests compare
them with it). The subclasses are built when timm is importable and are reachable as
attributes of this module, so a pickled model loads.
"""

import warnings

import torch

from . import functional as FR
from ._optional import timm_drop_path, torchvision_stochastic_depth


class SkipBlock:
    """Marks a rewired block; ``_fastreg_base`` is the timm class it was."""

    _fastreg_base = None


def _drop_of(module):
    """(p, scale_by_keep) of a block's drop path module (timm's or fastreg's DropPath; an
    Identity or None is p = 0)."""
    if module is None or not hasattr(module, "drop_prob"):
        return 0.0, True
    return float(module.drop_prob), bool(getattr(module, "scale_by_keep", True))


def _skip(block, x, branch, drop_path, residual=None, input_saved=False):
    p, scale_by_keep = _drop_of(drop_path)
    return FR._stochastic_depth(
        x, branch, p, block.training, "row", residual, scale_by_keep, None, None, input_saved
    )


def _vit_branches(self):
    return [
        (lambda t: self.ls1(self.attn(self.norm1(t))), self.drop_path1),
        (lambda t: self.ls2(self.mlp(self.norm2(t))), self.drop_path2),
    ]


def _vit_forward(self, x, attn_mask=None, is_causal=False):
    if not self.training or attn_mask is not None or is_causal:
        return self._fastreg_base.forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
    for branch, drop_path in _vit_branches(self):
        x = _skip(self, x, branch, drop_path)
    return x


def _convnext_branch(self, t):
    t = self.conv_dw(t)
    if self.use_conv_mlp:
        t = self.mlp(self.norm(t))
    else:
        t = self.mlp(self.norm(t.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if self.gamma is not None:
        t = t.mul(self.gamma.reshape(1, -1, 1, 1))
    return t


def _convnext_branches(self):
    return [(lambda t: _convnext_branch(self, t), self.drop_path)]


def _convnext_forward(self, x):
    if not self.training:
        return self._fastreg_base.forward(self, x)
    ((branch, drop_path),) = _convnext_branches(self)
    return _skip(self, x, branch, drop_path, self.shortcut(x))


def _basic_branch(self, t):
    t = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(t)))))
    t = self.bn2(self.conv2(t))
    return t if self.se is None else self.se(t)


def _bottleneck_branch(self, t):
    t = self.act1(self.bn1(self.conv1(t)))
    t = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(t)))))
    t = self.bn3(self.conv3(t))
    return t if self.se is None else self.se(t)


def _resnet_family(branch, last_act):
    def branches(self):
        return [(lambda t: branch(self, t), self.drop_path)]

    def forward(self, x):
        if not self.training or self.drop_path is None:
            return self._fastreg_base.forward(self, x)
        if self.downsample is None:
            shortcut, saved = x, False
        else:  # its convolution (or pooling) saves x: the branch's copy of x's rows need not
            shortcut, saved = self.downsample(x), True
        ((branch_of_self, drop_path),) = branches(self)
        out = _skip(self, x, branch_of_self, drop_path, shortcut, saved)
        return getattr(self, last_act)(out)

    return branches, forward


def _families():
    """(timm class, branches, forward) of every block type the rewiring knows; empty without
    timm. ``branches(block)``: [(branch, drop path module)] in call order."""
    try:
        from timm.models import convnext, resnet, vision_transformer
    except ImportError:
        return []
    return [
        (vision_transformer.Block, _vit_branches, _vit_forward),
        (convnext.ConvNeXtBlock, _convnext_branches, _convnext_forward),
        (resnet.BasicBlock, *_resnet_family(_basic_branch, "act2")),
        (resnet.Bottleneck, *_resnet_family(_bottleneck_branch, "act3")),
    ]


def residual_branches(block):
    """[(branch, p)] of a block of a type the rewiring knows, rewired or not, in call order:
    each branch a callable on samples of its input, ``p`` its drop path's probability (0
    without one). What skipping can save of the block (bench/train_step.py times them);
    None for another type."""
    for cls, branches, _ in _families():
        if isinstance(block, cls):
            return [(branch, _drop_of(drop_path)[0]) for branch, drop_path in branches(block)]
    return None


_CLASSES = {}  # timm class -> its rewired subclass


def skip_classes():
    """{timm block class: its rewired subclass}, built once."""
    if not _CLASSES:
        for base, _, forward in _families():
            name = f"Skip{base.__name__}"
            cls = type(
                name, (SkipBlock, base), {"forward": forward, "_fastreg_base": base, "__module__": __name__}
            )
            globals()[name] = cls
            _CLASSES[base] = cls
    return _CLASSES


def __getattr__(name):  # pickle finds a rewired class here before any convert() ran
    for cls in skip_classes().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _drop_path_types():
    from .nn import DropPath as FastregDropPath

    optional = (timm_drop_path(), torchvision_stochastic_depth())
    return (*(t for t in optional if t is not None), FastregDropPath)


def rewire(model: torch.nn.Module) -> None:
    """Rewires, in place, every block of ``model`` (itself included) of a known type that has
    a drop path module; warns, naming them, about the other module types that hold one."""
    classes = skip_classes()
    drop_types = _drop_path_types()
    unknown = set()
    for module in model.modules():
        if isinstance(module, SkipBlock):
            continue
        if not any(isinstance(child, drop_types) for child in module.children()):
            continue
        cls = classes.get(type(module))
        if cls is None:
            unknown.add(f"{type(module).__module__}.{type(module).__qualname__}")
        else:
            module.__class__ = cls
    if unknown:
        warnings.warn(
            "fastreg.convert(stochastic_depth='skip'): these block types are left as they are "
            f"(their drop path computes every sample): {', '.join(sorted(unknown))}",
            stacklevel=3,
        )
