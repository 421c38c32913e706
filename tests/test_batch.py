"""The batch family: the per-sample draws (csrc/sampling.h: Beta lambdas, boxes,
normals), Cutout, random erasing, Mixup / CutMix and fastreg.nn.Mixup (timm's)."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import CUDA, check_raw_op_errors, saved_bytes

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


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_bad_seed_is_rejected_by_the_raw_op(device):
    x = images((2, 3, 8, 8), torch.float32, device)
    with pytest.raises(TypeError, match="seed"):
        ops.cutout(x, torch.tensor([1.0], device=device), 3, 1.0, 0.0)


# --- random erasing ---------------------------------------------------------------------------


# value='random' is for float images (uint8 with 'random' is an error, tested below)
ERASE_CASES = [
    (d, v) for d in IMAGE_DTYPES for v in (1.5, "random") if not (d == torch.uint8 and v == "random")
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,value", ERASE_CASES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_random_erasing_bitwise_equal_to_reference(device, dtype, value, channels_last, p):
    x = images((16, 3, 17, 23), dtype, device, channels_last)
    before = x.clone()
    y = FR.random_erasing(x, p, value=value, seed=5)
    assert torch.equal(y, R.random_erasing(x, p, value=value, seed=5))
    assert torch.equal(x, before)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert not torch.equal(y, x)


def erased_boxes(x, y):
    """Per sample: None, or (h, w) of the rectangle where y differs from x (asserting it is
    a rectangle, the same on every channel)."""
    changed = y != x
    assert torch.equal(changed.any(1, keepdim=True).expand_as(changed), changed)
    out = []
    for b in range(x.shape[0]):
        m = changed[b, 0]
        if not m.any():
            out.append(None)
            continue
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert m.sum() == h * w and rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        out.append((h, w))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_boxes_follow_torchvision_rule(device):
    H = W = 64
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    x = images((2000, 2, H, W), torch.float32, device)
    y = FR.random_erasing(x, 1.0, scale, ratio, value=-1.0, seed=11)
    boxes = erased_boxes(x, y)
    assert sum(b is None for b in boxes) < 20  # 10 attempts almost always succeed here
    for box in boxes:
        if box is None:
            continue
        h, w = box
        assert h < H and w < W
        # h = round(sqrt(A r)), w = round(sqrt(A / r)) for some area A in scale * H * W and
        # r in ratio: the intervals those roundings allow must meet the ranges
        assert (h - 0.5) * (w - 0.5) <= scale[1] * H * W * (1 + 1e-6)
        assert (h + 0.5) * (w + 0.5) >= scale[0] * H * W * (1 - 1e-6)
        assert (h - 0.5) / (w + 0.5) <= ratio[1] and (h + 0.5) / (w - 0.5) >= ratio[0]


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_probability_and_random_values(device):
    stats = pytest.importorskip("scipy.stats")
    x = torch.full((4000, 3, 16, 16), 100.0, device=device)
    y = FR.random_erasing(x, 0.4, value="random", seed=21)
    rate = (y != 100.0).flatten(1).any(1).float().mean().item()
    assert abs(rate - 0.4) < 5 * (0.4 * 0.6 / 4000) ** 0.5
    values = y[y != 100.0].double().cpu()
    assert values.numel() > 100_000
    assert stats.kstest(values.numpy(), "norm").pvalue > 1e-3
    assert torch.equal(FR.random_erasing(x, 0.0, seed=21), x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [0.0, "random"])
def test_random_erasing_inplace_touches_only_the_boxes(device, value):
    x = images((8, 3, 12, 12), torch.float32, device)
    before = x.clone()
    ptr = x.data_ptr()
    out = FR.random_erasing(x, 1.0, value=value, inplace=True, seed=2)
    assert out is x and x.data_ptr() == ptr
    assert torch.equal(x, R.random_erasing(before, 1.0, value=value, seed=2))
    # a non-dense view: the normals follow the order a dense copy would have
    base = images((8, 3, 12, 24), torch.float32, device)
    view = base[..., ::2]
    expect = R.random_erasing(view.clone(), 1.0, value=value, seed=4)
    FR.random_erasing(view, 1.0, value=value, inplace=True, seed=4)
    assert torch.equal(view, expect)


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_gradient_opcheck_compile_module(device):
    x = images((4, 2, 9, 9), torch.float64, device).requires_grad_()
    y = FR.random_erasing(x, 1.0, value="random", seed=8)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g, (y == x).double())
    assert torch.autograd.gradcheck(lambda t: FR.random_erasing(t, 0.7, value=0.5, seed=8), (x,))
    xf = images((4, 3, 10, 10), torch.float32, device)
    s = torch.tensor([4], device=device)
    args = (s, 0.5, 0.02, 0.33, math.log(0.3), math.log(3.3))
    torch.library.opcheck(ops.random_erasing, (xf.clone().requires_grad_(), *args, 0.0, True))
    torch.library.opcheck(ops.random_erasing_, (xf.clone(), *args, 2.0, False))
    f = torch.compile(lambda t: FR.random_erasing(t, 0.8, value="random", seed=6) * 2, fullgraph=True)
    torch.testing.assert_close(f(xf), FR.random_erasing(xf, 0.8, value="random", seed=6) * 2)
    m = FN.RandomErasing(p=1.0, value=3.0)
    assert m.eval()(xf) is xf and "scale=(0.02, 0.33)" in repr(m)
    assert (m.train()(xf) == 3.0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_batch_raw_op_errors(device):
    """The C++ checks of the batch ops, for callers of the raw ops, numbers in the
    messages included (formatted without iostreams: csrc/errors.h)."""
    seed = "torch.tensor([1], device=device)"
    imgs = "torch.rand(2, 3, 8, 8, device=device)"
    mix = "0.1, 1.0, 0.0, -1.0, -1.0, {prob}, 0.5, 0, True"
    check_raw_op_errors(
        device,
        [
            (f"ops.cutout({imgs}, {seed}, 0, 1.0, 0.0)", "ValueError", "size must be > 0, got 0"),
            (
                f"ops.cutout_(x, {seed}, 4, 1.0, 0.0)",
                "ValueError",
                "images must be 4-D (B, C, H, W), got 2-D",
            ),
            (
                f"ops.random_erasing({imgs}, {seed}, 0.5, 0.1, 1.5, 0.0, 1.0, 0.0, False)",
                "ValueError",
                "got (0.1, 1.5)",
            ),
            (
                f"ops.mix({imgs}, torch.tensor([1, 2], device=device), {seed}, 10, {mix.format(prob=1.5)})",
                "ValueError",
                "prob must be in [0, 1], got 1.5",
            ),
            (
                f"ops.mix({imgs}, torch.rand(2, 5, device=device), {seed}, 10, {mix.format(prob=1.0)})",
                "ValueError",
                "got shape [2, 5]",
            ),
            (f"ops._sample_beta({seed}, 4, -1.0, 1.0, 8)", "ValueError", "alpha must be > 0, got -1, 1"),
        ],
    )


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_bad_input(device):
    x = images((2, 3, 8, 8), torch.float32, device)
    before = x.clone()
    for kwargs, exc, words in [
        (dict(p=1.5), ValueError, "p"),
        (dict(scale=(0.5, 0.1)), ValueError, "scale"),
        (dict(scale=(0.1, 1.5)), ValueError, "scale"),
        (dict(ratio=(0.0, 2.0)), ValueError, "ratio"),
        (dict(ratio=(2.0, 1.0)), ValueError, "ratio"),
        (dict(ratio=3.0), TypeError, "ratio"),
        (dict(value="noise"), ValueError, "value"),
        (dict(value=None), TypeError, "value"),
    ]:
        with pytest.raises(exc, match=words):
            FR.random_erasing(x, inplace=True, **kwargs)
    with pytest.raises(ValueError, match="images"):
        FR.random_erasing(x[0])
    with pytest.raises(ValueError, match="value"):
        FR.random_erasing(x.to(torch.uint8), value="random")
    with pytest.raises(ValueError, match="value"):
        FR.random_erasing(x.to(torch.uint8), value=-1)
    assert torch.equal(x, before)


# --- mixup / cutmix / nn.Mixup ----------------------------------------------------------------

MODES = ["batch", "pair", "elem"]
MIX_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def mix_inputs(B, device, dtype=torch.float32, channels_last=False, K=10, probs=False, shape=(3, 12, 14)):
    x = images((B,) + shape, dtype, device, channels_last)
    if probs:
        t = torch.softmax(torch.randn(B, K, device=device), -1).to(dtype)
    else:
        t = torch.randint(0, K, (B,), device=device)
    return x, t


MIXERS = {
    "mixup": dict(mixup_alpha=0.4, cutmix_alpha=0.0),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5),
    "minmax": dict(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8), prob=0.7),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", MIX_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_mix_bitwise_equal_to_reference(device, dtype, channels_last, mode, mixer):
    cfg = MIXERS[mixer]
    for B, probs, seed in [(8, False, 1), (7, True, 2), (1, False, 3)]:
        x, t = mix_inputs(B, device, dtype, channels_last, probs=probs)
        before = x.clone()
        m = FN.Mixup(**cfg, mode=mode, label_smoothing=0.1, num_classes=10)
        out, soft = m(x, t, seed=seed)
        ref, ref_soft = R.mix(x, t, **cfg, mode=mode, label_smoothing=0.1, num_classes=10, seed=seed)
        if mixer == "minmax":
            assert m.cutmix_alpha == 1.0
        assert torch.equal(out, ref) and torch.equal(soft, ref_soft)
        assert torch.equal(x, before)
        assert soft.dtype == (dtype if probs else torch.float32) and soft.shape == (B, 10)
        assert out.stride() == x.stride()
        # in place: the same values in the same tensor
        m.inplace = True
        y = x.clone()
        out2, soft2 = m(y, t, seed=seed)
        assert out2 is y and torch.equal(y, ref) and torch.equal(soft2, ref_soft)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_mixup_and_cutmix_functions_equal_reference(device, mode):
    x, t = mix_inputs(9, device)
    for fn in ("mixup", "cutmix"):
        a = getattr(FR, fn)(x, t, 0.3, num_classes=10, label_smoothing=0.2, mode=mode, seed=17)
        b = getattr(R, fn)(x, t, 0.3, num_classes=10, label_smoothing=0.2, mode=mode, seed=17)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    a = FR.cutmix(x, t, 0.3, num_classes=10, mode=mode, correct_lam=False, seed=17)
    b = R.cutmix(x, t, 0.3, num_classes=10, mode=mode, correct_lam=False, seed=17)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def lam_from_targets(soft, t):
    """With label_smoothing 0 and distinct labels, soft[i, t_i] is lam_i (float32)."""
    return soft.gather(1, t.view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_mixup_pixels_are_the_blend_given_by_the_targets(device, mode):
    B = 12
    x, _ = mix_inputs(B, device)
    t = torch.arange(B, device=device)  # distinct labels
    out, soft = FR.mixup(x, t, 0.5, num_classes=B, mode=mode, seed=3)
    lam = lam_from_targets(soft, t).double().view(B, 1, 1, 1)
    expect = x.double() * lam + x.flip(0).double() * (1 - lam)
    torch.testing.assert_close(out.double(), expect, rtol=2e-6, atol=1e-5)
    lams = lam.flatten()
    assert (lams < 1).all()
    if mode == "batch":
        assert (lams == lams[0]).all()
    elif mode == "pair":
        assert torch.equal(lams, lams.flip(0))
    else:
        assert len(set(lams.tolist())) == B


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("correct_lam", [True, False])
def test_cutmix_pixels_come_from_the_pair_and_lambda_is_the_kept_area(device, mode, correct_lam):
    B, H, W = 11, 12, 14
    x, _ = mix_inputs(B, device, shape=(3, H, W))
    t = torch.arange(B, device=device)
    out, soft = FR.cutmix(x, t, 1.0, num_classes=B, mode=mode, correct_lam=correct_lam, seed=5)
    partner = x.flip(0)
    assert ((out == x) | (out == partner)).all()
    taken = (out != x) & (out == partner)
    assert torch.equal(taken.any(1, keepdim=True).expand_as(taken), taken)  # same box on every channel
    ls = lam_from_targets(soft, t)
    for b in range(B):
        m = taken[b, 0]
        area = int(m.sum())
        if area:
            rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
            assert area == len(rows) * len(cols)  # a rectangle
        if b == B // 2:  # the middle sample is its own partner: nothing changes
            assert torch.equal(out[b], x[b])
            continue
        if correct_lam:
            kept = torch.tensor(1.0 - area / (H * W), dtype=torch.float64).float().item()
            assert ls[b].item() == kept
            assert (
                soft[b, B - 1 - b].item() == torch.tensor(area / (H * W), dtype=torch.float64).float().item()
            )
    if mode != "elem":
        boxes = taken[:, 0]
        assert torch.equal(boxes, boxes.flip(0))  # partners swap the same box


@pytest.mark.parametrize("device", DEVICES)
def test_soft_targets_sum_to_one_and_carry_label_smoothing(device):
    B, K, eps = 64, 7, 0.3
    x, t = mix_inputs(B, device, K=K)
    m = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, mode="elem", label_smoothing=eps, num_classes=K)
    _, soft = m(x, t, seed=13)
    torch.testing.assert_close(soft.sum(1), torch.ones(B, device=device), rtol=0, atol=1e-6)
    on = torch.tensor(1 - eps + eps / K, dtype=torch.float64).float().item()
    off = torch.tensor(eps / K, dtype=torch.float64).float().item()
    kind = _random.mix_draws(13, B, 12, 14, 2, 0.8, 1.0, None, 0.5, 0.5, True, device)[2]
    unmixed = kind == _random.KIND_NONE
    assert 10 < int(unmixed.sum()) < 54  # prob 0.5: about half the samples are not mixed
    for b in unmixed.nonzero().flatten().tolist():
        expect = torch.full((K,), off, device=device)
        expect[t[b]] = on
        assert torch.equal(soft[b], expect)
    # every class outside the pair gets exactly off * lam + off * (1 - lam) ~ off
    other = torch.ones_like(soft, dtype=torch.bool)
    other.scatter_(1, t.view(-1, 1), False)
    other.scatter_(1, t.flip(0).view(-1, 1), False)
    torch.testing.assert_close(soft[other], torch.full_like(soft[other], off), rtol=1e-6, atol=0)
    # eval mode / mixup disabled: images pass through, targets are the smoothed one-hot
    for setup in (lambda: m.eval(), lambda: setattr(m.train(), "mixup_enabled", False)):
        setup()
        out, soft = m(x, t, seed=13)
        assert (
            torch.equal(out, x) and ((soft == on).sum(1) == 1).all() and ((soft == off).sum(1) == K - 1).all()
        )


@pytest.mark.parametrize("alpha", [0.2, 1.0])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_lambdas_follow_beta_distribution(alpha, kind):
    stats = pytest.importorskip("scipy.stats")
    n = 100_000
    x = torch.zeros(n, 1, 1, 1)
    t = torch.zeros(n, dtype=torch.int64)
    mixup_alpha, cutmix_alpha = (alpha, 0.0) if kind == "mixup" else (0.0, alpha)
    _, _, params = ops.mix(
        x, t, torch.tensor([99]), 1, 0.0, mixup_alpha, cutmix_alpha, -1.0, -1.0, 1.0, 0.5, 2, True
    )
    lam = params[:, 0].numpy()
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_mix_switch_and_prob_rates():
    n = 20_000
    x = torch.zeros(n, 1, 1, 1)
    t = torch.zeros(n, dtype=torch.int64)
    _, _, params = ops.mix(x, t, torch.tensor([5]), 1, 0.0, 0.8, 1.0, -1.0, -1.0, 0.6, 0.3, 2, True)
    kind = params[:, 2]
    applied = (kind > 0).float().mean().item()
    cut_share = (kind == 2).float().sum().item() / max(1.0, (kind > 0).float().sum().item())
    assert abs(applied - 0.6) < 5 * (0.6 * 0.4 / n) ** 0.5
    assert abs(cut_share - 0.3) < 5 * (0.3 * 0.7 / (0.6 * n)) ** 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_mix_seeds_and_generators(device):
    x, t = mix_inputs(6, device)
    torch.manual_seed(5)
    a = FR.mixup(x, t, num_classes=10, mode="elem")
    torch.manual_seed(5)
    b = FR.mixup(x, t, num_classes=10, mode="elem")
    c = FR.mixup(x, t, num_classes=10, mode="elem")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    g = torch.Generator(device=device).manual_seed(1)
    d = FR.cutmix(x, t, num_classes=10, mode="elem", generator=g)
    g.manual_seed(1)
    e = FR.cutmix(x, t, num_classes=10, mode="elem", generator=g)
    assert torch.equal(d[0], e[0])


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("mode", MODES)
def test_mix_same_on_cpu_and_cuda(mixer, mode):
    x, t = mix_inputs(9, "cpu")
    m = FN.Mixup(**MIXERS[mixer], mode=mode, num_classes=10)
    a = m(x, t, seed=77)
    b = m(x.cuda(), t.cuda(), seed=77)
    assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    for value in (0.0, "random"):
        assert torch.equal(
            FR.random_erasing(x, 1.0, value=value, seed=3),
            FR.random_erasing(x.cuda(), 1.0, value=value, seed=3).cpu(),
        )
    assert torch.equal(FR.cutout(x, 5, seed=3), FR.cutout(x.cuda(), 5, seed=3).cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("mode", MODES)
def test_mix_gradient(device, mixer, mode):
    x, t = mix_inputs(5, device, torch.float64, shape=(2, 6, 7))
    m = FN.Mixup(**MIXERS[mixer], mode=mode, num_classes=10)
    assert torch.autograd.gradcheck(lambda v: m(v, t, seed=9)[0], (x.requires_grad_(),))
    # channels_last gradients too
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: m(v, t, seed=4)[0], (xc,))


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward(device):
    """create_graph=True: gradgradcheck in float64 of cutout, random erasing, and Mixup /
    CutMix / both with a per-sample switch in every mode (mix_backward's own gradient is
    the forward mixing, written in torch ops from the params each sample's draw left:
    checked here against the kernel's forward, bit for bit)."""
    x = torch.rand(5, 2, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: FR.cutout(t, 4, 0.7, fill=0.5, seed=8), (x,))
    assert torch.autograd.gradgradcheck(lambda t: FR.random_erasing(t, 1.0, value=0.5, seed=8), (x,))
    labels = torch.tensor([0, 3, 1, 2, 0], device=device)
    xs = x[:, :1, :4, :5].detach().clone().requires_grad_()  # small: numerical Jacobians per config
    for mixer in MIXERS.values():
        for mode in MODES:
            m = FN.Mixup(**mixer, mode=mode, num_classes=4)
            assert torch.autograd.gradgradcheck(lambda v, m=m: m(v, labels, seed=9)[0], (xs,))
    kinds = set()
    for seed in range(4):
        s = torch.tensor([seed], device=device)
        for images in (x.detach(), x.detach().float()):
            y, _, params = ops.mix(images, labels, s, 4, 0.1, 1.0, 1.0, -1.0, -1.0, 0.8, 0.5, 2, True)
            lam, _, kind, y0, y1, x0, x1 = params[:, :7].unbind(1)
            assert torch.equal(y, R.mix_pixels(images, lam, kind, y0, y1, x0, x1))
        kinds |= set(params[:, 2].tolist())
    assert kinds == {0.0, 1.0, 2.0}  # unmixed, blended and cut samples all seen


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_transforms_and_forward_ad(device):
    """Under torch.func transforms and forward-mode AD the batch ops compute their reference
    with the same draws: jvp's primal is the kernels' output bit for bit, and, each op being
    linear in the images once drawn, the tangent is the op applied to the tangent (cutout and
    random erasing fill it with 0)."""
    from torch.func import grad, jvp

    x = torch.rand(4, 2, 6, 7, dtype=torch.float64, device=device)
    t = torch.randn_like(x)
    labels = torch.tensor([0, 3, 1, 2], device=device)
    ops_ = {
        "cutout": (lambda v, fill: FR.cutout(v, 4, 0.7, fill=fill, seed=8), 0.5),
        "random_erasing": (lambda v, fill: FR.random_erasing(v, 1.0, value=fill, seed=8), 0.5),
        "mixup": (lambda v, fill: FR.mixup(v, labels, num_classes=4, mode="elem", seed=3)[0], None),
        "cutmix": (lambda v, fill: FR.cutmix(v, labels, num_classes=4, mode="pair", seed=3)[0], None),
    }
    for name, (f, fill) in ops_.items():
        y, ty = jvp(lambda v: f(v, fill), (x,), (t,))
        assert torch.equal(y, f(x, fill)), name
        torch.testing.assert_close(ty, f(t, 0.0), msg=name)
        xg = x.clone().requires_grad_()
        (want,) = torch.autograd.grad((f(xg, fill) ** 2).sum(), xg)
        torch.testing.assert_close(grad(lambda v: (f(v, fill) ** 2).sum())(x), want, msg=name)
    m = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode="elem", num_classes=4)
    y, ty = jvp(lambda v: m(v, labels, seed=6)[0], (x,), (t,))
    assert torch.equal(y, m(x, labels, seed=6)[0])
    torch.testing.assert_close(ty, m(t, labels, seed=6)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_randomness(device):
    """Under torch.func.vmap every batch op follows vmap's randomness flag: 'same' gives each
    slice a plain call's result after the same torch.manual_seed, 'different' draws per slice
    (the reference's draws keep the seed a tensor and update out of place)."""
    from torch.func import vmap

    img = torch.rand(3, 4, 3, 6, 6, device=device)
    labels = torch.tensor([0, 1, 2, 1], device=device)
    for f in (
        lambda v: FR.cutout(v, 3),
        lambda v: FR.random_erasing(v, 1.0),
        lambda v: FR.random_erasing(v, 1.0, value="random"),
        lambda v: FR.mixup(v, labels, num_classes=3, mode="elem")[0],
        lambda v: FR.cutmix(v, labels, num_classes=3, mode="pair")[0],
    ):
        torch.manual_seed(2)
        same = vmap(f, randomness="same")(img)
        for i in range(3):
            torch.manual_seed(2)
            torch.testing.assert_close(same[i], f(img[i]))
        different = vmap(f, randomness="different")(img)
        assert not torch.equal(different[0] - img[0], different[1] - img[1])


@pytest.mark.parametrize("device", DEVICES)
def test_mix_saves_only_the_per_sample_params(device):
    B = 6
    x, t = mix_inputs(B, device)
    nbytes, saved, _ = saved_bytes(
        lambda v: FR.cutmix(v, t, num_classes=10, mode="elem", seed=1)[0], x.requires_grad_()
    )
    assert nbytes == B * 8 * 8 and saved[0].shape == (B, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_mix_opcheck_and_compile(device):
    x, t = mix_inputs(6, device)
    s = torch.tensor([4], device=device)
    args = (10, 0.1, 0.8, 1.0, -1.0, -1.0, 0.9, 0.5, 2, True)
    torch.library.opcheck(ops.mix, (x.clone().requires_grad_(), t, s, *args))
    torch.library.opcheck(ops.mix_, (x.clone(), t, s, *args))
    params = ops.mix(x, t, s, *args)[2]
    torch.library.opcheck(ops.mix_backward, (x.clone(), params))
    torch.library.opcheck(ops.mix_backward, (x.clone().requires_grad_(), params))  # its own formula
    m = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10)
    f = torch.compile(lambda a, b: m(a, b, seed=6), fullgraph=True)
    got, want = f(x, t), m(x, t, seed=6)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    g = torch.compile(lambda a, b: FR.mixup(a, b, num_classes=10)[0].sum(), fullgraph=True)
    assert torch.isfinite(g(x, t))


@pytest.mark.parametrize("device", DEVICES)
def test_mix_bad_input(device):
    x, t = mix_inputs(4, device)
    before = x.clone()
    cases = [
        (lambda: FR.mixup(x[0], t, num_classes=10), ValueError, "images"),
        (lambda: FR.mixup(x, t, 0.0, num_classes=10), ValueError, "alpha"),
        (lambda: FR.cutmix(x, t, -1.0, num_classes=10), ValueError, "alpha"),
        (lambda: FR.mixup(x, t), ValueError, "num_classes"),
        (lambda: FR.mixup(x, t[:3], num_classes=10), ValueError, "target"),
        (lambda: FR.mixup(x, t.float(), num_classes=10), TypeError, "target"),
        (lambda: FR.mixup(x, torch.rand(4, 5, device=device), num_classes=10), ValueError, "num_classes"),
        (lambda: FR.mixup(x, t, num_classes=10, mode="row"), ValueError, "mode"),
        (lambda: FR.mixup(x, t, num_classes=10, label_smoothing=2.0), ValueError, "label_smoothing"),
        (lambda: FR.mixup(x.long(), t, num_classes=10), TypeError, "images"),
        (lambda: FN.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0), ValueError, "alpha"),
        (lambda: FN.Mixup(prob=1.5), ValueError, "prob"),
        (lambda: FN.Mixup(cutmix_minmax=(0.5, 0.51), num_classes=10)(x, t), ValueError, "cutmix_minmax"),
    ]
    if device == "cpu":  # on CUDA a bad class index is a device-side assert (no host sync)
        bad = t.clone()
        bad[2] = 10
        cases += [
            (lambda: FR.mixup(x, bad, num_classes=10, inplace=True), ValueError, "target"),
            (lambda: FR.cutmix(x, bad - 11, num_classes=10, inplace=True), ValueError, "target"),
        ]
    for call, exc, words in cases:
        with pytest.raises(exc, match=words):
            call()
    assert torch.equal(x, before)


def test_timm_batch_mixup_structure():
    timm_mixup = pytest.importorskip("timm.data.mixup")
    B, K = 8, 10
    x, t = mix_inputs(B, "cpu", shape=(3, 16, 16))
    ours = FN.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode="batch", label_smoothing=0.1, num_classes=K)
    out, soft = ours(x, t, seed=3)
    lam = _random.mix_draws(3, B, 16, 16, 0, 1.0, 0.0, None, 1.0, 0.5, True)[0][0].item()
    assert 0 < lam < 1
    assert torch.equal(out, x * lam + x.flip(0) * (1 - lam))
    theirs = timm_mixup.Mixup(
        mixup_alpha=1.0, cutmix_alpha=0.0, mode="batch", label_smoothing=0.1, num_classes=K
    )
    theirs._params_per_batch = lambda: (lam, False)
    x_t, soft_t = theirs(x.clone(), t)
    assert torch.equal(out, x_t)
    assert torch.equal(soft, soft_t)
    assert torch.equal(soft, timm_mixup.mixup_target(t, K, lam, 0.1))


# --- CUDA: no host sync, CUDA graphs ---------------------------------------------------------

BATCH_CALLS = {
    "cutout": lambda x, t: (FR.cutout(x, 5),),
    "cutout_": lambda x, t: (FR.cutout(x, 5, inplace=True),),
    "random_erasing": lambda x, t: (FR.random_erasing(x, 1.0, value="random"),),
    "random_erasing_": lambda x, t: (FR.random_erasing(x, 1.0, inplace=True),),
    "mixup": lambda x, t: FR.mixup(x, t, num_classes=10, mode="elem"),
    "cutmix_": lambda x, t: FR.cutmix(x, t, num_classes=10, mode="pair", inplace=True),
    "Mixup": lambda x, t: FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10)(x, t),
}


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("name", list(BATCH_CALLS))
def test_batch_ops_never_sync_on_cuda(name):
    x, t = mix_inputs(8, "cuda")
    call = BATCH_CALLS[name]
    call(x, t)  # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = call(x, t)
        out2 = call(x, t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not all(torch.equal(a, b) for a, b in zip(out, out2, strict=True)) or name.endswith("_")


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
@pytest.mark.parametrize("name", list(BATCH_CALLS))
def test_batch_ops_in_cuda_graph_draw_fresh_each_replay(name):
    x0, t = mix_inputs(8, "cuda")
    x = x0.clone()
    call = BATCH_CALLS[name]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call(x, t)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    x.copy_(x0)
    with torch.cuda.graph(graph):
        outs = call(x, t)
    results = []
    for _ in range(3):
        x.copy_(x0)
        graph.replay()
        torch.cuda.synchronize()
        results.append([o.clone() for o in outs])
    assert not torch.equal(results[0][0], results[1][0]) or not torch.equal(results[1][0], results[2][0])
    for res in results:  # each replay is a valid draw: the pixels are x's or the partner's / the fill
        img = res[0]
        assert torch.isfinite(img).all()


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
def test_bad_class_index_on_cuda_is_a_device_assert():
    """No host sync to check indices: the targets kernel asserts on the device (as nll_loss),
    which poisons the CUDA context, so this runs in a child interpreter."""
    code = "\n".join(
        [
            "import torch, fastreg.functional as FR",
            "x = torch.rand(4, 3, 8, 8, device='cuda')",
            "t = torch.tensor([0, 1, 12, 2], device='cuda')",
            "try:",
            "    FR.mixup(x, t, num_classes=10)",
            "    torch.cuda.synchronize()",
            "    print('NO ERROR')",
            "except RuntimeError as e:",
            "    print('ERROR', 'device-side assert' in str(e))",
        ]
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "ERROR True" in res.stdout, res.stdout + res.stderr[-2000:]


@pytest.mark.parametrize("device", DEVICES)
def test_mix_non_dense_views_and_empty_batches(device):
    base = images((6, 3, 12, 28), torch.float32, device)
    view = base[..., ::2]  # neither contiguous nor channels_last
    t = torch.arange(6, device=device)
    m = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10)
    out, soft = m(view, t, seed=12)
    ref, ref_soft = R.mix(
        view, t, mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10, label_smoothing=0.1, seed=12
    )
    assert torch.equal(out, ref) and torch.equal(soft, ref_soft)
    before = base.clone()
    m.inplace = True
    m(view, t, seed=12)
    assert torch.equal(view, ref) and torch.equal(base[..., 1::2], before[..., 1::2])
    # gradient through a non-dense view
    v = view.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: FN.Mixup(cutmix_alpha=1.0, mode="pair", num_classes=10)(a, t, seed=3)[0], (v,)
    )
    # empty batches and empty images
    for shape in [(0, 3, 8, 8), (4, 3, 0, 8)]:
        x = torch.zeros(shape, device=device)
        tt = torch.zeros(shape[0], dtype=torch.int64, device=device)
        out, soft = FR.mixup(x, tt, num_classes=5, mode="elem", seed=1)
        assert out.shape == shape and soft.shape == (shape[0], 5)
        assert FR.random_erasing(x, 1.0, seed=1).shape == shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [n for n in BATCH_CALLS if n.endswith("_")] + ["mixup_", "Mixup_"])
def test_inplace_batch_ops_bump_the_version_counter(device, name):
    """An in-place cutout, random erasing, mixup or cutmix bumps the images' version counter
    (as torch's in-place ops do), so that autograd refuses a backward that would read images
    saved before they were modified, instead of returning a wrong gradient."""
    x, t = mix_inputs(4, device)
    w = torch.rand(x.shape[1:], device=device, requires_grad=True)
    loss = (x * w).sum()  # saves x for w's gradient
    before = x._version
    if name == "mixup_":
        FR.mixup(x, t, num_classes=10, mode="elem", inplace=True)
    elif name == "Mixup_":
        FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10, inplace=True)(x, t)
    else:
        BATCH_CALLS[name](x, t)
    assert x._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_raw_inplace_ops_bump_the_version_counter(device):
    x, t = mix_inputs(4, device)
    seed = torch.tensor([3], device=device)
    versions = [x._version]
    ops.cutout_(x, seed, 5, 1.0, 0.0)
    versions.append(x._version)
    ops.random_erasing_(x, seed, 1.0, 0.02, 0.33, math.log(0.3), math.log(3.3), 0.0, False)
    versions.append(x._version)
    ops.mix_(x, t, seed, 10, 0.0, 1.0, 0.0, -1.0, -1.0, 1.0, 0.0, 2, True)
    versions.append(x._version)
    assert versions == sorted(set(versions)), versions  # each call bumped it


INPLACE_MIXUP = FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10, inplace=True)
INPLACE_CALLS = {
    "cutout": lambda x, t: (FR.cutout(x, 5, inplace=True, seed=2),),
    "random_erasing": lambda x, t: (FR.random_erasing(x, 1.0, value="random", inplace=True, seed=3),),
    "mixup": lambda x, t: FR.mixup(x, t, num_classes=10, mode="pair", inplace=True, seed=4),
    "cutmix": lambda x, t: FR.cutmix(x, t, num_classes=10, mode="elem", inplace=True, seed=5),
    "Mixup": lambda x, t: INPLACE_MIXUP(x, t, seed=6),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(INPLACE_CALLS))
def test_inplace_batch_ops_compile(device, name):
    """inplace=True under torch.compile(fullgraph=True): the in-place op is traced (functionalized
    and written back), the images hold the eager result, and the soft targets equal eager's."""
    x, t = mix_inputs(6, device)
    call = INPLACE_CALLS[name]
    want_x = x.clone()
    want = call(want_x, t)
    got_x = x.clone()
    got = torch.compile(call, fullgraph=True)(got_x, t)
    assert torch.equal(got_x, want_x) and not torch.equal(got_x, x)
    assert all(torch.equal(a, b) for a, b in zip(got[1:], want[1:], strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_ops_compile_dynamic_shapes(device):
    """torch.compile(dynamic=True) (symbolic batch size, and symbolic floats where dynamo
    makes them so): one graph serves two batch sizes, with the eager results."""
    calls = [
        lambda x, t: FR.mixup(x, t, num_classes=10, mode="elem"),
        lambda x, t: FR.cutmix(x, t, 0.5, num_classes=10, mode="pair"),
        lambda x, t: FN.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10)(x, t),
        lambda x, t: (FR.cutout(x, 3), FR.random_erasing(x, 1.0)),
    ]
    for call in calls:
        compiled = torch.compile(call, fullgraph=True, dynamic=True)
        for B in (4, 7):
            x, t = mix_inputs(B, device)
            torch.manual_seed(1)
            got = compiled(x, t)
            torch.manual_seed(1)
            want = call(x, t)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
