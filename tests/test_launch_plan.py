"""The CUDA launchers' host-side decisions (csrc/launch_plan.h) and the kernels' index
arithmetic (csrc/channel_index.h), driven on the CPU through fastreg._C._testing with
the shapes that reach each branch on a GPU; and the defects in that code, each with a
CPU test where its logic runs here and a CUDA test where only a GPU reaches it."""

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA, run_child

import fastreg
import fastreg.functional as FR
import fastreg.reference as R

T = fastreg._C._testing
ops = torch.ops.fastreg
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA not available")
H100_SMS = 132
MAX_SHARED = 48 * 1024  # bytes of per-channel partial sums a block keeps


def test_grid_blocks():
    assert T.grid_blocks(0, 256, H100_SMS) == 1
    assert T.grid_blocks(1, 256, H100_SMS) == 1
    assert T.grid_blocks(1000, 256, H100_SMS) == 4
    assert T.grid_blocks(1 << 40, 256, H100_SMS) == H100_SMS * 32
    assert T.grid_blocks(1 << 40, 256, H100_SMS, 8) == H100_SMS * 8


@pytest.mark.parametrize(
    "case",
    [
        # (has_bias, K, inner, aligned, deterministic, acc bytes) -> path
        ((False, 1, 12, True, False, 4), "none"),
        ((True, 64, 1, True, False, 4), "columns"),
        ((True, 64, 1, True, True, 4), "columns"),  # deterministic by construction
        ((True, 64, 1, False, False, 4), "shared_partials"),  # an unaligned view
        ((True, 64, 1, False, True, 4), "reduction"),
        ((True, 7, 1, True, False, 4), "shared_partials"),  # 1-D (7,): K % 8 != 0
        ((True, 7, 1, True, True, 4), "reduction"),
        ((True, 24, 16, True, False, 4), "shared_partials"),  # bias dim not contiguous
        ((True, MAX_SHARED // 4, 1, False, False, 4), "shared_partials"),  # exactly fits
        ((True, MAX_SHARED // 4 + 1, 1, True, False, 4), "reduction"),  # 1-D (12289,) float32
        ((True, MAX_SHARED // 8, 3, True, False, 8), "shared_partials"),
        ((True, MAX_SHARED // 8 + 1, 3, True, False, 8), "reduction"),  # float64
    ],
)
def test_bias_grad_path(case):
    args, path = case
    assert T.bias_grad_path(*args) == path


@pytest.mark.parametrize(
    "case",
    [
        ((1, 120, False, 4), "shared_partials"),
        ((1, 120, True, 4), "reduction"),  # nn.PReLU()'s one weight, deterministic
        ((16, 576, True, 4), "reduction"),
        ((MAX_SHARED // 4, 1, False, 4), "shared_partials"),
        ((MAX_SHARED // 4 + 1, 1, False, 4), "reduction"),
        ((MAX_SHARED // 8 + 1, 1, False, 8), "reduction"),
    ],
)
def test_prelu_grad_path(case):
    args, path = case
    assert T.prelu_grad_path(*args) == path


def test_map_grid():
    # 16-byte vectors where aligned: n / 8 vectors of 2-byte elements, 4 per thread
    assert T.map_grid(1 << 20, 8, True, H100_SMS) == (True, (1 << 17) // 1024)
    assert T.map_grid(1 << 20, 8, False, H100_SMS) == (False, (1 << 20) // 1024)
    assert T.map_grid(7, 8, True, H100_SMS) == (True, 1)  # the tail alone: one block
    assert T.map_grid(1 << 40, 4, True, H100_SMS) == (True, H100_SMS * 32)


def test_bias_rows_forward():
    assert T.bias_rows_forward(True, 64, 1, True)
    assert not T.bias_rows_forward(False, 64, 1, True)
    assert not T.bias_rows_forward(True, 60, 1, True)
    assert not T.bias_rows_forward(True, 64, 2, True)
    assert not T.bias_rows_forward(True, 64, 1, False)


@pytest.mark.parametrize("n_k", [(8 * 1000, 8), (64 * 7, 64), (4096 * 300, 4096), (8 * 2048 * 5, 8 * 2048)])
def test_columns_grid_covers_every_group(n_k):
    n, K = n_k
    cols, gx, gy = T.columns_grid(n, K, H100_SMS)
    groups, rows = K // 8, n // K
    assert 1 <= cols <= 256 and cols == min(groups, 256)
    assert gx * cols >= groups and (gx - 1) * cols < groups  # every column group, no idle block
    rows_per_block = 256 // cols
    assert 1 <= gy <= max(1, -(-rows // rows_per_block))  # grid-stride over rows: no empty block row
    assert gy <= max(1, H100_SMS * 8 // gx)


@pytest.mark.parametrize(
    "case",
    [
        ((4, 3 * 8 * 8, 4, True), (True, 1, 2)),
        ((4, 3 * 8 * 8, 4, False), (False, 1, 2)),  # an unaligned pointer: elements
        ((5, 3 * 5 * 5, 4, True), (False, 1, 3)),  # odd sample size, odd batch
        ((1, 1, 8, True), (False, 1, 1)),
        ((300_000, 3, 4, True), (False, 1, 65535)),  # pairs beyond grid y: strided
        ((2, 1 << 30, 8, True), (True, 65535, 1)),
    ],
)
def test_mix_grid(case):
    args, expected = case
    assert T.mix_grid(*args) == expected


@pytest.mark.parametrize(
    "divisor", [1, 2, 3, 7, 8, 255, 256, 257, 4095, 65537, 1_000_003, (1 << 30) + 1, (1 << 31) - 1]
)
def test_divmod_multiply_shift_equals_division(divisor):
    g = torch.Generator().manual_seed(divisor)
    top = (1 << 31) - 1
    values = torch.cat(
        [
            torch.tensor([0, 1, divisor - 1, divisor, divisor + 1, top - 1, top]),
            torch.randint(0, top, (20_000,), generator=g),
            torch.arange(max(0, divisor * 1000 - 50), divisor * 1000 + 50).clamp(max=top),
        ]
    )
    q, r, small = T.divmod(divisor, top, values)
    assert small
    assert torch.equal(q, values // divisor) and torch.equal(r, values % divisor)
    big = torch.tensor([0, top, 1 << 31, (1 << 40) + 12345, (1 << 62) + 7])
    q, r, small = T.divmod(divisor, 1 << 62, big)
    assert not small
    assert torch.equal(q, big // divisor) and torch.equal(r, big % divisor)


@pytest.mark.parametrize(
    "case",
    [
        (100, 7, 3, 0, 100),
        (1 << 20, 1, 1 << 20, 0, 1000),  # one channel (a one-element PReLU weight)
        (4096 * 24, 24, 4096, 4096 * 23 - 10, 40),
        ((1 << 31) + 4096, 3, 5, (1 << 31) - 100, 200),  # dividends past 31 bits: 64-bit division
        (3 * ((1 << 31) + 1), (1 << 31) + 1, 1, (1 << 31) - 3, 10),  # C itself past 31 bits
        (1 << 36, 640, 1 << 20, (1 << 35) + 17, 64),
    ],
)
def test_channel_index(case):
    n, C, inner, first, count = case
    c, pos, c_step, pos_step = T.channel_index(n, C, inner, first, count)
    i = torch.arange(first, first + count, dtype=torch.long)
    assert torch.equal(c, (i // inner) % C) and torch.equal(pos, i % inner)
    assert torch.equal(c_step, c) and torch.equal(pos_step, pos)


def test_shapes_of_size_one_dimensions_with_any_stride():
    """A dimension of size 1 may have any stride in a dense tensor (0 from expand or
    as_strided, or larger than the tensor): its [outer][C][inner] view is one channel,
    never a stride of 0 (a division by zero on the host) or one past the tensor."""
    x = torch.randn(4).as_strided((4, 1), (1, 0))
    assert T.bias_shape(x, torch.randn(1)) == (1, 4)
    assert T.sample_shape(torch.randn(8).as_strided((1, 8), (100, 1))) == (1, 8)
    assert T.sample_shape(torch.randn(8).as_strided((1, 8), (0, 1))) == (1, 8)
    assert T.prelu_shape(torch.randn(6).as_strided((2, 1, 3), (3, 0, 1)), torch.randn(1)) == (1, 6)
    # the usual layouts
    assert T.bias_shape(torch.randn(5, 7), torch.randn(7)) == (7, 1)
    assert T.bias_shape(torch.randn(4, 24, 24, 16).permute(0, 3, 1, 2), torch.randn(24)) == (24, 16)
    assert T.prelu_shape(torch.randn(2, 16, 5, 5), torch.randn(16)) == (16, 25)
    cl = torch.randn(2, 16, 5, 5).to(memory_format=torch.channels_last)
    assert T.prelu_shape(cl, torch.randn(16)) == (16, 1)
    assert T.sample_shape(torch.randn(6, 5, 4)) == (6, 20)


def _bias_sum(dx):
    acc = torch.float64 if dx.dtype == torch.float64 else torch.float32
    return dx.to(acc).sum(list(range(dx.dim() - 1))) if dx.dim() > 1 else dx.to(acc)


def _channel_inputs():
    # grad_input shapes whose grad_bias takes the reduction on a GPU (test_bias_grad_path)
    yield torch.randn(7)  # 1-D: deterministic
    yield torch.randn(12289)  # 1-D, more channels than shared memory holds (float32)
    yield torch.randn(3, 12289)
    yield torch.randn(4, 24, 24, 16).permute(0, 3, 1, 2)  # bias dim not contiguous
    yield torch.randn(4).as_strided((4, 1), (1, 0))  # size-1 bias dim with stride 0
    yield torch.randn(2, 3, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_bias_grad_reduction_sums_each_channel(dtype):
    """The kReduction path of bias_act_dropout's grad_bias. It summed over dims 0 .. dim-2,
    an empty list for a 1-D input, which ATen reads as every dim: each grad_bias[k] was
    the sum of the whole gradient."""
    for dx in _channel_inputs():
        dx = dx.to(dtype)
        K = dx.shape[-1]
        db = T.bias_grad_by_reduction(dx, torch.zeros(K, dtype=dtype))
        assert db.shape == (K,) and db.dtype == dtype
        tol = {"rtol": 1e-2, "atol": 1e-2} if dtype in (torch.bfloat16, torch.float16) else {}
        torch.testing.assert_close(db, _bias_sum(dx).to(dtype), **tol)


@pytest.mark.parametrize("weight_numel", [1, 3])
def test_prelu_weight_grad_reduction_is_zero_where_x_is_inf(weight_numel):
    """The kReduction path of PReLU's grad_weight: one weight (nn.PReLU()'s default) gave a
    per-channel sum that did not fit the one-element gradient, and g * x * (x <= 0) was
    inf * 0 = NaN at x = +inf, where torch's gradient has 0."""
    x = torch.randn(2, 3, 4, 5)
    x[0, 1, 2, 3], x[1, 2, 0, 0], x[1, 0, 1, 1] = float("inf"), float("-inf"), float("inf")
    g = torch.randn_like(x)
    w = torch.rand(weight_numel, requires_grad=True)
    dw = T.prelu_weight_grad_by_reduction(g, x, w.detach())
    (expected,) = torch.autograd.grad(F.prelu(x, w), w, g)
    assert dw.shape == w.shape
    torch.testing.assert_close(dw, expected)
    assert torch.isneginf(dw).any() == torch.isneginf(expected).any()
    # a 0-D weight keeps its shape; a channels_last input keeps its channel view
    dw0 = T.prelu_weight_grad_by_reduction(g, x.clamp(max=1e30), torch.tensor(0.25))
    assert dw0.shape == ()
    cl = x.clamp(-1e30, 1e30).to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        T.prelu_weight_grad_by_reduction(g, cl, w.detach()),
        T.prelu_weight_grad_by_reduction(g, cl.contiguous(), w.detach()),
    )


def test_channel_sums_views_memory_as_outer_channel_inner():
    t = torch.arange(2 * 3 * 4, dtype=torch.float32)
    torch.testing.assert_close(T.channel_sums(t, 3, 4), t.view(2, 3, 4).sum((0, 2)))
    torch.testing.assert_close(T.channel_sums(t, 1, 24), t.sum().view(1))
    torch.testing.assert_close(T.channel_sums(t, 24, 1), t)
    with pytest.raises(ValueError, match="channel_sums"):
        T.channel_sums(t[::2], 3, 4)


# --- the defects, end to end ---------------------------------------------------------------


def test_bias_of_a_size_one_dim_with_stride_zero_does_not_kill_the_process():
    """bias_shape took stride(-1) = 0 of a size-1 last dim as the divisor of the channel
    walk: SIGFPE, which killed the interpreter (so it runs in a child)."""
    out = run_child(
        """
import torch, fastreg.functional as FR, fastreg.reference as R
x = torch.randn(4).as_strided((4, 1), (1, 0))
b = torch.randn(1)
for act in ("gelu", "relu"):
    y = FR.bias_act_dropout(x, b, act, 0.0)
    torch.testing.assert_close(y, R.bias_act_dropout(x, b, act, 0.0))
    y, want = FR.bias_act_dropout(x, b, act, 0.5, seed=3), R.bias_act_dropout(x, b, act, 0.5, seed=3)
    torch.testing.assert_close(y, want)
    assert torch.equal(y == 0, want == 0)
print("ok")
"""
    )
    assert out.strip().endswith("ok")


def test_drop_path_of_one_sample_with_a_large_stride():
    """A (1, n) view whose dim-0 stride exceeds n is dense; drop_path took that stride as a
    sample's length and wrote nothing (the output was uninitialized memory)."""
    x = torch.randn(8).as_strided((1, 8), (100, 1))
    for p in (0.0, 0.5):
        y = FR.drop_path(x, p, True, seed=5)
        assert torch.equal(y, R.drop_path(x, p, True, seed=5))
        r = torch.randn(1, 8)
        assert torch.equal(
            FR.drop_path(x, p, True, residual=r, seed=5), R.drop_path(x, p, True, residual=r, seed=5)
        )


def test_mask_views_give_the_gradient_of_the_mask():
    """The raw backward ops read a mask's bytes in order: a strided view of the very mask
    the forward returned gave another gradient without an error."""
    x, b, g, seed = torch.randn(64, 8), torch.randn(8), torch.randn(64, 8), torch.tensor([3])
    _, mask = ops.bias_act_dropout(x, b, seed, "relu", 0.1, 0.01, 1.0, "none", True)
    view = torch.stack([mask, mask], 1)[:, 0]
    assert not view.is_contiguous()
    args = (b, seed, "relu", 0.1, 0.01, 1.0, "none")
    assert torch.equal(
        ops.bias_act_dropout_backward(g, view, *args)[0], ops.bias_act_dropout_backward(g, mask, *args)[0]
    )
    _, mask = ops.relu(x, True)
    view = torch.stack([mask, mask], 1)[:, 0]
    assert torch.equal(ops.relu_backward(g, view), ops.relu_backward(g, mask))


def test_mix_backward_checks_its_params():
    """mix_backward read float64 params of shape (B, 3) as if they had 8 columns."""
    g = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"fastreg.mix_backward: params must have shape \(B, 8\)"):
        ops.mix_backward(g, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="fastreg.mix_backward: params must be the forward's float64"):
        ops.mix_backward(g, torch.zeros(4, 8))
    with pytest.raises(RuntimeError, match="fastreg.mix_backward: params is on meta"):
        ops.mix_backward(g, torch.zeros(4, 8, dtype=torch.float64, device="meta"))
    # a strided view of the record gives the record's gradient
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    _, _, params = ops.mix(images, labels, torch.tensor([5]), 4, 0.0, 1.0, 1.0, -1.0, -1.0, 1.0, 0.5, 2, True)
    view = torch.cat([params, params], 1)[:, :8]
    assert not view.is_contiguous()
    assert torch.equal(ops.mix_backward(g, view), ops.mix_backward(g, params))


def test_mix_backward_params_outside_the_image_stay_inside_it():
    """params is an argument of mix_backward: boxes past the image, negative, NaN or huge,
    and unknown kinds must not move the kernels outside the images (a crash or a silent
    write elsewhere). Integer boxes beyond the image are clipped to it, as the reference's
    comparisons clip them; NaN edges and unknown kinds read as 0 and none."""
    out = run_child(
        """
import torch, fastreg.reference as R
ops = torch.ops.fastreg
g = torch.randn(5, 3, 6, 7)
rows = [
    [0.5, 0.5, 2, -5, 1e9, -1e12, 3, 0],       # a cut box from far outside to inside
    [0.25, 0.25, 2, 2, 4, 5, 1e300, 0],        # past the right edge
    [0.5, 0.5, 1, 0, 0, 0, 0, 0],              # a blend
    [0.5, 0.5, 7, 1, 2, 3, 4, 0],              # unknown kind: none
    [0.5, 0.5, 2, 6, 2, 7, 0, 0],              # empty box
]
params = torch.tensor(rows, dtype=torch.float64)
got = ops.mix_backward(g, params)
expected = torch.func.vjp(lambda t: R.mix_pixels(t, *params[:, [0, 2, 3, 4, 5, 6]].unbind(1)), g)[1](g)[0]
torch.testing.assert_close(got, expected)
nan = params.clone(); nan[0, 3:7] = float("nan"); nan[1, 2] = float("nan")
out = ops.mix_backward(g, nan)
assert out.shape == g.shape
print("ok")
"""
    )
    assert out.strip().endswith("ok")


@needs_cuda
@pytest.mark.parametrize("n", [7, 12289])
def test_cuda_bias_grad_of_a_1d_input_is_per_channel(n):
    """On a GPU, a 1-D input's grad_bias in deterministic mode (n = 7) and past the shared
    memory (n = 12289 float32) was the sum of the whole gradient in every channel."""
    before = torch.are_deterministic_algorithms_enabled()
    for deterministic in (True, False):
        torch.use_deterministic_algorithms(deterministic)
        try:
            x = torch.randn(n, device="cuda", requires_grad=True)
            b = torch.randn(n, device="cuda", requires_grad=True)
            g = torch.randn(n, device="cuda")
            got = torch.autograd.grad(FR.bias_act_dropout(x, b, "gelu", 0.1, seed=4), (x, b), g)
            want = torch.autograd.grad(R.bias_act_dropout(x, b, "gelu", 0.1, seed=4), (x, b), g)
        finally:
            torch.use_deterministic_algorithms(before)
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e)


@needs_cuda
@pytest.mark.parametrize("deterministic", [True, False])
def test_cuda_prelu_one_weight_and_infinite_inputs(deterministic):
    """nn.PReLU()'s one-element weight in deterministic mode raised a shape error, and the
    reduction gave NaN where x = +inf."""
    x = torch.randn(4, 3, 8, 8, device="cuda")
    x[0, 1, 2, 3], x[2, 0, 0, 0] = float("inf"), float("-inf")
    g = torch.randn_like(x)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for numel in (1, 3):
            w = torch.rand(numel, device="cuda", requires_grad=True)
            (dw,) = torch.autograd.grad(FR.prelu(x, w), w, g)
            (expected,) = torch.autograd.grad(F.prelu(x, w), w, g)
            torch.testing.assert_close(dw, expected)
    finally:
        torch.use_deterministic_algorithms(before)


@needs_cuda
def test_cuda_raw_backward_ops_refuse_arguments_on_another_device():
    """A CPU mask or params record with a CUDA gradient was read as device memory."""
    x = torch.randn(64, 8, device="cuda")
    b, seed = torch.randn(8, device="cuda"), torch.tensor([3], device="cuda")
    _, mask = ops.bias_act_dropout(x, b, seed, "relu", 0.1, 0.01, 1.0, "none", True)
    with pytest.raises(RuntimeError, match="fastreg.bias_act_dropout_backward: saved is on cpu"):
        ops.bias_act_dropout_backward(x, mask.cpu(), b, seed, "relu", 0.1, 0.01, 1.0, "none")
    with pytest.raises(RuntimeError, match="fastreg.relu_backward: mask is on cpu"):
        ops.relu_backward(x, ops.relu(x, True)[1].cpu())
    g = torch.randn(4, 3, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="fastreg.mix_backward: params is on cpu"):
        ops.mix_backward(g, torch.zeros(4, 8, dtype=torch.float64))
