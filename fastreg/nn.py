"""nn.Module wrappers with torch.nn's names and constructor arguments.

Each subclasses its torch.nn counterpart (same attributes, state_dict and
repr; isinstance checks keep working) and only replaces forward.
"""

import torch

from . import functional as FR

__all__ = [
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU",
    "Dropout", "AlphaDropout", "BiasActDropout", "DropPath", "DropConnectLinear", "Cutout",
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
