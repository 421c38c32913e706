"""The CPU loops' instruction-set paths (portable, AVX2, AVX-512) and streamed stores give
the same bits, each run in a child process under FASTREG_CPU_ISA or a streaming threshold:
the activations, and the dropout family's half-type loads and stores."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_same_bits, child_tensors

import fastreg.functional as FR
import fastreg.reference as R

STREAM_BACKWARD_SCRIPT = """
import sys, torch, fastreg.functional as FR
from fastreg._activations import cases
calls = [lambda t, f=getattr(FR, row.name), kw=kw: f(t, **kw) for _, row, kw in cases()]
def bits(t):
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
out = []
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for n in (1, 15, 16, 17, 255, 256, 1000, 4099, 70001):
        base = (torch.randn(n + 1) * 3).to(dtype)
        g = torch.randn(n + 1).to(dtype)
        for x, gv in ((base[:n].clone(), g[:n]), (base[1:], g[1:])):  # the second pair unaligned
            x = x.detach().requires_grad_()
            for f in calls:
                out.append(bits(torch.autograd.grad(f(x), x, gv)[0]).clone())
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["default", "avx512", "avx2"])
def test_streaming_backward_gives_the_same_bits(isa, tmp_path):
    """The activations' backward loops write with non-temporal stores when the op's bytes
    reach the last-level cache; FASTREG_CPU_STREAM_MIN_BYTES=0 sends every call down that
    path, which must give the same bits as the ordinary stores, for every case of the table
    (those whose loops never stream are the control): every dtype, unaligned views, lengths
    that leave partial lines and buffers. Under the
    avx512 cap the half types take the generic rounding into the streamed buffer; under the
    avx2 cap the AVX2 path's streamed maps and mask loops."""
    cap = {} if isa == "default" else {"FASTREG_CPU_ISA": isa}
    ordinary = child_tensors(STREAM_BACKWARD_SCRIPT, tmp_path / "ordinary.pt", **cap)
    streamed = child_tensors(
        STREAM_BACKWARD_SCRIPT, tmp_path / "streamed.pt", FASTREG_CPU_STREAM_MIN_BYTES="0", **cap
    )
    assert_same_bits(streamed, ordinary)


MASK_PATHS_SCRIPT = """
import sys, torch, fastreg
ops = torch.ops.fastreg
specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 65504.0, -7e4])
out = []
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for n in (1, 7, 8, 31, 32, 33, 255, 257, 1000, 65536 + 13):
        x = torch.randn(n, generator=gen) * 3
        k = torch.randperm(n, generator=gen)[: max(1, n // 40)]
        x[k] = specials[torch.arange(k.numel()) % 9]
        g = torch.randn(n, generator=gen) * 2
        g[k[: k.numel() // 2]] = float("nan")
        x, g = x.to(dtype), g.to(dtype)
        for slope in (0.01, -2.5, 1e4):
            y, m = ops.leaky_relu(x, slope, True)
            out += [y, m, ops.leaky_relu_backward(g, m, slope), ops.leaky_relu(x, slope, False)[0]]
        y, m = ops.relu(x, True)
        out += [y, m, ops.relu_backward(g, m)]
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("path", ["default", "stream", "avx512", "avx2", "avx2-stream"])
def test_mask_loops_same_bits_on_every_cpu_path(path, tmp_path):
    """relu and leaky_relu with a 1-bit mask: outputs, mask bytes and gradients are bit for
    bit the portable loops' on every other CPU path (the mask-register loops of AVX-512 and
    the movemask loops of AVX2 for the half types, streamed backward stores, the avx512 and
    avx2 caps), through NaN, infinities, signed zeros, denormals and float16 overflow, for
    lengths that leave partial mask bytes, 32-element blocks and tasks."""
    portable = child_tensors(MASK_PATHS_SCRIPT, tmp_path / "portable.pt", FASTREG_CPU_ISA="portable")
    stream = {"FASTREG_CPU_STREAM_MIN_BYTES": "0"}
    env = {"stream": stream, "default": {}, "avx2-stream": {**stream, "FASTREG_CPU_ISA": "avx2"}}.get(
        path, {"FASTREG_CPU_ISA": path}
    )
    assert_same_bits(child_tensors(MASK_PATHS_SCRIPT, tmp_path / f"{path}.pt", **env), portable)


MAP_PATHS_SCRIPT = """
import sys, torch, fastreg, fastreg.functional as FR
specials = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 65504.0, -7e4, 1e-6, 88.0])
from fastreg._activations import cases
calls = [lambda t, f=getattr(FR, row.name), kw=kw: f(t, **kw) for _, row, kw in cases()]
out = []
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for n in (1, 15, 16, 31, 33, 1000, 65536 + 13):
        x = torch.randn(2, 3, n, generator=gen) * 4
        k = torch.randperm(x.numel(), generator=gen)[: max(1, x.numel() // 40)]
        x.view(-1)[k] = specials[torch.arange(k.numel()) % specials.numel()]
        x = x.to(dtype).requires_grad_()
        g = (torch.randn(2, 3, n, generator=gen) * 2).to(dtype)
        w = (torch.rand(3, generator=gen) - 0.3).to(dtype).requires_grad_()
        for f in calls:
            with torch.no_grad():
                out.append(f(x))
            out += torch.autograd.grad(f(x), x, g)
        out += [FR.prelu(x.detach(), w.detach()), *torch.autograd.grad(FR.prelu(x, w), (x, w), g)]
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_activation_maps_same_bits_on_every_cpu_path(isa, tmp_path):
    """Every activation's forward and backward, and PReLU's with its weight gradient, give the
    portable loops' bits on the AVX2 and AVX-512 paths (one-pass conversions of the 2-byte
    types by instruction, map_avx2 / map_avx512, PReLU's AVX2 backward row), through
    infinities, signed zeros, denormals and float16 overflow, for lengths that leave partial
    vectors, 32-element blocks and tasks."""
    portable = child_tensors(MAP_PATHS_SCRIPT, tmp_path / "portable.pt", FASTREG_CPU_ISA="portable")
    assert_same_bits(child_tensors(MAP_PATHS_SCRIPT, tmp_path / f"{isa}.pt", FASTREG_CPU_ISA=isa), portable)


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_other_cpu_instruction_sets(isa):
    # The CPU loops are compiled for AVX-512, AVX2 and a portable path (and use
    # AVX512_BF16's conversion where the CPU has it); the machine runs the best
    # one, so the others are checked in a child process.
    code = f"""
import torch, fastreg, fastreg.functional as FR, fastreg.reference as R
import torch.nn.functional as F
from fastreg._activations import cases
order = ["portable", "avx2", "avx512", "avx512bf16"]  # a cap never raises the level
assert order.index(fastreg.build_info()["cpu_isa"]) <= order.index({isa!r}), fastreg.build_info()
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    x = (torch.randn(3, 1001) * 3).to(dtype).requires_grad_()
    g = torch.randn(3, 1001).to(dtype)
    for _, row, kw in cases():
        fr, tf = getattr(FR, row.name), row.torch_function
        torch.testing.assert_close(fr(x, **kw), tf(x, **kw))
        if dtype in (torch.float32, torch.float64):
            ours = torch.autograd.grad(fr(x, **kw), x, g)[0]
            theirs = torch.autograd.grad(tf(x, **kw), x, g)[0]
            torch.testing.assert_close(ours, theirs)
    w = torch.rand(1001).to(dtype)
    torch.testing.assert_close(FR.prelu(x.view(3, 1001, 1), w), F.prelu(x.view(3, 1001, 1), w))
    for p in (0.2, 0.7):
        assert torch.equal(FR.dropout(x, p, seed=3), R.dropout(x, p, seed=3))
        b = torch.randn(1001).to(dtype)
        ours = FR.bias_act_dropout(x, b, "relu", p, seed=4)
        assert torch.equal(ours, R.bias_act_dropout(x, b, "relu", p, seed=4))
print("ISA OK")
"""
    env = dict(os.environ, FASTREG_CPU_ISA=isa, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "ISA OK" in res.stdout, res.stderr[-3000:]


# Run in this process and in children capped to other CPU instruction sets: the
# bfloat16 results of the dropout family and the activations, as raw bits, on values where a
# conversion to bfloat16 can go wrong (NaN, infinities, signed zeros, float32
# denormals, sums that overflow or land exactly halfway between two bfloat16s),
# over lengths that leave vector tails.
EDGE_SCRIPT = """
import sys, torch, fastreg, fastreg.functional as FR
from fastreg._activations import cases
def edge_inputs(dtype):
    tiny = torch.finfo(torch.float32).tiny
    vals = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-39, -1e-39, 3e-39, tiny,
            -tiny, 2.0**-9, 3.0 * 2.0**-9, 1.0, -1.0, 3.3e38, -3.3e38, 1.5, 2.0**-140]
    res = [1.0, 1.0 + 2.0**-7, -tiny, tiny / 2, 3.3e38, 0.0, -0.0, 1.0, 2.0, float("nan"), 5.0,
           -1.0, 1e-39, 1.0, -3.3e38, 0.0, -1e-39, 7.0]
    if dtype == torch.float16:  # its overflow, subnormals and ties
        vals += [65504.0, -65504.0, 40000.0, 2.0**-24, -2.0**-24, 3.0 * 2.0**-25, 2.0**-14, 1.0 + 2.0**-10]
        res += [32.0, 2.0**-25, -2.0**-25, 2.0**-11, 65504.0, 30000.0, -2.0**-24, 1.0]
    # the first 160 elements without NaN: a NaN sends its whole vector to the generic rounding
    def fill(v, n):
        return v * (n // len(v) + 1)
    x = torch.tensor(fill(vals[1:], 160)[:160] + fill(vals, 133)[:133]).to(dtype)
    r = torch.tensor(fill([v for v in res if v == v], 160)[:160] + fill(res, 133)[:133]).to(dtype)
    if dtype == torch.float16:  # NaNs with payloads (c10 rounds any NaN to 0x7e00 and the sign)
        nans = torch.tensor([0x7D00, 0x7C01, -0x0300, 0x7C40], dtype=torch.int16)
        x.view(torch.int16)[[170, 201, 230, 289]] = nans
    return x, r
x, r = edge_inputs(getattr(torch, sys.argv[2]))
out = {}
for p in (0.0, 0.5, 1.0):
    out[f"dropout{p}"] = FR.dropout(x, p, seed=11)
    out[f"dropout_add{p}"] = FR.dropout_add(x, r, p, seed=11)
    out[f"dropout_add_rx{p}"] = FR.dropout_add(r, x, p, seed=11)
    for act in ("relu", "gelu"):
        xx = x.reshape(1, -1).clone().requires_grad_()
        b = r[: xx.shape[1]].clone().requires_grad_()
        y = FR.bias_act_dropout(xx, b, act, p, seed=11)
        gx, gb = torch.autograd.grad(y, (xx, b), r.reshape(1, -1))
        out[f"{act}{p}"], out[f"{act}_gx{p}"] = y, gx
for name, row, kw in cases():
    xx = x.clone().requires_grad_()
    y = getattr(FR, row.name)(xx, **kw)
    (gx,) = torch.autograd.grad(y, xx, r)
    with torch.no_grad():
        plain = getattr(FR, row.name)(x, **kw)
    out[name], out[name + "_gx"], out[name + "_nograd"] = y, gx, plain
out["prelu"] = FR.prelu(x[:288].view(2, 4, 36), r[:4])
torch.save({k: v.view(torch.int16) for k, v in out.items()}, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_types_identical_on_every_cpu_path(dtype, isa, tmp_path):
    """The bfloat16 and float16 loads and stores of the dropout family and the activations
    convert as c10 does on every CPU path: bfloat16 by AVX512_BF16's VCVTNE2PS2BF16 (where
    the CPU has it; it flushes float32 denormals and keeps NaN payloads, so those vectors
    take the generic rounding), float16 by AVX-512F's VCVTPH2PS/VCVTPS2PH or F16C's 8-lane
    forms on the AVX2 path (NaN payloads likewise), and the generic loops (portable). Raw bits, edge values
    (overflow, subnormals, ties), vector tails. A float16 NaN's sign is left out: c10 keeps
    the float's sign there, and which operand's NaN an x86 instruction passes on (IEEE leaves
    the sign of a NaN result unspecified) differs between the paths' codegen."""
    default = child_tensors(EDGE_SCRIPT, tmp_path / "default.pt", dtype)
    capped = child_tensors(EDGE_SCRIPT, tmp_path / f"{isa}.pt", dtype, FASTREG_CPU_ISA=isa)

    def nan_sign_cleared(b):  # float16 only: bfloat16 NaNs (c10: 0x7fc0) have no sign
        return torch.where((b & 0x7FFF) > 0x7C00, b & 0x7FFF, b) if dtype == "float16" else b

    for key, bits in default.items():
        assert torch.equal(nan_sign_cleared(bits), nan_sign_cleared(capped[key])), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_type_edge_values_match_reference(dtype):
    """The same edge values against fastreg.reference: bit for bit except NaN payloads
    (torch's own vectorized and scalar roundings give different NaN bits)."""
    namespace = {}
    exec(EDGE_SCRIPT.split("x, r = edge_inputs(")[0], namespace)
    x, r = namespace["edge_inputs"](dtype)
    for p in (0.0, 0.5, 1.0):
        for ours, ref in (
            (FR.dropout(x, p, seed=11), R.dropout(x, p, seed=11)),
            (FR.dropout_add(x, r, p, seed=11), R.dropout_add(x, r, p, seed=11)),
            (FR.dropout_add(r, x, p, seed=11), R.dropout_add(r, x, p, seed=11)),
        ):
            nan = torch.isnan(ref)
            assert torch.equal(torch.isnan(ours), nan), p
            assert torch.equal(ours.view(torch.int16)[~nan], ref.view(torch.int16)[~nan]), p
    assert torch.isnan(x).any() and (x.float().abs() < torch.finfo(torch.float32).tiny).any()


def test_streaming_store_path_gives_the_same_bits():
    """Plain and residual dropout stream their output (non-temporal stores) when the op's
    bytes exceed the last-level cache; FASTREG_CPU_STREAM_MIN_BYTES=0 sends every call down
    that path. Forward and backward bit for bit against the reference, float32 and bfloat16,
    unaligned input views and lengths that leave vector tails."""
    code = """
import torch, fastreg.functional as FR, fastreg.reference as R
def bits(t):
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)
for dtype in (torch.float32, torch.bfloat16):
    for n in (1, 15, 16, 17, 255, 256, 1000, 4099, 70001):
        base = torch.randn(n + 1).to(dtype)
        r = torch.randn(n).to(dtype)
        g = torch.randn(n).to(dtype)
        for x in (base[:n].clone().requires_grad_(), base[1:]):  # the second one unaligned
            for p in (0.0001, 0.3, 1.0):
                for f in (lambda m, t: m.dropout(t, p, seed=9), lambda m, t: m.dropout_add(t, r, p, seed=9)):
                    y, want = f(FR, x), f(R, x)
                    assert torch.equal(bits(y), bits(want)), (dtype, n, p)
                    if x.requires_grad:
                        gx, gx_ref = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(want, x, g)[0]
                        assert torch.equal(bits(gx), bits(gx_ref)), (dtype, n, p)
print("STREAM OK")
"""
    env = dict(
        os.environ, FASTREG_CPU_STREAM_MIN_BYTES="0", PYTHONPATH=os.pathsep.join(p for p in sys.path if p)
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "STREAM OK" in res.stdout, res.stderr[-3000:]
