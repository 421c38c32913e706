"""Activation values: every case of the activation table against torch and the reference,
forward and backward, over dtypes, layouts, special values and devices; bad input."""

import pytest
import torch
import torch.nn.functional as F
from activation_cases import (
    CASES,
    DTYPES,
    KWARGS,
    OUTPUT_BACKWARD,
    ROW_OF,
    layout_cases,
    make_input,
    same_strides,
)
from conftest import (
    CUDA,
    DEVICES,
    check_raw_op_errors,
)

import fastreg.functional as FR

ops = torch.ops.fastreg


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
    # the C++ checks, for callers of the raw ops: every case's forward on integers, every
    # backward with a gradient of another dtype than the saved tensor's
    raw = []
    for case, row in ROW_OF.items():
        params = [repr(v) for v in KWARGS[case].values()]
        forward = ", ".join(
            ["torch.arange(6, device=device)", *params] + (["True"] if row.saves == "mask" else [])
        )
        raw.append((f"ops.{row.name}({forward})", "TypeError", "input"))
        if row.saves != "mask":
            raw.append(
                (f"ops.{row.name}_backward({', '.join(['x', 'x.double()', *params])})", "TypeError", "grad")
            )
    check_raw_op_errors(
        device,
        raw
        + [
            # numbers in the messages: formatted without iostreams (csrc/errors.h)
            (
                "ops.prelu(x.view(2, 3, 4), torch.rand(5, device=device))",
                "ValueError",
                "weight has 5 elements",
            ),
            ("ops.gelu(x, 'fast')", "ValueError", "approximate"),
            ("ops.elu(x, -1.0)", "ValueError", "fastreg.elu: alpha must be >= 0, got -1"),
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
