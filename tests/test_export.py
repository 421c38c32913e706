"""Models leaving training: TorchScript (torch.jit.script and torch.jit.trace, saved and
loaded) of converted torch and timm models, and fastreg.unconvert's plain models."""

import io

import pytest
import torch
from activation_cases import module_pairs

import fastreg
import fastreg.nn as FN
from fastreg._activations import TABLE

# torch 2.14 deprecates TorchScript (FutureWarning); tracing a ViT warns about its shape checks
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")


def _models():
    timm = pytest.importorskip("timm")
    torchvision = pytest.importorskip("torchvision")
    return {
        "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 64, 64)),
        "vit": (
            lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, drop_path_rate=0.1),
            (1, 3, 224, 224),
        ),
        "convnext": (
            lambda: timm.create_model("convnext_atto", num_classes=10, drop_path_rate=0.1),
            (2, 3, 64, 64),
        ),
    }


def _saved_and_loaded(scripted):
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return torch.jit.load(buf)


def _plain_torch_graph(graph):
    """Every node an ATen or TorchScript builtin: no Python call, no fastreg op."""
    kinds = {node.kind() for node in graph.nodes()}
    return sorted(k for k in kinds if not k.startswith(("aten::", "prim::")))


@pytest.mark.parametrize("arch", ["resnet18", "vit", "convnext"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_converted_models_script_and_trace(arch, how):
    """torch.jit.script of the model in training mode and torch.jit.trace (default
    arguments, gradients on) work, save and load, and give the converted model's eval
    outputs; the converted model itself is left as it was."""
    make, shape = _models()[arch]
    torch.manual_seed(0)
    model = fastreg.convert(make()).eval()
    kinds = [type(m) for m in model.modules()]
    assert any(k.__module__ == "fastreg.nn" for k in kinds)
    x = torch.randn(*shape)
    expected = model(x)
    if how == "script":
        exported = torch.jit.script(model.train())
        exported.eval()
    else:
        exported = torch.jit.trace(model, x)
    loaded = _saved_and_loaded(exported)
    assert _plain_torch_graph(loaded.inlined_graph) == []
    torch.testing.assert_close(loaded(x), expected)
    assert [type(m) for m in model.modules()] == kinds


@pytest.mark.parametrize("pair", module_pairs(), ids=lambda p: type(p[0]).__name__)
def test_activation_modules_script_as_torch(pair):
    """Each activation module scripts to its torch function with the module's argument."""
    module, torch_module = pair
    x = torch.randn(64, dtype=torch.float64)
    scripted = _saved_and_loaded(torch.jit.script(module))
    assert _plain_torch_graph(scripted.inlined_graph) == []
    torch.testing.assert_close(scripted(x.clone()), torch_module(x.clone()))


def test_dropout_modules_script_with_torch_semantics():
    """Dropout, AlphaDropout, DropPath and PReLU script (torch's random draws in training);
    in eval they are the identity, PReLU its formula."""
    x = torch.randn(8, 16)
    for module in (FN.Dropout(0.5), FN.AlphaDropout(0.5), FN.DropPath(0.5)):
        scripted = _saved_and_loaded(torch.jit.script(module))
        y = scripted(x)
        assert (y == 0).any() or isinstance(module, FN.AlphaDropout)
        assert not torch.equal(y, x)
        scripted.eval()
        assert torch.equal(scripted(x), x)
    rows = _saved_and_loaded(torch.jit.script(FN.DropPath(0.5)))(torch.ones(64, 4))
    assert set(rows.unique().tolist()) == {0.0, 2.0}
    assert bool((rows == rows[:, :1]).all())  # one decision per sample
    prelu = FN.PReLU(16)
    torch.testing.assert_close(torch.jit.script(prelu)(x), torch.nn.functional.prelu(x, prelu.weight))


@pytest.mark.parametrize(
    "module",
    [
        FN.DropConnectLinear(4, 4),
        FN.Cutout(4),
        FN.RandomErasing(),
        FN.Mixup(num_classes=4),
    ],
    ids=lambda m: type(m).__name__,
)
def test_modules_without_torchscript_form_refuse_it(module):
    with pytest.raises(TypeError, match=f"torch.jit.script: fastreg.nn.{type(module).__name__} has no"):
        torch.jit.script(torch.nn.Sequential(module))


def _onnx(model, x, dynamo):
    """The ONNX model torch.onnx.export gives (fastreg's translations with dynamo=True)."""
    import onnx

    import fastreg.onnx

    if dynamo:
        table = fastreg.onnx.translation_table()
        return torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=table).model_proto
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _run_onnx(proto, x):
    import onnxruntime as ort

    runner = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = runner.run(None, {runner.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


@pytest.mark.parametrize("arch", ["resnet18", "vit", "convnext"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_converted_models_export_to_onnx(arch, dynamo):
    """torch.onnx.export of a converted model in eval mode, with either exporter: standard
    ONNX operators only, and onnxruntime gives the model's outputs."""
    make, shape = _models()[arch]
    torch.manual_seed(0)
    model = fastreg.convert(make()).eval()
    x = torch.randn(*shape)
    expected = model(x)
    proto = _onnx(model, x, dynamo)
    assert {d.domain for d in proto.opset_import} <= {"", "ai.onnx"}  # no custom domain
    ops = {node.op_type for node in proto.graph.node}
    assert ops & {"Relu", "Gelu"} and "Dropout" not in ops
    torch.testing.assert_close(_run_onnx(proto, x), expected, rtol=1e-4, atol=1e-5)


# the ONNX operator each activation module exports as
ONNX_OPS = {
    "Sigmoid": "Sigmoid", "Tanh": "Tanh", "ReLU": "Relu", "LeakyReLU": "LeakyRelu", "ELU": "Elu",
    "SELU": "Selu", "GELU": "Gelu", "SiLU": "Sigmoid", "Mish": "Mish", "Hardswish": "HardSwish",
}  # fmt: skip


@pytest.mark.parametrize("pair", module_pairs(), ids=lambda p: type(p[0]).__name__)
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_activation_modules_export_to_onnx(pair, dynamo):
    """Every activation exports as standard ONNX operators with the module's argument (with
    dynamo, fastreg's table: its own operator; the TorchScript exporter has torch's
    mapping, e.g. Mish as Softplus and Tanh), and onnxruntime agrees with the module."""
    module, _ = pair
    name = type(module).__name__
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), module).eval()
    x = torch.randn(4, 8)
    proto = _onnx(model, x, dynamo)
    assert {d.domain for d in proto.opset_import} <= {"", "ai.onnx"}
    if dynamo:
        assert ONNX_OPS[name] in {node.op_type for node in proto.graph.node}
    torch.testing.assert_close(_run_onnx(proto, x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,channels", [((2, 3, 7, 7), 16), ((4, 8), 16), ((4, 8), 1)])
def test_prelu_exports_to_onnx_with_dynamo(shape, channels):
    layer = torch.nn.Conv2d(3, 16, 3) if len(shape) == 4 else torch.nn.Linear(8, 16)
    model = torch.nn.Sequential(layer, FN.PReLU(channels)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(-1, 1)
    x = torch.randn(*shape)
    proto = _onnx(model, x, dynamo=True)
    assert "PRelu" in {node.op_type for node in proto.graph.node}
    torch.testing.assert_close(_run_onnx(proto, x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_table_covers_every_activation_op():
    import fastreg.onnx

    table = fastreg.onnx.translation_table()
    ops = torch.ops.fastreg
    extra = {ops.prelu.default, ops.bias_act_dropout.default}
    assert set(table) == {getattr(ops, name).default for name in TABLE} | extra


@pytest.mark.parametrize("activation", list(TABLE))
def test_bias_act_dropout_scripts_traces_and_exports(activation):
    """BiasActDropout (built directly; convert never inserts it) scripts and traces as
    bias + torch's activation + dropout, and exports to ONNX with either exporter; all equal
    the module's eval output."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16, bias=False), FN.BiasActDropout(16, activation, p=0.2, alpha=0.7)
    ).eval()
    with torch.no_grad():
        model[1].bias.uniform_(-1, 1)
    x = torch.randn(4, 8)
    expected = model(x)
    for exported in (torch.jit.script(model), torch.jit.trace(model, x)):
        loaded = _saved_and_loaded(exported)
        assert _plain_torch_graph(loaded.inlined_graph) == []
        torch.testing.assert_close(loaded(x), expected)
    for dynamo in (False, True):
        proto = _onnx(model, x, dynamo)
        assert {d.domain for d in proto.opset_import} <= {"", "ai.onnx"}
        torch.testing.assert_close(_run_onnx(proto, x), expected, rtol=1e-4, atol=1e-5)
    scripted = torch.jit.script(model.train())  # training: torch's dropout after the activation
    y = scripted(torch.randn(256, 8))
    assert 0.1 < float((y == 0).float().mean()) < 0.7
