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
STREAM_ELEMENT, STREAM_SAMPLE, STREAM_WEIGHT = 0, 1, 2  # csrc/philox.h kStream*


def seed_tensor(like, generator=None, seed=None, fn="op"):
    """The one-element int64 seed tensor of a random op, on like's device."""
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"fastreg.{fn}: seed must be an int or None, got {type(seed).__name__}")
        wrapped = (seed - INT64_MIN) % 2**64 + INT64_MIN  # any int, as 64 bits
        return torch.tensor([wrapped], dtype=torch.int64, device=like.device)
    return torch.randint(
        INT64_MIN, INT64_MAX, (1,), dtype=torch.int64, device=like.device, generator=generator
    )


def check_p(p, fn):
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"fastreg.{fn}: p must be a number, got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:  # NaN fails too
        raise ValueError(f"fastreg.{fn}: p (dropout probability) must be in [0, 1], got {p}")
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


def philox_words(seed, stream, index):
    """The random word (int64 in [0, 2^32)) of each element id in ``index``."""
    s = int(seed) & (2**64 - 1)
    block = index >> 2
    zeros = torch.zeros_like(block)
    out = philox4x32_10(block & _MASK, block >> 32, zeros + stream, zeros, s & _MASK, s >> 32)
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
