"""The fused ops: bias + activation + dropout for every activation of the table (values,
gradients where exp overflows, second derivatives, reproducible parameter gradients),
and DropConnect's linear."""

import pytest
import torch
import torch.nn.functional as F
from activation_cases import make_input
from conftest import DEVICES
from dropout_cases import ACTS, DTYPES, TORCH_ACTS, inputs

import fastreg.functional as FR
import fastreg.reference as R

ops = torch.ops.fastreg


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
