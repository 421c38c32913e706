"""Accuracy of every activation, forward and backward, in ulps of the result's dtype.

Measured against a float64 evaluation of the function (the table's exact form where its
formula cancels in a tail), on every finite float16 and bfloat16 value, and on a sample of
float32 and float64 values (uniform on [-12, 12], log-spaced magnitudes up to 1e30,
the edges where exp under- and overflows). Three implementations:

- fastreg's CPU kernels (the ops themselves);
- fastreg's CUDA math: the same functor code the CUDA kernels compile, evaluated on the
  CPU by fastreg._C._testing.eval_activation with the GPU's primitives replaced by their
  host counterparts (libdevice by the C library; the half types' SFU ex2/rcp by correctly
  rounded values): docs/accuracy.md says what that leaves out;
- torch's CPU kernels, for comparison.

An ulp is the spacing of the dtype at the exact value (the smallest subnormal's spacing
below the normal range). Backward is the gradient for an incoming gradient of 1, computed
from what each op saves (the output, the input or the 1-bit mask), against the exact
derivative at the input: for the ops that save their output, its rounding to the dtype is
part of the error (torch saves the output too).

    python bench/accuracy.py           prints the table
    python bench/accuracy.py --write   writes it into docs/accuracy.md
"""

import argparse
import math
import pathlib
import re
import sys

import torch

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


def _cases():
    """case name -> (row, arguments): every activation of the table at its default argument,
    and each variant (gelu_tanh)."""
    out = {}
    for row in fastreg._activations.TABLE.values():
        if row.variants:
            for v in row.variants:
                out[row.name if v == row.default else f"{row.name}_{v}"] = (row, (v,))
        else:
            out[row.name] = (row, () if row.param is None else (row.default,))
    return out


ACTIVATIONS = _cases()


# --- exact values --------------------------------------------------------------------------------


def exact_forward(name, x):
    """The activation in float64, by the row's exact form where its formula cancels in a tail."""
    row, args = ACTIVATIONS[name]
    return (row.exact or row.formula)(x.double(), *args)


def exact_backward(name, x):
    """The exact derivative at x, by autograd of the float64 evaluation."""
    t = x.double().detach().requires_grad_()
    (d,) = torch.autograd.grad(exact_forward(name, t).sum(), t)
    return d


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
    return sample(dtype, 1 << 18 if dtype == torch.float32 else 1 << 14)


# --- the three implementations ---------------------------------------------------------------


def fastreg_cpu(name, backward, x):
    """The kernels on x's device, backward from what the op saves."""
    row, args = ACTIVATIONS[name]
    op = getattr(ops, row.name)
    if not backward:
        return op(x, *args, False)[0] if row.saves == "mask" else op(x, *args)
    ones = torch.ones_like(x)
    grad = getattr(ops, row.name + "_backward")
    if row.saves == "mask":
        return grad(ones, op(x, *args, True)[1], *args)
    return grad(ones, op(x, *args) if row.saves == "output" else x, *args)


def fastreg_cuda(name, backward, x):
    """The CUDA kernels' functor code on the CPU (eval_activation), backward from what the op
    saves: for the output-saving ops, its forward rounded to x's dtype."""
    row, args = ACTIVATIONS[name]
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    param = args[0] if args and not row.variants else 1.0
    variant = args[0] if row.variants else "none"

    def run(bwd, v):
        return T.eval_activation(row.name, bwd, v.to(opmath), "cuda", x.dtype in HALF, param, variant).to(
            x.dtype
        )

    if not backward:
        return run(False, x)
    return run(True, run(False, x) if row.saves == "output" else x)


def torch_cpu(name, backward, x):
    """torch.nn.functional's function, backward by its own autograd formula."""
    row, args = ACTIVATIONS[name]
    kw = dict(zip([row.param] if row.param else [], args, strict=True))
    if not backward:
        return row.torch_function(x, **kw)
    t = x.detach().requires_grad_()
    (d,) = torch.autograd.grad(row.torch_function(t, **kw), t, torch.ones_like(t))
    return d


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
    """{implementation: (max ulps for |x| <= CORE, max ulps over all inputs, the input where
    that occurs)}."""
    x = inputs(dtype)
    exact = (exact_backward if backward else exact_forward)(name, x)
    in_core = x.abs() <= CORE
    out = {}
    for impl, fn in impls.items():
        if impl == "torch CPU" and dtype == torch.float64:  # the reference is torch's own float64
            out[impl] = None
            continue
        err = ulp_errors(fn(name, backward, x), exact, dtype)
        i = int(err.argmax())
        out[impl] = (float(err[in_core].max()), float(err[i]), float(x[i]))
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
        cells = [f"{fmt_ulps(v[0])} / {fmt_ulps(v[1])} ({v[2]:.4g})" if v else "–" for v in m.values()]
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
            if c != "–"
            else None
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
