"""PReLU, the activation with a learned weight: values and both gradients against torch,
second derivatives, autocast, what it saves."""

import pytest
import torch
import torch.nn.functional as F
from activation_cases import (
    DTYPES,
    make_input,
    same_strides,
)
from conftest import (
    CUDA,
    DEVICES,
    saved_bytes,
)

import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R

ops = torch.ops.fastreg


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
def test_prelu_saves_input(device):
    x = torch.randn(4, 8, 10, device=device, dtype=torch.bfloat16).requires_grad_()
    w = torch.full((8,), 0.25, device=device, dtype=torch.bfloat16).requires_grad_()
    nbytes, saved, _ = saved_bytes(FR.prelu, x, w)
    # the input (2 B per element) and a reference to the weight
    assert nbytes == 2 * x.numel() + 2 * w.numel()
    assert any(t.data_ptr() == w.data_ptr() for t in saved)


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


def test_prelu_weight_on_other_device():
    if not CUDA:
        pytest.skip("CUDA not available")
    x = torch.randn(2, 3, 4, device="cuda")
    with pytest.raises(RuntimeError, match="weight"):
        FR.prelu(x, torch.rand(3))


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
