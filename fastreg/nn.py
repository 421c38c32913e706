"""nn.Module wrappers with torch.nn's names and constructor arguments.

Each subclasses its torch.nn counterpart (same attributes, state_dict and
repr; isinstance checks keep working) and only replaces forward.
"""

import torch

from . import functional as FR

__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU"]


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
