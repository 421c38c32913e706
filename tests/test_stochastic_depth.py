"""Stochastic depth that skips the dropped samples: fastreg.functional.stochastic_depth,
fastreg.nn.StochasticDepth, the subset op, and convert(model, stochastic_depth="skip")."""

import copy
import itertools
import math
import pickle
import warnings
import weakref

import pytest
import torch

import fastreg
import fastreg.functional as FR
import fastreg.reference as R
from fastreg import _random, _skip_blocks

ops = torch.ops.fastreg
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
FN = "fastreg.stochastic_depth"


class Counted(torch.nn.Module):
    """A per-sample branch that records the batch sizes it runs forward and backward on."""

    def __init__(self, width=6, dtype=torch.float32):
        super().__init__()
        self.lin = torch.nn.Linear(width, width, dtype=dtype)
        with torch.no_grad():  # fixed weights, without touching torch's generator
            self.lin.weight.copy_(x_of(width, width) / width**0.5)
            self.lin.bias.copy_(x_of(width) * 0.1)
        self.forward_rows, self.backward_rows = [], []

    def forward(self, t):
        self.forward_rows.append(t.shape[0])
        if t.requires_grad:
            t.register_hook(lambda g: self.backward_rows.append(g.shape[0]))
        return torch.tanh(self.lin(t))


def x_of(*shape, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad)


def row_mask(seed, B, p):
    k = _random.keep_count(B, p)
    mask = torch.zeros(B, dtype=torch.float64)
    mask[_random.subset_indices(seed, B, k)] = 1.0
    return mask, k


# --- the subset -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,keep", [(1, 1), (2, 1), (8, 5), (64, 58), (257, 100), (0, 0), (5, 0), (5, 5)])
def test_subset_op_equals_reference(batch, keep):
    for seed in (0, 1, -7, 2**62):
        s = torch.tensor([seed])
        got = ops.stochastic_depth_subset(s, batch, keep)
        assert got.dtype == torch.int64 and got.shape == (keep,)
        assert torch.equal(got, _random.subset_indices(s, batch, keep))
        assert torch.equal(got, got.sort().values) and got.unique().numel() == keep
        assert bool((got >= 0).all() and (got < max(batch, 1)).all())


def test_subset_is_uniform():
    """Every 3-subset of 8 samples is equally likely: chi-square over 4000 seeds (55 degrees
    of freedom: 100 is beyond its 99.99th percentile), and each sample's inclusion rate."""
    B, k, n = 8, 3, 4000
    counts = {c: 0 for c in itertools.combinations(range(B), k)}
    for seed in range(n):
        counts[tuple(ops.stochastic_depth_subset(torch.tensor([seed]), B, k).tolist())] += 1
    expected = n / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 100, chi2
    inclusion = [sum(c for s, c in counts.items() if i in s) for i in range(B)]
    sd = math.sqrt(n * (k / B) * (1 - k / B))
    assert all(abs(c - n * k / B) < 5 * sd for c in inclusion), inclusion


@pytest.mark.parametrize("batch,keep", [(1, 1), (8, 5), (64, 58), (1000, 333)])
@cuda
def test_subset_cuda_equals_cpu(batch, keep):
    for seed in (0, 5, -(2**40)):
        cpu = ops.stochastic_depth_subset(torch.tensor([seed]), batch, keep)
        gpu = ops.stochastic_depth_subset(torch.tensor([seed], device="cuda"), batch, keep)
        assert torch.equal(cpu, gpu.cpu())


@cuda
def test_row_mode_cuda_equals_cpu():
    x = x_of(16, 4, 6)
    branch = Counted()
    cpu = FR.stochastic_depth(x, branch, 0.4, True, seed=9)
    gpu = FR.stochastic_depth(x.cuda(), branch.cuda(), 0.4, True, seed=9)
    torch.testing.assert_close(gpu.cpu(), cpu)


# --- row mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("B,p", [(16, 0.3), (5, 0.5), (64, 0.1), (3, 0.9)])
def test_row_mode_equals_reference_and_masked_drop_path(dtype, B, p):
    x = x_of(B, 4, 6, dtype=dtype)
    branch = Counted(dtype=dtype)
    got = FR.stochastic_depth(x, branch, p, True, seed=3)
    assert got.dtype == dtype and got.shape == x.shape
    mask, k = row_mask(3, B, p)
    assert branch.forward_rows == [k]
    torch.testing.assert_close(got, R.stochastic_depth(x, branch, p, True, seed=3))
    # a per-sample branch: the same as drop path with the subset as its keep mask (torch's
    # drop path in a half type rounds the scaled branch, then the sum)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    factor = (mask * (B / k)).to(acc).view(-1, 1, 1)
    torch.testing.assert_close(got, x + (branch(x).to(acc) * factor).to(dtype))


def test_row_mode_gradients_and_backward_rows():
    B, p = 12, 0.5
    x = x_of(B, 3, 6, grad=True)
    w = x_of(B, 3, 6)
    branch = Counted()
    out = FR.stochastic_depth(x, branch, p, True, seed=21)
    (gx, gw) = torch.autograd.grad((out * w).sum(), (x, branch.lin.weight))
    k = _random.keep_count(B, p)
    assert branch.forward_rows == [k] and branch.backward_rows == [k]
    ref = R.stochastic_depth(x, branch, p, True, seed=21)
    (rx, rw) = torch.autograd.grad((ref * w).sum(), (x, branch.lin.weight))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    mask, _ = row_mask(21, B, p)
    dropped = mask == 0
    assert torch.equal(gx[dropped], w[dropped])  # a dropped sample's gradient is the residual's only


def test_gradcheck_float64():
    x = x_of(7, 3, dtype=torch.float64, grad=True)
    weight = x_of(3, 3, dtype=torch.float64, grad=True)
    residual = x_of(7, 2, dtype=torch.float64, grad=True)

    def f(x, weight, residual):
        return FR.stochastic_depth(
            x, lambda t: torch.tanh(t @ weight)[:, :2], 0.4, True, residual=residual, seed=5
        )

    assert torch.autograd.gradcheck(f, (x, weight, residual))
    assert torch.autograd.gradgradcheck(f, (x, weight, residual))


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_saved_bytes_are_the_kept_samples():
    """The branch saves only for the k kept samples; stochastic depth itself saves the k row
    indices (index_select's and the add's), nothing of the batch or of the branch output."""
    B, p = 32, 0.5
    k = _random.keep_count(B, p)
    branch = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    x = x_of(B, 10, 64, grad=True)
    full = _saved_bytes(lambda: FR.stochastic_depth(x, branch, 0.0, True))
    part = _saved_bytes(lambda: FR.stochastic_depth(x, branch, p, True, seed=1))
    params = sum(t.numel() * 4 for t in branch.parameters() if t.dim() == 2)  # the saved weights
    per_sample = (full - params) / B
    assert part == params + k * per_sample + 2 * k * 8


def test_eval_p0_and_small_p_run_every_sample():
    x = x_of(6, 6)
    for p, training in ((0.3, False), (0.0, True), (0.05, True)):  # round(6 * 0.95) = 6
        branch = Counted()
        out = FR.stochastic_depth(x, branch, p, training, seed=1)
        assert branch.forward_rows == [6]
        assert torch.equal(out, x + branch(x))


def test_p1_never_runs_the_branch():
    x = x_of(6, 6)
    for mode in ("row", "batch"):
        branch = Counted()
        out = FR.stochastic_depth(x, branch, 1.0, True, mode=mode)
        assert branch.forward_rows == [] and torch.equal(out, x) and out is not x


def test_residual_of_another_shape():
    """ResNet's downsampling blocks: the branch maps input (B, 4) to the residual's (B, 3)."""
    x, residual = x_of(10, 4), x_of(10, 3)
    weight = x_of(4, 3)
    got = FR.stochastic_depth(x, lambda t: t @ weight, 0.5, True, residual=residual, seed=2)
    mask, k = row_mask(2, 10, 0.5)
    want = residual.double() + (x @ weight).double() * (mask * 10 / k).view(-1, 1)
    torch.testing.assert_close(got, want.float())


def test_channels_last_stays_channels_last():
    """The kept samples reach the branch, and the result leaves, in the input's layout (a
    convolution runs several times slower on another layout than the model's)."""
    cl = torch.channels_last
    x = x_of(8, 4, 5, 5).contiguous(memory_format=cl).requires_grad_()
    seen = []

    def branch(t):
        seen.append(t.is_contiguous(memory_format=cl))
        return torch.tanh(t)

    out = FR.stochastic_depth(x, branch, 0.5, True, seed=2)
    assert seen == [True] and out.is_contiguous(memory_format=cl)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    ref = R.stochastic_depth(x, torch.tanh, 0.5, True, seed=2)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, torch.autograd.grad(ref, x, torch.ones_like(ref))[0])


def test_odd_inputs():
    """Meta tensors, stride 0, a batch of 0 or 1, a transposed view: the reference's result."""
    meta = FR.stochastic_depth(torch.empty(8, 4, device="meta"), torch.tanh, 0.5, True)
    assert meta.device.type == "meta" and meta.shape == (8, 4)
    for x in (torch.ones(1, 4).expand(8, 4), torch.ones(0, 4), torch.ones(1, 4), x_of(6, 4).t()):
        got = FR.stochastic_depth(x, torch.tanh, 0.5, True, seed=1)
        torch.testing.assert_close(got, R.stochastic_depth(x, torch.tanh, 0.5, True, seed=1))


def test_seeds_come_from_torch_generator():
    x, branch = x_of(16, 6), Counted()
    torch.manual_seed(4)
    a = FR.stochastic_depth(x, branch, 0.5, True)
    torch.manual_seed(4)
    b = FR.stochastic_depth(x, branch, 0.5, True)
    c = FR.stochastic_depth(x, branch, 0.5, True)
    g = torch.Generator().manual_seed(4)
    d = FR.stochastic_depth(x, branch, 0.5, True, generator=g)
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.equal(a, c)


# --- batch mode -------------------------------------------------------------------------------


def test_batch_mode_with_seed_skips_when_drop_path_drops_sample_0():
    x, p = x_of(4, 6), 0.4
    skipped = 0
    for seed in range(40):
        branch = Counted()
        out = FR.stochastic_depth(x, branch, p, True, mode="batch", seed=seed)
        drops = bool(R.drop_path(torch.ones(1), p, True, seed=seed)[0] == 0)
        if drops:
            skipped += 1
            assert branch.forward_rows == [] and torch.equal(out, x)
        else:
            assert branch.forward_rows == [4]
            torch.testing.assert_close(out, x + branch(x) / (1 - p))
        torch.testing.assert_close(out, R.stochastic_depth(x, branch, p, True, mode="batch", seed=seed))
    assert 5 <= skipped <= 28  # 40 draws of p = 0.4


def test_batch_mode_generator():
    x, branch = x_of(4, 6), Counted()

    def runs(generator):
        out = []
        for _ in range(20):
            branch.forward_rows.clear()
            FR.stochastic_depth(x, branch, 0.5, True, mode="batch", generator=generator)
            out.append(bool(branch.forward_rows))
        return out

    first = runs(torch.Generator().manual_seed(3))
    assert first == runs(torch.Generator().manual_seed(3)) and 3 <= sum(first) <= 17
    torch.manual_seed(3)
    assert runs(None) == first  # torch's default CPU generator


@cuda
def test_batch_mode_refuses_a_cuda_generator():
    with pytest.raises(ValueError, match=f"^{FN}: .*generator must be a CPU generator"):
        FR.stochastic_depth(x_of(4, 6), Counted(), 0.5, True, mode="batch", generator=torch.Generator("cuda"))


# --- errors -----------------------------------------------------------------------------------


def _wrong_shape(t):
    return t[:, :3]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"p": 1.5}, ValueError, "p .* must be in \\[0, 1\\]"),
        ({"p": -0.1}, ValueError, "p .* must be in \\[0, 1\\]"),
        ({"p": "0.1"}, TypeError, "p must be a number"),
        ({"mode": "col"}, ValueError, "mode must be 'row' or 'batch', got 'col'"),
        ({"branch": 3}, TypeError, "branch must be callable"),
        ({"branch": _wrong_shape}, ValueError, "branch must return, for each sample .* got \\(4, 3\\)"),
        ({"branch": lambda t: 1.0}, TypeError, "branch must return a Tensor"),
        ({"input": torch.ones(())}, ValueError, "input must have a batch dimension"),
        ({"input": torch.ones(8, 6, dtype=torch.int64)}, TypeError, "input must be a float32"),
        ({"residual": torch.ones(7, 6)}, ValueError, "residual must have input's batch size"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = {"input": x_of(8, 6), "branch": torch.nn.Identity(), "p": 0.5, "training": True, **kwargs}
    with pytest.raises(error, match=f"^{FN}: {match}"):
        FR.stochastic_depth(**args)


def test_module_arguments_are_named():
    branch = torch.nn.Identity()
    with pytest.raises(TypeError, match="^fastreg.nn.StochasticDepth: branch must be a torch.nn.Module"):
        fastreg.nn.StochasticDepth(lambda t: t, 0.1)
    with pytest.raises(ValueError, match="^fastreg.nn.StochasticDepth: p .* in \\[0, 1\\], got 2"):
        fastreg.nn.StochasticDepth(branch, 2)
    with pytest.raises(ValueError, match="^fastreg.nn.StochasticDepth: mode must be 'row' or 'batch'"):
        fastreg.nn.StochasticDepth(branch, 0.1, mode="elem")
    with pytest.raises(ValueError, match=f"^{FN}: branch must return, for each sample"):
        fastreg.nn.StochasticDepth(torch.nn.Linear(6, 5), 0.5).train()(x_of(8, 6))


# --- the module, compile, transforms, export ----------------------------------------------------


def test_module_equals_functional_and_state_dict():
    branch = Counted()
    block = fastreg.nn.StochasticDepth(branch, 0.3)
    assert list(block.state_dict()) == ["branch.lin.weight", "branch.lin.bias"]
    x = x_of(10, 6)
    torch.manual_seed(8)
    got = block.train()(x)
    torch.manual_seed(8)
    torch.testing.assert_close(got, FR.stochastic_depth(x, branch, 0.3, True))
    assert torch.equal(block.eval()(x), x + branch(x))


def test_compile_fullgraph_equals_eager():
    branch = Counted()
    x = x_of(16, 6)
    for mode in ("row", "batch"):

        def f(t, mode=mode):
            return FR.stochastic_depth(t, branch, 0.5, True, mode=mode, seed=11)

        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))


def test_torch_func_grad_uses_the_same_subset():
    x = x_of(9, 6)
    w = x_of(9, 6)
    branch = Counted()

    def loss(t):
        return (FR.stochastic_depth(t, branch, 0.5, True, seed=4) * w).sum()

    xg = x.clone().requires_grad_()
    (eager,) = torch.autograd.grad(loss(xg), xg)
    torch.testing.assert_close(torch.func.grad(loss)(x), eager)


def test_module_trace_gives_the_eval_form_and_script_is_refused():
    block = fastreg.nn.StochasticDepth(torch.nn.Linear(6, 6), 0.3).eval()
    x = x_of(4, 6)
    traced = torch.jit.trace(block, x)
    torch.testing.assert_close(traced(x), x + block.branch(x))
    with pytest.raises(TypeError, match="StochasticDepth has no TorchScript form"):
        torch.jit.script(block)
    with pytest.raises(TypeError, match="StochasticDepth, which has no plain torch module"):
        fastreg.unconvert(torch.nn.Sequential(block))


# --- convert(model, stochastic_depth="skip") ----------------------------------------------------

timm = pytest.importorskip("timm")

MODELS = {
    "vit_tiny_patch16_224": {"img_size": 32},
    "deit_tiny_patch16_224": {"img_size": 32},
    "convnext_atto": {},
    "resnet10t": {},
    "resnet14t": {},
}


def timm_model(name, rate=0.3):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, drop_path_rate=rate, **MODELS[name])


def blocks_with_drop_path(model):
    types = _skip_blocks._drop_path_types()
    return [m for m in model.modules() if any(isinstance(c, types) for c in m.children())]


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_skip_rewires_keeps_keys_and_eval(name):
    model = timm_model(name)
    original = copy.deepcopy(model)
    converted = fastreg.convert(copy.deepcopy(model))  # fastreg's activations: eval differs by ulps
    blocks = blocks_with_drop_path(model)
    assert blocks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastreg.convert(model, stochastic_depth="skip") is model
    assert all(isinstance(b, _skip_blocks.SkipBlock) for b in blocks)
    assert list(model.state_dict()) == list(original.state_dict())
    x = x_of(3, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), converted.eval()(x), rtol=0, atol=0)
    pickled = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(pickled(x), converted(x), rtol=0, atol=0)
    original.eval()
    fastreg.unconvert(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)


class MaskedDropPath(torch.nn.Module):
    """Drop path with a given per-sample factor: a rewired block's expected value."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, t):
        return t * self.factor.to(t.dtype).view(-1, *[1] * (t.dim() - 1))


def _block_of(name):
    model = timm_model(name, rate=0.5)
    block = blocks_with_drop_path(model)[-1]
    for m in block.modules():  # a per-sample branch: BatchNorm from its running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return block


@pytest.mark.parametrize("name", list(MODELS))
def test_rewired_block_equals_drop_path_with_the_subset(name):
    block = _block_of(name)
    original = copy.deepcopy(block)
    fastreg.convert(block, stochastic_depth="skip")
    x = (
        x_of(12, 5, 192)
        if "224" in name
        else x_of(
            12,
            original.conv1.in_channels if hasattr(original, "conv1") else original.conv_dw.in_channels,
            8,
            8,
        )
    )
    torch.manual_seed(6)
    got = block(x)
    torch.manual_seed(6)
    drop_names = [n for n, c in original.named_children() if isinstance(c, timm.layers.DropPath)]
    for n in drop_names:  # the seeds in call order, one per drop path
        seed = int(torch.randint(_random.INT64_MIN, _random.INT64_MAX, (1,)))
        p = getattr(original, n).drop_prob
        mask, k = row_mask(seed, 12, p)
        setattr(original, n, MaskedDropPath(mask * 12 / k))
    torch.testing.assert_close(got, original(x))


def test_convert_skip_trains_and_backward_runs_on_the_kept_samples():
    model = fastreg.convert(timm_model("vit_tiny_patch16_224", rate=0.4), stochastic_depth="skip").train()
    rows = []
    model.blocks[-1].mlp.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    loss = model(x_of(10, 3, 32, 32)).logsumexp(1).sum()
    loss.backward()
    assert rows == [_random.keep_count(10, 0.4)]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_convert_skip_warns_about_unknown_blocks():
    class MyBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Linear(4, 4)
            self.drop_path = timm.layers.DropPath(0.1)

        def forward(self, x):
            return x + self.drop_path(self.mlp(x))

    model = torch.nn.Sequential(MyBlock(), timm_model("convnext_atto").stages[0].blocks[0])
    with pytest.warns(UserWarning, match="left as they are .*test_stochastic_depth.*MyBlock"):
        fastreg.convert(model, stochastic_depth="skip")
    assert type(model[0]) is MyBlock and isinstance(model[0].drop_path, fastreg.nn.DropPath)


def test_convert_without_the_option_rewires_nothing():
    model = fastreg.convert(timm_model("vit_tiny_patch16_224"))
    assert not any(isinstance(m, _skip_blocks.SkipBlock) for m in model.modules())
    with pytest.raises(
        ValueError, match="^fastreg.convert: stochastic_depth must be None or 'skip', got 'row'"
    ):
        fastreg.convert(model, stochastic_depth="row")


def _downsample_block(name):
    """A rewired ResNet block with a downsampling shortcut and a drop path, its BatchNorms
    from running statistics (per-sample, so two runs on different subsets compare)."""
    model = timm_model(name, rate=0.5)
    block = next(b for b in blocks_with_drop_path(model) if b.downsample is not None)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    fastreg.convert(block, stochastic_depth="skip")
    return block.train()


def _step(block, x, seed=3):
    torch.manual_seed(seed)
    out = block(x)
    (out * x_of(*out.shape)).sum().backward()
    return out, [x.grad, *(q.grad for q in block.parameters())]


@pytest.mark.parametrize("name", ["resnet10t", "resnet14t"])  # BasicBlock, Bottleneck
def test_downsample_block_keeps_the_rows_once(name, monkeypatch):
    """A ResNet block whose shortcut saves its input x regathers the branch's saved copy of
    x's kept rows in backward instead of holding it: the same output and gradients bit for
    bit, k rows of x fewer bytes saved, the copy freed after forward."""
    block = _downsample_block(name)
    x = x_of(12, block.conv1.in_channels, 8, 8, grad=True)
    k = _random.keep_count(12, block.drop_path.drop_prob)
    copy_bytes = k * x[0].numel() * x.element_size()
    out, grads = _step(block, x)
    torch.manual_seed(3)
    regathered = _saved_bytes(lambda: block(x))
    with monkeypatch.context() as m:
        m.setattr(FR._SavedRows, "usable", staticmethod(lambda taken: False))
        x.grad = None
        block.zero_grad()
        want_out, want_grads = _step(block, x)
        torch.manual_seed(3)
        kept = _saved_bytes(lambda: block(x))
    assert torch.equal(out, want_out)
    for got, want in zip(grads, want_grads, strict=True):
        assert torch.equal(got, want)
    assert regathered == kept - copy_bytes + x.numel() * x.element_size()  # x, counted per save
    inputs = []
    block.conv1.register_forward_pre_hook(lambda m, a: inputs.append(weakref.ref(a[0])))
    y = block(x)
    assert inputs[0]() is None and y.grad_fn is not None  # the copy is not held


def test_regathered_rows_match_aliases_of_the_copy_only():
    """With input_saved, a saved alias of the gathered rows (a view of all of them) is
    regathered; another tensor of their shape is saved as it is. Gradients equal the plain
    run's bit for bit."""
    x = x_of(10, 4, 6, grad=True)
    w = x_of(4, 6, grad=True)

    def branch(t):
        return t.view_as(t) * w + (t * 2.0) * w  # saves the alias, t * 2 and w twice

    def run(input_saved):
        x.grad = w.grad = None
        packed = []

        def pack(t):
            packed.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = FR._stochastic_depth(x, branch, 0.2, True, "row", None, True, None, 4, input_saved)
        y.backward(x_of(*y.shape))
        return packed, y, x.grad.clone(), w.grad.clone()

    plain, y0, gx0, gw0 = run(False)
    packed, y1, gx1, gw1 = run(True)
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1) and torch.equal(gw0, gw1)
    rows = (_random.keep_count(10, 0.2), 4, 6)
    assert [t.shape for t in plain].count(rows) == 2
    assert [t.shape for t in packed].count(rows) == 1 and sum(t is x for t in packed) == 1


def test_downsample_block_compiles_fullgraph():
    """Under torch.compile the regathering hooks stay off (the compiler decides what to
    save): a rewired downsampling block compiles in one graph and equals eager, forward and
    backward, for the same seed."""
    block = _downsample_block("resnet10t").double()  # float64: reordered sums agree to 1e-7
    x = x_of(8, block.conv1.in_channels, 8, 8, dtype=torch.float64, grad=True)
    want, want_grads = _step(block, x)
    x.grad = None
    block.zero_grad()
    got, grads = _step(torch.compile(block, fullgraph=True), x)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_regathered_rows_check_the_input_version():
    block = _downsample_block("resnet10t")
    x = x_of(12, block.conv1.in_channels, 8, 8)
    h = x.clone().requires_grad_(True)
    y = block(h)
    with torch.no_grad():
        h.mul_(2.0)
    with pytest.raises(
        RuntimeError, match="^fastreg.stochastic_depth: the input of a branch was modified in place"
    ):
        y.sum().backward()


def test_regathered_rows_under_checkpoint_and_outer_hooks():
    """Non-reentrant checkpointing around a rewired downsampling block recomputes the same
    subset and gives the gradients of the plain run; outer saved-tensor hooks see every save."""
    block = _downsample_block("resnet14t")
    x = x_of(12, block.conv1.in_channels, 8, 8, grad=True)
    out, grads = _step(block, x)
    x.grad = None
    block.zero_grad()
    torch.manual_seed(3)
    got = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    (got * x_of(*got.shape)).sum().backward()
    assert torch.equal(got, out)
    for q, want in zip([x.grad, *(q.grad for q in block.parameters())], grads, strict=True):
        torch.testing.assert_close(q, want, rtol=0, atol=0)
    packed, unpacked = [], []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: packed.append(t) or t, lambda t: unpacked.append(t) or t
    ):
        torch.manual_seed(3)
        y = block(x)
    y.sum().backward()
    assert any(t is x for t in packed) and len(unpacked) == len(packed)


# --- DistributedDataParallel --------------------------------------------------------------------

DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import fastreg


def worker(rank, init_file, out):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    torch.manual_seed(0)  # the same weights on every rank
    branch = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    model = torch.nn.Sequential(fastreg.nn.StochasticDepth(branch, 0.5), torch.nn.Linear(8, 3))
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # no find_unused_parameters
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    rows = []
    branch.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    data = torch.Generator().manual_seed(100 + rank)  # each rank's own samples
    torch.manual_seed(7)  # the same draws on every rank: the same positions of each local batch
    for _ in range(3):
        loss = ddp(torch.randn(16, 8, generator=data)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    state = torch.get_rng_state()
    gathered = [torch.empty_like(params) for _ in range(2)]
    dist.all_gather(gathered, params)
    states = [torch.empty_like(state) for _ in range(2)]
    dist.all_gather(states, state)
    result = {"rows": rows, "same_params": torch.equal(*gathered), "same_draws": torch.equal(*states)}
    torch.save(result, out + str(rank))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_ddp_row_mode_trains_without_unused_parameters(tmp_path):
    """Row mode under DistributedDataParallel (gloo, 2 processes): every branch parameter gets
    a gradient on every rank (the branch runs on k >= 1 samples), so DDP needs no
    find_unused_parameters; parameters stay identical across ranks; with the same seed on
    every rank each draws the same k positions of its own batch."""
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = str(tmp_path / "rank")
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init"), out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-1000:] + run.stderr[-3000:]
    for rank in range(2):
        result = torch.load(out + str(rank))
        assert result["rows"] == [8, 8, 8] and result["same_params"] and result["same_draws"]
