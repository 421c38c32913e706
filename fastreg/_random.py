"""Seeds for fastreg's random ops, and Philox4x32-10 in plain torch integer ops.

Every random op takes an int64 seed *tensor* on the input's device, drawn by a
torch RNG call (so torch.manual_seed and torch.Generator govern fastreg as they
govern torch, nothing is read back to the host, and CUDA-graph replays draw a
fresh seed). ``csrc/philox.h`` documents how a seed and an element index map to
random bits; ``philox_words`` below is the same function, used by
``fastreg.reference`` to reproduce the kernels bit for bit.
"""

import torch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
STREAM_ELEMENT, STREAM_SAMPLE, STREAM_SUBSET, STREAM_BOX = 0, 1, 2, 3  # csrc/philox.h kStream*


def check_seed(seed, fn):
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"fastreg.{fn}: seed must be an int or None, got {type(seed).__name__}")


def seed_tensor(like, generator=None, seed=None, fn="op"):
    """The one-element int64 seed tensor of a random op, on like's device."""
    if seed is not None:
        check_seed(seed, fn)
        wrapped = (seed - INT64_MIN) % 2**64 + INT64_MIN  # any int, as 64 bits
        # a fill on the device, the value a kernel argument: no host-to-device copy
        # (torch.tensor(..., device=cuda) synchronizes the stream on every call), and a
        # captured CUDA graph keeps the constant
        return torch.full((1,), wrapped, dtype=torch.int64, device=like.device)
    return torch.randint(
        INT64_MIN, INT64_MAX, (1,), dtype=torch.int64, device=like.device, generator=generator
    )


def check_p(p, fn, arg="p"):
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"fastreg.{fn}: {arg} must be a number, got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:  # NaN fails too
        raise ValueError(f"fastreg.{fn}: {arg} (a probability) must be in [0, 1], got {p}")
    return float(p)


def keep_threshold(p):
    """round(p * 2^32), computed as csrc/philox.h's keep_threshold does."""
    return int(p * 4294967296.0 + 0.5)


_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def _mulhilo(a, m):
    """(hi, lo) 32-bit halves of a * m for a in [0, 2^32) (int64 tensor), m a 32-bit int,
    without overflowing int64: m is split into 16-bit halves."""
    p0 = a * (m & 0xFFFF)
    p1 = a * (m >> 16)
    lo = (p0 + ((p1 & 0xFFFF) << 16)) & _MASK
    hi = ((p0 >> 16) + p1) >> 16
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors holding 32-bit counters; k0, k1 are ints."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def _keys(seed):
    """Philox's two 32-bit key words of a seed: an int, or an int64 seed tensor, which
    stays a tensor (no .item(): no host sync, and vmap(randomness='different') can batch it)."""
    if isinstance(seed, torch.Tensor):
        k = seed.reshape(()) if seed.numel() == 1 else seed[..., 0]
        return k & _MASK, (k >> 32) & _MASK  # two's complement: the low and high words
    k = int(seed) & (2**64 - 1)
    return k & _MASK, k >> 32


MAX_LEVELS = 4  # csrc/philox.h kMaxLevels


def check_seed_tensor(seed, fn):
    """The kernels' seed check (csrc/dropout_ops.h check_seed), for the Python-level kernels."""
    n = seed.numel()
    if seed.dtype != torch.int64 or not (
        n == 1 or (n % 2 == 0 and 2 <= n <= 2 + 2 * MAX_LEVELS and seed.dim() == 1 and seed.is_contiguous())
    ):
        raise TypeError(
            f"fastreg.{fn}: seed must be a one-element int64 tensor (or a positioned seed of a "
            f"shard: 1-D, contiguous, 2 + 2m elements, m <= {MAX_LEVELS})"
        )


def global_index(seed, index):
    """csrc/philox.h IndexMap: a shard's local draw index -> the index in the whole tensor,
    for a positioned seed [seed, base, seg_1, gap_1, ...]; the identity for one element."""
    if not isinstance(seed, torch.Tensor) or seed.numel() == 1:
        return index
    out = index + seed[1]
    for j in range(2, seed.numel(), 2):
        seg, gap = seed[j], seed[j + 1]
        out = out + torch.where(seg > 0, index // seg.clamp(min=1) * gap, 0)
    return out


def philox_words(seed, stream, index):
    """The random word (int64 in [0, 2^32)) of each element id in ``index`` (a shard's local
    ids, mapped to the whole tensor's, for a positioned seed)."""
    index = global_index(seed, index)
    k0, k1 = _keys(seed)
    block = index >> 2
    zeros = torch.zeros_like(block)
    out = philox4x32_10(block & _MASK, block >> 32, zeros + stream, zeros, k0, k1)
    return torch.stack(out, -1).gather(-1, (index & 3).unsqueeze(-1)).squeeze(-1)


def memory_index(t):
    """For each element of t, its position in the dense memory order the kernels walk
    (t's own order when t is dense, else the order empty_like(t) gives)."""
    dense = torch.empty_like(t)
    n = t.numel()
    return (
        torch.arange(n, device=t.device).as_strided(t.shape, dense.stride())
        if n
        else torch.zeros(t.shape, dtype=torch.int64, device=t.device)
    )


# --- per-sample draws, bit for bit as csrc/sampling.h computes them -----------------------
# Every step is one float32 operation rounded on its own, in the same order as the C++.


def sqrt_rn(x):
    """Correctly rounded float32 sqrt (torch's CPU sqrt is not: it is off by an ulp for
    about one value in six). From the float64 root, the two float32 neighbours
    around it are split at their midpoint, squared exactly in float64."""
    xd = x.double()
    y = torch.sqrt(xd).float()
    lo = torch.where(y.double() * y.double() <= xd, y, torch.nextafter(y, torch.zeros_like(y)))
    hi = torch.nextafter(lo, torch.full_like(lo, float("inf")))
    mid = (lo.double() + hi.double()) * 0.5
    return torch.where(mid * mid < xd, hi, lo)


def _u01(words):
    """csrc/sampling.h uniform(): the top 24 bits of a word, centred, in (0, 1)."""
    return (words >> 8).to(torch.float32) * 5.9604644775390625e-08 + 2.98023223876953125e-08


def dlog(x):
    """csrc/sampling.h dlog() on a float32 tensor of normal positive values."""
    u = x.view(torch.int32).to(torch.int64) & _MASK
    e = ((u >> 23) & 0xFF) - 127
    m = ((u & 0x007FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    big = m > 1.4142135381698608
    m = torch.where(big, m * 0.5, m)
    e = e + big.to(torch.int64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = torch.full_like(s, 0.1111111119389534)
    for c in (0.1428571492433548, 0.20000000298023224, 0.3333333432674408, 1.0):
        p = p * s2 + c
    log_m = (s * 2.0) * p
    ef = e.to(torch.float32)
    return (ef * 0.693145751953125 + ef * 1.428606765330187e-06) + log_m


def dexp(x):
    """csrc/sampling.h dexp() on a float32 tensor."""
    x = x.clamp(-87.0, 88.0)
    n = torch.round(x * 1.4426950216293335)  # half to even, as rintf
    r = (x - n * 0.693145751953125) - n * 1.428606765330187e-06
    p = torch.full_like(r, 0.00019841270113829523)
    for c in (
        0.0013888889225199819,
        0.008333333767950535,
        0.0416666679084301,
        0.1666666716337204,
        0.5,
        1.0,
        1.0,
    ):
        p = p * r + c
    ni = n.to(torch.int32)
    half = torch.div(ni, 2, rounding_mode="trunc")
    s1 = ((half + 127) << 23).view(torch.float32)
    s2 = ((ni - half + 127) << 23).view(torch.float32)
    return (p * s1) * s2


MAX_ATTEMPTS = 64


def gamma_samples(seed, stream, n, shape, device="cpu"):
    """n draws of Gamma(shape, 1), sample i as csrc/sampling.h gamma(key, stream, i, shape)."""
    k0, k1 = _keys(seed)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    shape = f32(shape)
    boost = bool(shape < 1.0)
    a = shape + 1.0 if boost else shape
    d = a - 0.3333333432674408
    c = 1.0 / sqrt_rn(d * 9.0)
    idx = torch.arange(n, device=device, dtype=torch.int64)
    zeros = torch.zeros_like(idx)
    result = torch.zeros(n, dtype=torch.float32, device=device) + d
    done = torch.zeros(n, dtype=torch.bool, device=device)
    boost_u = torch.full((n,), 0.5, dtype=torch.float32, device=device)
    for attempt in range(MAX_ATTEMPTS):
        w0, w1, w2, w3 = philox4x32_10(idx & _MASK, zeros + attempt, zeros + stream, zeros, k0, k1)
        if attempt == 0:
            boost_u = _u01(w3)
        v1 = _u01(w0) * 2.0 - 1.0
        v2 = _u01(w1) * 2.0 - 1.0
        sq = v1 * v1 + v2 * v2
        ok = sq < 1.0
        x = v1 * sqrt_rn((dlog(sq) * -2.0) / sq)
        t = c * x + 1.0
        ok = ok & (t > 0.0)
        v = (t * t) * t
        ok = ok & (v > 1e-30)
        bound = (((x * 0.5) * x + d) - d * v) + d * dlog(torch.where(ok, v, torch.ones_like(v)))
        accept = ok & (dlog(_u01(w2)) < bound) & ~done
        result = torch.where(accept, d * v, result)
        done = done | accept  # out of place, here and below: vmap may batch the seed's words
        if not torch._C._functorch.is_batchedtensor(done) and bool(done.all()):
            break
    if boost:
        result = result * dexp(dlog(boost_u) / shape)
    return result


def beta_samples(seed, stream, n, a, b, device="cpu"):
    """n float64 draws of Beta(a, b) = X / (X + Y), X ~ Gamma(a) on stream, Y ~ Gamma(b) on stream + 1."""
    x = gamma_samples(seed, stream, n, a, device).double()  # the ratio in float64, as the C++
    y = gamma_samples(seed, stream + 1, n, b, device).double()
    total = x + y
    return torch.where(total > 0, x / torch.where(total > 0, total, torch.ones_like(total)), 0.5)


def cutout_boxes(seed, n, H, W, size, p, device="cpu"):
    """csrc/sampling.h cutout_box() for samples 0..n-1 (first..first+n-1 for a seed [seed, first]):
    (apply, y0, y1, x0, x1) int64 tensors."""
    k0, k1 = _keys(seed)
    idx = global_index(seed, torch.arange(n, device=device, dtype=torch.int64))
    zeros = torch.zeros_like(idx)
    w0, w1, w2, _ = philox4x32_10(idx & _MASK, zeros, zeros + STREAM_BOX, zeros, k0, k1)
    apply = w0 < keep_threshold(p)
    cy, cx = (w1 * H) >> 32, (w2 * W) >> 32
    top, left = cy - size // 2, cx - size // 2
    return apply, top.clamp(min=0), (top + size).clamp(max=H), left.clamp(min=0), (left + size).clamp(max=W)


STREAM_ERASE, STREAM_ERASE_VALUE, STREAM_MIX = 4, 5, 6
STREAM_MIXUP_BETA, STREAM_CUTMIX_BETA = 8, 10
ERASE_ATTEMPTS = 10


def _f32(v):
    """v rounded to float32, as a Python float (the C++ static_cast<float>)."""
    return float(torch.tensor(v, dtype=torch.float64).float())


def erase_boxes(seed, n, H, W, p, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi, device="cpu"):
    """csrc/sampling.h erase_box() for samples 0..n-1 (first..first+n-1 for a seed [seed, first]):
    (apply, y0, y1, x0, x1) int64 tensors."""
    k0, k1 = _keys(seed)
    idx = global_index(seed, torch.arange(n, device=device, dtype=torch.int64))
    zeros = torch.zeros_like(idx)
    coin = philox4x32_10(idx & _MASK, zeros, zeros + STREAM_ERASE, zeros, k0, k1)[0]
    apply = coin < keep_threshold(p)
    area = _f32(H * W)
    s_lo, s_span = _f32(scale_lo), _f32(scale_hi - scale_lo)
    r_lo, r_span = _f32(log_ratio_lo), _f32(log_ratio_hi - log_ratio_lo)
    found = torch.zeros(n, dtype=torch.bool, device=device)
    y0 = torch.zeros_like(idx)
    x0 = torch.zeros_like(idx)
    hh = torch.zeros_like(idx)
    ww = torch.zeros_like(idx)
    for attempt in range(ERASE_ATTEMPTS):
        w0, w1, w2, w3 = philox4x32_10(idx & _MASK, zeros + 1 + attempt, zeros + STREAM_ERASE, zeros, k0, k1)
        target = (_u01(w0) * s_span + s_lo) * area
        aspect = dexp(_u01(w1) * r_span + r_lo)
        h = torch.round(sqrt_rn(target * aspect)).to(torch.int64)
        w = torch.round(sqrt_rn(target / aspect)).to(torch.int64)
        take = (h < H) & (w < W) & ~found
        y0 = torch.where(take, (w2 * (H - h + 1)) >> 32, y0)
        x0 = torch.where(take, (w3 * (W - w + 1)) >> 32, x0)
        hh = torch.where(take, h, hh)
        ww = torch.where(take, w, ww)
        found = found | take
    return apply & found, y0, y0 + hh, x0, x0 + ww


def _sincos_2pi(u):
    """csrc/sampling.h sincos_2pi() on a float32 tensor."""
    q = torch.round(u * 4.0)
    x = (u - q * 0.25) * 6.2831854820251465
    x2 = x * x
    ps = torch.full_like(x, 2.7557318844628753e-06)
    ps = ps * x2 - 0.00019841270113829523
    ps = ps * x2 + 0.008333333767950535
    ps = ps * x2 - 0.1666666716337204
    ps = ps * x2 + 1.0
    sx = x * ps
    pc = torch.full_like(x, 2.4801587642286904e-05)
    pc = pc * x2 - 0.0013888889225199819
    pc = pc * x2 + 0.0416666679084301
    pc = pc * x2 - 0.5
    cx = pc * x2 + 1.0
    quad = q.to(torch.int64) & 3
    s = torch.where(quad == 0, sx, torch.where(quad == 1, cx, torch.where(quad == 2, -sx, -cx)))
    c = torch.where(quad == 0, cx, torch.where(quad == 1, -sx, torch.where(quad == 2, -cx, sx)))
    return s, c


def normals(seed, stream, index):
    """csrc/sampling.h normal_at() for each element id in ``index`` (float32 tensor)."""
    k0, k1 = _keys(seed)
    block = index >> 2
    zeros = torch.zeros_like(block)
    w = philox4x32_10(block & _MASK, block >> 32, zeros + stream, zeros, k0, k1)
    j = index & 3
    first = j < 2
    w_r = torch.where(first, w[0], w[2])
    w_t = torch.where(first, w[1], w[3])
    r = sqrt_rn(dlog(_u01(w_r)) * -2.0)
    sn, cs = _sincos_2pi(_u01(w_t))
    return r * torch.where((j & 1) == 1, sn, cs)


def _floor_sqrt(q):
    """Largest int64 c >= 0 with c * c <= q (float64 tensor), as csrc/sampling.h floor_sqrt."""
    c = torch.sqrt(q).to(torch.int64)
    for _ in range(2):
        c = torch.where((c > 0) & (c.double() * c.double() > q), c - 1, c)
    for _ in range(2):
        c = torch.where((c + 1).double() * (c + 1).double() <= q, c + 1, c)
    return c


def mix_key_index(mode, B, device="cpu"):
    """csrc/sampling.h mix_key_index() for i in 0..B-1 (mode 0 batch, 1 pair, 2 elem)."""
    i = torch.arange(B, device=device, dtype=torch.int64)
    if mode == 0:
        return torch.zeros_like(i)
    return torch.minimum(i, B - 1 - i) if mode == 1 else i


KIND_NONE, KIND_BLEND, KIND_CUT = 0, 1, 2
# the mode codes of fastreg::mix (csrc/sampling.h mix_key_index)
MIX_MODES = {"batch": 0, "pair": 1, "elem": 2}


def mix_draws(
    seed,
    B,
    H,
    W,
    mode,
    mixup_alpha,
    cutmix_alpha,
    cutmix_minmax,
    prob,
    switch_prob,
    correct_lam,
    device="cpu",
):
    """csrc/sampling.h mix_draw() of every sample: (lam, lam_target, kind, y0, y1, x0, x1)."""
    k0, k1 = _keys(seed)
    keys = mix_key_index(mode, B, device)
    n = int(keys.max()) + 1 if B else 0
    k = torch.arange(n, device=device, dtype=torch.int64)
    zeros = torch.zeros_like(k)
    w0, w1, w2, w3 = philox4x32_10(k, zeros, zeros + STREAM_MIX, zeros, k0, k1)
    apply = w0 < keep_threshold(prob)
    mix_a, cut_a = _f32(mixup_alpha), _f32(cutmix_alpha)
    if mix_a > 0 and cut_a > 0:
        cut = w1 < keep_threshold(switch_prob)
    else:
        cut = torch.full_like(apply, not mix_a > 0)
    lam_mix = beta_samples(seed, STREAM_MIXUP_BETA, n, mix_a, mix_a, device) if mix_a > 0 else None
    lam_cut = beta_samples(seed, STREAM_CUTMIX_BETA, n, cut_a, cut_a, device) if cut_a > 0 else None
    lam = lam_cut if lam_mix is None else (lam_mix if lam_cut is None else torch.where(cut, lam_cut, lam_mix))
    active = apply & (lam != 1.0)
    kind = torch.where(active, torch.where(cut, KIND_CUT, KIND_BLEND), KIND_NONE)
    lam = torch.where(active, lam, 1.0)
    if cutmix_minmax is not None:
        min_h, min_w = int(H * cutmix_minmax[0]), int(W * cutmix_minmax[0])
        span_h, span_w = int(H * cutmix_minmax[1]) - min_h, int(W * cutmix_minmax[1]) - min_w
        v0, v1, v2, v3 = philox4x32_10(k, zeros + 1, zeros + STREAM_MIX, zeros, k0, k1)
        ch = min_h + ((v0 * span_h) >> 32)
        cw = min_w + ((v1 * span_w) >> 32)
        y0 = (v2 * (H - ch + 1)) >> 32
        x0 = (v3 * (W - cw + 1)) >> 32
        y1, x1 = y0 + ch, x0 + cw
    else:
        rest = 1.0 - lam
        ch = _floor_sqrt(float(H * H) * rest)
        cw = _floor_sqrt(float(W * W) * rest)
        cy, cx = (w2 * H) >> 32, (w3 * W) >> 32
        y0 = (cy - ch // 2).clamp(0, H)
        y1 = (cy + (ch + 1) // 2).clamp(0, H)
        x0 = (cx - cw // 2).clamp(0, W)
        x1 = (cx + (cw + 1) // 2).clamp(0, W)
    is_cut = kind == KIND_CUT
    y0, y1, x0, x1 = (torch.where(is_cut, v, 0) for v in (y0, y1, x0, x1))
    lam_target = lam
    if correct_lam or cutmix_minmax is not None:
        area = ((y1 - y0) * (x1 - x0)).double()
        # a tensor divisor: CUDA divides by a Python scalar as a multiply by its reciprocal,
        # which is not the correctly rounded quotient the kernels compute
        lam_target = torch.where(is_cut, 1.0 - area / torch.full_like(area, float(H * W)), lam)
    return tuple(v[keys] for v in (lam, lam_target, kind, y0, y1, x0, x1))


# --- stochastic depth that skips the dropped samples ----------------------------------------

STOCHASTIC_DEPTH_MODES = ("row", "batch")


def keep_count(batch, p):
    """Row-mode stochastic depth: how many of ``batch`` samples run the branch,
    max(1, round(batch * (1 - p))) (Python's round: half to even)."""
    return max(1, round(batch * (1.0 - p)))


def subset_indices(seed, batch, keep, device="cpu"):
    """csrc/dropout_ops.h stochastic_depth_subset: the samples ranked by their word on
    STREAM_SUBSET (ties by index), the first ``keep``, ascending."""
    words = philox_words(seed, STREAM_SUBSET, torch.arange(batch, device=device))
    order = torch.sort(words, stable=True).indices
    return torch.sort(order[:keep]).values


def batch_skips(p, generator, seed, fn):
    """Batch-mode stochastic depth's one draw, on the host: whether the branch is skipped.
    With ``seed``: the word of sample 0 on STREAM_SAMPLE (so it skips exactly when
    drop_path with that seed drops sample 0), computed in Python integers; else a 32-bit
    word from ``generator`` (a CPU generator; default torch's). Skipped when the word is
    below round(p * 2^32), as every fastreg keep decision."""
    if seed is not None:
        check_seed(seed, fn)
        k0, k1 = _keys(seed)
        word = philox4x32_10(0, 0, STREAM_SAMPLE, 0, k0, k1)[0]
    else:
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"fastreg.{fn}: mode='batch' draws on the host: generator must be a CPU generator, "
                f"got one on {generator.device}"
            )
        word = int(torch.randint(0, 2**32, (), generator=generator))
    return word < keep_threshold(p)
