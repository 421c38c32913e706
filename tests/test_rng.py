import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import CUDA, DEVICES

import fastreg.functional as FR
import fastreg.reference as R
from fastreg import _random


def test_philox_known_answers():
    # Random123's known-answer vectors for Philox4x32-10
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((2**32 - 1,) * 4, (2**32 - 1,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for ctr, key, expected in cases:
        out = _random.philox4x32_10(*(torch.tensor([c]) for c in ctr), *key)
        assert tuple(int(o) for o in out) == expected


def test_words_follow_the_documented_mapping():
    # element i <- counter {i/4 (64-bit), stream, 0}, word i % 4, key = seed
    seed = -0x123456789ABCDEF
    idx = torch.tensor([0, 1, 2, 3, 4, 2**33 + 5])
    words = _random.philox_words(seed, 7, idx)
    s = seed & (2**64 - 1)
    for i, w in zip(idx.tolist(), words.tolist(), strict=True):
        b = i // 4
        out = _random.philox4x32_10(
            torch.tensor([b & 0xFFFFFFFF]), torch.tensor([b >> 32]), torch.tensor([7]), torch.tensor([0]),
            s & 0xFFFFFFFF, s >> 32,
        )  # fmt: skip
        assert w == int(out[i % 4])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.37, 0.5, 0.9])
def test_kernel_keep_decisions_equal_reference(device, p):
    # The kernels' keep decisions at several thresholds are the reference's bits.
    x = torch.ones(4099, device=device)
    y = FR.dropout(x, p, seed=1234)
    expected = R.keep_mask(x, torch.tensor([1234]), p)
    assert torch.equal(y != 0, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_five_sigma(device, p):
    n = 1 << 22
    y = FR.dropout(torch.ones(n, device=device), p, seed=99)
    kept = (y != 0).sum().item()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sigma


def test_same_mask_at_every_thread_count():
    x = torch.randn(1 << 20)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = FR.dropout(x, 0.3, seed=5)
        torch.set_num_threads(2)
        two = FR.dropout(x, 0.3, seed=5)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_does_not_depend_on_dtype(device):
    x = torch.randn(1000, device=device)
    masks = [FR.dropout(x.to(dt), 0.4, seed=11) != 0 for dt in (torch.float32, torch.bfloat16, torch.float64)]
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("device", DEVICES)
def test_manual_seed_and_generator_reproduce(device):
    x = torch.randn(5000, device=device)
    torch.manual_seed(3)
    a = FR.dropout(x, 0.5)
    b = FR.dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(FR.dropout(x, 0.5), a)
    assert not torch.equal(a, b)  # successive calls draw new masks
    g1 = torch.Generator(device=device).manual_seed(8)
    g2 = torch.Generator(device=device).manual_seed(8)
    assert torch.equal(FR.dropout(x, 0.5, generator=g1), FR.dropout(x, 0.5, generator=g2))
    # the reference draws the same seed from the same generator state
    torch.manual_seed(4)
    ours = FR.dropout(x, 0.5)
    torch.manual_seed(4)
    assert torch.equal(ours, R.dropout(x, 0.5))


@pytest.mark.skipif(not CUDA, reason="CUDA not available")
def test_same_seed_same_masks_on_cpu_and_cuda():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 1001, dtype=dtype)
        xc = x.cuda()
        assert torch.equal(FR.dropout(xc, 0.3, seed=21).cpu(), FR.dropout(x, 0.3, seed=21))
        assert torch.equal(
            FR.alpha_dropout(xc, 0.3, True, seed=21).cpu(), FR.alpha_dropout(x, 0.3, True, seed=21)
        )
        assert torch.equal(FR.drop_path(xc, 0.5, True, seed=21).cpu(), FR.drop_path(x, 0.5, True, seed=21))
        mask_c = FR.bias_act_dropout(xc, None, "gelu", 0.3, seed=21) != 0
        mask = FR.bias_act_dropout(x, None, "gelu", 0.3, seed=21) != 0
        assert torch.equal(mask_c.cpu(), mask)


@pytest.mark.parametrize("isa", ["default", "avx2", "portable"])
def test_cpu_words_past_2_to_the_32_blocks(isa):
    """The CPU's word generator (16 blocks per AVX-512 pass, 12 per AVX2 pass) against
    the reference around the low counter word's wrap (block 2^32) and far beyond."""
    code = "\n".join(
        [
            "import torch, fastreg",
            "from fastreg import _random",
            "ops = torch.ops.fastreg",
            "bad = []",
            "for seed in (0, 12345, -7):",
            "    for first in (0, 4 * (2**32 - 40), 4 * (2**33 + 5), 4 * (2**40 - 3)):",
            "        ours = ops._philox_words(torch.tensor([seed]), 3, first, 1028)",
            "        ref = _random.philox_words(seed, 3, torch.arange(first, first + 1028))",
            "        if not torch.equal(ours, ref): bad.append((seed, first))",
            "print('BAD', bad, fastreg.build_info()['cpu_isa'])",
        ]
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    if isa != "default":
        env["FASTREG_CPU_ISA"] = isa
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "BAD []" in res.stdout, res.stdout + res.stderr[-2000:]
