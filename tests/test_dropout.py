"""Dropout, alpha dropout, dropout_add and drop path: bit for bit the reference on every
dtype and layout, their semantics and statistics, gradients, saved bytes, in-place forms,
bad input, and large tensors against the CPU."""

import pytest
import torch
import torch.nn.functional as F
from activation_cases import make_input
from conftest import CUDA, DEVICES, check_raw_op_errors, ops_called, saved_bytes
from dropout_cases import ACTS, DTYPES, RANDOM_OPS, inputs

import fastreg.functional as FR
import fastreg.reference as R

ops = torch.ops.fastreg


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropout_keeps_the_sign_of_zero(device, dtype):
    """A kept -0 stays -0 (x * scale, as torch and the reference), dropped elements are +0:
    the zeros' sign bits equal the reference's, on every backend (torch.equal cannot tell)."""
    x = torch.tensor([-0.0, 0.0, -1.5, 2.0] * 64, dtype=dtype, device=device)
    for p in (0.3, 0.0001):
        y, want = FR.dropout(x, p, seed=5), R.dropout(x, p, seed=5)
        assert torch.equal(torch.signbit(y), torch.signbit(want)), p
        assert torch.signbit(y[0::4]).any()  # some kept -0


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
