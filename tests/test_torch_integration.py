"""fastreg's ops under PyTorch's machinery: opcheck, torch.compile, __torch_function__,
torch.fx, torch.export, AOTInductor, and the typed entries below autograd."""

import io

import pytest
import torch
import torch.nn.functional as F
from activation_cases import CASES, INPLACE, ROW_OF, make_input, module_pairs, op_samples
from conftest import DEVICES, DispatchLog, FunctionLog, saved_bytes

import fastreg
import fastreg.functional as FR
import fastreg.nn as FN

ops = torch.ops.fastreg


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in op_samples(device):
        torch.library.opcheck(op, args)


class AllActivations(torch.nn.Module):
    """Every case's module and PReLU, summed."""

    def __init__(self):
        super().__init__()
        self.acts = torch.nn.ModuleList([module for module, _ in module_pairs()])
        self.prelu = FN.PReLU(4)

    def forward(self, x):
        return sum(act(x) for act in self.acts) + self.prelu(x)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    model = AllActivations().to(device)
    x = make_input((2, 4, 6, 5), "contiguous", torch.float32, device).requires_grad_()
    compiled = torch.compile(model, fullgraph=True)
    y_c = compiled(x)
    y_e = model(x)
    torch.testing.assert_close(y_c, y_e)
    g = torch.randn_like(y_e)
    grads_c = torch.autograd.grad(y_c, [x, model.prelu.weight], g)
    grads_e = torch.autograd.grad(y_e, [x, model.prelu.weight], g)
    torch.testing.assert_close(grads_c, grads_e)


def _entry_scenario(device):
    """Calls of every public function that reach each typed entry (fastreg._C.below) once at
    least: inference calls, training steps (forward and backward ops), in-place batch ops.
    Returns every output and gradient, in order."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 6, device=device)
    w = torch.rand(8, device=device)
    b = torch.randn(6, device=device)
    img = torch.rand(4, 3, 8, 8, device=device)
    labels = torch.tensor([0, 3, 1, 2], device=device)
    steps = [lambda t, f=f, kw=kw: f(t, **kw) for f, _, _, kw in CASES.values()]
    # the in-place forms (on a copy: in place on a leaf that requires grad is an error)
    steps += [lambda t, f=inplace: f(t * 1) for inplace, _, _ in INPLACE.values()]
    steps += [
        lambda t: FR.prelu(t, w),
        lambda t: FR.dropout(t, 0.3, seed=1), lambda t: FR.dropout_add(t, torch.cos(t), 0.3, seed=2),
        lambda t: FR.drop_path(t, 0.5, True, seed=3),
        lambda t: FR.drop_path(t, 0.5, True, residual=t * 2, seed=3),
        lambda t: FR.stochastic_depth(t, torch.tanh, 0.5, True, seed=9),
        lambda t: FR.bias_act_dropout(t, b, "gelu", 0.3, seed=4),
        lambda t: FR.bias_act_dropout(t, b, "relu", 0.3, seed=4),
        lambda t: FR.dropout(t * 1, 0.3, inplace=True, seed=1),
    ]  # fmt: skip
    batch = [
        lambda t: FR.cutout(t, 3, seed=5), lambda t: FR.random_erasing(t, 1.0, seed=6),
        lambda t: FR.mixup(t, labels, num_classes=4, mode="elem", seed=7)[0],
        lambda t: FR.cutmix(t, labels, num_classes=4, mode="pair", seed=8)[0],
    ]  # fmt: skip
    results = []
    for fn, data in [(f, x) for f in steps] + [(f, img) for f in batch]:
        with torch.no_grad():
            results.append(fn(data))
        leaf = data.clone().requires_grad_()
        y = fn(leaf)
        results += [y.detach(), torch.autograd.grad(y, leaf, torch.cos(y.detach() * 3))[0]]
    for inplace in (
        lambda t: FR.cutout(t, 3, inplace=True, seed=5),
        lambda t: FR.random_erasing(t, 1.0, inplace=True, seed=6),
        lambda t: FR.mixup(t, labels, num_classes=4, inplace=True, seed=7),
    ):
        data = img.clone()
        inplace(data)
        results.append(data)
    return results


@pytest.mark.parametrize("device", DEVICES)
def test_typed_entries_run_the_same_kernels_as_torch_ops(device, monkeypatch):
    """fastreg's Python layer calls each op below autograd through its typed entry
    (fastreg._C.below, csrc/fastreg.cpp), which only converts the arguments differently from
    torch.ops: every entry is reached by the public functions, and their outputs and
    gradients equal, bit for bit, those of the same calls through torch.ops."""
    import fastreg._autograd as A

    names = {n for n in dir(fastreg._C.below) if not n.startswith("_")}
    # every op with a C++ kernel has one: all but the composite DropConnect and test-only ops
    schemas = {s.name[9:] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fastreg::")}
    no_entry = {"dropconnect_linear", "dropconnect_linear_backward", "_sample_beta", "_philox_words"}
    assert names == schemas - no_entry
    called = set()
    for name in names:
        entry = getattr(fastreg._C.below, name)

        def spy(*args, _entry=entry, _name=name):
            called.add(_name)
            return _entry(*args)

        monkeypatch.setitem(A._ENTRIES, getattr(ops, name), spy)
        monkeypatch.setitem(A._ENTRIES, getattr(ops, name).default, spy)
    typed = _entry_scenario(device)
    assert called == names
    monkeypatch.setattr(A, "_ENTRIES", {})  # every call through torch.ops
    boxed = _entry_scenario(device)
    assert len(typed) == len(boxed)
    for k, (a, c) in enumerate(zip(typed, boxed, strict=True)):
        assert torch.equal(a, c), k


def test_torch_function_overrides_see_the_functions_and_the_ops():
    """fastreg.functional's functions take part in __torch_function__ as torch.nn.functional's
    do: a TorchFunctionMode, or a tensor subclass with a __torch_function__, sees the public
    function. Below them, the typed entries skip torch.ops' __torch_function__ handling, so
    `kernel` takes torch.ops whenever an override is active (a mode then sees the op as well).
    Dispatch modes see the op on the typed path too (it goes through the dispatcher)."""
    import fastreg._autograd as A

    class Logged(torch.Tensor):
        funcs = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            cls.funcs.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    x = torch.randn(16)
    want = F.leaky_relu(x, 0.2)
    entered = []
    entry = A._ENTRIES[ops.leaky_relu]
    A._ENTRIES[ops.leaky_relu] = lambda *a: entered.append(1) or entry(*a)
    try:
        with torch.no_grad():
            with FunctionLog() as mode:
                y = FR.leaky_relu(x, negative_slope=0.2)
            assert mode.funcs[0] is FR.leaky_relu and torch.equal(y, want)
            z = FR.leaky_relu(x.as_subclass(Logged), 0.2)
            assert Logged.funcs[0] is FR.leaky_relu and type(z) is Logged
            assert torch.equal(z.as_subclass(torch.Tensor), want)
            entered.clear()
            with FunctionLog() as mode:
                y, _ = A.kernel(ops.leaky_relu, x, 0.2, False)
            assert mode.funcs == [ops.leaky_relu] and not entered and torch.equal(y, want)
            with DispatchLog() as mode:
                w = FR.leaky_relu(x, 0.2)
            assert ops.leaky_relu.default in mode.funcs and entered and torch.equal(w, want)
    finally:
        A._ENTRIES[ops.leaky_relu] = entry


def test_torch_function_hand_off_forwards_every_argument():
    """Each fastreg.functional function hands itself and all its arguments to
    handle_torch_function: under a TorchFunctionMode that only passes calls through, every
    function called with non-default values for all its arguments gives what it gives
    without the mode (a dropped or renamed argument would fall back to its default)."""
    x = torch.randn(6, 8)
    w = torch.rand(8) * 0.5
    b = torch.randn(8)
    img = torch.rand(4, 3, 10, 10)
    t = torch.tensor([0, 3, 1, 2])
    calls = {
        "prelu": lambda: FR.prelu(x, w),
        "dropout": lambda: FR.dropout(x.clone(), p=0.3, training=True, inplace=True, seed=1),
        "alpha_dropout": lambda: FR.alpha_dropout(x.clone(), p=0.3, training=True, inplace=True, seed=2),
        "bias_act_dropout": lambda: FR.bias_act_dropout(
            x, bias=b, activation="elu", p=0.3, training=True, negative_slope=0.2, alpha=0.5,
            approximate="tanh", seed=3,
        ),
        "bias_act_dropout_leaky": lambda: FR.bias_act_dropout(
            x, b, "leaky_relu", 0.3, negative_slope=0.2, seed=3
        ),
        "bias_act_dropout_gelu": lambda: FR.bias_act_dropout(x, b, "gelu", 0.3, approximate="tanh", seed=3),
        "dropout_add": lambda: FR.dropout_add(x, x * 2, p=0.3, training=True, seed=4),
        "drop_path": lambda: FR.drop_path(
            x, p=0.5, training=True, residual=x * 2, scale_by_keep=False, seed=5
        ),
        "dropconnect_linear": lambda: FR.dropconnect_linear(
            x, torch.ones(5, 8), bias=torch.ones(5), p=0.3, seed=6
        ),
        "cutout": lambda: FR.cutout(img.clone(), 4, p=0.7, fill=0.5, inplace=True, seed=7),
        "random_erasing": lambda: FR.random_erasing(
            img.clone(), p=0.9, scale=(0.1, 0.2), ratio=(0.5, 2.0), value=0.25, inplace=True, seed=8
        ),
        "mixup": lambda: FR.mixup(
            img.clone(), t, alpha=0.4, num_classes=5, label_smoothing=0.1, mode="elem", inplace=True, seed=9
        ),
        "cutmix": lambda: FR.cutmix(
            img.clone(), t, alpha=0.4, num_classes=5, label_smoothing=0.1, mode="pair", correct_lam=False,
            inplace=True, seed=10,
        ),
    }  # fmt: skip
    for case, (f, _, _, kw) in CASES.items():  # every activation's argument, and inplace=True
        calls[case] = lambda f=f, kw=kw, row=ROW_OF[case]: (
            f(x.clone(), **kw, inplace=True) if row.inplace else f(x, **kw)
        )
    for name, call in calls.items():
        want = call()
        with FunctionLog() as mode:
            got = call()
        function = ROW_OF[name].name if name in ROW_OF else name.split("_leaky")[0].split("_gelu")[0]
        assert getattr(FR, function) in mode.funcs, name
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        assert all(torch.equal(a, c) for a, c in zip(want, got, strict=True)), name


def every_module_model():
    """A model of every activation and dropout-family module of fastreg.nn, in a line."""
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), *(module for module, _ in module_pairs()), FN.PReLU(6),
        FN.BiasActDropout(6, "gelu", 0.3), FN.Dropout(0.2), FN.AlphaDropout(0.2), FN.DropPath(0.5),
        FN.DropConnectLinear(6, 5, p=0.3),
    )  # fmt: skip


# the functions every_module_model calls, in order, and the fastreg ops they run (alpha
# dropout is the dropout op)
EVERY_MODULE_FUNCTIONS = [ROW_OF[case].name for case in CASES] + [
    "prelu", "bias_act_dropout", "dropout", "alpha_dropout", "drop_path", "dropconnect_linear",
]  # fmt: skip
EVERY_MODULE_OPS = [{"alpha_dropout": "dropout"}.get(f, f) for f in EVERY_MODULE_FUNCTIONS]


# in eval mode the dropouts are the identity and DropConnect a plain linear
EVAL_MODULE_OPS = [o for o in EVERY_MODULE_OPS if o not in ("dropout", "drop_path", "dropconnect_linear")]


def test_fx_symbolic_trace_records_the_functions():
    """torch.fx's symbolic tracing (torchvision's feature extraction, FX quantization) goes
    through __torch_function__: a model built from fastreg's modules traces into one
    call_function node per fastreg function, and the traced module computes what the model
    does, dropout draws included (same default-generator seed)."""
    model = every_module_model()
    graph = torch.fx.symbolic_trace(model)
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert [t.__name__ for t in targets] == EVERY_MODULE_FUNCTIONS
    assert all(t is getattr(FR, t.__name__) for t in targets)
    x = torch.randn(8, 4)
    torch.manual_seed(3)
    want = model(x)
    torch.manual_seed(3)
    assert torch.equal(graph(x), want)


def fastreg_ops_in(graph_module):
    return [
        n.target._schema.name.removeprefix("fastreg::")
        for n in graph_module.graph.nodes
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
        and n.target.namespace == "fastreg"
    ]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_torch_export_keeps_the_ops(device, strict, training):
    """torch.export (both tracers) keeps each fastreg op as one node of the exported program,
    also after run_decompositions (so an exported or deployed model still runs the fused
    kernels); in training mode each random op's seed is an
    aten.randint node, so the exported module draws what the model draws after the same
    manual_seed, its parameter gradients are the model's and it saves the bytes the model
    saves for backward; a save/load round trip
    (torch.export.save/load, with fastreg imported) gives the same program."""
    model = every_module_model().to(device).train(training)
    x = torch.randn(8, 4, device=device)
    ep = torch.export.export(model, (x,), strict=strict)
    want_ops = EVERY_MODULE_OPS if training else EVAL_MODULE_OPS
    assert fastreg_ops_in(ep.graph_module) == want_ops
    randints = [n for n in ep.graph.nodes if n.target == torch.ops.aten.randint.low_generator]
    assert len(randints) == (5 if training else 0)  # one seed per random op
    decomposed = ep.run_decompositions()
    assert fastreg_ops_in(decomposed.graph_module) == want_ops

    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    g = torch.randn(8, 5, device=device)
    params = list(model.parameters())
    torch.manual_seed(5)
    want = model(x)
    want_grads = torch.autograd.grad(want, params, g)
    for program in (ep, decomposed, loaded):
        module = program.module()
        torch.manual_seed(5)
        got = module(x)
        assert torch.equal(got, want)
        if program is ep:  # the training IR: autograd runs the ops' formulas, saving what they save
            assert all(map(torch.equal, torch.autograd.grad(got, list(module.parameters()), g), want_grads))
            assert saved_bytes(module, x)[0] == saved_bytes(model, x)[0]


@pytest.mark.parametrize("device", DEVICES)
def test_aot_inductor_package_runs_the_ops(device, tmp_path):
    """An exported eval-mode model compiled ahead of time by AOTInductor (a shared library
    in a .pt2 package, the C++ deployment path) calls each fastreg op, through the
    dispatcher, as one op (none is decomposed or generated anew), and gives the model's
    output bit for bit."""
    model = every_module_model().to(device).eval()
    x = torch.randn(8, 4, device=device)
    ep = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
    with DispatchLog() as log:
        got = torch._inductor.aoti_load_package(path)(x)
    assert [
        f._schema.name.removeprefix("fastreg::") for f in log.funcs if f.namespace == "fastreg"
    ] == EVAL_MODULE_OPS
    torch.testing.assert_close(got, model(x), rtol=0, atol=0)
