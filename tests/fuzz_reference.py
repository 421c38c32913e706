"""Random search for disagreements between fastreg.functional and fastreg.reference (CPU).

Not a test (pytest does not collect it; what it found became seeded tests): a tool to run
after changing kernels or the reference. Random shapes, dtypes, layouts (transposed, sliced,
channels_last, expanded), special values (inf, NaN, +-0, denormals, 1e30) and arguments;
forward and backward; bitwise for the random ops, within dtype tolerance for activation math.

    python tests/fuzz_reference.py [seed] [iterations] [activations|batch]
    FASTREG_CPU_ISA=avx2 python tests/fuzz_reference.py 7 200

Prints one line per disagreement, then the count. It found the reference's NaN gradients
where exp overflows (docs/decisions.md).
"""

import random
import sys

import torch

import fastreg.functional as FR
import fastreg.reference as R
from fastreg._activations import TABLE
from fastreg._activations import cases as activation_cases

SEED = int(sys.argv[1]) if len(sys.argv) > 1 else 0
ITERATIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
FAMILY = sys.argv[3] if len(sys.argv) > 3 else "activations"

rng = random.Random(SEED)
torch.manual_seed(rng.randrange(1 << 30))
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 3e-3, torch.bfloat16: 1.6e-2}
SPECIALS = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-40, -1e-40, 1e30, -1e30])
ACTS = [(row.name, kw) for _, row, kw in activation_cases()]  # every case of the activation table


def random_shape():
    if rng.random() < 0.05:
        return [0, 3]
    return [rng.choice([1, 2, 3, 7, 8, 16, 33, 64, 129, 257]) for _ in range(rng.choice([1, 2, 3, 4]))]


def random_input(shape, dtype, specials=True):
    base = torch.randn(*shape) * rng.choice([0.1, 1, 4, 30])
    if specials and rng.random() < 0.3 and base.numel():
        idx = torch.randint(0, base.numel(), (max(1, base.numel() // 20),))
        base.view(-1)[idx] = SPECIALS[torch.randint(0, len(SPECIALS), idx.shape)]
    base = base.to(dtype)
    kind = rng.choice(["contiguous", "transposed", "sliced", "channels_last", "expanded"])
    if kind == "transposed" and base.dim() >= 2:
        return base.transpose(0, -1)
    if kind == "sliced" and base.shape[-1] > 2:
        return base[..., ::2]
    if kind == "channels_last" and base.dim() == 4:
        return base.contiguous(memory_format=torch.channels_last)
    if kind == "expanded":
        return base[..., :1].expand(*base.shape)
    return base


def finite(x):
    return torch.nan_to_num(x.float(), 0.0, 30.0, -30.0).clamp(-30, 30).to(x.dtype)


def close(a, b, dtype, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} against {tuple(b.shape)}"
    tol = TOL[dtype]
    torch.testing.assert_close(
        a.double(), b.double(), rtol=tol, atol=tol, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def same_bits(a, b, what):
    assert a.shape == b.shape and a.dtype == b.dtype, (
        f"{what}: {a.shape} {a.dtype} against {b.shape} {b.dtype}"
    )
    if a.numel() and not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
        # NaN payloads may differ; anything else is a disagreement
        assert torch.equal(torch.nan_to_num(a.double(), 7.0), torch.nan_to_num(b.double(), 7.0)), (
            f"{what}: bits differ"
        )


def grads(f, x, g, *more):
    xs = (x.detach().clone().requires_grad_(),) + tuple(t.detach().clone().requires_grad_() for t in more)
    return torch.autograd.grad(f(*xs), xs, g)


def activation_case(dtype, x):
    name, kw = rng.choice(ACTS)
    what = f"{name}{kw} {dtype} {list(x.shape)} strides={x.stride()}"
    close(getattr(FR, name)(x, **kw), getattr(R, name)(x, **kw), dtype, what + " forward")
    x = finite(x)
    g = torch.randn(x.shape).to(dtype)
    (a,), (b,) = (grads(lambda v, f=f: getattr(f, name)(v, **kw), x, g) for f in (FR, R))
    close(a, b, dtype, what + " backward")


def prelu_case(dtype, x):
    x = finite(x)
    channels = x.shape[1] if x.dim() >= 2 else 1
    w = (torch.rand(rng.choice([1, channels])) - 0.3).to(dtype)
    what = f"prelu {dtype} {list(x.shape)} weight {w.numel()}"
    close(FR.prelu(x, w), R.prelu(x, w), dtype, what + " forward")
    g = torch.randn(x.shape).to(dtype)
    a, b = (grads(f.prelu, x, g, w) for f in (FR, R))
    close(a[0], b[0], dtype, what + " input gradient")
    tol = TOL[dtype] if dtype == torch.float64 else 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3
    torch.testing.assert_close(
        a[1].double(),
        b[1].double(),
        rtol=tol,
        atol=tol * max(1, x.numel() ** 0.5),
        msg=lambda m: f"{what}: {m}",
    )


def dropout_case(dtype, x):
    x = torch.nan_to_num(x.float(), 0.0, 1e4, -1e4).to(dtype)
    p, seed = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]), rng.randrange(1 << 62)
    op = rng.choice(["dropout", "alpha_dropout", "dropout_add", "drop_path", "bias_act_dropout"])
    what = f"{op} p={p} {dtype} {list(x.shape)} strides={x.stride()}"
    exact, act = True, None
    if op == "dropout":
        calls = [lambda v, m=m: m.dropout(v, p, True, seed=seed) for m in (FR, R)]
    elif op == "alpha_dropout":
        calls = [lambda v, m=m: m.alpha_dropout(v, p, True, seed=seed) for m in (FR, R)]
    elif op == "dropout_add":
        res = torch.randn(x.shape).to(dtype)
        calls = [lambda v, m=m: m.dropout_add(v, res, p, True, seed=seed) for m in (FR, R)]
    elif op == "drop_path":
        res = torch.randn(x.shape).to(dtype) if rng.random() < 0.5 else None
        calls = [lambda v, m=m: m.drop_path(v, p, True, residual=res, seed=seed) for m in (FR, R)]
    else:
        act = rng.choice(list(TABLE))
        what += " " + act
        b = torch.randn(x.shape[-1]).to(dtype) if rng.random() < 0.8 else None
        calls = [lambda v, m=m: m.bias_act_dropout(v, b, act, p, True, seed=seed) for m in (FR, R)]
        exact = act == "relu"  # the others' math: within tolerance (leaky_relu: (g s) k against (g k) s)
    ya, yb = (f(x) for f in calls)
    if exact or act == "leaky_relu":
        same_bits(ya, yb, what + " forward")
    else:
        close(ya, yb, dtype, what + " forward")
    g = torch.randn(ya.shape).to(dtype)
    (a,), (b,) = (grads(f, x, g) for f in calls)
    if exact:
        same_bits(a, b, what + " backward")
    else:
        close(a, b, dtype, what + " backward")


def batch_case():
    B, C = rng.choice([1, 2, 3, 5, 8]), rng.choice([1, 3, 4])
    H, W = rng.choice([1, 2, 7, 16, 33]), rng.choice([1, 3, 8, 17, 32])
    op = rng.choice(["cutout", "random_erasing", "mixup", "cutmix"])
    dtypes = FLOATS + ([torch.uint8] if op in ("cutout", "random_erasing") else [])
    dtype = rng.choice(dtypes)
    x = (
        (torch.rand(B, C, H, W) * 255).to(dtype)
        if dtype == torch.uint8
        else torch.randn(B, C, H, W).to(dtype)
    )
    if rng.random() < 0.4:
        x = x.contiguous(memory_format=torch.channels_last)
    seed, inplace = rng.randrange(1 << 62), rng.random() < 0.3
    what = f"{op} {dtype} {tuple(x.shape)} channels_last={not x.is_contiguous()} inplace={inplace}"
    if op == "cutout":
        size, p, fill = (
            rng.choice([1, 2, 5, 16, 40]),
            rng.choice([0.0, 0.5, 1.0]),
            rng.choice([0.0, 1.5, 7.0]),
        )
        a, b = (m.cutout(x.clone(), size, p, fill=fill, inplace=inplace, seed=seed) for m in (FR, R))
        return same_bits(a, b, what + f" size={size} p={p} fill={fill}")
    if op == "random_erasing":
        p = rng.choice([0.0, 0.5, 1.0])
        value = rng.choice([0.0, 3.0] + (["random"] if dtype != torch.uint8 else []))
        scale = rng.choice([(0.02, 0.33), (0.1, 0.9), (0.5, 1.0)])
        ratio = rng.choice([(0.3, 3.3), (1.0, 1.0), (0.1, 10.0)])
        a, b = (
            m.random_erasing(x.clone(), p, scale, ratio, value=value, inplace=inplace, seed=seed)
            for m in (FR, R)
        )
        return same_bits(a, b, what + f" p={p} value={value} scale={scale} ratio={ratio}")
    K, mode = rng.choice([2, 5, 10]), rng.choice(["batch", "pair", "elem"])
    alpha, smoothing = rng.choice([0.2, 1.0, 2.0]), rng.choice([0.0, 0.1])
    if rng.random() < 0.5:
        target, kw = torch.randint(0, K, (B,)), {"num_classes": K}
    else:
        target, kw = torch.softmax(torch.randn(B, K), 1), {}
    if op == "cutmix":
        kw["correct_lam"] = rng.random() < 0.5
    what += f" mode={mode} alpha={alpha} smoothing={smoothing} {kw}"
    outs, inputs = [], []
    for m in (FR, R):
        xi = x.clone() if inplace else x.clone().requires_grad_()
        inputs.append(xi)
        outs.append(
            getattr(m, op)(
                xi, target, alpha, label_smoothing=smoothing, mode=mode, inplace=inplace, seed=seed, **kw
            )
        )
    same_bits(outs[0][0], outs[1][0], what + " images")
    same_bits(outs[0][1], outs[1][1], what + " targets")
    if not inplace:
        g = torch.randn(x.shape).to(dtype)
        a, b = (torch.autograd.grad(o[0], xi, g)[0] for o, xi in zip(outs, inputs, strict=True))
        same_bits(a, b, what + " gradient")


failures = 0
for _ in range(ITERATIONS):
    try:
        if FAMILY == "batch":
            batch_case()
        else:
            dtype = rng.choice(FLOATS)
            x = random_input(random_shape(), dtype)
            r = rng.random()
            (activation_case if r < 0.45 else prelu_case if r < 0.55 else dropout_case)(dtype, x)
    except AssertionError as e:
        failures += 1
        print("FAIL", " | ".join(str(e).splitlines()[:4])[:500], flush=True)
print("failures", failures)
