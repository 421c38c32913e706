"""Activation autograd: gradcheck, second derivatives, torch.func transforms, what each op
saves for backward, and when a graph is recorded, for every case of the activation table."""

import pytest
import torch
from activation_cases import CASES, ROW_OF, SAVED, forward_args, make_input, raw_forward
from conftest import (
    DEVICES,
    ops_called,
    saved_bytes,
)

import fastreg.functional as FR

ops = torch.ops.fastreg


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_gradcheck(device, name):
    fr, _, _, kw = CASES[name]
    x = make_input((3, 5), "contiguous", torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fr(t, **kw), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_double_backward(device, name):
    """create_graph=True: gradgradcheck in float64 through fastreg.functional (the eager
    autograd.Function) and through the raw op (torch.library's registration), and the second
    derivative equal to torch's own."""
    fr, tf, _, kw = CASES[name]
    x = make_input((3, 5), "contiguous", torch.float64, device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: fr(t, **kw), (x,))
    assert torch.autograd.gradgradcheck(raw_forward(name), (x,))
    g = torch.randn(3, 5, device=device, dtype=torch.float64)
    (d1,) = torch.autograd.grad(fr(x, **kw), x, g, create_graph=True)
    (e1,) = torch.autograd.grad(tf(x, **kw), x, g, create_graph=True)
    torch.testing.assert_close(d1, e1)
    (e2,) = torch.autograd.grad((e1**2).sum(), x)
    if ROW_OF[name].saves == "mask":  # piecewise linear: the gradient does not depend on x
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
@pytest.mark.parametrize("name", CASES)
def test_saved_bytes(device, name):
    fr, tf, _, kw = CASES[name]
    n = 8 * 1000
    x = torch.randn(n, device=device, dtype=torch.bfloat16).requires_grad_()
    nbytes, saved, _ = saved_bytes(lambda t: fr(t, **kw), x)
    assert nbytes == SAVED[name] * n, (name, nbytes, [(t.dtype, t.shape) for t in saved])
    assert len(saved) == 1
    # relu's mask is ceil(n/8) bytes for sizes that are not multiples of 8
    if ROW_OF[name].saves == "mask":
        odd = torch.randn(1001, device=device, dtype=torch.bfloat16).requires_grad_()
        assert saved_bytes(lambda t: fr(t, **kw), odd)[0] == 126
    # torch eager saves as much or more (2 bytes per element)
    assert saved_bytes(lambda t: tf(t, **kw), x)[0] >= nbytes


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
    calls = {ROW_OF[case].name: forward_args(case, x) for case in CASES}  # gelu: its last variant
    calls |= {
        "prelu": (x, w),
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
