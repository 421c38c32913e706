"""Accuracy of every activation, forward and backward, in ulps of the result's dtype.

Measured against a float64 evaluation of the exact function (for float64 results, an
80-digit mpmath one), on every finite float16 and bfloat16 value, and on a sample of
float32 and float64 values (uniform on [-12, 12], log-spaced magnitudes up to 1e30,
the edges where exp under- and overflows). Three implementations:

- fastreg's CPU kernels (the ops themselves);
- fastreg's CUDA math: the same functor code the CUDA kernels compile, evaluated on the
  CPU by fastreg._C._testing.eval_activation with the GPU's primitives replaced by their
  host counterparts (libdevice by the C library; the half types' SFU ex2/rcp by correctly
  rounded values): docs/accuracy.md says what that leaves out;
- torch's CPU kernels, for comparison.

An ulp is the spacing of the dtype at the exact value (the smallest subnormal's spacing
below the normal range). Backward is the gradient for an incoming gradient of 1, from
what each op saves: the output (sigmoid, tanh, elu, selu, measured against the exact
derivative at that saved output), the input (gelu, silu) or the 1-bit mask.

    python bench/accuracy.py           prints the table
    python bench/accuracy.py --write   writes it into docs/accuracy.md
"""

import argparse
import math
import pathlib
import re
import sys

import torch
import torch.nn.functional as F

import fastreg

T = fastreg._C._testing
ops = torch.ops.fastreg
ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "accuracy.md"
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
SLOPE = 0.01
K = math.sqrt(2 / math.pi)
C = 0.044715

# name -> (what backward takes: "output" | "input" | "mask", eval_activation's name, param)
ACTIVATIONS = {
    "sigmoid": ("output", "sigmoid", 1.0),
    "tanh": ("output", "tanh", 1.0),
    "relu": ("mask", "relu", 1.0),
    "leaky_relu": ("mask", "leaky_relu", SLOPE),
    "elu": ("output", "elu", 1.0),
    "selu": ("output", "selu", 1.0),
    "gelu": ("input", "gelu", 1.0),
    "gelu_tanh": ("input", "gelu_tanh", 1.0),
    "silu": ("input", "silu", 1.0),
}


# --- exact values --------------------------------------------------------------------------------


def exact_forward(name, x):
    """float64 values, accurate to a few float64 ulps (no cancellation in any tail)."""
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "relu":
        return torch.where(x <= 0, torch.zeros_like(x), x)
    if name == "leaky_relu":
        return torch.where(x > 0, x, x * SLOPE)
    if name == "elu":
        return torch.where(x > 0, x, torch.expm1(x))
    if name == "selu":
        return SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x))
    if name == "gelu":
        return 0.5 * x * torch.erfc(-x / math.sqrt(2))
    if name == "gelu_tanh":  # 0.5 x (1 + tanh u) = x sigmoid(2u)
        return x * torch.sigmoid(2 * K * (x + C * x**3))
    if name == "silu":
        return x * torch.sigmoid(x)
    raise KeyError(name)


def exact_backward(name, s):
    """The exact derivative at the saved value s (the output or the input)."""
    if name == "sigmoid":
        return s * (1 - s)
    if name == "tanh":
        return 1 - s * s
    if name == "relu":
        return torch.where(s <= 0, torch.zeros_like(s), torch.ones_like(s))
    if name == "leaky_relu":
        return torch.where(s > 0, torch.ones_like(s), torch.full_like(s, SLOPE))
    if name == "elu":
        return torch.where(s <= 0, s + 1.0, torch.ones_like(s))
    if name == "selu":
        return torch.where(s <= 0, s + SELU_ALPHA * SELU_SCALE, torch.full_like(s, SELU_SCALE))
    if name == "gelu":
        return 0.5 * torch.erfc(-s / math.sqrt(2)) + s * torch.exp(-0.5 * s * s) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        u2 = 2 * K * (s + C * s**3)
        sg, sn = torch.sigmoid(u2), torch.sigmoid(-u2)  # 1 + tanh u = 2 sg, 1 - tanh^2 u = 4 sg sn
        return sg + 2 * s * sg * sn * K * (1 + 3 * C * s * s)
    if name == "silu":
        sg = torch.sigmoid(s)
        return sg * (1 + s * torch.sigmoid(-s))
    raise KeyError(name)


def mp_exact(name, backward, values):
    """80-digit values (float64 results: the float64 evaluation above is not exact enough)."""
    import mpmath

    mpmath.mp.dps = 80
    mp = mpmath.mpf
    k, c = mpmath.sqrt(2 / mpmath.pi), mp(C)
    sig = lambda v: 1 / (1 + mpmath.exp(-v))  # noqa: E731

    def f(v):
        v = mp(v)
        if not backward:
            return {
                "sigmoid": lambda: sig(v),
                "tanh": lambda: mpmath.tanh(v),
                "relu": lambda: v if v > 0 else mp(0),
                "leaky_relu": lambda: v if v > 0 else v * mp(SLOPE),
                "elu": lambda: v if v > 0 else mpmath.expm1(v),
                "selu": lambda: mp(SELU_SCALE) * (v if v > 0 else mp(SELU_ALPHA) * mpmath.expm1(v)),
                "gelu": lambda: v * mpmath.erfc(-v / mpmath.sqrt(2)) / 2,
                "gelu_tanh": lambda: v * sig(2 * k * (v + c * v**3)),
                "silu": lambda: v * sig(v),
            }[name]()
        return {
            "sigmoid": lambda: v * (1 - v),
            "tanh": lambda: 1 - v * v,
            "relu": lambda: mp(1) if v > 0 else mp(0),
            "leaky_relu": lambda: mp(1) if v > 0 else mp(SLOPE),
            "elu": lambda: v + 1 if v <= 0 else mp(1),
            "selu": lambda: v + mp(SELU_ALPHA) * mp(SELU_SCALE) if v <= 0 else mp(SELU_SCALE),
            "gelu": lambda: (
                mpmath.erfc(-v / mpmath.sqrt(2)) / 2 + v * mpmath.exp(-v * v / 2) / mpmath.sqrt(2 * mpmath.pi)
            ),
            "gelu_tanh": lambda: (
                sig(2 * k * (v + c * v**3))
                + 2 * v * sig(2 * k * (v + c * v**3)) * sig(-2 * k * (v + c * v**3)) * k * (1 + 3 * c * v * v)
            ),
            "silu": lambda: sig(v) * (1 + v * sig(-v)),
        }[name]()

    return [f(float(v)) for v in values]


# --- inputs --------------------------------------------------------------------------------------


def all_finite(dtype):
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    v = bits.view(dtype)
    return v[torch.isfinite(v)]


def sample(dtype, n_uniform):
    g = torch.Generator().manual_seed(0)
    mags = torch.logspace(-30, 30, 2001, dtype=torch.float64)
    edges = torch.linspace(-105, 105, 4201, dtype=torch.float64)  # exp's under- and overflow
    uniform = torch.rand(n_uniform, generator=g, dtype=torch.float64) * 24 - 12
    v = torch.cat([uniform, mags, -mags, edges, torch.tensor([0.0, -0.0, 1e4, -1e4])])
    return v.to(dtype).unique()


def inputs(dtype):
    if dtype in HALF:
        return all_finite(dtype)
    return sample(dtype, 1 << 18 if dtype == torch.float32 else 1500)


def saved_values(name, dtype, x):
    """What backward is given: the forward's outputs in the dtype, or the inputs."""
    kind = ACTIVATIONS[name][0]
    if kind == "output":
        y = exact_forward(name, x.double()).to(dtype)
        return y[torch.isfinite(y)].unique()
    return x


# --- the three implementations ---------------------------------------------------------------


def fastreg_cpu(name, backward, s):
    kind = ACTIVATIONS[name][0]
    approx = "tanh" if name == "gelu_tanh" else "none"
    op = "gelu" if name == "gelu_tanh" else name
    params = {"elu": (1.0,), "leaky_relu": (SLOPE,), "gelu": (approx,), "gelu_tanh": (approx,)}.get(name, ())
    if not backward:
        if kind == "mask":
            return getattr(ops, op)(s, *params, False)[0]
        return getattr(ops, op)(s, *params)
    ones = torch.ones_like(s)
    if kind == "mask":
        mask = getattr(ops, op)(s, *params, True)[1]
        return getattr(ops, op + "_backward")(ones, mask, *params)
    return getattr(ops, op + "_backward")(ones, s, *params)


def fastreg_cuda(name, backward, s):
    opmath = torch.float64 if s.dtype == torch.float64 else torch.float32
    param = ACTIVATIONS[name][2]
    y = T.eval_activation(ACTIVATIONS[name][1], backward, s.to(opmath), "cuda", s.dtype in HALF, param)
    return y.to(s.dtype)


def torch_cpu(name, backward, s):
    if not backward:
        return {
            "sigmoid": torch.sigmoid,
            "tanh": torch.tanh,
            "relu": F.relu,
            "leaky_relu": lambda v: F.leaky_relu(v, SLOPE),
            "elu": F.elu,
            "selu": F.selu,
            "gelu": F.gelu,
            "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
            "silu": F.silu,
        }[name](s)
    ones = torch.ones_like(s)
    aten = torch.ops.aten
    return {
        "sigmoid": lambda: aten.sigmoid_backward(ones, s),
        "tanh": lambda: aten.tanh_backward(ones, s),
        "relu": lambda: aten.threshold_backward(ones, F.relu(s), 0),
        "leaky_relu": lambda: aten.leaky_relu_backward(ones, s, SLOPE, False),
        "elu": lambda: aten.elu_backward(ones, 1.0, 1.0, 1.0, True, s),
        "selu": lambda: aten.elu_backward(ones, SELU_ALPHA, SELU_SCALE, 1.0, True, s),
        "gelu": lambda: aten.gelu_backward(ones, s),
        "gelu_tanh": lambda: aten.gelu_backward(ones, s, approximate="tanh"),
        "silu": lambda: aten.silu_backward(ones, s),
    }[name]()


IMPLEMENTATIONS = {"fastreg CPU": fastreg_cpu, "fastreg CUDA": fastreg_cuda, "torch CPU": torch_cpu}


# --- measuring -----------------------------------------------------------------------------------


def ulp_errors(y, exact, dtype):
    """|y - exact| in ulps of dtype at exact; 0 where both round to the same infinity."""
    fi = torch.finfo(dtype)
    y, r = y.double(), exact.double()
    rounded = r.to(dtype).double()
    _, e = torch.frexp(r.abs())
    ulp = torch.where(
        r.abs() < fi.tiny,
        torch.full_like(r, fi.tiny * fi.eps),
        torch.ldexp(torch.full_like(r, fi.eps), e - 1),
    )
    err = (y - r).abs() / ulp
    inf = torch.isinf(rounded)
    err = torch.where(inf, torch.where(y == rounded, 0.0, math.inf), err)
    err = torch.nan_to_num(err, nan=0.0, posinf=math.inf)
    return torch.where(torch.isnan(y) != torch.isnan(r), math.inf, err)


CORE = 4.0  # |x| <= CORE: where activations' inputs live in training


def measure(name, backward, dtype, impls=IMPLEMENTATIONS):
    """{implementation: (max ulps for |x| <= CORE, max ulps over all inputs, the saved value
    or input where that occurs)}."""
    x = inputs(dtype)
    s = saved_values(name, dtype, x) if backward else x
    core_x = x[x.abs() <= CORE]
    core = saved_values(name, dtype, core_x) if backward else core_x
    if dtype == torch.float64:
        s = s[:: max(1, len(s) // 1500)]
        exact = torch.tensor([float(v) for v in mp_exact(name, backward, s)], dtype=torch.float64)
    else:
        exact = (exact_backward if backward else exact_forward)(name, s.double())
    in_core = torch.isin(s, core)
    out = {}
    for impl, fn in impls.items():
        err = ulp_errors(fn(name, backward, s), exact, dtype)
        i = int(err.argmax())
        out[impl] = (float(err[in_core].max()), float(err[i]), float(s[i]))
    return out


def table():
    rows = []
    for name in ACTIVATIONS:
        for backward in (False, True):
            for dtype in DTYPES:
                m = measure(name, backward, dtype)
                rows.append((name, "backward" if backward else "forward", DTYPE_NAMES[dtype], m))
    return rows


def fmt_ulps(v):
    """v rounded up to what the table prints (it states bounds)."""
    if math.isinf(v):
        return "inf"
    if v >= 1e4:
        e = math.floor(math.log10(v))
        return f"{math.ceil(v / 10 ** (e - 1)) / 10:.1f}e{e}"
    return f"{math.ceil(v * 100) / 100:.2f}" if v < 10 else f"{math.ceil(v)}"


def markdown(rows):
    head = ["activation", "direction", "dtype"] + list(IMPLEMENTATIONS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, direction, dtype, m in rows:
        cells = [f"{fmt_ulps(core)} / {fmt_ulps(every)} ({at:.4g})" for core, every, at in m.values()]
        lines.append(f"| {name} | {direction} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BEGIN, END = "<!-- accuracy table: bench/accuracy.py --write -->", "<!-- end of accuracy table -->"


def parse_doc(text):
    """{(activation, direction, dtype): {implementation: (core bound, bound)}} from docs/accuracy.md."""
    body = text.split(BEGIN)[1].split(END)[0]
    out = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 + len(IMPLEMENTATIONS) or cells[0] in ("activation", "") or set(cells[0]) <= {"-"}:
            continue
        vals = [
            tuple(float(v) for v in re.match(r"(inf|[0-9.e+]+) / (inf|[0-9.e+]+)", c).groups())
            for c in cells[3:]
        ]
        out[tuple(cells[:3])] = dict(zip(IMPLEMENTATIONS, vals, strict=True))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="write the table into docs/accuracy.md")
    args = ap.parse_args()
    text = markdown(table())
    print(text)
    if args.write:
        doc = DOC.read_text()
        before, rest = doc.split(BEGIN)
        _, after = rest.split(END)
        DOC.write_text(before + BEGIN + "\n" + text + "\n" + END + after)
        print(f"written to {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
