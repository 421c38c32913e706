"""The batch ops under PyTorch's machinery: second derivatives, torch.func transforms and
vmap randomness, no host sync and fresh draws in CUDA graphs, version counters of the
in-place forms, torch.compile with static and dynamic shapes."""

import math

import pytest
import torch
from batch_cases import MIXERS, MODES, mix_inputs
from conftest import CUDA, DEVICES

import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R

ops = torch.ops.fastreg


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


class _AugmentedImages(torch.utils.data.Dataset):
    """A Dataset whose __getitem__ augments one (C, H, W) image, as torchvision's are used."""

    def __init__(self, augment, n=8):
        self.augment, self.n = augment, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.augment(torch.ones(3, 12, 12))


def _epoch(augment, seed, workers=2):
    loader = torch.utils.data.DataLoader(
        _AugmentedImages(augment),
        batch_size=2,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.cat(list(loader))


@pytest.mark.parametrize(
    "augment", [FN.Cutout(6), FN.RandomErasing(1.0, scale=(0.1, 0.3))], ids=["Cutout", "RandomErasing"]
)
def test_modules_in_dataloader_workers(augment):
    """nn.Cutout and nn.RandomErasing in a Dataset with DataLoader workers: each worker
    draws from its own default generator, seeded by torch from the loader's generator, so
    the boxes differ between images and workers and repeat for the same loader seed."""
    first = _epoch(augment, seed=1)
    assert first.shape == (8, 3, 12, 12)
    assert bool((first == 0).any(dim=(1, 2, 3)).all())  # every image has a box
    # images i and i + 2 are the same position in the two workers' batches
    assert len({tuple(img.flatten().tolist()) for img in first}) == 8
    assert torch.equal(_epoch(augment, seed=1), first)
    assert not torch.equal(_epoch(augment, seed=2), first)
