import io
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    CUDA,
    DEVICES,
    DispatchLog,
    FunctionLog,
    assert_same_bits,
    check_raw_op_errors,
    child_tensors,
    ops_called,
    saved_bytes,
)

import fastreg
import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R

ops = torch.ops.fastreg
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# name -> (fastreg function, torch function, reference function, keyword arguments)
CASES = {
    "sigmoid": (FR.sigmoid, torch.sigmoid, R.sigmoid, {}),
    "tanh": (FR.tanh, torch.tanh, R.tanh, {}),
    "relu": (FR.relu, F.relu, R.relu, {}),
    "leaky_relu": (FR.leaky_relu, F.leaky_relu, R.leaky_relu, {"negative_slope": 0.2}),
    "elu": (FR.elu, F.elu, R.elu, {"alpha": 0.7}),
    "selu": (FR.selu, F.selu, R.selu, {}),
    "gelu": (FR.gelu, F.gelu, R.gelu, {}),
    "gelu_tanh": (FR.gelu, F.gelu, R.gelu, {"approximate": "tanh"}),
    "silu": (FR.silu, F.silu, R.silu, {}),
}
SHAPES = [(0,), (1,), (7,), (33,), (4, 37), (2, 3, 5, 7)]
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


# The backward formula of each activation that saves its output, evaluated in
# float64 on a given output and rounded once (torch's own CUDA kernels round
# intermediate products in half types, which is less accurate than fastreg's).
def _from_output(formula):
    return lambda g, y, kw: formula(g.double(), y.double(), kw).to(g.dtype)


OUTPUT_BACKWARD = {
    "sigmoid": _from_output(lambda g, y, kw: g * y * (1 - y)),
    "tanh": _from_output(lambda g, y, kw: g * (1 - y * y)),
    "elu": _from_output(lambda g, y, kw: torch.where(y > 0, g, g * (y + kw.get("alpha", 1.0)))),
    "selu": _from_output(
        lambda g, y, kw: torch.where(y > 0, g * SELU_SCALE, g * (y + SELU_ALPHA * SELU_SCALE))
    ),
}
LAYOUTS = ["contiguous", "strided", "permuted", "channels_last"]


def make_input(shape, layout, dtype, device, scale=3.0):
    """Values over the interesting range (saturation included) in the given layout."""
    if layout == "contiguous":
        x = torch.randn(shape)
    elif layout == "strided":  # not dense: every other element of the last dim
        x = torch.randn(shape[:-1] + (2 * shape[-1],))[..., ::2]
    elif layout == "permuted":  # dense, dims in reverse memory order
        x = torch.randn(shape[::-1]).permute(*reversed(range(len(shape))))
    else:
        x = torch.randn(shape).to(memory_format=torch.channels_last)
    return (x * scale).to(device=device, dtype=dtype)


def layout_cases():
    for shape in SHAPES:
        for layout in LAYOUTS:
            if layout == "channels_last" and len(shape) != 4:
                continue
            yield shape, layout


def same_strides(a, b):
    return all(n <= 1 or s == t for n, s, t in zip(a.shape, a.stride(), b.stride(), strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_forward_matches_torch_and_reference(device, dtype, name):
    fr, tf, ref, kw = CASES[name]
    for shape, layout in layout_cases():
        x = make_input(shape, layout, dtype, device)
        x_before = x.clone()
        y = fr(x, **kw)
        expected = tf(x, **kw)
        torch.testing.assert_close(y, expected, msg=lambda m: f"{name} {shape} {layout}: {m}")
        torch.testing.assert_close(y, ref(x, **kw), msg=lambda m: f"{name} {shape} {layout}: {m}")
        assert y.dtype == dtype and y.shape == x.shape
        assert same_strides(y, expected), f"{name} {layout}: strides {y.stride()} vs {expected.stride()}"
        assert torch.equal(x, x_before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_backward_matches_torch(device, dtype, name):
    fr, tf, _, kw = CASES[name]
    # torch evaluates some float16 backward formulas in float16 (sigmoid's: 2 ulp
    # off float64 where fastreg's float32 opmath is 1 ulp), so half types get
    # twice their default tolerance against torch.
    tol = {"rtol": 2e-3, "atol": 2e-5} if dtype == torch.float16 else {}
    for shape, layout in layout_cases():
        x = make_input(shape, layout, dtype, device).requires_grad_()
        grad = torch.randn(shape, device=device, dtype=dtype)
        y = fr(x, **kw)
        (got,) = torch.autograd.grad(y, x, grad)
        (want,) = torch.autograd.grad(tf(x, **kw), x, grad)
        if name in OUTPUT_BACKWARD and dtype in (torch.float16, torch.bfloat16):
            # Backward from the saved output: a one-ulp difference between two
            # correct forwards near saturation (tanh(x) ~ 1) is a large relative
            # change of 1 - y^2, so torch's backward formula is applied to *our* y.
            want = OUTPUT_BACKWARD[name](grad, y.detach(), kw)
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name} {shape} {layout}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_backward_with_other_grad_layout(device, name):
    # The incoming gradient need not share the output's layout (here: the
    # output is channels_last, the gradient contiguous, then an expanded one).
    fr, tf, _, kw = CASES[name]
    x = make_input((2, 3, 4, 5), "channels_last", torch.float32, device).requires_grad_()
    for grad in (torch.randn(2, 3, 4, 5, device=device), torch.ones((), device=device).expand(2, 3, 4, 5)):
        (got,) = torch.autograd.grad(fr(x, **kw), x, grad)
        (want,) = torch.autograd.grad(tf(x, **kw), x, grad)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_gradcheck(device, name):
    fr, _, _, kw = CASES[name]
    x = make_input((3, 5), "contiguous", torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fr(t, **kw), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("channels", [1, 3])
def test_prelu_matches_torch(device, dtype, layout, channels):
    x = make_input((2, 3, 5, 7), layout, dtype, device).requires_grad_()
    w = (torch.rand(channels) * 0.5).to(device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(x.shape, device=device, dtype=dtype)
    y = FR.prelu(x, w)
    expected = F.prelu(x, w)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(y, R.prelu(x, w))
    assert same_strides(y, expected)
    got = torch.autograd.grad(y, (x, w), grad)
    want = torch.autograd.grad(expected, (x, w), grad)
    torch.testing.assert_close(got[0], want[0])
    # grad_weight sums 105 (or 210) products: half types round the sum once.
    tol = {"atol": 0.2, "rtol": 2e-2} if dtype in (torch.float16, torch.bfloat16) else {}
    torch.testing.assert_close(got[1], want[1], **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(7,), (4, 6), (2, 6, 9), (64, 1000)])
def test_prelu_shapes_and_weight_grad(device, shape):
    channels = shape[1] if len(shape) >= 2 else 1
    x = make_input(shape, "contiguous", torch.float64, device).requires_grad_()
    for w in (torch.rand(channels, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)):
        w = w.to(device).requires_grad_()
        grad = torch.randn(shape, device=device, dtype=torch.float64)
        got = torch.autograd.grad(FR.prelu(x, w), (x, w), grad)
        want = torch.autograd.grad(F.prelu(x, w), (x, w), grad)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_prelu_gradcheck(device):
    x = make_input((2, 3, 4), "contiguous", torch.float64, device).requires_grad_()
    w = torch.rand(3, dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradcheck(FR.prelu, (x, w))
    x_cl = make_input((2, 3, 4, 2), "channels_last", torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(FR.prelu, (x_cl, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_double_backward(device, name):
    """create_graph=True: gradgradcheck in float64 through fastreg.functional (the eager
    autograd.Function) and through the raw op (torch.library's registration), and the second
    derivative equal to torch's own."""
    fr, tf, _, kw = CASES[name]
    x = make_input((3, 5), "contiguous", torch.float64, device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: fr(t, **kw), (x,))
    raw = {
        "relu": lambda t: ops.relu(t, True)[0],
        "leaky_relu": lambda t: ops.leaky_relu(t, 0.2, True)[0],
        "elu": lambda t: ops.elu(t, 0.7),
        "gelu": lambda t: ops.gelu(t, "none"),
        "gelu_tanh": lambda t: ops.gelu(t, "tanh"),
    }.get(name) or getattr(ops, name)
    assert torch.autograd.gradgradcheck(raw, (x,))
    g = torch.randn(3, 5, device=device, dtype=torch.float64)
    (d1,) = torch.autograd.grad(fr(x, **kw), x, g, create_graph=True)
    (e1,) = torch.autograd.grad(tf(x, **kw), x, g, create_graph=True)
    torch.testing.assert_close(d1, e1)
    (e2,) = torch.autograd.grad((e1**2).sum(), x)
    if name in ("relu", "leaky_relu"):  # piecewise linear: the gradient does not depend on x
        assert not d1.requires_grad and torch.equal(e2, torch.zeros_like(e2))
    else:
        (d2,) = torch.autograd.grad((d1**2).sum(), x)
        torch.testing.assert_close(d2, e2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_gradient_penalty_matches_torch(device, name):
    """A WGAN-GP style penalty on the input gradient of a two-layer MLP: the weights'
    gradients through fastreg's activation equal those through torch's."""
    fr, tf, _, kw = CASES[name]
    w1 = torch.randn(8, 5, device=device, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 8, device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True)
    grads = []
    for act in (fr, tf):
        out = act(x @ w1.t(), **kw) @ w2.t()
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        penalty = ((gx.norm(dim=1) - 1) ** 2).mean()
        grads.append(torch.autograd.grad(penalty, (w1, w2)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_torch_func_transforms_and_forward_ad(device, name):
    """torch.func.grad, vmap(grad) (per-sample gradients), jacrev, jvp, hessian and forward-mode
    AD through fastreg.functional equal the same transforms of torch's function (there fastreg
    computes its reference in torch ops: torch.library's formulas serve no transform, and a
    dual tensor's tangent would otherwise be dropped silently)."""
    from torch.func import grad, hessian, jacrev, jvp, vmap

    fr, tf, _, kw = CASES[name]
    x = make_input((4, 5), "contiguous", torch.float64, device)
    t = torch.randn_like(x)
    transforms = {
        "grad": lambda f: grad(lambda v: f(v, **kw).sum())(x),
        "vmap(grad)": lambda f: vmap(grad(lambda v: f(v, **kw).sum()))(x),
        "jacrev": lambda f: jacrev(lambda v: f(v, **kw))(x[0]),
        "jvp": lambda f: jvp(lambda v: f(v, **kw), (x,), (t,)),
        "hessian": lambda f: hessian(lambda v: f(v, **kw).sum())(x[0]),
    }
    for what, transform in transforms.items():
        torch.testing.assert_close(transform(fr), transform(tf), msg=what)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(x, t)
        got, want = fwAD.unpack_dual(fr(dual, **kw)), fwAD.unpack_dual(tf(dual, **kw))
        assert got.tangent is not None
        torch.testing.assert_close(got.tangent, want.tangent)
        torch.testing.assert_close(got.primal, want.primal)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_gradients_where_exp_overflows(device, dtype, name):
    """Far from zero (|x| of 100 and more: exp(-x) or exp(x) overflows in float32, 10^4 in
    float64) torch's gradients stay finite: sigmoid's and silu's vanish below zero, elu's and
    selu's are their slope above it. fastreg's equal them through autograd (the kernels), in
    the reference, and through torch.func.grad and jvp, which differentiate the reference
    (fastreg.functional under a transform). The reference's quotient 1 / (1 + exp(-x)) and
    ELU's unselected expm1(x) branch gave NaN there (inf / inf, 0 * inf)."""
    from torch.func import grad, jvp

    fr, tf, ref, kw = CASES[name]
    x = torch.tensor(
        [-1e30, -1e4, -100.0, -30.0, -0.0, 0.0, 0.5, 30.0, 100.0, 1e4, 1e30], dtype=dtype, device=device
    )
    want = grad(lambda v: tf(v, **kw).sum())(x)

    def autograd_of(f):
        v = x.clone().requires_grad_()
        return torch.autograd.grad(f(v, **kw).sum(), v)[0]

    got = {
        "kernel": autograd_of(fr),
        "reference": autograd_of(ref),
        "torch.func.grad": grad(lambda v: fr(v, **kw).sum())(x),
        "jvp": jvp(lambda v: fr(v, **kw), (x,), (torch.ones_like(x),))[1],
    }
    for what, g in got.items():
        torch.testing.assert_close(g, want, equal_nan=True, msg=lambda m, what=what: f"{what}: {m}")
    if name != "gelu_tanh":  # torch's tanh GELU: 0 * inf at x = +-1e30 (x^3 overflows)
        assert not want.isnan().any()


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_under_torch_func(device):
    """inplace=True inside torch.func.grad: the same gradient as torch's in-place function
    (silu's reference saves its input, which the in-place write must not overwrite)."""
    from torch.func import grad

    x = make_input((6,), "contiguous", torch.float64, device)
    for fr, tf, kw in [
        (FR.relu, F.relu, {}),
        (FR.leaky_relu, F.leaky_relu, {"negative_slope": 0.2}),
        (FR.elu, F.elu, {"alpha": 0.5}),
        (FR.selu, F.selu, {}),
        (FR.silu, F.silu, {}),
    ]:
        got = grad(lambda v, f=fr, kw=kw: f(v * 1.0, inplace=True, **kw).sin().sum())(x)
        want = grad(lambda v, f=tf, kw=kw: f(v * 1.0, inplace=True, **kw).sin().sum())(x)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_prelu_under_autocast(device):
    """Under torch.autocast PReLU's float32 weight follows the bfloat16 input (as torch's
    prelu gives a bfloat16 result there); outside autocast the mismatch is an error."""
    m = FN.PReLU(3).to(device)
    x = make_input((2, 3, 5), "contiguous", torch.bfloat16, device)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = m(x)
        want = F.prelu(x, m.weight)
    assert y.dtype == want.dtype == torch.bfloat16
    assert torch.equal(y, FR.prelu(x, m.weight.detach().to(torch.bfloat16)))
    torch.testing.assert_close(y, want)
    y.float().sum().backward()
    assert m.weight.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="weight has dtype"):
        FR.prelu(x, m.weight)


@pytest.mark.parametrize("device", DEVICES)
def test_prelu_double_backward(device):
    x = make_input((2, 3, 4), "contiguous", torch.float64, device).requires_grad_()
    for w in (
        torch.rand(3, dtype=torch.float64, device=device),
        torch.rand(1, dtype=torch.float64, device=device),
    ):
        assert torch.autograd.gradgradcheck(FR.prelu, (x, w.requires_grad_()))
        assert torch.autograd.gradgradcheck(ops.prelu, (x, w))
    x_cl = make_input((2, 3, 4, 2), "channels_last", torch.float64, device).requires_grad_()
    assert torch.autograd.gradgradcheck(
        FR.prelu, (x_cl, torch.rand(3, dtype=torch.float64, device=device).requires_grad_())
    )
    # second derivatives through both of PReLU's gradients equal torch's
    for shape, channels in (((2, 3, 4), 3), ((2, 3, 4), 1), ((2, 3, 4, 5), 3), ((6,), 1)):
        xs = make_input(shape, "contiguous", torch.float64, device).requires_grad_()
        ws = torch.rand(channels, dtype=torch.float64, device=device, requires_grad=True)
        results = []
        for f in (FR.prelu, F.prelu):
            y = f(xs, ws)
            gx, gw = torch.autograd.grad((y * torch.cos(y.detach())).sum(), (xs, ws), create_graph=True)
            results.append(torch.autograd.grad(gw.sum() ** 2 + (gx**2).sum(), (xs, ws)))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b)
    from torch.func import grad, jvp

    xw = make_input((2, 3, 4), "contiguous", torch.float64, device)
    w3 = torch.rand(3, dtype=torch.float64, device=device)
    for transform in (
        lambda f: grad(lambda a, b: f(a, b).sin().sum(), argnums=(0, 1))(xw, w3),
        lambda f: jvp(f, (xw, w3), (torch.ones_like(xw), torch.ones_like(w3))),
    ):
        torch.testing.assert_close(transform(FR.prelu), transform(F.prelu))
    x1 = make_input((7,), "contiguous", torch.float64, device).requires_grad_()
    assert torch.autograd.gradgradcheck(
        FR.prelu, (x1, torch.rand(1, dtype=torch.float64, device=device).requires_grad_())
    )


def op_samples(device):
    """(op, args) for every activation op, forward and backward."""
    x = make_input((3, 17), "contiguous", torch.float32, device).requires_grad_()
    g = torch.randn(3, 17, device=device)
    y = torch.sigmoid(x).detach()
    w = torch.rand(17, device=device).requires_grad_()
    mask = ops.relu(x.detach(), True)[1]
    return [
        (ops.sigmoid, (x,)),
        (ops.sigmoid_backward, (g, y)),
        (ops.tanh, (x,)),
        (ops.tanh_backward, (g, y)),
        (ops.relu, (x, True)),
        (ops.relu, (x.detach(), False)),
        (ops.relu_backward, (g, mask)),
        (ops.leaky_relu, (x, 0.1, True)),
        (ops.leaky_relu_backward, (g, mask, 0.1)),
        (ops.elu, (x, 1.0)),
        (ops.elu_backward, (g, y, 1.0)),
        (ops.selu, (x,)),
        (ops.selu_backward, (g, y)),
        (ops.gelu, (x, "none")),
        (ops.gelu, (x, "tanh")),
        (ops.gelu_backward, (g, x.detach(), "tanh")),
        (ops.silu, (x,)),
        (ops.silu_backward, (g, x.detach())),
        (ops.prelu, (x, w)),
        (ops.prelu_backward, (g, x.detach(), w.detach())),
        # the backward ops' own formulas (create_graph=True)
        (ops.sigmoid_backward, (g.clone().requires_grad_(), y.clone().requires_grad_())),
        (ops.elu_backward, (g.clone().requires_grad_(), y.clone().requires_grad_(), 0.5)),
        (ops.gelu_backward, (g.clone().requires_grad_(), x, "none")),
        (ops.silu_backward, (g.clone().requires_grad_(), x)),
        (ops.relu_backward, (g.clone().requires_grad_(), mask)),
        (ops.leaky_relu_backward, (g.clone().requires_grad_(), mask, 0.1)),
        (ops.prelu_backward, (g.clone().requires_grad_(), x, w)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in op_samples(device):
        torch.library.opcheck(op, args)


class AllActivations(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.acts = torch.nn.ModuleList(
            [
                FN.Sigmoid(),
                FN.Tanh(),
                FN.ReLU(),
                FN.LeakyReLU(0.1),
                FN.PReLU(4),
                FN.ELU(0.5),
                FN.SELU(),
                FN.GELU(),
                FN.GELU("tanh"),
                FN.SiLU(),
            ]
        )

    def forward(self, x):
        return sum(act(x) for act in self.acts)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    model = AllActivations().to(device)
    x = make_input((2, 4, 6, 5), "contiguous", torch.float32, device).requires_grad_()
    compiled = torch.compile(model, fullgraph=True)
    y_c = compiled(x)
    y_e = model(x)
    torch.testing.assert_close(y_c, y_e)
    g = torch.randn_like(y_e)
    grads_c = torch.autograd.grad(y_c, [x, model.acts[4].weight], g)
    grads_e = torch.autograd.grad(y_e, [x, model.acts[4].weight], g)
    torch.testing.assert_close(grads_c, grads_e)


# bytes saved per element for a bfloat16 input (docs/design.md)
SAVED = {
    "relu": 0.125,
    "leaky_relu": 0.125,
    "sigmoid": 2,
    "tanh": 2,
    "elu": 2,
    "selu": 2,
    "gelu": 2,
    "gelu_tanh": 2,
    "silu": 2,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_saved_bytes(device, name):
    fr, tf, _, kw = CASES[name]
    n = 8 * 1000
    x = torch.randn(n, device=device, dtype=torch.bfloat16).requires_grad_()
    nbytes, saved, _ = saved_bytes(lambda t: fr(t, **kw), x)
    assert nbytes == SAVED[name] * n, (name, nbytes, [(t.dtype, t.shape) for t in saved])
    assert len(saved) == 1
    # relu's mask is ceil(n/8) bytes for sizes that are not multiples of 8
    if name in ("relu", "leaky_relu"):
        odd = torch.randn(1001, device=device, dtype=torch.bfloat16).requires_grad_()
        assert saved_bytes(lambda t: fr(t, **kw), odd)[0] == 126
    # torch eager saves as much or more (2 bytes per element)
    assert saved_bytes(lambda t: tf(t, **kw), x)[0] >= nbytes


@pytest.mark.parametrize("device", DEVICES)
def test_prelu_saves_input(device):
    x = torch.randn(4, 8, 10, device=device, dtype=torch.bfloat16).requires_grad_()
    w = torch.full((8,), 0.25, device=device, dtype=torch.bfloat16).requires_grad_()
    nbytes, saved, _ = saved_bytes(FR.prelu, x, w)
    # the input (2 B per element) and a reference to the weight
    assert nbytes == 2 * x.numel() + 2 * w.numel()
    assert any(t.data_ptr() == w.data_ptr() for t in saved)


@pytest.mark.parametrize("device", DEVICES)
def test_no_mask_written_without_grad(device):
    x = torch.randn(100, device=device)
    _, mask = ops.relu(x, False)
    assert mask.numel() == 0
    with torch.no_grad():
        nbytes, _, _ = saved_bytes(FR.relu, x.requires_grad_())
    assert nbytes == 0


@pytest.mark.parametrize("device", DEVICES)
def test_graph_only_where_a_gradient_is_needed(device):
    """Calls with no tensor that needs a gradient skip the op's autograd kernel (the short
    host path); they must give the same values, and a graph must still be recorded as soon
    as any tensor argument (input, PReLU's weight, the bias, the residual) needs one."""
    x = torch.randn(4, 8, 5, device=device)
    w = torch.rand(8, device=device)
    b = torch.randn(5, device=device)
    calls = [lambda t, w, b, f=f, kw=kw: f(t, **kw) for f, _, _, kw in CASES.values()] + [
        lambda t, w, b: FR.prelu(t, w),
        lambda t, w, b: FR.bias_act_dropout(t, b, "gelu", 0.5, seed=3),
        lambda t, w, b: FR.bias_act_dropout(t, b, "leaky_relu", 0.5, seed=3),
        lambda t, w, b: FR.dropout(t, 0.5, seed=3),
        lambda t, w, b: FR.dropout_add(t, b.expand_as(t).contiguous(), 0.5, seed=3),
        lambda t, w, b: FR.drop_path(t, 0.5, True, seed=3),
    ]
    for k, f in enumerate(calls):
        plain = f(x, w, b)
        assert plain.grad_fn is None and not plain.requires_grad, k
        xg = x.clone().requires_grad_()
        y = f(xg, w, b)
        assert y.grad_fn is not None and torch.equal(y.detach(), plain), k
        with torch.no_grad():
            assert not f(xg, w, b).requires_grad, k
    # a parameter alone needing a gradient still records the graph and gets one
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    for f, p in ((calls[-6], wg), (calls[-5], bg), (calls[-4], bg)):
        y = f(x, wg, bg)
        assert y.grad_fn is not None and torch.equal(y.detach(), f(x, w, b))
        (gp,) = torch.autograd.grad(y.sum(), p)
        assert gp.shape == p.shape and gp.abs().sum() > 0
    r = b.expand_as(x).contiguous().requires_grad_()
    y = FR.dropout_add(x, r, 0.5, seed=3)
    assert y.grad_fn is not None
    assert torch.equal(torch.autograd.grad(y.sum(), r)[0], torch.ones_like(r))


@pytest.mark.parametrize("device", DEVICES)
def test_registered_autograd_and_eager_function_agree(device):
    """Each formula runs two ways: torch.library's registration (torch.compile, opcheck,
    direct torch.ops calls) and the plain autograd.Function that fastreg.functional applies
    in eager mode. Both must give the same outputs, gradients and saved bytes, for every op
    that has a formula."""
    from fastreg._autograd import EAGER_AUTOGRAD

    x = torch.randn(3, 8, 6, device=device, dtype=torch.float64)
    w = torch.rand(8, device=device, dtype=torch.float64)
    b = torch.randn(6, device=device, dtype=torch.float64)
    seed = torch.tensor([5], device=device)
    img = torch.rand(4, 3, 8, 8, device=device, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 2], device=device)
    calls = {
        "sigmoid": (x,), "tanh": (x,), "selu": (x,), "silu": (x,), "elu": (x, 0.7),
        "gelu": (x, "tanh"), "relu": (x, True), "leaky_relu": (x, 0.2, True), "prelu": (x, w),
        "dropout": (x, seed, 0.3, False), "dropout_add": (x, torch.cos(x), seed, 0.3),
        "drop_path": (x, torch.cos(x), seed, 0.5, True),
        "bias_act_dropout": (x, b, seed, "leaky_relu", 0.3, 0.1, 1.0, "none", True),
        "dropconnect_linear": (x, torch.randn(5, 6, dtype=x.dtype, device=device), b[:5], seed, 0.3),
        "cutout": (img, seed, 3, 1.0, 0.5),
        "random_erasing": (img, seed, 1.0, 0.1, 0.4, -1.0, 1.0, 0.5, False),
        "mix": (img, labels, seed, 4, 0.1, 1.0, 1.0, -1.0, -1.0, 1.0, 0.5, 2, True),
    }  # fmt: skip
    assert {getattr(ops, name) for name in calls} == set(EAGER_AUTOGRAD)
    for name, args in calls.items():
        results = []
        for run in (getattr(ops, name), EAGER_AUTOGRAD[getattr(ops, name)]):
            leaves = [
                a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args
            ]
            nbytes, _, out = saved_bytes(run, *leaves)
            y = out[0] if isinstance(out, tuple) else out
            tensors = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
            grads = torch.autograd.grad(y, tensors, torch.cos(y.detach() * 3))
            results.append((nbytes, y.detach(), grads))
        (n0, y0, g0), (n1, y1, g1) = results
        assert n0 == n1, name
        assert torch.equal(y0, y1), name
        assert all(torch.equal(a, c) for a, c in zip(g0, g1, strict=True)), name


@pytest.mark.parametrize("device", DEVICES)
def test_mask_backward_runs_only_the_backward_kernel(device):
    """Backward through relu, leaky_relu and bias+relu+dropout (both autograd paths) calls
    the backward op and nothing else: no zero-filled "gradient" of the uint8 mask output."""
    x = torch.randn(4, 64, device=device, requires_grad=True)
    b = torch.randn(64, device=device, requires_grad=True)
    g = torch.randn(4, 64, device=device)
    for f, want in (
        (FR.relu, "fastreg.relu_backward"),
        (lambda t: ops.relu(t, True)[0], "fastreg.relu_backward"),
        (FR.leaky_relu, "fastreg.leaky_relu_backward"),
        (lambda t: FR.bias_act_dropout(t, b, "relu", 0.5, seed=2), "fastreg.bias_act_dropout_backward"),
    ):
        y = f(x)
        calls = [str(op.overloadpacket) for op in ops_called(torch.autograd.grad, y, x, g)]
        assert calls == [want], calls


@pytest.mark.parametrize("device", DEVICES)
def test_inplace(device):
    for fr, tf, kw in [
        (FR.relu, F.relu, {}),
        (FR.leaky_relu, F.leaky_relu, {}),
        (FR.elu, F.elu, {}),
        (FR.selu, F.selu, {}),
        (FR.silu, F.silu, {}),
    ]:
        base = torch.randn(50, device=device, requires_grad=True)
        x = base * 2  # a non-leaf, as inplace activations see in a network
        expected = tf(base.detach() * 2, **kw)
        out = fr(x, inplace=True, **kw)
        assert out is x
        torch.testing.assert_close(x.detach(), expected)
        (g,) = torch.autograd.grad(out.sum(), base)
        ref_base = base.detach().clone().requires_grad_()
        (g_ref,) = torch.autograd.grad(tf(ref_base * 2, **kw).sum(), ref_base)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_type_exp_activations_within_one_ulp(device, dtype):
    """Half-type sigmoid, silu and silu's backward (CUDA: math::Fast's SFU exp and
    reciprocal; CPU: the float32 polynomial exp) stay within one ulp of the float64 value
    rounded to the dtype for x >= -87 (where every intermediate is a normal float32: up
    to and past exp's underflow edge), and below it and at the infinities equal torch's
    own results up to 1e-35 absolute (math::Fast flushes float32 subnormals to zero)."""
    x64 = torch.cat(
        [
            torch.linspace(-100, 100, 200001, dtype=torch.float64),
            torch.tensor([-89.0, -88.72, -88.5, -88.38, -87.34, 87.34, 88.38, 88.5, 88.72, 89.0]),
            torch.tensor([float("inf"), -float("inf"), 0.0, -0.0], dtype=torch.float64),
        ]
    )
    x = x64.to(dtype).to(device)
    xd = x.double()
    g = torch.ones_like(x)
    sig = torch.sigmoid(xd)
    cases = {
        "sigmoid": (FR.sigmoid(x), sig, torch.sigmoid(x)),
        "silu": (FR.silu(x), xd * sig, F.silu(x)),
        "silu_backward": (
            ops.silu_backward(g, x),
            sig * (1 + xd * (1 - sig)),
            torch.ops.aten.silu_backward(g, x),
        ),
    }
    inside = (xd >= -87.0) & torch.isfinite(xd)
    finfo = torch.finfo(dtype)
    for name, (got, exact, theirs) in cases.items():
        torch.testing.assert_close(
            got[~inside], theirs[~inside], rtol=0, atol=1e-35, equal_nan=True, msg=name
        )
        rounded = exact[inside].to(dtype)
        up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
        ulp = (up.double() - rounded.double()).clamp_min(finfo.smallest_normal * finfo.eps)
        err = (got[inside].double() - rounded.double()).abs() / ulp
        assert err.max() <= 1.0, (name, err.max().item(), x[inside][err.argmax()].item())


@pytest.mark.parametrize("device", DEVICES)
def test_special_values(device):
    x = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -100.0, 100.0], device=device
    )
    for name, (fr, tf, ref, kw) in CASES.items():
        y = fr(x, **kw)
        torch.testing.assert_close(y, ref(x, **kw), equal_nan=True, msg=name)
        expected = tf(x, **kw)
        if name == "gelu" and device == "cpu":
            # torch's vectorized CPU erf turns gelu(+inf) into NaN; the limit is +inf
            assert y[1].item() == float("inf")
            y, expected = y[2:], expected[2:]
        torch.testing.assert_close(y, expected, equal_nan=True, msg=name)


INT_OF = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relu_moves_input_bits(device, dtype):
    """ReLU's forward is exactly x or +0 and its backward exactly g or +0, bit for bit (the
    CPU loops select raw element bits instead of converting through float32): subnormals,
    infinities and a NaN's payload pass unchanged (the payload on the CPU; CUDA kernels
    round through float32), -0 and negatives become +0."""
    tiny = torch.finfo(dtype).tiny
    vals = [1.5, -2.0, 0.0, -0.0, tiny / 4, -tiny / 4, float("inf"), -float("inf"), 3e-3, 7.0]
    x = torch.tensor(vals * 40, dtype=dtype)  # 400 elements: whole mask chunks and a tail
    nan = torch.tensor([-1], dtype=INT_OF[dtype]).view(dtype)  # all ones: NaN, payload set
    x = torch.cat([x, nan.repeat(3)]).to(device).requires_grad_()
    y = FR.relu(x)
    bits, xbits = y.detach().view(INT_OF[dtype]), x.detach().view(INT_OF[dtype])
    kept = ~(x.detach() <= 0)
    assert torch.equal(bits[kept & ~x.detach().isnan()], xbits[kept & ~x.detach().isnan()])
    assert torch.equal(bits[~kept], torch.zeros_like(bits[~kept]))
    assert y.detach()[-3:].isnan().all()
    if device == "cpu":
        assert torch.equal(bits[-3:], xbits[-3:])
    g = torch.tensor(vals[::-1] * 40 + [1.0] * 3, dtype=dtype, device=device)
    (dx,) = torch.autograd.grad(y, x, g)
    gbits = g.view(INT_OF[dtype])
    assert torch.equal(dx.view(INT_OF[dtype])[kept], gbits[kept])
    assert torch.equal(dx.view(INT_OF[dtype])[~kept], torch.zeros_like(gbits[~kept]))
    with torch.no_grad():  # the inference loop (no mask)
        assert torch.equal(FR.relu(x.detach()).view(INT_OF[dtype])[kept], bits[kept])


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    ints = torch.arange(6, device=device)
    for fr, _, _, kw in CASES.values():
        with pytest.raises(TypeError, match="input"):
            fr(ints, **kw)
    # the C++ checks, for callers of the raw ops
    check_raw_op_errors(
        device,
        [
            ("ops.sigmoid(torch.arange(6, device=device))", "TypeError", "input"),
            ("ops.sigmoid_backward(x, x.double())", "TypeError", "grad"),
            # numbers in the messages: formatted without iostreams (csrc/errors.h)
            (
                "ops.prelu(x.view(2, 3, 4), torch.rand(5, device=device))",
                "ValueError",
                "weight has 5 elements",
            ),
            ("ops.gelu(x, 'fast')", "ValueError", "approximate"),
            ("ops.elu(x, -1.0)", "ValueError", "alpha must be >= 0 (backward uses the output), got -1"),
            ("ops.elu(x, -0.25)", "ValueError", "got -0.25"),
            ("ops.relu_backward(x, torch.zeros(1, dtype=torch.uint8, device=device))", "ValueError", "mask"),
        ],
    )
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(ValueError, match="weight"):
        FR.prelu(x, torch.rand(4, device=device))
    with pytest.raises(ValueError, match="weight"):
        FR.prelu(x, torch.rand(3, 1, device=device))
    with pytest.raises(TypeError, match="weight"):
        FR.prelu(x, torch.rand(3, device=device, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="weight"):
        FR.prelu(x, torch.rand(3, device="meta"))
    with pytest.raises(ValueError, match="approximate"):
        FR.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="alpha"):
        FR.elu(x, alpha=-1.0)
    with pytest.raises(TypeError, match="negative_slope"):
        FR.leaky_relu(x, negative_slope="0.1")


def test_prelu_weight_on_other_device():
    if not CUDA:
        pytest.skip("CUDA not available")
    x = torch.randn(2, 3, 4, device="cuda")
    with pytest.raises(RuntimeError, match="weight"):
        FR.prelu(x, torch.rand(3))


@pytest.mark.parametrize("device", DEVICES)
def test_modules(device):
    x = make_input((2, 4, 3, 3), "contiguous", torch.float32, device)
    pairs = [
        (FN.ReLU(), torch.nn.ReLU()),
        (FN.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3)),
        (FN.ELU(0.5), torch.nn.ELU(0.5)),
        (FN.SELU(), torch.nn.SELU()),
        (FN.GELU("tanh"), torch.nn.GELU("tanh")),
        (FN.SiLU(), torch.nn.SiLU()),
        (FN.Sigmoid(), torch.nn.Sigmoid()),
        (FN.Tanh(), torch.nn.Tanh()),
        (FN.PReLU(4, init=0.1), torch.nn.PReLU(4, init=0.1)),
    ]
    for fm, tm in pairs:
        fm, tm = fm.to(device), tm.to(device)
        torch.testing.assert_close(fm(x), tm(x))
        assert repr(fm) == repr(tm)
        assert fm.state_dict().keys() == tm.state_dict().keys()


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


@pytest.mark.parametrize("device", DEVICES)
def test_64bit_indexing(device):
    # more than 2^31 elements: offsets past int32 must reach the right place
    n = 2**31 + 37  # about 16 GB at the peak, within the 24 GB of our CPU machines
    x = torch.full((n,), -1.0, dtype=torch.bfloat16, device=device)
    x[-5:] = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=torch.bfloat16)
    x.requires_grad_()
    y = FR.relu(x)
    assert torch.equal(y[-5:].float().cpu(), torch.tensor([1.0, 0.0, 3.0, 0.0, 5.0]))
    assert y[:1000].float().abs().sum().item() == 0
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(gx[-5:].float().cpu(), torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]))
    del gx, y
    z = FR.sigmoid(x.detach())
    assert z[-1].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), rel=1e-2)


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_cpu_and_cuda_agree(name, dtype):
    fr, _, _, kw = CASES[name]
    x = make_input((3, 1000), "contiguous", dtype, "cpu").requires_grad_()
    xc = x.detach().cuda().requires_grad_()
    torch.testing.assert_close(fr(xc, **kw).cpu(), fr(x, **kw))
    if name in OUTPUT_BACKWARD and dtype in (torch.float16, torch.bfloat16):
        return  # backward from each device's own rounded output: see test_backward_matches_torch
    g = torch.randn(x.shape, dtype=dtype)
    torch.testing.assert_close(
        torch.autograd.grad(fr(xc, **kw), xc, g.cuda())[0].cpu(), torch.autograd.grad(fr(x, **kw), x, g)[0]
    )


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
def test_cuda_unaligned_views():
    # a view that starts one element in: no 16-byte vectors, the scalar path
    base = torch.randn(1 + 4099, device="cuda", dtype=torch.bfloat16)
    x = base[1:].requires_grad_()
    for name, (fr, tf, _, kw) in CASES.items():
        y = fr(x, **kw)
        torch.testing.assert_close(y, tf(x, **kw), msg=lambda m: f"{name}: {m}")
        g = torch.randn_like(x)
        want = torch.autograd.grad(tf(x, **kw), x, g)[0]
        if name in OUTPUT_BACKWARD:
            # bfloat16 backward from the saved output: torch's formula on *our* y, as in
            # test_backward_matches_torch (a one-ulp difference of two correct forwards
            # near saturation is a large relative change of 1 - y^2)
            want = OUTPUT_BACKWARD[name](g, y.detach(), kw)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], want, msg=lambda m: f"{name}: {m}")


def test_python_m_fastreg_prints_build_info():
    out = subprocess.run([sys.executable, "-m", "fastreg"], capture_output=True, text=True, check=True).stdout
    info = fastreg.build_info()
    assert f"with_cuda       {info['with_cuda']}" in out
    assert info["version"] in out and "torch" in out
    assert ("cuda:0" in out) == torch.cuda.is_available()


def test_import_without_extension_says_how_to_build(tmp_path):
    pkg = tmp_path / "fastreg"
    pkg.mkdir()
    src = os.path.dirname(fastreg.__file__)
    for f in os.listdir(src):
        if f.endswith(".py"):
            shutil.copy(os.path.join(src, f), pkg / f)
    # an editable install's finder would still resolve fastreg._C: drop it
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
        " if '__editable__' not in getattr(f, '__module__', '')]; import fastreg"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode != 0
    assert "ImportError" in res.stderr and "make build" in res.stderr


STREAM_BACKWARD_SCRIPT = """
import sys, torch, fastreg.functional as FR
def bits(t):
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
out = []
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for n in (1, 15, 16, 17, 255, 256, 1000, 4099, 70001):
        base = (torch.randn(n + 1) * 3).to(dtype)
        g = torch.randn(n + 1).to(dtype)
        for x, gv in ((base[:n].clone(), g[:n]), (base[1:], g[1:])):  # the second pair unaligned
            x = x.detach().requires_grad_()
            for f in (FR.relu, FR.leaky_relu, FR.sigmoid, FR.tanh, FR.elu, FR.selu, FR.gelu):
                out.append(bits(torch.autograd.grad(f(x), x, gv)[0]).clone())
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["default", "avx512", "avx2"])
def test_streaming_backward_gives_the_same_bits(isa, tmp_path):
    """Backward loops of relu, leaky_relu, sigmoid, tanh, elu and selu write with
    non-temporal stores when the op's bytes reach the last-level cache;
    FASTREG_CPU_STREAM_MIN_BYTES=0 sends every call down that path, which must give the
    same bits as the ordinary stores (gelu, which never streams, is the control): every
    dtype, unaligned views, lengths that leave partial lines and buffers. Under the
    avx512 cap the half types take the generic rounding into the streamed buffer; under the
    avx2 cap the AVX2 path's streamed maps and mask loops."""
    cap = {} if isa == "default" else {"FASTREG_CPU_ISA": isa}
    ordinary = child_tensors(STREAM_BACKWARD_SCRIPT, tmp_path / "ordinary.pt", **cap)
    streamed = child_tensors(
        STREAM_BACKWARD_SCRIPT, tmp_path / "streamed.pt", FASTREG_CPU_STREAM_MIN_BYTES="0", **cap
    )
    assert_same_bits(streamed, ordinary)


MASK_PATHS_SCRIPT = """
import sys, torch, fastreg
ops = torch.ops.fastreg
specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 65504.0, -7e4])
out = []
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for n in (1, 7, 8, 31, 32, 33, 255, 257, 1000, 65536 + 13):
        x = torch.randn(n, generator=gen) * 3
        k = torch.randperm(n, generator=gen)[: max(1, n // 40)]
        x[k] = specials[torch.arange(k.numel()) % 9]
        g = torch.randn(n, generator=gen) * 2
        g[k[: k.numel() // 2]] = float("nan")
        x, g = x.to(dtype), g.to(dtype)
        for slope in (0.01, -2.5, 1e4):
            y, m = ops.leaky_relu(x, slope, True)
            out += [y, m, ops.leaky_relu_backward(g, m, slope), ops.leaky_relu(x, slope, False)[0]]
        y, m = ops.relu(x, True)
        out += [y, m, ops.relu_backward(g, m)]
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("path", ["default", "stream", "avx512", "avx2", "avx2-stream"])
def test_mask_loops_same_bits_on_every_cpu_path(path, tmp_path):
    """relu and leaky_relu with a 1-bit mask: outputs, mask bytes and gradients are bit for
    bit the portable loops' on every other CPU path (the mask-register loops of AVX-512 and
    the movemask loops of AVX2 for the half types, streamed backward stores, the avx512 and
    avx2 caps), through NaN, infinities, signed zeros, denormals and float16 overflow, for
    lengths that leave partial mask bytes, 32-element blocks and tasks."""
    portable = child_tensors(MASK_PATHS_SCRIPT, tmp_path / "portable.pt", FASTREG_CPU_ISA="portable")
    stream = {"FASTREG_CPU_STREAM_MIN_BYTES": "0"}
    env = {"stream": stream, "default": {}, "avx2-stream": {**stream, "FASTREG_CPU_ISA": "avx2"}}.get(
        path, {"FASTREG_CPU_ISA": path}
    )
    assert_same_bits(child_tensors(MASK_PATHS_SCRIPT, tmp_path / f"{path}.pt", **env), portable)


MAP_PATHS_SCRIPT = """
import sys, torch, fastreg, fastreg.functional as FR
specials = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 65504.0, -7e4, 1e-6, 88.0])
calls = [FR.sigmoid, FR.tanh, lambda t: FR.elu(t, 0.7), FR.selu, FR.gelu,
         lambda t: FR.gelu(t, approximate="tanh"), FR.silu, lambda t: FR.leaky_relu(t, 0.2)]
out = []
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for n in (1, 15, 16, 31, 33, 1000, 65536 + 13):
        x = torch.randn(2, 3, n, generator=gen) * 4
        k = torch.randperm(x.numel(), generator=gen)[: max(1, x.numel() // 40)]
        x.view(-1)[k] = specials[torch.arange(k.numel()) % specials.numel()]
        x = x.to(dtype).requires_grad_()
        g = (torch.randn(2, 3, n, generator=gen) * 2).to(dtype)
        w = (torch.rand(3, generator=gen) - 0.3).to(dtype).requires_grad_()
        for f in calls:
            with torch.no_grad():
                out.append(f(x))
            out += torch.autograd.grad(f(x), x, g)
        out += [FR.prelu(x.detach(), w.detach()), *torch.autograd.grad(FR.prelu(x, w), (x, w), g)]
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_activation_maps_same_bits_on_every_cpu_path(isa, tmp_path):
    """Every activation's forward and backward, and PReLU's with its weight gradient, give the
    portable loops' bits on the AVX2 and AVX-512 paths (one-pass conversions of the 2-byte
    types by instruction, map_avx2 / map_avx512, PReLU's AVX2 backward row), through
    infinities, signed zeros, denormals and float16 overflow, for lengths that leave partial
    vectors, 32-element blocks and tasks."""
    portable = child_tensors(MAP_PATHS_SCRIPT, tmp_path / "portable.pt", FASTREG_CPU_ISA="portable")
    assert_same_bits(child_tensors(MAP_PATHS_SCRIPT, tmp_path / f"{isa}.pt", FASTREG_CPU_ISA=isa), portable)


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_other_cpu_instruction_sets(isa):
    # The CPU loops are compiled for AVX-512, AVX2 and a portable path (and use
    # AVX512_BF16's conversion where the CPU has it); the machine runs the best
    # one, so the others are checked in a child process.
    code = f"""
import torch, fastreg, fastreg.functional as FR, fastreg.reference as R
import torch.nn.functional as F
order = ["portable", "avx2", "avx512", "avx512bf16"]  # a cap never raises the level
assert order.index(fastreg.build_info()["cpu_isa"]) <= order.index({isa!r}), fastreg.build_info()
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    x = (torch.randn(3, 1001) * 3).to(dtype).requires_grad_()
    g = torch.randn(3, 1001).to(dtype)
    for fr, tf in ((FR.gelu, F.gelu), (FR.silu, F.silu), (FR.tanh, torch.tanh), (FR.elu, F.elu),
                   (FR.relu, F.relu), (FR.leaky_relu, F.leaky_relu), (FR.sigmoid, torch.sigmoid)):
        torch.testing.assert_close(fr(x), tf(x))
        if dtype in (torch.float32, torch.float64):
            ours, theirs = torch.autograd.grad(fr(x), x, g)[0], torch.autograd.grad(tf(x), x, g)[0]
            torch.testing.assert_close(ours, theirs)
    w = torch.rand(1001).to(dtype)
    torch.testing.assert_close(FR.prelu(x.view(3, 1001, 1), w), F.prelu(x.view(3, 1001, 1), w))
    for p in (0.2, 0.7):
        assert torch.equal(FR.dropout(x, p, seed=3), R.dropout(x, p, seed=3))
        b = torch.randn(1001).to(dtype)
        ours = FR.bias_act_dropout(x, b, "relu", p, seed=4)
        assert torch.equal(ours, R.bias_act_dropout(x, b, "relu", p, seed=4))
print("ISA OK")
"""
    env = dict(os.environ, FASTREG_CPU_ISA=isa, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "ISA OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_prelu_large_nchw_matches_cpu(dtype):
    """PReLU's backward over more units than one grid (several per thread, loads one unit
    ahead), each channel spanning whole warps (the warp-sum path of grad_weight); relu and
    leaky_relu's mask kernels (several units per thread per pass) bit for bit."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 256, 256, generator=gen).to(dtype)
    g = torch.randn(x.shape, generator=gen).to(dtype)
    w = (torch.rand(64, generator=gen) * 0.5).to(dtype)
    results = []
    for device in ("cuda", "cpu"):
        xx, ww = x.to(device).requires_grad_(), w.to(device).requires_grad_()
        y = FR.prelu(xx, ww)
        results.append([t.cpu() for t in (y, *torch.autograd.grad(y, (xx, ww), g.to(device)))])
    (y, gx, gw), (y_cpu, gx_cpu, gw_cpu) = results
    for f in (FR.relu, lambda t: FR.leaky_relu(t, 0.1)):
        got, want = [
            [t.cpu() for t in (f(xx), *torch.autograd.grad(f(xx), xx, g.to(dev)))]
            for dev in ("cuda", "cpu")
            for xx in [x.to(dev).requires_grad_()]
        ]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    torch.testing.assert_close(y, y_cpu)
    torch.testing.assert_close(gx, gx_cpu)
    # grad_weight: sums of 2^19 products (|g x| mostly < 3) per channel, added in different
    # orders on each device: float32 rounding can differ by up to ~2^19 * 2^-24 * 3 ~ 0.1 in
    # the worst case, a few hundredths typically; bfloat16 rounds the float32 sum once
    tol = {"atol": 1.0, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 0.1, "rtol": 1e-4}
    torch.testing.assert_close(gw, gw_cpu, **tol)


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
    steps = [
        lambda t: FR.sigmoid(t), lambda t: FR.tanh(t), lambda t: FR.relu(t),
        lambda t: FR.leaky_relu(t, 0.2), lambda t: FR.elu(t, 0.7), lambda t: FR.selu(t),
        lambda t: FR.gelu(t, approximate="tanh"), lambda t: FR.silu(t), lambda t: FR.prelu(t, w),
        lambda t: FR.dropout(t, 0.3, seed=1), lambda t: FR.dropout_add(t, torch.cos(t), 0.3, seed=2),
        lambda t: FR.drop_path(t, 0.5, True, seed=3),
        lambda t: FR.drop_path(t, 0.5, True, residual=t * 2, seed=3),
        lambda t: FR.bias_act_dropout(t, b, "gelu", 0.3, seed=4),
        lambda t: FR.bias_act_dropout(t, b, "relu", 0.3, seed=4),
        # the in-place forms (on a copy: in place on a leaf that requires grad is an error)
        lambda t: FR.relu(t * 1, inplace=True), lambda t: FR.leaky_relu(t * 1, 0.2, inplace=True),
        lambda t: FR.elu(t * 1, 0.7, inplace=True), lambda t: FR.selu(t * 1, inplace=True),
        lambda t: FR.silu(t * 1, inplace=True), lambda t: FR.dropout(t * 1, 0.3, inplace=True, seed=1),
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


def every_module_model():
    """A model of every activation and dropout-family module of fastreg.nn, in a line."""
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), FN.GELU(approximate="tanh"), FN.LeakyReLU(0.2), FN.PReLU(6),
        FN.ELU(0.5), FN.SELU(), FN.SiLU(), FN.Sigmoid(), FN.Tanh(), FN.ReLU(),
        FN.BiasActDropout(6, "gelu", 0.3), FN.Dropout(0.2), FN.AlphaDropout(0.2), FN.DropPath(0.5),
        FN.DropConnectLinear(6, 5, p=0.3),
    )  # fmt: skip


# the fastreg ops every_module_model runs, in order (alpha dropout is the dropout op)
EVERY_MODULE_OPS = [
    "gelu", "leaky_relu", "prelu", "elu", "selu", "silu", "sigmoid", "tanh", "relu",
    "bias_act_dropout", "dropout", "dropout", "drop_path", "dropconnect_linear",
]  # fmt: skip
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
    assert [t.__name__ for t in targets] == [
        "gelu", "leaky_relu", "prelu", "elu", "selu", "silu", "sigmoid", "tanh", "relu",
        "bias_act_dropout", "dropout", "alpha_dropout", "drop_path", "dropconnect_linear",
    ]  # fmt: skip
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
        "sigmoid": lambda: FR.sigmoid(x), "tanh": lambda: FR.tanh(x),
        "relu": lambda: FR.relu(x.clone(), inplace=True),
        "leaky_relu": lambda: FR.leaky_relu(x.clone(), negative_slope=0.3, inplace=True),
        "prelu": lambda: FR.prelu(x, w), "elu": lambda: FR.elu(x.clone(), alpha=0.4, inplace=True),
        "selu": lambda: FR.selu(x.clone(), inplace=True), "gelu": lambda: FR.gelu(x, approximate="tanh"),
        "silu": lambda: FR.silu(x.clone(), inplace=True),
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
    for name, call in calls.items():
        want = call()
        with FunctionLog() as mode:
            got = call()
        assert getattr(FR, name.split("_leaky")[0].split("_gelu")[0]) in mode.funcs, name
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        assert all(torch.equal(a, c) for a, c in zip(want, got, strict=True)), name


# name -> (fastreg in place, fastreg out of place, torch in place)
INPLACE = {
    "relu": (lambda t: FR.relu(t, inplace=True), FR.relu, lambda t: F.relu(t, inplace=True)),
    "leaky_relu": (
        lambda t: FR.leaky_relu(t, 0.2, inplace=True), lambda t: FR.leaky_relu(t, 0.2),
        lambda t: F.leaky_relu(t, 0.2, inplace=True),
    ),
    "elu": (
        lambda t: FR.elu(t, 0.7, inplace=True), lambda t: FR.elu(t, 0.7),
        lambda t: F.elu(t, 0.7, inplace=True),
    ),
    "selu": (lambda t: FR.selu(t, inplace=True), FR.selu, lambda t: F.selu(t, inplace=True)),
    "silu": (lambda t: FR.silu(t, inplace=True), FR.silu, lambda t: F.silu(t, inplace=True)),
}  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_writes_the_input_itself(device, dtype, name):
    """inplace=True on a contiguous or channels_last tensor runs the op's in-place form: the
    result is written into the input's own memory (no fresh output copied back), bit for bit
    the out-of-place result, and the version counter moves. With autograd (on a non-leaf, and
    on a view of one) the gradients are the out-of-place op's and torch's in-place op's, and
    what is saved is what the out-of-place op saves. Other layouts take the copy-back path;
    a leaf that requires grad is refused as torch refuses it."""
    inplace, outplace, torch_inplace = INPLACE[name]
    x = (torch.randn(4, 6, 5, 7, device=device) * 3).to(dtype)
    for layout in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, ::2]):
        want = outplace(layout)
        with torch.no_grad():
            t = layout.clone()
            ptr, version = t.data_ptr(), t._version
            assert inplace(t) is t and t.data_ptr() == ptr and t._version > version
            assert torch.equal(t, want) and t.stride() == layout.clone().stride()
            if layout.is_contiguous() or layout.is_contiguous(memory_format=torch.channels_last):
                assert ops_called(inplace, layout.clone()) == [getattr(ops, name + "_").default]
    a = (torch.randn(4, 6, 5, 7, device=device) * 3).to(dtype).requires_grad_()
    g = torch.randn_like(a)
    n = a.numel()
    nbytes, _, y = saved_bytes(lambda t: inplace(t * 1), a)
    # relu and leaky_relu save a 1-bit mask; elu and selu the output (the input itself,
    # which holds it); silu in place a copy of its input, as torch's in-place silu keeps
    assert nbytes == (n // 8 if name in ("relu", "leaky_relu") else n * dtype.itemsize)
    want_y = outplace(a * 1)
    assert torch.equal(y, want_y)
    got = torch.autograd.grad(y, a, g)[0]
    assert torch.equal(got, torch.autograd.grad(want_y, a, g)[0])
    torch.testing.assert_close(got, torch.autograd.grad(torch_inplace(a * 1), a, g)[0])
    cl = a.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y_cl = inplace(cl * 1)  # channels_last in place: the mask / saved tensor in its memory order
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(y_cl, want_y)
    assert torch.equal(torch.autograd.grad(y_cl, cl, g)[0], got)
    base = a * 1  # in place on a view: autograd rebases the base's history
    inplace(base[1:3])
    want_base = torch.cat([a[:1] * 1, outplace(a[1:3] * 1), a[3:] * 1])
    assert torch.equal(base, want_base)
    assert torch.equal(torch.autograd.grad(base, a, g)[0], torch.autograd.grad(want_base, a, g)[0])
    with pytest.raises(RuntimeError, match="leaf Variable"):
        inplace(a)


def test_inplace_forms_opcheck_and_compile():
    """The in-place ops pass opcheck (schema, fake kernels, version counter); under
    torch.compile(fullgraph=True) inplace=True is traced (out of place and a copy, which the
    compiler reinplaces) and gives the eager result in the input."""
    x = torch.randn(3, 8, 5)
    seed = torch.tensor([3])
    for op, args in (
        (ops.relu_, (True,)), (ops.relu_, (False,)), (ops.leaky_relu_, (0.2, True)), (ops.elu_, (0.7,)),
        (ops.selu_, ()), (ops.silu_, ()), (ops.dropout_, (seed, 0.3, False)),
        (ops.dropout_, (seed, 0.3, True)),
    ):  # fmt: skip
        torch.library.opcheck(op, (x.clone(), *args))
    for name, (inplace, outplace, _) in INPLACE.items():
        t = x.clone()
        out = torch.compile(inplace, fullgraph=True)(t)
        assert torch.equal(t, outplace(x)) and torch.equal(out, t), name


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_forms_gradcheck_and_gradgradcheck(device):
    """First and second derivatives through the in-place forms (float64, on a non-leaf)."""
    cases = [inplace for inplace, _, _ in INPLACE.values()] + [
        lambda t: FR.dropout(t, 0.3, inplace=True, seed=3),
        lambda t: FR.alpha_dropout(t, 0.3, True, inplace=True, seed=4),
    ]
    for inplace in cases:
        x = torch.randn(5, 6, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, f=inplace: f(t * 1), (x,))
        assert torch.autograd.gradgradcheck(lambda t, f=inplace: f(t * 1), (x,))
