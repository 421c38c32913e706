"""The per-sample draws of the batch ops (csrc/sampling.h): Beta lambdas bit for bit the
reference's and the same on CPU and CUDA, their distribution, Gamma's moments, the
deterministic math's accuracy."""

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
