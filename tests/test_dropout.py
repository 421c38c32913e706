import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from activation_cases import make_input
from conftest import CUDA, DEVICES, check_raw_op_errors, child_tensors, ops_called, saved_bytes

import fastreg
import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R
from fastreg._activations import TABLE

ops = torch.ops.fastreg
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "strided", "permuted", "channels_last"]
SHAPES = [(0, 3), (1,), (7,), (2, 3, 5, 7), (3, 1000), (4, 512)]  # 512: whole chunks per bias row
# bias_act_dropout's activations: every row of the activation table
TORCH_ACTS = {name: row.torch_function for name, row in TABLE.items()}
ACTS = list(TORCH_ACTS)


def inputs():
    for shape in SHAPES:
        for layout in LAYOUTS:
            if layout == "channels_last" and len(shape) != 4:
                continue
            if layout == "strided" and 0 in shape:
                continue
            yield shape, layout


# name -> f(impl, x, **extra) using the same explicit seed
RANDOM_OPS = {
    "dropout": lambda m, x, p: m.dropout(x, p, seed=17),
    "alpha_dropout": lambda m, x, p: m.alpha_dropout(x, p, True, seed=17),
    "dropout_add": lambda m, x, p: m.dropout_add(x, torch.cos(x.detach()), p, seed=17),
    "drop_path": lambda m, x, p: m.drop_path(x, p, True, seed=17),
    "drop_path_residual": lambda m, x, p: m.drop_path(x, p, True, residual=torch.cos(x.detach()), seed=17),
    "drop_path_noscale": lambda m, x, p: m.drop_path(x, p, True, scale_by_keep=False, seed=17),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RANDOM_OPS)
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_bitwise_equal_to_reference(device, dtype, name, p):
    f = RANDOM_OPS[name]
    for shape, layout in inputs():
        x = make_input(shape, layout, dtype, device).requires_grad_()
        y = f(FR, x, p)
        expected = f(R, x, p)
        assert y.dtype == dtype and y.shape == x.shape
        assert torch.equal(y, expected), (name, shape, layout)
        if x.numel() == 0:
            continue
        g = torch.randn(x.shape, device=device, dtype=dtype)
        (gx,) = torch.autograd.grad(y, x, g)
        (gx_ref,) = torch.autograd.grad(expected, x, g)
        assert torch.equal(gx, gx_ref), (name, shape, layout, "backward")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTS)
def test_bias_act_dropout_matches_reference(device, dtype, activation):
    kw = {"negative_slope": 0.1, "alpha": 0.8, "approximate": "tanh" if activation == "gelu" else "none"}
    for shape, layout in inputs():
        if 0 in shape:
            continue
        x = make_input(shape, layout, dtype, device).requires_grad_()
        b = torch.randn(shape[-1], device=device, dtype=dtype).requires_grad_()
        y = FR.bias_act_dropout(x, b, activation, 0.3, seed=5, **kw)
        expected = R.bias_act_dropout(x, b, activation, 0.3, seed=5, **kw)
        # the dropped elements are exactly the reference's; values within the
        # activation's tolerance (its math is the activation ops')
        keep = R.keep_mask(x, torch.tensor([5]), 0.3)
        assert torch.equal(y[~keep], torch.zeros_like(y[~keep]))
        torch.testing.assert_close(y, expected)
        g = torch.randn(x.shape, device=device, dtype=dtype)
        gx, gb = torch.autograd.grad(y, (x, b), g)
        gx_ref, gb_ref = torch.autograd.grad(expected, (x, b), g)
        tol = {"atol": 1e-2, "rtol": 1.6e-2} if dtype in (torch.float16, torch.bfloat16) else {}
        torch.testing.assert_close(gx, gx_ref, **tol)
        bias_tol = {"atol": 0.1 * x.numel() ** 0.5, "rtol": 2e-2} if tol else {}
        torch.testing.assert_close(gb, gb_ref, **bias_tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTS)
def test_bias_act_dropout_gradients_where_exp_overflows(device, activation):
    """Pre-activations far from zero (exp overflows in float32): the kernel's input and bias
    gradients equal the reference's and torch's eager composite's (dropout(act(x + b)), the
    same mask), and none is NaN; through torch.func.grad too (which differentiates the
    reference). The reference's sigmoid, silu, elu and selu gave NaN there."""
    from torch.func import grad

    x = torch.tensor([[-1e30, -1e4, -100.0, -30.0, 0.0, 0.5, 30.0, 100.0, 1e4, 1e30]] * 4, device=device)
    b = torch.tensor([0.5, -0.5, 1.0, 0.0, 0.0, -0.5, 0.0, 1.0, -1.0, 0.5], device=device)
    seed = torch.tensor([5], device=device)
    keep = R.keep_mask(x, seed, 0.3).to(x.dtype) / 0.7
    torch_act = TORCH_ACTS[activation]

    def grads(f):
        xv, bv = x.clone().requires_grad_(), b.clone().requires_grad_()
        return torch.autograd.grad(f(xv, bv).sum(), (xv, bv))

    want = grads(lambda xv, bv: torch_act(xv + bv) * keep)
    got = {
        "kernel": grads(lambda xv, bv: FR.bias_act_dropout(xv, bv, activation, 0.3, seed=5)),
        "reference": grads(lambda xv, bv: R.bias_act_dropout(xv, bv, activation, 0.3, seed=5)),
        "torch.func.grad": grad(
            lambda xv, bv: FR.bias_act_dropout(xv, bv, activation, 0.3, seed=5).sum(), (0, 1)
        )(x, b),
    }
    assert not any(t.isnan().any() for t in want)
    for what, (gx, gb) in got.items():
        torch.testing.assert_close(gx, want[0], msg=lambda m, what=what: f"{what}, input: {m}")
        torch.testing.assert_close(gb, want[1], msg=lambda m, what=what: f"{what}, bias: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTS)
def test_bias_act_dropout_without_dropout_is_bias_plus_activation(device, activation):
    x = make_input((4, 33), "contiguous", torch.float32, device)
    b = torch.randn(33, device=device)
    torch_act = TORCH_ACTS[activation]
    torch.testing.assert_close(FR.bias_act_dropout(x, b, activation, 0.0), torch_act(x + b))
    eval_out = FR.bias_act_dropout(x, b, activation, 0.5, training=False)
    torch.testing.assert_close(eval_out, torch_act(x + b))
    torch.testing.assert_close(FR.bias_act_dropout(x, None, activation, 0.0), torch_act(x))


@pytest.mark.parametrize("device", DEVICES)
def test_dropconnect_linear(device):
    x = torch.randn(2, 5, 16, device=device, requires_grad=True)
    w = torch.randn(8, 16, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    y = FR.dropconnect_linear(x, w, b, 0.4, seed=3)
    expected = R.dropconnect_linear(x, w, b, 0.4, seed=3)
    assert torch.equal(y, expected)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(expected, (x, w, b), g)
    )
    # the mask is one per call, on the weight: dropped weights get zero gradient
    gw = torch.autograd.grad(
        FR.dropconnect_linear(x, w, None, 0.4, seed=3), w, torch.ones(2, 5, 8, device=device)
    )[0]
    keep = R.keep_mask(w, torch.tensor([3]), 0.4)
    assert torch.equal(gw[~keep], torch.zeros_like(gw[~keep])) and (gw[keep] != 0).all()
    assert torch.equal(FR.dropconnect_linear(x, w, b, 0.4, training=False), F.linear(x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    x = make_input((3, 8), "contiguous", torch.float64, device).requires_grad_()
    r = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, device=device, requires_grad=True)
    wb = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    checks = [
        (lambda t: FR.dropout(t, 0.4, seed=1), (x,)),
        (lambda t: FR.alpha_dropout(t, 0.4, True, seed=1), (x,)),
        (lambda t, res: FR.dropout_add(t, res, 0.4, seed=1), (x, r)),
        (lambda t, res: FR.drop_path(t, 0.5, True, residual=res, seed=2), (x, r)),
        (lambda t, ww, bb: FR.dropconnect_linear(t, ww, bb, 0.3, seed=1), (x, w, wb)),
    ]
    checks += [(lambda t, bb, a=a: FR.bias_act_dropout(t, bb, a, 0.3, seed=4), (x, b)) for a in ACTS]
    for fn, args in checks:
        assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward(device):
    """create_graph=True: gradgradcheck in float64 (fixed seeds) of every op of the family,
    through fastreg.functional and through the raw ops; bias_act_dropout for every
    activation, with and without a bias, on a transposed (dense, not contiguous) input."""
    x = make_input((3, 8), "contiguous", torch.float64, device).requires_grad_()
    xt = make_input((8, 3), "contiguous", torch.float64, device).t().requires_grad_()
    r = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, device=device, requires_grad=True)
    wb = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    s = torch.tensor([3], device=device)
    checks = [
        (lambda t: FR.dropout(t, 0.4, seed=1), (x,)),
        (lambda t: FR.alpha_dropout(t, 0.4, True, seed=1), (x,)),
        (lambda t, res: FR.dropout_add(t, res, 0.4, seed=1), (x, r)),
        (lambda t, res: FR.drop_path(t, 0.5, True, residual=res, seed=2), (x, r)),
        (lambda t: FR.drop_path(t, 0.5, True, scale_by_keep=False, seed=2), (x,)),
        (lambda t, ww, bb: FR.dropconnect_linear(t, ww, bb, 0.3, seed=1), (x, w, wb)),
        (lambda t: ops.dropout(t, s, 0.4, True), (x,)),
        (lambda t, res: ops.dropout_add(t, res, s, 0.4), (x, r)),
        (lambda t, res: ops.drop_path(t, res, s, 0.5, True), (x, r)),
        (lambda t, ww, bb: ops.dropconnect_linear(t, ww, bb, s, 0.3), (x, w, wb)),
    ]
    for a in ACTS:
        for approx in ("none", "tanh") if a == "gelu" else ("none",):
            kw = {"alpha": 0.8, "approximate": approx, "seed": 4}
            checks += [
                (lambda t, bb, a=a, kw=kw: FR.bias_act_dropout(t, bb, a, 0.3, **kw), (x, b)),
                (lambda t, bb, a=a, kw=kw: FR.bias_act_dropout(t, bb, a, 0.3, **kw), (xt, b)),
                (lambda t, a=a, kw=kw: FR.bias_act_dropout(t, None, a, 0.3, **kw), (x,)),
                (
                    lambda t, bb, a=a, ap=approx: ops.bias_act_dropout(t, bb, s, a, 0.3, 0.01, 0.8, ap, True)[
                        0
                    ],
                    (x, b),
                ),
            ]
    for fn, args in checks:
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device", DEVICES)
def test_parameter_gradients_reproducible_in_deterministic_mode(device):
    """torch.use_deterministic_algorithms(True): the parameter gradients whose CUDA kernels
    add shared partial sums with atomics (PReLU on NCHW, bias_act_dropout with a bias not on
    the contiguous last dim) take an ATen reduction instead, so two runs agree bit for bit
    (and with the default path within float32 rounding)."""
    x = torch.randn(8, 16, 24, 24, device=device)
    w = torch.rand(16, device=device, requires_grad=True)
    xt = torch.randn(4, 24, 24, 16, device=device).permute(0, 3, 1, 2)  # bias dim 3 not contiguous
    b = torch.randn(24, device=device, requires_grad=True)
    g = torch.randn(8, 16, 24, 24, device=device)

    def grads():
        (dw,) = torch.autograd.grad(FR.prelu(x, w), w, g)
        (db,) = torch.autograd.grad(FR.bias_act_dropout(xt, b, "gelu", 0.2, seed=3), b, g[:4])
        return dw, db

    default = grads()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = grads(), grads()
    finally:
        torch.use_deterministic_algorithms(before)
    for a, c, d in zip(first, second, default, strict=True):
        assert torch.equal(a, c)
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-4)


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
@pytest.mark.parametrize("activation", ["gelu", "silu", "tanh", "elu"])
def test_bias_act_dropout_second_derivative_matches_reference(device, activation):
    """The second derivative through bias_act_dropout (its gradient's gradient, both the
    input's and the bias's) equals the plain-torch reference's, which autograd
    differentiates twice by itself."""
    x = make_input((4, 6), "contiguous", torch.float64, device).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(4, 6, dtype=torch.float64, device=device)
    results = []
    for m in (FR, R):
        y = m.bias_act_dropout(x, b, activation, 0.3, alpha=0.8, seed=5)
        gx, gb = torch.autograd.grad(y, (x, b), g, create_graph=True)
        results.append(torch.autograd.grad((gx**2).sum() + (gb**3).sum(), (x, b)))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


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


N = 8 * 1024


@pytest.mark.parametrize("device", DEVICES)
def test_saved_bytes(device):
    x = torch.randn(N, device=device, dtype=torch.bfloat16, requires_grad=True)
    r = torch.randn(N, device=device, dtype=torch.bfloat16, requires_grad=True)
    assert saved_bytes(lambda t: FR.dropout(t, 0.1), x)[0] == 8  # the seed only
    assert saved_bytes(lambda t: FR.alpha_dropout(t, 0.1, True), x)[0] == 8
    assert saved_bytes(lambda t: FR.dropout_add(t, r, 0.1), x)[0] == 8
    assert saved_bytes(lambda t: FR.drop_path(t.view(8, -1), 0.1, True, residual=r.view(8, -1)), x)[0] == 8
    x2 = x.view(64, -1)
    b = torch.zeros(x2.shape[-1], device=device, dtype=torch.bfloat16, requires_grad=True)
    bias_bytes = 2 * b.numel()
    # bias + relu + dropout: a 1-bit mask + seed (+ a reference to the bias)
    assert saved_bytes(lambda t: FR.bias_act_dropout(t, b, "relu", 0.1), x2)[0] == N // 8 + 8 + bias_bytes
    assert (
        saved_bytes(lambda t: FR.bias_act_dropout(t, b, "leaky_relu", 0.1), x2)[0] == N // 8 + 8 + bias_bytes
    )
    # bias + gelu + dropout: the input (2 B per element) + seed
    assert saved_bytes(lambda t: FR.bias_act_dropout(t, b, "gelu", 0.1), x2)[0] == 2 * N + 8 + bias_bytes
    # torch eager saves at least a byte per element more
    eager = saved_bytes(lambda t: F.dropout(F.gelu(t + b), 0.1), x2)[0]
    assert eager >= 3 * N
    # DropConnect: input, a reference to the weight, the seed; no mask, no masked weight
    w = torch.randn(32, 128, device=device, dtype=torch.bfloat16, requires_grad=True)
    nbytes, saved, _ = saved_bytes(lambda t: FR.dropconnect_linear(t, w, None, 0.5), x2)
    assert nbytes == 2 * x2.numel() + 2 * w.numel() + 8
    assert any(t.data_ptr() == w.data_ptr() for t in saved)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropout_keeps_the_sign_of_zero(device, dtype):
    """A kept -0 stays -0 (x * scale, as torch and the reference), dropped elements are +0:
    the zeros' sign bits equal the reference's, on every backend (torch.equal cannot tell)."""
    x = torch.tensor([-0.0, 0.0, -1.5, 2.0] * 64, dtype=dtype, device=device)
    for p in (0.3, 0.0001):
        y, want = FR.dropout(x, p, seed=5), R.dropout(x, p, seed=5)
        assert torch.equal(torch.signbit(y), torch.signbit(want)), p
        assert torch.signbit(y[0::4]).any()  # some kept -0


# Run in this process and in children capped to other CPU instruction sets: the
# bfloat16 results of the dropout family and the activations, as raw bits, on values where a
# conversion to bfloat16 can go wrong (NaN, infinities, signed zeros, float32
# denormals, sums that overflow or land exactly halfway between two bfloat16s),
# over lengths that leave vector tails.
EDGE_SCRIPT = """
import sys, torch, fastreg, fastreg.functional as FR
from fastreg._activations import cases
def edge_inputs(dtype):
    tiny = torch.finfo(torch.float32).tiny
    vals = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-39, -1e-39, 3e-39, tiny,
            -tiny, 2.0**-9, 3.0 * 2.0**-9, 1.0, -1.0, 3.3e38, -3.3e38, 1.5, 2.0**-140]
    res = [1.0, 1.0 + 2.0**-7, -tiny, tiny / 2, 3.3e38, 0.0, -0.0, 1.0, 2.0, float("nan"), 5.0,
           -1.0, 1e-39, 1.0, -3.3e38, 0.0, -1e-39, 7.0]
    if dtype == torch.float16:  # its overflow, subnormals and ties
        vals += [65504.0, -65504.0, 40000.0, 2.0**-24, -2.0**-24, 3.0 * 2.0**-25, 2.0**-14, 1.0 + 2.0**-10]
        res += [32.0, 2.0**-25, -2.0**-25, 2.0**-11, 65504.0, 30000.0, -2.0**-24, 1.0]
    # the first 160 elements without NaN: a NaN sends its whole vector to the generic rounding
    def fill(v, n):
        return v * (n // len(v) + 1)
    x = torch.tensor(fill(vals[1:], 160)[:160] + fill(vals, 133)[:133]).to(dtype)
    r = torch.tensor(fill([v for v in res if v == v], 160)[:160] + fill(res, 133)[:133]).to(dtype)
    if dtype == torch.float16:  # NaNs with payloads (c10 rounds any NaN to 0x7e00 and the sign)
        nans = torch.tensor([0x7D00, 0x7C01, -0x0300, 0x7C40], dtype=torch.int16)
        x.view(torch.int16)[[170, 201, 230, 289]] = nans
    return x, r
x, r = edge_inputs(getattr(torch, sys.argv[2]))
out = {}
for p in (0.0, 0.5, 1.0):
    out[f"dropout{p}"] = FR.dropout(x, p, seed=11)
    out[f"dropout_add{p}"] = FR.dropout_add(x, r, p, seed=11)
    out[f"dropout_add_rx{p}"] = FR.dropout_add(r, x, p, seed=11)
    for act in ("relu", "gelu"):
        xx = x.reshape(1, -1).clone().requires_grad_()
        b = r[: xx.shape[1]].clone().requires_grad_()
        y = FR.bias_act_dropout(xx, b, act, p, seed=11)
        gx, gb = torch.autograd.grad(y, (xx, b), r.reshape(1, -1))
        out[f"{act}{p}"], out[f"{act}_gx{p}"] = y, gx
for name, row, kw in cases():
    xx = x.clone().requires_grad_()
    y = getattr(FR, row.name)(xx, **kw)
    (gx,) = torch.autograd.grad(y, xx, r)
    with torch.no_grad():
        plain = getattr(FR, row.name)(x, **kw)
    out[name], out[name + "_gx"], out[name + "_nograd"] = y, gx, plain
out["prelu"] = FR.prelu(x[:288].view(2, 4, 36), r[:4])
torch.save({k: v.view(torch.int16) for k, v in out.items()}, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_types_identical_on_every_cpu_path(dtype, isa, tmp_path):
    """The bfloat16 and float16 loads and stores of the dropout family and the activations
    convert as c10 does on every CPU path: bfloat16 by AVX512_BF16's VCVTNE2PS2BF16 (where
    the CPU has it; it flushes float32 denormals and keeps NaN payloads, so those vectors
    take the generic rounding), float16 by AVX-512F's VCVTPH2PS/VCVTPS2PH or F16C's 8-lane
    forms on the AVX2 path (NaN payloads likewise), and the generic loops (portable). Raw bits, edge values
    (overflow, subnormals, ties), vector tails. A float16 NaN's sign is left out: c10 keeps
    the float's sign there, and which operand's NaN an x86 instruction passes on (IEEE leaves
    the sign of a NaN result unspecified) differs between the paths' codegen."""
    default = child_tensors(EDGE_SCRIPT, tmp_path / "default.pt", dtype)
    capped = child_tensors(EDGE_SCRIPT, tmp_path / f"{isa}.pt", dtype, FASTREG_CPU_ISA=isa)

    def nan_sign_cleared(b):  # float16 only: bfloat16 NaNs (c10: 0x7fc0) have no sign
        return torch.where((b & 0x7FFF) > 0x7C00, b & 0x7FFF, b) if dtype == "float16" else b

    for key, bits in default.items():
        assert torch.equal(nan_sign_cleared(bits), nan_sign_cleared(capped[key])), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_type_edge_values_match_reference(dtype):
    """The same edge values against fastreg.reference: bit for bit except NaN payloads
    (torch's own vectorized and scalar roundings give different NaN bits)."""
    namespace = {}
    exec(EDGE_SCRIPT.split("x, r = edge_inputs(")[0], namespace)
    x, r = namespace["edge_inputs"](dtype)
    for p in (0.0, 0.5, 1.0):
        for ours, ref in (
            (FR.dropout(x, p, seed=11), R.dropout(x, p, seed=11)),
            (FR.dropout_add(x, r, p, seed=11), R.dropout_add(x, r, p, seed=11)),
            (FR.dropout_add(r, x, p, seed=11), R.dropout_add(r, x, p, seed=11)),
        ):
            nan = torch.isnan(ref)
            assert torch.equal(torch.isnan(ours), nan), p
            assert torch.equal(ours.view(torch.int16)[~nan], ref.view(torch.int16)[~nan]), p
    assert torch.isnan(x).any() and (x.float().abs() < torch.finfo(torch.float32).tiny).any()


def test_streaming_store_path_gives_the_same_bits():
    """Plain and residual dropout stream their output (non-temporal stores) when the op's
    bytes exceed the last-level cache; FASTREG_CPU_STREAM_MIN_BYTES=0 sends every call down
    that path. Forward and backward bit for bit against the reference, float32 and bfloat16,
    unaligned input views and lengths that leave vector tails."""
    code = """
import torch, fastreg.functional as FR, fastreg.reference as R
def bits(t):
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)
for dtype in (torch.float32, torch.bfloat16):
    for n in (1, 15, 16, 17, 255, 256, 1000, 4099, 70001):
        base = torch.randn(n + 1).to(dtype)
        r = torch.randn(n).to(dtype)
        g = torch.randn(n).to(dtype)
        for x in (base[:n].clone().requires_grad_(), base[1:]):  # the second one unaligned
            for p in (0.0001, 0.3, 1.0):
                for f in (lambda m, t: m.dropout(t, p, seed=9), lambda m, t: m.dropout_add(t, r, p, seed=9)):
                    y, want = f(FR, x), f(R, x)
                    assert torch.equal(bits(y), bits(want)), (dtype, n, p)
                    if x.requires_grad:
                        gx, gx_ref = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(want, x, g)[0]
                        assert torch.equal(bits(gx), bits(gx_ref)), (dtype, n, p)
print("STREAM OK")
"""
    env = dict(
        os.environ, FASTREG_CPU_STREAM_MIN_BYTES="0", PYTHONPATH=os.pathsep.join(p for p in sys.path if p)
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "STREAM OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("device", DEVICES)
def test_semantics(device):
    x = torch.randn(1000, device=device, requires_grad=True)
    assert FR.dropout(x, 0.0) is x and FR.dropout(x, 0.5, training=False) is x
    assert FR.alpha_dropout(x, 0.5) is x  # training defaults to False, as torch's
    assert FR.drop_path(x, 0.5) is x
    everything_dropped = [
        lambda t: FR.dropout(t, 1.0),
        lambda t: FR.alpha_dropout(t, 1.0, True),
        lambda t: FR.drop_path(t.view(10, -1), 1.0, True),
        lambda t: FR.bias_act_dropout(t, None, "gelu", 1.0),
    ]
    for f in everything_dropped:
        y = f(x)
        assert torch.equal(y.reshape(-1), torch.zeros(1000, device=device))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.zeros_like(g))
    # inverted scaling: kept elements are x / (1 - p)
    y = FR.dropout(x, 0.25, seed=1)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)


def test_alpha_dropout_keeps_mean_and_variance():
    x = torch.randn(1 << 22, dtype=torch.float64)
    A = 1.7580993408473766
    for p in (0.1, 0.5):
        y = FR.alpha_dropout(x, p, True, seed=3)
        assert abs(y.mean().item()) < 0.01 and abs(y.var().item() - 1) < 0.01
        # torch's affine: every dropped element takes one value, kept ones a*x + alpha*a*p
        a = 1 / ((A * A * p + 1) * (1 - p)) ** 0.5
        keep = R.keep_mask(x, torch.tensor([3]), p)
        assert (y[~keep] == -A * a * (1 - p)).all()
        torch.testing.assert_close(y[keep], a * x[keep] + A * a * p)
        t = F.alpha_dropout(x, p, True)
        assert abs(t.mean().item()) < 0.01 and abs(t.var().item() - 1) < 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_drop_path_one_decision_per_sample(device):
    x = torch.randn(64, 3, 5, device=device) + 10
    y = FR.drop_path(x, 0.5, True, seed=9)
    per_sample = (y != 0).flatten(1)
    assert (per_sample.all(1) | ~per_sample.any(1)).all()
    kept = per_sample.all(1)
    torch.testing.assert_close(y[kept], x[kept] / 0.5)
    assert 10 < kept.sum().item() < 54


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_add_residual_gradient_is_incoming_gradient(device):
    x = torch.randn(100, device=device, requires_grad=True)
    r = torch.randn(100, device=device, requires_grad=True)
    g = torch.randn(100, device=device)
    _, gr = torch.autograd.grad(FR.dropout_add(x, r, 0.3), (x, r), g)
    assert torch.equal(gr, g)


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


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    x = torch.randn(4, 6, device=device)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p"):
            FR.dropout(x, p)
        with pytest.raises(ValueError, match="p"):
            FR.bias_act_dropout(x, None, "relu", p)
        with pytest.raises(ValueError, match="p"):
            FR.drop_path(x, p, True)
    with pytest.raises(ValueError, match="bias"):
        FR.bias_act_dropout(x, torch.zeros(5, device=device), "relu", 0.1)
    with pytest.raises(ValueError, match="activation"):
        FR.bias_act_dropout(x, None, "swish", 0.1)
    with pytest.raises(ValueError, match="fastreg.bias_act_dropout: alpha must be >= 0.0, got -1.0"):
        FR.bias_act_dropout(x, None, "elu", 0.1, alpha=-1.0)
    with pytest.raises(RuntimeError, match="bias"):
        FR.bias_act_dropout(x, torch.zeros(6, device="meta"), "relu", 0.1)
    with pytest.raises(ValueError, match="residual"):
        FR.dropout_add(x, torch.zeros(6, device=device), 0.1)
    with pytest.raises(ValueError, match="residual"):
        FR.dropout_add(x, torch.zeros(4, 6, device="meta"), 0.1)
    with pytest.raises(TypeError, match="input"):
        FR.dropout(torch.arange(4, device=device), 0.1)
    with pytest.raises(TypeError, match="seed"):
        FR.dropout(x, 0.1, seed=1.5)
    with pytest.raises(ValueError, match="weight"):
        FR.dropconnect_linear(x, torch.zeros(3, 5, device=device), None, 0.1)
    seed = "torch.tensor([1], device=device)"
    bad = "torch.zeros(5, device=device)"
    act_args = "0.1, 0.01, 1.0, 'none', False"
    check_raw_op_errors(  # the C++ checks, for callers of the raw ops
        device,
        [
            (
                f"ops.dropout(x, {seed}, 2.0, False)",
                "ValueError",
                "p (dropout probability) must be in [0, 1], got 2",
            ),
            ("ops.dropout(x, torch.tensor([1.0], device=device), 0.1, False)", "TypeError", "seed"),
            (f"ops.bias_act_dropout(x, {bad}, {seed}, 'relu', {act_args})", "ValueError", "bias"),
            (f"ops.bias_act_dropout(x, None, {seed}, 'swish', {act_args})", "ValueError", "activation"),
            (f"ops.dropout_add(x, x[:2], {seed}, 0.1)", "ValueError", "residual has shape (2, 6)"),
            (f"ops.drop_path(x, None, {seed}, -0.5, True)", "ValueError", "got -0.5"),
        ],
    )


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


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_grid_stride_loops_match_cpu(dtype):
    """Tensors larger than one grid, so every CUDA thread runs several units: the loads
    issued one unit ahead, the rows kernel's channel stepping and the warp sums of
    grad_bias give the CPU's results (random bits equal, activations within tolerance)."""
    check_large_against_cpu("cuda", dtype)


def check_large_against_cpu(device, dtype):
    rows, width = 5000, 4096  # 20.5M elements: 2-3 units of 8 per thread on 132 SMs
    gen = torch.Generator().manual_seed(0)
    x, r, g = (torch.randn(rows, width, generator=gen).to(dtype) for _ in range(3))
    b = torch.randn(width, generator=gen).to(dtype)

    def run(dev, f, *ts):
        leaves = [t.to(dev).requires_grad_() for t in ts]
        y = f(*leaves)
        return [y.cpu()] + [t.cpu() for t in torch.autograd.grad(y, leaves, g.to(dev))]

    for f, args in (
        (lambda t: FR.dropout(t, 0.3, seed=9), (x,)),
        (lambda t, rr: FR.dropout_add(t, rr, 0.3, seed=9), (x, r)),
        (lambda t, rr: FR.drop_path(t, 0.5, True, residual=rr, seed=9), (x, r)),
    ):
        for got, want in zip(run(device, f, *args), run("cpu", f, *args), strict=True):
            assert torch.equal(got, want)
    half = dtype == torch.bfloat16
    # float32: the CPU's erf (A&S 7.1.28) is within 1.1e-6 of libdevice's, times |grad| up to
    # ~6 over 20M normal samples and the 1/(1-p) scale: up to ~1e-5 apart, at the default atol
    tol = {"atol": 1e-2, "rtol": 1.6e-2} if half else {"atol": 3e-5, "rtol": 1.3e-6}
    # grad_bias sums 8200 rows (|term| < ~5) in a different order on each device: float32
    # roundings differ by at most ~8200 * 2^-24 * 5 ~ 2.5e-3
    bias_tol = {"atol": 0.5, "rtol": 2e-2} if half else {"atol": 2.5e-3, "rtol": 1e-4}
    for act in ("relu", "gelu"):
        # bias on the contiguous last dim (the rows and column kernels), then inner = 5000
        for name, xx in (("rows", x), ("permuted", x.t().contiguous().t())):

            def f(t, bb, act=act):
                return FR.bias_act_dropout(t, bb, act, 0.3, seed=9)

            (y, gx, gb), (y_cpu, gx_cpu, gb_cpu) = run(device, f, xx, b), run("cpu", f, xx, b)
            keep = R.keep_mask(xx.to(device), torch.tensor([9]), 0.3).cpu()
            assert torch.equal(y[~keep], torch.zeros_like(y[~keep])), (act, name)
            torch.testing.assert_close(y, y_cpu, **tol, msg=lambda m: f"{act} {name}: {m}")
            torch.testing.assert_close(gx, gx_cpu, **tol, msg=lambda m: f"{act} {name}: {m}")
            torch.testing.assert_close(gb, gb_cpu, **bias_tol, msg=lambda m: f"{act} {name}: {m}")


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
@pytest.mark.parametrize("alpha", [False, True])
def test_inplace_dropout_writes_the_input_itself(device, alpha):
    """dropout / alpha_dropout with inplace=True on a contiguous tensor run the in-place
    kernel: the input's memory holds the out-of-place result for the same seed, bit for bit;
    with autograd the gradient is the out-of-place one and only the seed is saved; a strided
    view takes the copy-back path with the same result."""
    fn = FR.alpha_dropout if alpha else FR.dropout
    x = torch.randn(64, 33, device=device)
    for layout in (x, x[:, ::2]):
        want = fn(layout, 0.3, True, seed=11)
        with torch.no_grad():
            t = layout.clone()
            ptr = t.data_ptr()
            assert fn(t, 0.3, True, True, seed=11) is t and t.data_ptr() == ptr
            assert torch.equal(t, want)
            if layout.is_contiguous():  # the seed's fill, then the in-place kernel alone
                called = ops_called(lambda u: fn(u, 0.3, True, True, seed=11), layout.clone())
                assert called[-1] == ops.dropout_.default and ops.dropout.default not in called
    a = x.clone().requires_grad_()
    g = torch.randn_like(a)
    nbytes, _, y = saved_bytes(lambda t: fn(t * 1, 0.3, True, True, seed=12), a)
    assert nbytes == 8  # the seed
    want = fn(a * 1, 0.3, True, seed=12)
    assert torch.equal(y, want)
    assert torch.equal(torch.autograd.grad(y, a, g)[0], torch.autograd.grad(want, a, g)[0])
    with pytest.raises(RuntimeError, match="leaf Variable"):
        fn(a, 0.3, True, True)
