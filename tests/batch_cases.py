"""The batch augmentation tests' shared inputs: image batches of every dtype and layout,
targets, and the mixer settings (mixup, cutmix, switching, cutmix_minmax)."""

import torch

IMAGE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8]


def images(shape, dtype, device, channels_last=False):
    x = torch.rand(shape) * 200 + 10  # never equal to the fills used below
    x = x.to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


MODES = ["batch", "pair", "elem"]
MIX_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def mix_inputs(B, device, dtype=torch.float32, channels_last=False, K=10, probs=False, shape=(3, 12, 14)):
    x = images((B,) + shape, dtype, device, channels_last)
    if probs:
        t = torch.softmax(torch.randn(B, K, device=device), -1).to(dtype)
    else:
        t = torch.randint(0, K, (B,), device=device)
    return x, t


MIXERS = {
    "mixup": dict(mixup_alpha=0.4, cutmix_alpha=0.0),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5),
    "minmax": dict(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8), prob=0.7),
}
