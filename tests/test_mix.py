"""Mixup and CutMix (functions and fastreg.nn.Mixup, timm's): bit for bit the reference,
the pixels and soft targets they give, lambda's distribution, switching and rates, seeds,
CPU against CUDA, gradients, saved bytes, opcheck, compile, bad input."""

import os
import subprocess
import sys

import pytest
import torch
from batch_cases import MIX_DTYPES, MIXERS, MODES, images, mix_inputs
from conftest import CUDA, DEVICES, saved_bytes

import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R
from fastreg import _random

ops = torch.ops.fastreg


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


@pytest.mark.parametrize(
    "name,call",
    [
        ("mixup", lambda x, t: FR.mixup(x, t, num_classes=10)),
        ("cutmix", lambda x, t: FR.cutmix(x, t, num_classes=10)),
        ("nn.Mixup", lambda x, t: FN.Mixup(num_classes=10)(x, t)),
    ],
)
def test_label_errors_name_what_the_user_called(name, call):
    """The kernel's check of class indices is reported under the function or class called."""
    x = torch.rand(4, 3, 8, 8)
    before = x.clone()
    with pytest.raises(ValueError) as info:
        call(x, torch.tensor([0, 1, 2, 12]))
    assert str(info.value).startswith(f"fastreg.{name}: target holds class index 12 at position 3")
    assert torch.equal(x, before)
