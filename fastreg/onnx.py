"""ONNX translations of fastreg's ops for the dynamo-based exporter.

``torch.onnx.export(model, args, dynamo=True)`` sees fastreg's ops (``fastreg::gelu``, ...)
in the exported program; :func:`translation_table` maps each activation op to the standard
ONNX operators that compute it (Relu, LeakyRelu, Elu, Selu, Gelu, Sigmoid, Tanh, Mish,
HardSwish, PRelu; SiLU as ``x * Sigmoid(x)``), and bias_act_dropout in eval mode as
``Add`` and its activation's operator. Dropout and drop path are the identity in eval
mode and never reach the exporter there. The TorchScript-based exporter
(``dynamo=False``) needs no table: it traces, and the modules trace as torch's functions.

Example:
    >>> onnx_program = torch.onnx.export(
    ...     model.eval(), (x,), dynamo=True,
    ...     custom_translation_table=fastreg.onnx.translation_table())
"""

import torch


def _activation_forms(op):
    """Activation name -> its ONNX form (in the opset `op`), with bias_act_dropout's three
    arguments."""
    return {
        "sigmoid": lambda x, negative_slope, alpha, approximate: op.Sigmoid(x),
        "tanh": lambda x, negative_slope, alpha, approximate: op.Tanh(x),
        "relu": lambda x, negative_slope, alpha, approximate: op.Relu(x),
        "leaky_relu": lambda x, negative_slope, alpha, approximate: op.LeakyRelu(x, alpha=negative_slope),
        "elu": lambda x, negative_slope, alpha, approximate: op.Elu(x, alpha=alpha),
        "selu": lambda x, negative_slope, alpha, approximate: op.Selu(x),
        "gelu": lambda x, negative_slope, alpha, approximate: op.Gelu(x, approximate=approximate),
        "silu": lambda x, negative_slope, alpha, approximate: op.Mul(x, op.Sigmoid(x)),
        "mish": lambda x, negative_slope, alpha, approximate: op.Mish(x),
        "hardswish": lambda x, negative_slope, alpha, approximate: op.HardSwish(x),
    }


def translation_table() -> dict:
    """``{fastreg op overload: onnxscript function}`` for ``torch.onnx.export``'s
    ``custom_translation_table`` (needs onnxscript)."""
    import onnx
    from onnxscript import opset20 as op

    def empty_mask():  # relu's and leaky_relu's second output: no mask in inference
        return op.Constant(value=onnx.helper.make_tensor("mask", onnx.TensorProto.UINT8, [0], []))

    act = _activation_forms(op)

    def one(name):
        return lambda input: act[name](input, 0.01, 1.0, "none")

    def relu(input, save_mask: bool = False):
        return op.Relu(input), empty_mask()

    def leaky_relu(input, negative_slope: float = 0.01, save_mask: bool = False):
        return op.LeakyRelu(input, alpha=negative_slope), empty_mask()

    def elu(input, alpha: float = 1.0):
        return op.Elu(input, alpha=alpha)

    def gelu(input, approximate: str = "none"):
        return op.Gelu(input, approximate=approximate)

    def prelu(input, weight):
        # torch's weight runs along dim 1; ONNX broadcasts from the last dim: (C, 1, ..., 1)
        rank = op.Size(op.Shape(input))
        trailing = op.Max(op.Sub(rank, op.Constant(value_int=2)), op.Constant(value_int=0))
        one_ = onnx.helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1])
        ones = op.ConstantOfShape(op.Reshape(trailing, op.Constant(value_ints=[1])), value=one_)
        return op.PRelu(input, op.Reshape(weight, op.Concat(op.Shape(weight), ones, axis=0)))

    def bias_act_dropout(
        input, bias, seed, activation: str, p: float, negative_slope: float, alpha: float,
        approximate: str, save_mask: bool,
    ):  # fmt: skip
        if p != 0.0:
            raise ValueError("fastreg.onnx: bias_act_dropout exports in eval mode only (p = 0)")
        x = input if bias is None else op.Add(input, bias)
        return act[activation](x, negative_slope, alpha, approximate), empty_mask()

    ops = torch.ops.fastreg
    return {
        ops.sigmoid.default: one("sigmoid"),
        ops.tanh.default: one("tanh"),
        ops.relu.default: relu,
        ops.leaky_relu.default: leaky_relu,
        ops.elu.default: elu,
        ops.selu.default: one("selu"),
        ops.gelu.default: gelu,
        ops.silu.default: one("silu"),
        ops.mish.default: one("mish"),
        ops.hardswish.default: one("hardswish"),
        ops.prelu.default: prelu,
        ops.bias_act_dropout.default: bias_act_dropout,
    }
