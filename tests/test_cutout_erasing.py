"""Cutout and random erasing: bit for bit the reference, the boxes' geometry and rates
(torchvision's rule), in-place forms, gradients, opcheck, compile, modules, bad input."""

import math

import pytest
import torch
from batch_cases import IMAGE_DTYPES, images
from conftest import DEVICES, check_raw_op_errors

import fastreg.functional as FR
import fastreg.nn as FN
import fastreg.reference as R

ops = torch.ops.fastreg


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
    with pytest.raises(ValueError, match=r"fastreg.cutout: images must be \(C, H, W\) or \(B, C, H, W\)"):
        FR.cutout(x[0, 0], 3)
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
    with pytest.raises(ValueError, match=r"fastreg.random_erasing: images must be \(C, H, W\) or"):
        FR.random_erasing(x[0, 0])
    with pytest.raises(ValueError, match="value"):
        FR.random_erasing(x.to(torch.uint8), value="random")
    with pytest.raises(ValueError, match="value"):
        FR.random_erasing(x.to(torch.uint8), value=-1)
    assert torch.equal(x, before)


SINGLE_IMAGE_CALLS = {
    "cutout": lambda x, **kw: FR.cutout(x, 5, 0.7, fill=0.25, **kw),
    "random_erasing": lambda x, **kw: FR.random_erasing(x, 0.7, **kw),
    "random_erasing_random": lambda x, **kw: FR.random_erasing(x, 1.0, value="random", **kw),
    "Cutout": lambda x, **kw: FN.Cutout(5, 0.7, 0.25, **kw)(x),
    "RandomErasing": lambda x, **kw: FN.RandomErasing(1.0, value="random", **kw)(x),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,dtype",
    [(n, torch.float32) for n in SINGLE_IMAGE_CALLS]
    + [(n, torch.uint8) for n in ("cutout", "random_erasing", "Cutout")],  # 'random': float only
    ids=str,
)
def test_single_image_is_a_batch_of_one(device, name, dtype):
    """A (C, H, W) image gives what a batch of one gives for the same seed: out of place,
    in place (the image itself returned) and through autograd."""
    call = SINGLE_IMAGE_CALLS[name]
    x = images((3, 19, 23), dtype, device)
    before = x.clone()
    with_seed = (lambda t, **kw: call(t, seed=11, **kw)) if name[0].islower() else None
    if with_seed is None:  # the modules draw from the default generator

        def with_seed(t, **kw):
            torch.manual_seed(11)
            return call(t, **kw)

    out = with_seed(x)
    expected = with_seed(x[None])[0]
    assert out.shape == x.shape and torch.equal(out, expected)
    assert not torch.equal(out, x)  # p and the seed give a box
    assert torch.equal(x, before)
    y = x.clone()
    assert with_seed(y, inplace=True) is y
    assert torch.equal(y, expected)
    if dtype.is_floating_point:  # the gradient is zero in the box, as for the batch of one
        xg, xb = x.clone().requires_grad_(), x[None].clone().requires_grad_()
        with_seed(xg).backward(torch.ones_like(x))
        with_seed(xb).backward(torch.ones_like(xb))
        assert torch.equal(xg.grad, xb.grad[0]) and (xg.grad == 0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_single_image_compiles(device):
    x = images((3, 16, 16), torch.float32, device)
    fn = torch.compile(lambda t: FR.cutout(t, 6, seed=3), fullgraph=True)
    assert torch.equal(fn(x), FR.cutout(x[None], 6, seed=3)[0])


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
