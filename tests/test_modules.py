"""fastreg.nn's activation modules against torch.nn's, and fastreg.convert on torch and timm
models."""

import pytest
import torch
from activation_cases import CASES, KWARGS, ROW_OF, make_input, module_pairs
from conftest import DEVICES

import fastreg
import fastreg.nn as FN
from fastreg._activations import TABLE

ops = torch.ops.fastreg


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [*CASES, "prelu"])
def test_modules(device, name):
    """Each module computes what torch.nn's does, prints as it prints and has its state_dict
    keys: every case's module at the case's argument, and PReLU."""
    x = make_input((2, 4, 3, 3), "contiguous", torch.float32, device)
    pairs = dict(zip(CASES, module_pairs(), strict=True))
    pairs["prelu"] = (FN.PReLU(4, init=0.1), torch.nn.PReLU(4, init=0.1))
    fm, tm = (m.to(device) for m in pairs[name])
    torch.testing.assert_close(fm(x), tm(x))
    assert repr(fm) == repr(tm)
    assert fm.state_dict().keys() == tm.state_dict().keys()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
def test_convert_swaps_every_activation_module(device, inplace):
    """convert swaps torch.nn's module of every case for fastreg's, with the same argument and
    inplace flag where the op has an in-place form (torch's in-place module without one
    stays), keeping the training flag and the eval output."""
    modules = []
    for case, row in ROW_OF.items():
        kw = dict(KWARGS[case], **({"inplace": True} if inplace and row.inplace else {}))
        modules.append(row.torch_module(**kw))
    model = torch.nn.Sequential(*modules).to(device).eval()
    x = torch.randn(2, 3, 8, 8, device=device)
    before = model(x.clone())
    fastreg.convert(model)
    for case, row, new in zip(CASES, ROW_OF.values(), model, strict=True):
        assert type(new) is getattr(FN, row.torch_module.__name__), case
        assert not new.training
        for key, value in KWARGS[case].items():
            assert getattr(new, key) == value, case
        assert getattr(new, "inplace", False) == (inplace and row.inplace), case
    torch.testing.assert_close(model(x.clone()), before)


@pytest.mark.parametrize("device", DEVICES)
def test_convert(device):
    model = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.ReLU(),
            torch.nn.PReLU(4),
            torch.nn.Sequential(torch.nn.GELU(), torch.nn.SiLU()),
            torch.nn.LeakyReLU(0.05),
            torch.nn.ELU(),
            torch.nn.SELU(),
            torch.nn.Tanh(),
            torch.nn.Sigmoid(),
        )
        .to(device)
        .eval()
    )
    prelu_weight = model[2].weight
    x = torch.randn(2, 3, 8, 8, device=device)
    before = model(x)
    out = fastreg.convert(model)
    assert out is model
    kinds = [type(m) for m in model.modules()]
    assert FN.ReLU in kinds and FN.PReLU in kinds and FN.GELU in kinds and FN.SiLU in kinds
    assert torch.nn.ReLU not in kinds and torch.nn.GELU not in kinds
    assert model[2].weight is prelu_weight
    assert not model[1].training
    torch.testing.assert_close(model(x), before)
    assert isinstance(fastreg.convert(torch.nn.ReLU()), FN.ReLU)


def test_convert_timm_activations():
    """timm's factory builds its own activation modules from names (`get_act_layer('gelu')`
    is timm's GELU: ConvNeXt's MLPs, squeeze-excite gates): convert swaps each that has a
    fastreg equivalent, keeps PReLU's weight, leaves in-place Sigmoid/Tanh (fastreg's, like
    torch's, are out of place), and the eval outputs stay those of the timm model."""
    timm = pytest.importorskip("timm")
    from timm.layers import activations as act
    from timm.layers.activations_me import SwishMe

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), act.GELU(), act.GELUTanh(), act.Swish(), act.PReLU(4), act.Sigmoid(),
        act.Tanh(), SwishMe(), act.Sigmoid(inplace=True), act.Tanh(inplace=True),
    ).eval()  # fmt: skip
    weight = model[4].weight
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    fastreg.convert(model)
    assert [type(m) for m in model[1:]] == [
        FN.GELU, FN.GELU, FN.SiLU, FN.PReLU, FN.Sigmoid, FN.Tanh, FN.SiLU, act.Sigmoid, act.Tanh
    ]  # fmt: skip
    assert model[1].approximate == "none" and model[2].approximate == "tanh"
    assert model[4].weight is weight and not model[1].training
    torch.testing.assert_close(model(x), before)
    convnext = timm.create_model("convnext_atto", pretrained=False, drop_path_rate=0.1).eval()
    x = torch.randn(2, 3, 32, 32)
    before = convnext(x)
    fastreg.convert(convnext)
    kinds = {type(m) for m in convnext.modules()}
    assert FN.GELU in kinds and FN.DropPath in kinds and act.GELU not in kinds
    torch.testing.assert_close(convnext(x), before)


def test_convert_every_timm_activation_of_the_table():
    """Each timm class a row of the table names (timm.layers.activations or activations_me)
    becomes that row's fastreg module, with the arguments the row fixes, and computes what
    the timm module computes."""
    pytest.importorskip("timm")
    from timm.layers import activations as act
    from timm.layers import activations_me as act_me

    x = torch.randn(2, 3, 8, 8) * 3
    swapped = 0
    for row in TABLE.values():
        for cls_name, fixed in row.timm.items():
            module = (getattr(act, cls_name, None) or getattr(act_me, cls_name))().eval()
            before = module(x.clone())
            new = fastreg.convert(module)
            assert type(new) is getattr(FN, row.torch_module.__name__), cls_name
            for key, value in fixed.items():
                if value is not None:
                    assert getattr(new, key) == value, cls_name
            torch.testing.assert_close(new(x.clone()), before, msg=cls_name)
            swapped += 1
    assert swapped == sum(len(row.timm) for row in TABLE.values()) > 0


BAD_CONSTRUCTORS = [
    # (module, arguments, exception, message)
    ("BiasActDropout", dict(num_features=8, p=1.5), ValueError, "p (a probability) must be in [0, 1]"),
    ("BiasActDropout", dict(num_features=-1), ValueError, "num_features must be an int >= 0"),
    ("BiasActDropout", dict(num_features=8, activation="swish"), ValueError, "activation must be one of"),
    ("BiasActDropout", dict(num_features=8, activation="elu", alpha=-1.0), ValueError, "alpha must be >= 0"),
    ("BiasActDropout", dict(num_features=8, approximate="fast"), ValueError, "approximate must be"),
    ("DropPath", dict(drop_prob=-0.1), ValueError, "drop_prob (a probability) must be in [0, 1]"),
    ("DropPath", dict(drop_prob="0.1"), TypeError, "drop_prob must be a number"),
    ("DropConnectLinear", dict(in_features=4, out_features=4, p=1.1), ValueError, "p (a probability)"),
    ("Cutout", dict(size=0), ValueError, "size must be a positive int"),
    ("Cutout", dict(size=4.5), ValueError, "size must be a positive int"),
    ("Cutout", dict(size=4, p=2.0), ValueError, "p (a probability)"),
    ("Cutout", dict(size=4, fill="white"), TypeError, "fill must be a real number"),
    ("RandomErasing", dict(p=1.5), ValueError, "p (a probability)"),
    ("RandomErasing", dict(scale=(0.5, 0.1)), ValueError, "scale must satisfy"),
    ("RandomErasing", dict(ratio=(0.0, 1.0)), ValueError, "ratio must satisfy"),
    ("RandomErasing", dict(ratio=2.0), TypeError, "ratio must be a pair of numbers"),
    ("RandomErasing", dict(value="noise"), ValueError, "value must be a number or 'random'"),
    ("Mixup", dict(num_classes=0), ValueError, "num_classes must be a positive int"),
    ("Mixup", dict(num_classes=10.0), ValueError, "num_classes must be a positive int"),
    ("Mixup", dict(label_smoothing=1.5), ValueError, "label_smoothing must be in [0, 1]"),
    ("Mixup", dict(prob=2.0), ValueError, "prob (a probability)"),
    ("Mixup", dict(mixup_alpha=-1.0), ValueError, "mixup_alpha must be >= 0"),
    ("Mixup", dict(mixup_alpha=0.0), ValueError, "one of mixup_alpha > 0"),
    ("Mixup", dict(cutmix_minmax=(0.6, 0.2)), ValueError, "cutmix_minmax must satisfy"),
    ("Mixup", dict(cutmix_minmax=(0.2,)), TypeError, "cutmix_minmax must be a pair"),
    ("Mixup", dict(mode="sample"), ValueError, "mode must be"),
]


@pytest.mark.parametrize("name,kwargs,exc,words", BAD_CONSTRUCTORS, ids=lambda v: str(v)[:40])
def test_constructors_reject_bad_arguments(name, kwargs, exc, words):
    """A bad argument fails at construction, as torch.nn.Dropout's p does, with an error
    that names the class the user called."""
    with pytest.raises(exc) as info:
        getattr(FN, name)(**kwargs)
    assert str(info.value).startswith(f"fastreg.nn.{name}: ")
    assert words in str(info.value)


def test_torch_subclasses_keep_torch_constructor_errors():
    """Dropout and AlphaDropout are torch's classes underneath: torch's own checks."""
    for name in ("Dropout", "AlphaDropout"):
        with pytest.raises(ValueError) as fastreg_error:
            getattr(FN, name)(p=1.5)
        with pytest.raises(ValueError) as torch_error:
            getattr(torch.nn, name)(p=1.5)
        assert str(fastreg_error.value) == str(torch_error.value)


def _plain_torch_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(inplace=True),
        torch.nn.PReLU(4),
        torch.nn.Sequential(torch.nn.GELU(approximate="tanh"), torch.nn.SiLU(), torch.nn.Mish()),
        torch.nn.Dropout(0.2),
        torch.nn.LeakyReLU(0.05),
        torch.nn.ELU(0.5),
        torch.nn.Hardswish(),
        torch.nn.AlphaDropout(0.1),
    )


def _types(model):
    return [type(m) for m in model.modules()]


@pytest.mark.parametrize("device", DEVICES)
def test_unconvert_gives_back_the_torch_modules(device):
    """unconvert(convert(model)): the original types and arguments (changed ones kept), the
    same state_dict (the same Parameter objects) and the same eval outputs."""
    model = _plain_torch_model().to(device).eval()
    types, params = _types(model), dict(model.named_parameters())
    x = torch.randn(2, 3, 8, 8, device=device)
    before = model(x)
    fastreg.convert(model)
    assert any(t.__module__ == "fastreg.nn" for t in _types(model))
    model[4].p = 0.3  # e.g. a dropout schedule
    assert fastreg.unconvert(model) is model
    assert _types(model) == types
    assert dict(model.named_parameters()) == params
    assert model[4].p == 0.3 and model[1].inplace and model[3][0].approximate == "tanh"
    assert model[6].alpha == 0.5 and not model[1].training
    torch.testing.assert_close(model(x), before)
    assert type(fastreg.unconvert(fastreg.convert(torch.nn.GELU()))) is torch.nn.GELU


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224", "convnext_atto"])
def test_unconvert_timm_models(arch):
    """timm's own module types come back (its GELU, DropPath, ...), state_dict unchanged."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(arch, drop_path_rate=0.1, num_classes=10).eval()
    types, state = _types(model), {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 224, 224) if arch.startswith("vit") else torch.randn(1, 3, 64, 64)
    before = model(x)
    fastreg.convert(model)
    assert any(t.__module__ == "fastreg.nn" for t in _types(model))
    fastreg.unconvert(model)
    assert _types(model) == types
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    torch.testing.assert_close(model(x), before)


def test_unconvert_fastreg_modules_built_directly():
    """fastreg modules built directly become their torch base class, their eval form, or
    timm's DropPath; BiasActDropout (no torch equivalent) raises, naming its path, and
    nothing is swapped."""
    model = torch.nn.Sequential(
        FN.GELU(),
        FN.PReLU(3),
        FN.Dropout(0.1),
        FN.DropConnectLinear(4, 4, p=0.2),
        FN.Cutout(4),
        FN.RandomErasing(),
        FN.DropPath(0.1),
    )
    weights = [p for p in model.parameters()]
    fastreg.unconvert(model)
    nn = torch.nn
    assert [type(m) for m in model][:6] == [
        nn.GELU, nn.PReLU, nn.Dropout, nn.Linear, nn.Identity, nn.Identity,
    ]  # fmt: skip
    assert type(model[6]).__name__ == "DropPath" and type(model[6]).__module__.startswith("timm")
    assert model[6].drop_prob == 0.1
    assert [p for p in model.parameters()] == weights
    assert not hasattr(model[3], "p")
    blocked = torch.nn.Sequential(FN.ReLU(), torch.nn.Sequential(FN.BiasActDropout(4, "gelu")))
    with pytest.raises(TypeError, match=r"fastreg.unconvert: 1.0 is fastreg.nn.BiasActDropout"):
        fastreg.unconvert(blocked)
    assert type(blocked[0]) is FN.ReLU  # nothing swapped
