"""The dropout family under PyTorch's machinery: torch.func transforms and vmap randomness,
activation checkpointing, autocast, opcheck, torch.compile (static and dynamic shapes),
modules and convert, CUDA graphs."""

import pytest
import torch
import torch.nn.functional as F
from activation_cases import make_input
from conftest import CUDA, DEVICES
from dropout_cases import ACTS

import fastreg
import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R

ops = torch.ops.fastreg


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_transforms_and_forward_ad(device):
    """Under torch.func transforms and forward-mode AD the family computes its reference with
    the same draws: jvp's primal is the kernels' output bit for bit, its tangent the same op
    on the tangent (every op is linear in its input once its draws are fixed, but
    bias_act_dropout, whose tangent is compared with the reference's own jvp), and grad
    equals the kernels' backward."""
    from torch.func import grad, jvp

    x = make_input((6, 8), "contiguous", torch.float64, device)
    r = torch.randn_like(x)
    b = torch.randn(8, dtype=torch.float64, device=device)
    t = torch.randn_like(x)
    linear = {
        "dropout": lambda v: FR.dropout(v, 0.3, seed=5),
        "alpha_dropout": lambda v: FR.alpha_dropout(v, 0.3, True, seed=5),
        "drop_path": lambda v: FR.drop_path(v, 0.5, True, seed=5),
    }
    for name, f in linear.items():
        y, ty = jvp(f, (x,), (t,))
        assert torch.equal(y, f(x)), name
        if name == "alpha_dropout":  # affine: the tangent is the kept part's scaling only
            torch.testing.assert_close(ty, f(t) - f(torch.zeros_like(t)), msg=name)
        else:
            assert torch.equal(ty, f(t)), name
        xg = x.clone().requires_grad_()
        (want,) = torch.autograd.grad((f(xg) ** 2).sum(), xg)
        torch.testing.assert_close(grad(lambda v: (f(v) ** 2).sum())(x), want, msg=name)
    for f in (  # in place: the same gradient as the kernels' out-of-place backward
        lambda v: FR.dropout(v * 1.0, 0.3, inplace=True, seed=5),
        lambda v: FR.alpha_dropout(v * 1.0, 0.3, True, inplace=True, seed=5),
    ):
        xg = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(f(xg).sin().sum(), xg)
        torch.testing.assert_close(grad(lambda v, f=f: f(v).sin().sum())(x), want)
    y, ty = jvp(lambda v, u: FR.dropout_add(v, u, 0.3, seed=5), (x, r), (t, t))
    assert torch.equal(y, FR.dropout_add(x, r, 0.3, seed=5))
    torch.testing.assert_close(ty, FR.dropout(t, 0.3, seed=5) + t)
    w = torch.randn(5, 8, dtype=torch.float64, device=device)
    f = lambda v, ww: FR.dropconnect_linear(v, ww, None, 0.3, seed=5)  # noqa: E731
    y, _ = jvp(f, (x, w), (t, torch.ones_like(w)))
    torch.testing.assert_close(y, f(x, w))
    for activation in ACTS:
        f = lambda v, bb, a=activation: FR.bias_act_dropout(v, bb, a, 0.3, seed=5)  # noqa: E731
        g = lambda v, bb, a=activation: R.bias_act_dropout(v, bb, a, 0.3, seed=5)  # noqa: E731
        (y, ty), (_, tyr) = jvp(f, (x, b), (t, b)), jvp(g, (x, b), (t, b))
        torch.testing.assert_close(y, f(x, b), msg=activation)
        torch.testing.assert_close(ty, tyr, msg=activation)


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_randomness(device):
    """Under torch.func.vmap the family follows vmap's randomness flag, as torch's dropout
    does: 'error' refuses the seed's draw, 'same' draws one seed for the whole batch (each
    slice has a plain call's mask after the same torch.manual_seed), 'different' one per
    slice (model ensembles)."""
    from torch.func import vmap

    x = torch.randn(3, 64, device=device)
    for f in (
        lambda v: FR.dropout(v, 0.5),
        lambda v: FR.bias_act_dropout(v, None, "gelu", 0.5),
        lambda v: FR.drop_path(v.view(8, 8), 0.5, True).view(64),
    ):
        with pytest.raises(RuntimeError, match="randomness"):
            vmap(f)(x)
        torch.manual_seed(4)
        same = vmap(f, randomness="same")(x)
        for i in range(3):
            torch.manual_seed(4)
            want = f(x[i])  # the kernels; the reference's gelu agrees within rounding
            assert torch.equal(same[i] != 0, want != 0)
            torch.testing.assert_close(same[i], want)
        different = vmap(f, randomness="different")(x)
        kept = different != 0
        assert not torch.equal(kept[0], kept[1]) and not torch.equal(kept[1], kept[2])


@pytest.mark.parametrize("device", DEVICES)
def test_model_ensemble_with_torch_func(device):
    """torch.func's model ensembling (stack_module_state, functional_call under vmap) over
    models built from fastreg.nn: in eval mode it equals each model's own output; in
    training, copies of one model draw one dropout mask for all with randomness='same' and
    one each with 'different'; per-model gradients come out of vmap(grad)."""
    import copy

    from torch.func import functional_call, grad, stack_module_state, vmap

    def make():
        return torch.nn.Sequential(
            torch.nn.Linear(8, 16), FN.GELU(), FN.Dropout(0.5), torch.nn.Linear(16, 1)
        ).to(device)

    models = [make() for _ in range(3)]
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(5, 8, device=device)

    def f(p, b, v):
        return functional_call(base, (p, b), (v,))

    params, buffers = stack_module_state(models)
    for m in models + [base]:
        m.eval()
    torch.testing.assert_close(
        vmap(f, in_dims=(0, 0, None))(params, buffers, x), torch.stack([m(x) for m in models])
    )
    base.train()
    clones, clone_buffers = stack_module_state([copy.deepcopy(models[0]) for _ in range(3)])
    same = vmap(f, in_dims=(0, 0, None), randomness="same")(clones, clone_buffers, x)
    different = vmap(f, in_dims=(0, 0, None), randomness="different")(clones, clone_buffers, x)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    assert not torch.equal(different[0], different[1])
    grads = vmap(
        grad(lambda p, b, v: f(p, b, v).pow(2).mean()), in_dims=(0, 0, None), randomness="different"
    )(params, buffers, x)
    assert grads["0.weight"].shape == (3, 16, 8) and torch.isfinite(grads["0.weight"]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_redraws_the_same_masks(device, reentrant):
    """torch.utils.checkpoint recomputes a block in backward: its seeds come from the
    device's generator, whose state checkpoint restores, so the recomputed masks and every
    gradient equal the plain run's bit for bit."""
    from torch.utils.checkpoint import checkpoint

    lin = torch.nn.Linear(16, 16).to(device)

    def block(v):
        h = FR.bias_act_dropout(lin(v), None, "gelu", 0.3) + FR.dropout(v, 0.2)
        return FR.drop_path(h, 0.5, True, residual=v)

    x = torch.randn(8, 16, device=device, requires_grad=True)
    grads = []
    for run in (block, lambda v: checkpoint(block, v, use_reentrant=reentrant)):
        torch.manual_seed(1)
        x.grad = lin.weight.grad = None
        run(x).pow(2).sum().backward()
        grads.append((x.grad.clone(), lin.weight.grad.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_modules_under_autocast(device):
    """Mixed precision: under torch.autocast a layer's float32 parameters meet bfloat16
    activations. BiasActDropout casts its bias to the input's dtype (the result keeps the
    input's dtype) and DropConnectLinear casts input, weight and bias to autocast's dtype, as
    F.linear does: the results equal the ops on those casts bit for bit, gradients reach the
    float32 parameters in float32, and outside autocast a mismatch is still an error."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, device=device)
    h = x.to(torch.bfloat16).requires_grad_()
    bad = FN.BiasActDropout(16, "gelu", 0.2).to(device)
    torch.nn.init.normal_(bad.bias)
    dc = FN.DropConnectLinear(16, 8, p=0.2).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        y1 = FR.bias_act_dropout(h, bad.bias, "gelu", 0.2, seed=3)
        y2 = FR.dropconnect_linear(x, dc.weight, dc.bias, 0.2, seed=3)
        assert bad(h).dtype == torch.bfloat16 and dc(x).dtype == torch.bfloat16
    assert y1.dtype == y2.dtype == torch.bfloat16
    b16 = bad.bias.detach().to(torch.bfloat16)
    assert torch.equal(y1, FR.bias_act_dropout(h.detach(), b16, "gelu", 0.2, seed=3))
    w16, c16 = dc.weight.detach().to(torch.bfloat16), dc.bias.detach().to(torch.bfloat16)
    assert torch.equal(y2, FR.dropconnect_linear(x.to(torch.bfloat16), w16, c16, 0.2, seed=3))
    (y1.float().sum() + y2.float().sum()).backward()
    for p in (bad.bias, dc.weight, dc.bias):
        assert p.grad is not None and p.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="bias has dtype"):
        FR.bias_act_dropout(h, bad.bias, "gelu", 0.2)
    with pytest.raises(ValueError, match="weight must match"):
        FR.dropconnect_linear(h, dc.weight, dc.bias, 0.2)


def op_samples(device):
    x = torch.randn(3, 17, device=device, requires_grad=True)
    r = torch.randn(3, 17, device=device, requires_grad=True)
    b = torch.randn(17, device=device, requires_grad=True)
    w = torch.randn(4, 17, device=device, requires_grad=True)
    s = torch.tensor([7], device=device)
    mask = ops.bias_act_dropout(x.detach(), b.detach(), s, "relu", 0.3, 0.01, 1.0, "none", True)[1]
    g = torch.randn(3, 17, device=device)
    gr = g.clone().requires_grad_()
    return [
        (ops.dropout, (x, s, 0.3, False)), (ops.dropout, (x, s, 0.3, True)),
        (ops.dropout_backward, (g, s, 0.3, False)),
        (ops.dropout_add, (x, r, s, 0.3)),
        (ops.drop_path, (x, r, s, 0.3, True)), (ops.drop_path, (x, None, s, 0.3, False)),
        (ops.drop_path_backward, (g, s, 0.3, True)),
        (ops.bias_act_dropout, (x, b, s, "relu", 0.3, 0.01, 1.0, "none", True)),
        (ops.bias_act_dropout, (x, b, s, "gelu", 0.3, 0.01, 1.0, "tanh", False)),
        (ops.bias_act_dropout, (x, None, s, "silu", 0.3, 0.01, 1.0, "none", False)),
        (ops.bias_act_dropout_backward, (g, mask, b.detach(), s, "relu", 0.3, 0.01, 1.0, "none")),
        (ops.bias_act_dropout_backward, (g, x.detach(), b.detach(), s, "gelu", 0.3, 0.01, 1.0, "none")),
        (ops.dropconnect_linear, (x, w, None, s, 0.3)),
        (ops.dropconnect_linear_backward, (torch.randn(3, 4, device=device), x.detach(), w.detach(), s, 0.3)),
        # the backward ops' own formulas (create_graph=True)
        (ops.dropout_backward, (gr, s, 0.3, True)),
        (ops.drop_path_backward, (gr, s, 0.3, True)),
        (ops.bias_act_dropout_backward, (gr, mask, b, s, "relu", 0.3, 0.01, 1.0, "none")),
        (ops.bias_act_dropout_backward, (gr, x, b, s, "gelu", 0.3, 0.01, 1.0, "none")),
    ]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in op_samples(device):
        torch.library.opcheck(op, args)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = FN.DropConnectLinear(16, 16, p=0.2)
        self.bad = FN.BiasActDropout(16, "gelu", p=0.1)
        self.drop = FN.Dropout(0.1)
        self.alpha = FN.AlphaDropout(0.1)
        self.path = FN.DropPath(0.2)

    def forward(self, x, seeded):
        kw = {"seed": 5} if seeded else {}
        h = FR.dropconnect_linear(x, self.fc.weight, self.fc.bias, 0.2, **kw)
        h = FR.bias_act_dropout(h, self.bad.bias, "relu", 0.1, **kw)
        h = FR.dropout_add(FR.dropout(h, 0.1, **kw), x, 0.1, **kw)
        h = FR.alpha_dropout(h, 0.1, True, **kw)
        return FR.drop_path(h, 0.2, True, residual=x, **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    block = Block().to(device)
    x = torch.randn(4, 16, device=device, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True)
    y_c, y_e = compiled(x, True), block(x, True)
    torch.testing.assert_close(y_c, y_e)
    g = torch.randn_like(y_e)
    params = [x, block.fc.weight, block.bad.bias]
    torch.testing.assert_close(torch.autograd.grad(y_c, params, g), torch.autograd.grad(y_e, params, g))
    # seeds drawn inside the compiled graph: runs, and masks change between calls
    a, b = compiled(x, False), compiled(x, False)
    assert a.shape == y_e.shape and not torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_dynamic_shapes(device):
    """A model of every activation and dropout-family module under torch.compile(dynamic=True):
    one graph serves three batch sizes, forward and backward equal eager's (same seeds)."""
    model = torch.nn.Sequential(
        FN.DropConnectLinear(4, 6, p=0.2), FN.GELU(), FN.LeakyReLU(0.2), FN.PReLU(6),
        FN.BiasActDropout(6, "relu", 0.1), FN.Dropout(0.1), FN.AlphaDropout(0.1), FN.DropPath(0.2),
        FN.ReLU(), FN.SiLU(), FN.ELU(0.5), FN.SELU(), FN.Sigmoid(), FN.Tanh(),
    ).to(device)  # fmt: skip
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for n in (3, 5, 17):
        x = torch.randn(n, 4, device=device, requires_grad=True)
        results = []
        for run in (compiled, model):
            torch.manual_seed(0)
            y = run(x)
            results.append((y, torch.autograd.grad(y, [x, model[0].weight], torch.cos(y.detach()))))
        (y_c, g_c), (y_e, g_e) = results
        assert torch.equal(y_c, y_e)
        torch.testing.assert_close(g_c, g_e)


@pytest.mark.parametrize("device", DEVICES)
def test_modules_and_convert(device):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.2), torch.nn.AlphaDropout(0.1)).to(
        device
    )
    x = torch.randn(4, 8, device=device)
    model.eval()
    before = model(x)
    fastreg.convert(model)
    assert isinstance(model[1], FN.Dropout) and isinstance(model[2], FN.AlphaDropout)
    assert model[1].p == 0.2 and not model[1].training
    torch.testing.assert_close(model(x), before)
    lin = FN.DropConnectLinear(8, 4, p=0.3).to(device).eval()
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))
    assert "p=0.3" in repr(lin)
    bad = FN.BiasActDropout(8, "silu", p=0.5).to(device).eval()
    torch.testing.assert_close(bad(x), F.silu(x))
    assert FN.DropPath(0.3)(x) is not None and FN.DropPath(0.3).eval()(x) is x


def test_convert_timm_drop_path():
    timm = pytest.importorskip("timm")
    m = torch.nn.Sequential(timm.layers.DropPath(0.2))
    fastreg.convert(m)
    assert isinstance(m[0], FN.DropPath) and m[0].drop_prob == 0.2


def test_convert_torchvision_stochastic_depth():
    """torchvision's StochasticDepth in 'row' mode is timm's drop path (one decision per
    sample, scaled by 1 / (1 - p)): converted, with its p and training mode; 'batch' mode (one
    decision for the whole batch) has no fastreg equivalent and stays. In training, the
    converted module drops whole samples at the given rate and scales the others."""
    tv = pytest.importorskip("torchvision")
    model = torch.nn.Sequential(tv.ops.StochasticDepth(0.25, "row"), tv.ops.StochasticDepth(0.25, "batch"))
    fastreg.convert(model)
    assert isinstance(model[0], FN.DropPath) and model[0].drop_prob == 0.25 and model[0].scale_by_keep
    assert type(model[1]) is tv.ops.StochasticDepth
    x = torch.ones(4096, 3)
    y = model[0](x)
    kept = y[:, 0] != 0
    assert bool((y[kept] == 1 / 0.75).all()) and bool((y[~kept] == 0).all())  # whole samples
    assert abs(kept.float().mean().item() - 0.75) < 5 * (0.75 * 0.25 / 4096) ** 0.5
    assert model[0].eval()(x) is x


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
def test_cuda_graph_draws_new_mask_each_replay():
    x = torch.randn(4096, device="cuda", requires_grad=True)
    g = torch.ones(4096, device="cuda")
    static_out = torch.empty(4096, device="cuda")
    static_grad = torch.empty(4096, device="cuda")

    def step():
        y = FR.dropout(x, 0.5)
        (gx,) = torch.autograd.grad(y, x, g)
        static_out.copy_(y)
        static_grad.copy_(gx)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    masks = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        masks.append(static_out != 0)
        # backward regenerated the same mask as forward in that replay
        assert torch.equal(static_grad != 0, masks[-1])
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
