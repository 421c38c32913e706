"""ONNX translations of fastreg's ops for the dynamo-based exporter.

``torch.onnx.export(model, args, dynamo=True)`` sees fastreg's ops (``fastreg::gelu``, ...)
in the exported program; :func:`translation_table` maps each activation op to the standard
ONNX operators that compute it (Relu, LeakyRelu, Elu, Selu, Gelu, Sigmoid, Tanh, Mish,
HardSwish, PRelu; SiLU as ``x * Sigmoid(x)``). Dropout and drop path are the identity in eval
mode and never reach the exporter there. The TorchScript-based exporter
(``dynamo=False``) needs no table: it traces, and the modules trace as torch's functions.

Example:
    >>> onnx_program = torch.onnx.export(
    ...     model.eval(), (x,), dynamo=True,
    ...     custom_translation_table=fastreg.onnx.translation_table())
"""

import torch


def translation_table() -> dict:
    """``{fastreg op overload: onnxscript function}`` for ``torch.onnx.export``'s
    ``custom_translation_table`` (needs onnxscript)."""
    import onnx
    from onnxscript import opset20 as op

    def empty_mask():  # relu's and leaky_relu's second output: no mask in inference
        return op.Constant(value=onnx.helper.make_tensor("mask", onnx.TensorProto.UINT8, [0], []))

    def relu(input, save_mask: bool = False):
        return op.Relu(input), empty_mask()

    def leaky_relu(input, negative_slope: float = 0.01, save_mask: bool = False):
        return op.LeakyRelu(input, alpha=negative_slope), empty_mask()

    def elu(input, alpha: float = 1.0):
        return op.Elu(input, alpha=alpha)

    def gelu(input, approximate: str = "none"):
        return op.Gelu(input, approximate=approximate)

    def silu(input):
        return op.Mul(input, op.Sigmoid(input))

    def prelu(input, weight):
        # torch's weight runs along dim 1; ONNX broadcasts from the last dim: (C, 1, ..., 1)
        rank = op.Size(op.Shape(input))
        trailing = op.Max(op.Sub(rank, op.Constant(value_int=2)), op.Constant(value_int=0))
        one = onnx.helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1])
        ones = op.ConstantOfShape(op.Reshape(trailing, op.Constant(value_ints=[1])), value=one)
        return op.PRelu(input, op.Reshape(weight, op.Concat(op.Shape(weight), ones, axis=0)))

    ops = torch.ops.fastreg
    return {
        ops.sigmoid.default: lambda input: op.Sigmoid(input),
        ops.tanh.default: lambda input: op.Tanh(input),
        ops.relu.default: relu,
        ops.leaky_relu.default: leaky_relu,
        ops.elu.default: elu,
        ops.selu.default: lambda input: op.Selu(input),
        ops.gelu.default: gelu,
        ops.silu.default: silu,
        ops.mish.default: lambda input: op.Mish(input),
        ops.hardswish.default: lambda input: op.HardSwish(input),
        ops.prelu.default: prelu,
    }
