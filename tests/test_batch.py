"""The batch family. So far: the per-sample Beta draws that Mixup and CutMix
will use (csrc/sampling.h), exposed as the test-only op fastreg::_sample_beta."""

import math

import pytest
import torch
from conftest import CUDA

from fastreg import _random

ops = torch.ops.fastreg
CASES = [(0.2, 0.2), (0.4, 0.4), (1.0, 1.0), (0.8, 2.5), (3.0, 3.0), (8.0, 0.5)]


@pytest.mark.parametrize("a,b", CASES)
@pytest.mark.parametrize("seed", [0, 123456789, -(2**62) - 7])
def test_beta_draws_equal_reference_bitwise(a, b, seed):
    n = 4099
    ours = ops._sample_beta(torch.tensor([seed]), n, a, b, 3)
    ref = _random.beta_samples(seed, 3, n, a, b)
    assert ours.dtype == torch.float64 and ours.shape == (n,)
    assert torch.equal(ours, ref)
    # in [0, 1]; exactly 0 or 1 only when one Gamma draw is below 1e-16 of the other
    assert bool(((ours >= 0) & (ours <= 1)).all()) and 0.2 < ours.mean().item() / (a / (a + b)) < 5


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("a,b", CASES)
def test_beta_draws_same_on_cpu_and_cuda(a, b):
    cpu = ops._sample_beta(torch.tensor([42]), 100_000, a, b, 0)
    gpu = ops._sample_beta(torch.tensor([42], device="cuda"), 100_000, a, b, 0)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_beta_draws_follow_beta_distribution(alpha):
    stats = pytest.importorskip("scipy.stats")
    draws = ops._sample_beta(torch.tensor([7]), 100_000, alpha, alpha, 0).numpy()
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_gamma_moments():
    for shape in (0.3, 1.0, 4.0):
        g = _random.gamma_samples(11, 0, 200_000, shape).double()
        # mean and variance of Gamma(shape, 1) are both shape
        assert abs(g.mean().item() - shape) < 5 * math.sqrt(shape / g.numel())
        assert abs(g.var().item() / shape - 1) < 0.03


def test_deterministic_math_accuracy():
    x = torch.logspace(-30, 30, 200_001, dtype=torch.float64).float()
    rel = ((_random.dlog(x).double() - x.double().log()).abs() / x.double().log().abs().clamp_min(1e-3)).max()
    assert rel < 4e-7
    y = torch.linspace(-80, 80, 200_001).float()
    rel = ((_random.dexp(y).double() - y.double().exp()) / y.double().exp()).abs().max()
    assert rel < 4e-7


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        ops._sample_beta(torch.tensor([1]), 10, 0.0, 1.0, 0)
    with pytest.raises(TypeError, match="seed"):
        ops._sample_beta(torch.tensor([1.0]), 10, 1.0, 1.0, 0)


# --- cutout ---------------------------------------------------------------------------------
from conftest import DEVICES  # noqa: E402

import fastreg.functional as FR  # noqa: E402
import fastreg.nn as FN  # noqa: E402
import fastreg.reference as R  # noqa: E402

IMAGE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8]


def images(shape, dtype, device, channels_last=False):
    x = torch.rand(shape) * 200 + 10  # never equal to the fills used below
    x = x.to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,p", [(5, 1.0), (8, 0.5), (40, 1.0)])
def test_cutout_bitwise_equal_to_reference(device, dtype, channels_last, size, p):
    x = images((16, 3, 17, 23), dtype, device, channels_last)
    before = x.clone()
    y = FR.cutout(x, size, p, fill=1.0, seed=5)
    assert torch.equal(y, R.cutout(x, size, p, fill=1.0, seed=5))
    assert torch.equal(x, before)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_boxes_are_clipped_squares_on_every_channel(device):
    x = images((64, 3, 20, 20), torch.float32, device)
    size = 7
    y = FR.cutout(x, size, 1.0, fill=-7.0, seed=3)
    boxed = y == -7.0
    assert torch.equal(boxed[:, :1].expand_as(boxed), boxed)  # the same box on every channel
    assert torch.equal(y[~boxed], x[~boxed])  # every other pixel untouched
    for b in range(64):
        rows = boxed[b, 0].any(1).nonzero().flatten()
        cols = boxed[b, 0].any(0).nonzero().flatten()
        assert boxed[b, 0].sum() == len(rows) * len(cols)  # a rectangle
        h, w = len(rows), len(cols)
        assert h >= 1 and w >= 1 and h <= size and w <= size
        # not clipped -> the full side; clipped -> it touches the border
        assert h == size or rows[0] == 0 or rows[-1] == 19
        assert w == size or cols[0] == 0 or cols[-1] == 19


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_probability_and_identity(device):
    x = images((4000, 1, 8, 8), torch.float32, device)
    y = FR.cutout(x, 3, 0.3, fill=-1.0, seed=9)
    rate = (y == -1.0).flatten(1).any(1).float().mean().item()
    assert abs(rate - 0.3) < 5 * (0.3 * 0.7 / 4000) ** 0.5
    assert torch.equal(FR.cutout(x, 3, 0.0, seed=9), x)
    assert (FR.cutout(x, 3, 1.0, fill=-1.0, seed=9) == -1.0).flatten(1).any(1).all()


def test_cutout_centres_are_uniform():
    stats = pytest.importorskip("scipy.stats")
    H = W = 16
    y = FR.cutout(torch.ones(20_000, 1, H, W), 1, 1.0, fill=0.0, seed=1)
    centre = (y[:, 0] == 0).flatten(1).float().argmax(1)
    rows, cols = centre // W, centre % W
    for coord in (rows, cols):
        counts = torch.bincount(coord, minlength=H).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_inplace_touches_only_the_boxes(device):
    x = images((8, 3, 12, 12), torch.float32, device)
    before = x.clone()
    ptr = x.data_ptr()
    out = FR.cutout(x, 5, 1.0, fill=-3.0, inplace=True, seed=2)
    assert out is x and x.data_ptr() == ptr
    assert torch.equal(x, R.cutout(before, 5, 1.0, fill=-3.0, seed=2))


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_gradient(device):
    x = images((4, 2, 9, 9), torch.float64, device).requires_grad_()
    y = FR.cutout(x, 4, 1.0, fill=0.5, seed=8)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g, (y != 0.5).double())
    assert torch.autograd.gradcheck(lambda t: FR.cutout(t, 4, 0.7, fill=0.5, seed=8), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_opcheck_compile_module(device):
    x = images((4, 3, 10, 10), torch.float32, device)
    s = torch.tensor([4], device=device)
    torch.library.opcheck(ops.cutout, (x.requires_grad_(), s, 3, 0.5, 1.0))
    torch.library.opcheck(ops.cutout_, (x.detach().clone(), s, 3, 0.5, 1.0))
    f = torch.compile(lambda t: FR.cutout(t, 3, 0.8, fill=2.0, seed=6) * 2, fullgraph=True)
    torch.testing.assert_close(f(x.detach()), FR.cutout(x.detach(), 3, 0.8, fill=2.0, seed=6) * 2)
    m = FN.Cutout(3, 0.8, fill=2.0)
    assert m.eval()(x) is x and "size=3" in repr(m)


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_bad_input(device):
    x = images((2, 3, 8, 8), torch.float32, device)
    before = x.clone()
    with pytest.raises(ValueError, match="images"):
        FR.cutout(x[0], 3)
    with pytest.raises(ValueError, match="size"):
        FR.cutout(x, 0)
    with pytest.raises(ValueError, match="p"):
        FR.cutout(x, 3, 1.5)
    with pytest.raises(TypeError, match="images"):
        FR.cutout(x.long(), 3)
    with pytest.raises(ValueError, match="fill"):
        FR.cutout(x.to(torch.uint8), 3, fill=300)
    assert torch.equal(x, before)
