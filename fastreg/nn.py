"""nn.Module wrappers with torch.nn's names and constructor arguments.

Each subclasses its torch.nn counterpart (same attributes, state_dict and
repr; isinstance checks keep working) and only replaces forward.
"""

import torch

from . import functional as FR
from ._random import check_p

__all__ = [
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU",
    "Dropout", "AlphaDropout", "BiasActDropout", "DropPath", "DropConnectLinear", "Cutout",
    "RandomErasing", "Mixup",
]  # fmt: skip


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, input):
        return FR.sigmoid(input)


class Tanh(torch.nn.Tanh):
    def forward(self, input):
        return FR.tanh(input)


class ReLU(torch.nn.ReLU):
    def forward(self, input):
        return FR.relu(input, inplace=self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input):
        return FR.leaky_relu(input, self.negative_slope, self.inplace)


class PReLU(torch.nn.PReLU):
    def forward(self, input):
        return FR.prelu(input, self.weight)


class ELU(torch.nn.ELU):
    def forward(self, input):
        return FR.elu(input, self.alpha, self.inplace)


class SELU(torch.nn.SELU):
    def forward(self, input):
        return FR.selu(input, self.inplace)


class GELU(torch.nn.GELU):
    def forward(self, input):
        return FR.gelu(input, approximate=self.approximate)


class SiLU(torch.nn.SiLU):
    def forward(self, input):
        return FR.silu(input, inplace=self.inplace)


class Dropout(torch.nn.Dropout):
    def forward(self, input):
        return FR.dropout(input, self.p, self.training, self.inplace)


class AlphaDropout(torch.nn.AlphaDropout):
    def forward(self, input):
        return FR.alpha_dropout(input, self.p, self.training, self.inplace)


class BiasActDropout(torch.nn.Module):
    """``dropout(act(x + bias))`` in one kernel, with a learnable bias over the last dim
    (zeros at first, like a bias folded out of the preceding Linear)."""

    def __init__(
        self, num_features, activation="relu", p=0.0, bias=True, *,
        negative_slope=0.01, alpha=1.0, approximate="none", device=None, dtype=None,
    ):  # fmt: skip
        super().__init__()
        if activation not in FR.ACTIVATION_NAMES:
            raise ValueError(f"BiasActDropout: unknown activation {activation!r}")
        self.num_features, self.activation, self.p = num_features, activation, p
        self.negative_slope, self.alpha, self.approximate = negative_slope, alpha, approximate
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, input):
        return FR.bias_act_dropout(
            input, self.bias, self.activation, self.p, self.training,
            negative_slope=self.negative_slope, alpha=self.alpha, approximate=self.approximate,
        )  # fmt: skip

    def extra_repr(self):
        return (
            f"{self.num_features}, activation={self.activation!r}, p={self.p}, bias={self.bias is not None}"
        )


class DropPath(torch.nn.Module):
    """Stochastic depth per sample (timm's ``DropPath(drop_prob, scale_by_keep)``)."""

    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return FR.drop_path(x, self.drop_prob, self.training, scale_by_keep=self.scale_by_keep)

    def extra_repr(self):
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class DropConnectLinear(torch.nn.Linear):
    """``nn.Linear`` whose weight is dropped out (one mask per call) in training."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, p=0.5):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.p = p

    def forward(self, input):
        return FR.dropconnect_linear(input, self.weight, self.bias, self.p, self.training)

    def extra_repr(self):
        return super().extra_repr() + f", p={self.p}"


class Cutout(torch.nn.Module):
    """Cutout on a batch of images (B, C, H, W), applied in training mode only."""

    def __init__(self, size, p=1.0, fill=0.0, inplace=False):
        super().__init__()
        self.size, self.p, self.fill, self.inplace = size, p, fill, inplace

    def forward(self, images):
        if not self.training:
            return images
        return FR.cutout(images, self.size, self.p, fill=self.fill, inplace=self.inplace)

    def extra_repr(self):
        return f"size={self.size}, p={self.p}, fill={self.fill}, inplace={self.inplace}"


class RandomErasing(torch.nn.Module):
    """Random erasing with torchvision's ``RandomErasing`` arguments and box rule, but one box
    per sample of a (B, C, H, W) batch, all drawn on the device; applied in training mode only."""

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, inplace=False):
        super().__init__()
        self.p, self.scale, self.ratio, self.value, self.inplace = (
            p,
            tuple(scale),
            tuple(ratio),
            value,
            inplace,
        )

    def forward(self, images):
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


class Mixup(torch.nn.Module):
    """timm's ``Mixup`` (same arguments, modes and behaviour) as a module: ``forward(images,
    target)`` returns ``(images, soft_targets)``. Every draw (per-batch, per-pair or per-sample
    coin, switch, lambda and box) happens on the device; odd batch sizes work (the middle
    sample is its own partner). In eval mode, or with ``mixup_enabled = False``, images pass
    through and the targets are the label-smoothed one-hot targets (timm with lambda 1)."""

    def __init__(
        self,
        mixup_alpha=1.0,
        cutmix_alpha=0.0,
        cutmix_minmax=None,
        prob=1.0,
        switch_prob=0.5,
        mode="batch",
        correct_lam=True,
        label_smoothing=0.1,
        num_classes=1000,
        *,
        inplace=False,
    ):
        super().__init__()
        fn = "Mixup"
        self.mixup_alpha = FR._check_alpha(mixup_alpha, fn, "mixup_alpha", allow_zero=True)
        self.cutmix_alpha = FR._check_alpha(cutmix_alpha, fn, "cutmix_alpha", allow_zero=True)
        self.cutmix_minmax = cutmix_minmax
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ValueError(f"fastreg.Mixup: cutmix_minmax must be (min, max), got {cutmix_minmax!r}")
            self.cutmix_alpha = 1.0  # as timm: min-max boxes force cutmix on
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise ValueError(
                "fastreg.Mixup: one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax is needed"
            )
        self.mix_prob = check_p(prob, fn, "prob")
        self.switch_prob = check_p(switch_prob, fn, "switch_prob")
        if mode not in FR.MIX_MODES:
            raise ValueError(f"fastreg.Mixup: mode must be 'batch', 'pair' or 'elem', got {mode!r}")
        self.mode, self.correct_lam = mode, correct_lam
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.inplace = inplace
        self.mixup_enabled = True

    def forward(self, images, target, *, generator=None, seed=None):
        enabled = self.training and self.mixup_enabled
        return FR._mix(
            "Mixup", images, target, self.num_classes, self.label_smoothing, self.mixup_alpha,
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
