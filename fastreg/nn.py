"""nn.Module wrappers with torch.nn's names and constructor arguments.

Each subclasses its torch.nn counterpart (same attributes, state_dict and
repr; isinstance checks keep working) and only replaces forward.
"""

import linecache
from typing import Optional

import torch
from torch import Tensor

from . import functional as FR
from ._activations import TABLE as ACTIVATIONS
from ._random import STOCHASTIC_DEPTH_MODES, check_p


def _torch_call(row, owner="self.", inplace=True):
    """The source of the torch call a module of `row` stands for under TorchScript (its
    argument read from `owner`)."""
    fn = row.torch_function
    mod = "torch" if getattr(torch, fn.__name__, None) is fn else "torch.nn.functional"
    args = ([f"{row.param}={owner}{row.param}"] if row.param else []) + (
        ["inplace=self.inplace"] if row.inplace and inplace else []
    )
    return f"{mod}.{fn.__name__}(input{''.join(', ' + a for a in args)})"


def _torch_bias_act_dropout_source():
    """bias_act_dropout in torch functions, which TorchScript compiles: one branch per
    activation of the table."""
    lines = [
        "def _torch_bias_act_dropout(input: Tensor, bias: Optional[Tensor], activation: str, p: float,\n"
        "                            training: bool, negative_slope: float, alpha: float,\n"
        "                            approximate: str) -> Tensor:\n",
        "    if bias is not None:\n",
        "        input = input + bias\n",
    ]
    for row in ACTIVATIONS.values():
        lines.append(f"    if activation == {row.name!r}:\n")
        lines.append(f"        input = {_torch_call(row, owner='', inplace=False)}\n")
    lines.append("    return torch.nn.functional.dropout(input, p, training)\n")
    return "".join(lines)


def _compile_source(src, name, namespace):
    """exec `src` with a file name linecache serves, so that inspect (and TorchScript, which
    compiles a module's forward from its source) can read the generated code."""
    filename = f"<fastreg.nn.{name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), namespace)  # noqa: S102  (generated from the table)


def _activation_module(row):
    """fastreg's module of an activation row: a subclass of torch.nn's (the same constructor
    arguments, attributes, state_dict and repr) whose forward runs fastreg's function."""
    base = row.torch_module
    args = ([f"self.{row.param}"] if row.param else []) + (["self.inplace"] if row.inplace else [])
    src = (
        "def forward(self, input: Tensor) -> Tensor:\n"
        "    if torch.jit.is_scripting():  # TorchScript compiles only this branch\n"
        f"        return {_torch_call(row)}\n"
        "    else:\n"
        "        if torch.jit.is_tracing():\n"
        f"            return {_torch_call(row)}\n"
        f"        return FR.{row.name}(input{''.join(', ' + a for a in args)})\n"
    )
    namespace = {"FR": FR, "Tensor": Tensor, "torch": torch}
    _compile_source(src, f"{base.__name__}.forward", namespace)
    doc = (
        f":class:`torch.nn.{base.__name__}` running :func:`fastreg.functional.{row.name}`: the same\n"
        "constructor arguments, attributes, ``state_dict`` and ``repr`` (a subclass, so ``isinstance``\n"
        f"checks keep working). Saved for backward: {row.saved_doc}.\n\n"
        f"Example:\n    >>> m = fastreg.nn.{base.__name__}()\n"
    )
    cls = type(
        base.__name__, (base,), {"forward": namespace["forward"], "__doc__": doc, "__module__": __name__}
    )
    cls.forward.__qualname__ = f"{base.__name__}.forward"
    return cls


ACTIVATION_MODULES = {name: _activation_module(row) for name, row in ACTIVATIONS.items()}
_namespace = {"__name__": __name__, "torch": torch, "Tensor": Tensor, "Optional": Optional}
_compile_source(_torch_bias_act_dropout_source(), "_torch_bias_act_dropout", _namespace)
_torch_bias_act_dropout = _namespace["_torch_bias_act_dropout"]
globals().update({cls.__name__: cls for cls in ACTIVATION_MODULES.values()})

__all__ = [
    *(cls.__name__ for cls in ACTIVATION_MODULES.values()), "PReLU",
    "Dropout", "AlphaDropout", "BiasActDropout", "DropPath", "StochasticDepth", "DropConnectLinear", "Cutout",
    "RandomErasing", "Mixup",
]  # fmt: skip


class PReLU(torch.nn.PReLU):
    """:class:`torch.nn.PReLU` running :func:`fastreg.functional.prelu`: the same constructor
    arguments, attributes, ``state_dict`` and ``repr`` (a subclass, so ``isinstance`` checks
    keep working). Saved for backward: the input and the weight.

    Example:
        >>> m = fastreg.nn.PReLU(num_parameters=64)
    """

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return torch.nn.functional.prelu(input, self.weight)
        else:
            if torch.jit.is_tracing():
                return torch.nn.functional.prelu(input, self.weight)
            return FR.prelu(input, self.weight)


class Dropout(torch.nn.Dropout):
    """:class:`torch.nn.Dropout` running :func:`fastreg.functional.dropout`: the same constructor
    arguments, attributes, ``state_dict`` and ``repr`` (a subclass, so ``isinstance`` checks
    keep working). Saved for backward: the seed only (torch: a byte mask per element).

    Example:
        >>> m = fastreg.nn.Dropout(p=0.1)
    """

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return torch.nn.functional.dropout(input, self.p, self.training, self.inplace)
        else:
            if torch.jit.is_tracing():
                return torch.nn.functional.dropout(input, self.p, self.training, self.inplace)
            return FR.dropout(input, self.p, self.training, self.inplace)


class AlphaDropout(torch.nn.AlphaDropout):
    """:class:`torch.nn.AlphaDropout` running :func:`fastreg.functional.alpha_dropout`: the same constructor
    arguments, attributes, ``state_dict`` and ``repr`` (a subclass, so ``isinstance`` checks
    keep working). Saved for backward: the seed only.

    Example:
        >>> m = fastreg.nn.AlphaDropout(p=0.1)
    """

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return torch.nn.functional.alpha_dropout(input, self.p, self.training, self.inplace)
        else:
            if torch.jit.is_tracing():
                return torch.nn.functional.alpha_dropout(input, self.p, self.training, self.inplace)
            return FR.alpha_dropout(input, self.p, self.training, self.inplace)


def _torch_drop_path(x: Tensor, p: float, training: bool, scale_by_keep: bool) -> Tensor:
    """timm's drop_path in torch ops, which TorchScript compiles (torch's random draws, not
    fastreg's)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    if keep > 0.0 and scale_by_keep:
        mask.div_(keep)
    return x * mask


class _NotScriptable:
    """fastreg's autograd formulas are Python functions, which TorchScript can neither compile
    nor save; a module with no torch equivalent refuses to be scripted."""

    def __prepare_scriptable__(self):
        raise TypeError(
            f"torch.jit.script: fastreg.nn.{type(self).__name__} has no TorchScript form "
            "(fastreg.unconvert(model) gives the eval form of Cutout, RandomErasing and "
            "DropConnectLinear)"
        )


class BiasActDropout(torch.nn.Module):
    """``dropout(act(x + bias), p)`` in one kernel (:func:`fastreg.functional.bias_act_dropout`),
    with a learnable bias over the last dimension: zeros at first, as a bias folded out of
    the preceding ``nn.Linear(..., bias=False)``.

    Args:
        num_features: K, the size of the input's last dimension.
        activation: one of relu, leaky_relu, gelu, silu, sigmoid, tanh, elu, selu.
        p: the drop probability in training, in [0, 1].
        bias: learn a bias (else none is added).
        negative_slope: leaky_relu's slope.
        alpha: elu's alpha (``>= 0``).
        approximate: gelu's form, ``'none'`` or ``'tanh'``.
        device, dtype: of the bias.

    Saved for backward: relu/leaky_relu a 1-bit mask, the others the input; and the seed.

    Example:
        >>> block = torch.nn.Sequential(torch.nn.Linear(512, 2048, bias=False),
        ...                             fastreg.nn.BiasActDropout(2048, "gelu", p=0.1))
    """

    def __init__(
        self,
        num_features: int,
        activation: str = "relu",
        p: float = 0.0,
        bias: bool = True,
        *,
        negative_slope: float = 0.01,
        alpha: float = 1.0,
        approximate: str = "none",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fn = "nn.BiasActDropout"
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 0:
            raise ValueError(f"fastreg.{fn}: num_features must be an int >= 0, got {num_features!r}")
        FR._checked_activation_args(activation, negative_slope, alpha, approximate, fn)
        self.num_features, self.activation, self.p = num_features, activation, check_p(p, fn)
        self.negative_slope, self.alpha, self.approximate = negative_slope, alpha, approximate
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return self._torch_forward(input)
        else:
            if torch.jit.is_tracing():
                return self._torch_forward(input)
            return FR.bias_act_dropout(
                input, self.bias, self.activation, self.p, self.training,
                negative_slope=self.negative_slope, alpha=self.alpha, approximate=self.approximate,
            )  # fmt: skip

    def _torch_forward(self, input: Tensor) -> Tensor:
        """The forward in torch functions, for TorchScript and tracing."""
        return _torch_bias_act_dropout(
            input, self.bias, self.activation, self.p, self.training,
            self.negative_slope, self.alpha, self.approximate,
        )  # fmt: skip

    def extra_repr(self):
        return (
            f"{self.num_features}, activation={self.activation!r}, p={self.p}, bias={self.bias is not None}"
        )


class DropPath(torch.nn.Module):
    """Stochastic depth per sample (timm's ``DropPath(drop_prob, scale_by_keep)``,
    :func:`fastreg.functional.drop_path`), in training mode only.

    Args:
        drop_prob: the probability of dropping a sample, in [0, 1].
        scale_by_keep: scale the kept samples by ``1 / (1 - drop_prob)``.

    Saved for backward: the seed only.

    Example:
        >>> x = x + fastreg.nn.DropPath(0.1)(block(x))
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = check_p(drop_prob, "nn.DropPath", "drop_prob")
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return _torch_drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
        else:
            if torch.jit.is_tracing():
                return _torch_drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
            return FR.drop_path(x, self.drop_prob, self.training, scale_by_keep=self.scale_by_keep)

    def extra_repr(self):
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class StochasticDepth(_NotScriptable, torch.nn.Module):
    """A residual branch under stochastic depth that skips the dropped samples' compute:
    ``x + drop_path(branch(x))`` in distribution, with ``branch`` run only on the samples
    kept (:func:`fastreg.functional.stochastic_depth`). In eval, or with ``p = 0``, the
    branch runs on every sample.

    Args:
        branch: the residual branch, a module whose output is shaped like its input.
        p: the drop probability, in [0, 1].
        mode: ``"row"``: a fixed number max(1, round(B * (1 - p))) of the B samples, drawn
            on the device, run the branch, scaled by B / k; ``"batch"``: the whole branch is
            skipped with probability ``p`` (a host-side draw).
        scale_by_keep: scale the branch's output by B / k (row) or 1 / (1 - p) (batch).

    Saved for backward: what the branch saves, for the kept samples only.

    Example:
        >>> block = fastreg.nn.StochasticDepth(torch.nn.Sequential(norm, mlp), p=0.2)
    """

    def __init__(
        self, branch: torch.nn.Module, p: float = 0.0, mode: str = "row", scale_by_keep: bool = True
    ):
        super().__init__()
        if not isinstance(branch, torch.nn.Module):
            raise TypeError(
                f"fastreg.nn.StochasticDepth: branch must be a torch.nn.Module, got {type(branch).__name__}"
            )
        if mode not in STOCHASTIC_DEPTH_MODES:
            raise ValueError(f"fastreg.nn.StochasticDepth: mode must be 'row' or 'batch', got {mode!r}")
        self.branch = branch
        self.p = check_p(p, "nn.StochasticDepth")
        self.mode = mode
        self.scale_by_keep = bool(scale_by_keep)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():  # torch's draws: the traced graph holds no fastreg op
            if self.mode == "row":
                return x + _torch_drop_path(self.branch(x), self.p, self.training, self.scale_by_keep)
            return x + self.branch(x)  # a traced graph cannot keep a host-side coin
        return FR.stochastic_depth(
            x, self.branch, self.p, self.training, mode=self.mode, scale_by_keep=self.scale_by_keep
        )

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode!r}"


class DropConnectLinear(_NotScriptable, torch.nn.Linear):
    """``nn.Linear`` whose weight is dropped out in training, one mask per call
    (:func:`fastreg.functional.dropconnect_linear`): ``nn.Linear``'s arguments and ``p``.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        p: the probability of dropping a weight in training, in [0, 1].

    Saved for backward: the input and the seed (never the mask or the masked weight).

    Example:
        >>> layer = fastreg.nn.DropConnectLinear(512, 256, p=0.3)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        p: float = 0.5,
    ) -> None:
        p = check_p(p, "nn.DropConnectLinear")
        super().__init__(in_features, out_features, bias, device, dtype)
        self.p = p

    def forward(self, input: Tensor) -> Tensor:
        return FR.dropconnect_linear(input, self.weight, self.bias, self.p, self.training)

    def extra_repr(self):
        return super().extra_repr() + f", p={self.p}"


class Cutout(_NotScriptable, torch.nn.Module):
    """Cutout (DeVries & Taylor) on a batch of images ``(B, C, H, W)`` or one image
    ``(C, H, W)`` (in a Dataset, with DataLoader workers: each worker draws from its own
    default generator), in training mode only (:func:`fastreg.functional.cutout`): per
    sample, with probability ``p``, a square of side ``size`` set to ``fill``, drawn on the
    images' device.

    Args:
        size: the square's side in pixels.
        p: the probability of a box per sample.
        fill: the value written.
        inplace: write only the boxes into the images.

    Example:
        >>> images = fastreg.nn.Cutout(16)(torch.rand(64, 3, 32, 32))
    """

    def __init__(self, size: int, p: float = 1.0, fill: float = 0.0, inplace: bool = False) -> None:
        super().__init__()
        fn = "nn.Cutout"
        self.size, self.p = FR._check_size(size, fn), check_p(p, fn)
        self.fill, self.inplace = FR._check_number(fill, fn, "fill"), inplace

    def forward(self, images: Tensor) -> Tensor:
        if not self.training:
            return images
        return FR.cutout(images, self.size, self.p, fill=self.fill, inplace=self.inplace)

    def extra_repr(self):
        return f"size={self.size}, p={self.p}, fill={self.fill}, inplace={self.inplace}"


class RandomErasing(_NotScriptable, torch.nn.Module):
    """Random erasing with torchvision's ``RandomErasing`` arguments and box rule, one box
    per sample of a ``(B, C, H, W)`` batch (torchvision: one per batch) or on one ``(C, H,
    W)`` image, drawn on the device, in training mode only
    (:func:`fastreg.functional.random_erasing`).

    Args:
        p: the probability of a box per sample.
        scale: the range of the box's area as a fraction of the image's.
        ratio: the range of the box's aspect ratio.
        value: the value written, or ``'random'`` (a standard normal per pixel).
        inplace: write only the boxes into the images.

    Example:
        >>> images = fastreg.nn.RandomErasing(p=0.25)(torch.rand(64, 3, 224, 224))
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: float | str = 0.0,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        p, scale, ratio, _, _ = FR._checked_erasing_args(p, scale, ratio, value, "nn.RandomErasing")
        self.p, self.scale, self.ratio, self.value, self.inplace = p, scale, ratio, value, inplace

    def forward(self, images: Tensor) -> Tensor:
        if not self.training:
            return images
        return FR.random_erasing(
            images, self.p, self.scale, self.ratio, value=self.value, inplace=self.inplace
        )

    def extra_repr(self):
        return (
            f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r}, "
            f"inplace={self.inplace}"
        )


class Mixup(_NotScriptable, torch.nn.Module):
    """timm's ``Mixup`` (same arguments, modes and behaviour) as a module:
    ``forward(images, target)`` returns ``(images, soft_targets)``. Every draw (per-batch,
    per-pair or per-sample coin, switch, lambda and box) happens on the device; odd batch
    sizes work (the middle sample is its own partner). In eval mode, or with
    ``mixup_enabled = False``, images pass through and the targets are the label-smoothed
    one-hot targets (timm with lambda 1).

    Args:
        mixup_alpha: mixup's Beta parameter (0: no mixup).
        cutmix_alpha: cutmix's Beta parameter (0: no cutmix).
        cutmix_minmax: ``(min, max)`` box side fractions instead of a Beta-drawn box.
        prob: the probability of mixing a batch, pair or sample.
        switch_prob: the probability of cutmix when both are on.
        mode: ``'batch'``, ``'pair'`` or ``'elem'``.
        correct_lam: cutmix targets use the box's true kept area.
        label_smoothing: eps of the one-hot targets.
        num_classes: K.
        inplace: write the mixed images into the input (timm's behaviour).

    Saved for backward: 64 bytes per sample.

    Example:
        >>> mix = fastreg.nn.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=1000)
        >>> images, soft_targets = mix(images, labels)
    """

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        *,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        fn = "nn.Mixup"
        self.mixup_alpha = FR._check_alpha(mixup_alpha, fn, "mixup_alpha", allow_zero=True)
        self.cutmix_alpha = FR._check_alpha(cutmix_alpha, fn, "cutmix_alpha", allow_zero=True)
        self.cutmix_minmax = cutmix_minmax
        if cutmix_minmax is not None:
            cut_min, cut_max = FR._check_pair(cutmix_minmax, fn, "cutmix_minmax")
            if not 0.0 <= cut_min < cut_max <= 1.0:
                raise ValueError(
                    f"fastreg.{fn}: cutmix_minmax must satisfy 0 <= min < max <= 1, got {cutmix_minmax!r}"
                )
            self.cutmix_alpha = 1.0  # as timm: min-max boxes force cutmix on
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise ValueError(
                f"fastreg.{fn}: one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax is needed"
            )
        self.mix_prob = check_p(prob, fn, "prob")
        self.switch_prob = check_p(switch_prob, fn, "switch_prob")
        if mode not in FR.MIX_MODES:
            raise ValueError(f"fastreg.{fn}: mode must be 'batch', 'pair' or 'elem', got {mode!r}")
        self.mode, self.correct_lam = mode, correct_lam
        self.label_smoothing = FR._check_label_smoothing(label_smoothing, fn)
        self.num_classes = FR._check_num_classes(num_classes, fn)
        self.inplace = inplace
        self.mixup_enabled = True

    def forward(
        self,
        images: Tensor,
        target: Tensor,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        enabled = self.training and self.mixup_enabled
        return FR._mix(
            "nn.Mixup", images, target, self.num_classes, self.label_smoothing, self.mixup_alpha,
            self.cutmix_alpha, self.cutmix_minmax, self.mix_prob if enabled else 0.0, self.switch_prob,
            self.mode, self.correct_lam, self.inplace, generator, seed,
        )  # fmt: skip

    def extra_repr(self):
        return (
            f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"cutmix_minmax={self.cutmix_minmax}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
            f"mode={self.mode!r}, correct_lam={self.correct_lam}, label_smoothing={self.label_smoothing}, "
            f"num_classes={self.num_classes}, inplace={self.inplace}"
        )
