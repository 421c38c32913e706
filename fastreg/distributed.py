"""fastreg under torch.distributed: DTensor support for every op, and random draws that
do not depend on how a tensor is sharded or how many ranks share a batch.

A random fastreg op draws the word of element (or sample) ``i`` from ``(seed, i)`` only
(docs/randomness.md). A shard of a larger tensor therefore reproduces the whole tensor's
draws when its kernels know where its elements sit in the whole: a *positioned seed*
``[seed, base, seg_1, gap_1, ...]`` maps a shard's local index ``l`` to
``l + base + sum_j (l // seg_j) * gap_j`` (csrc/philox.h ``IndexMap``). This module makes
those seeds:

- for DTensors, by itself: importing ``torch.distributed.tensor`` (before or after
  fastreg) registers every op under ``torch.ops.fastreg`` with DTensor. Element-wise
  activations and PReLU go through ``register_sharding`` (the output keeps the input's
  placement); the random ops and the ops that save a bit mask go through a handler that
  runs the op on each local shard with its positioned seed, so the result on a DTensor
  with any placement equals, bit for bit, the op on the whole tensor with the same seed.
- for data parallelism (DDP, FSDP), by ``batch_offset``: inside it, fastreg's random ops
  on activations treat the local batch as rows ``[start, start + B)`` of the global one.

Every rank of a mesh (or of a DDP group, for ``batch_offset``) must draw the same seed:
seed the ranks alike (``torch.manual_seed(s)`` on each) or pass ``seed=``.
"""

import contextlib
import sys
import threading
import warnings

import torch

from . import _random

__all__ = ["batch_offset", "element_position", "positioned_seed", "sample_position"]


def row_major_strides(shape):
    """The strides of a contiguous tensor of ``shape`` (a dimension of size 0 counts as 1,
    as torch counts it)."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def element_position(global_shape, local_shape, offsets):
    """The position of a row-major shard in the whole row-major tensor: ``[base, seg_1,
    gap_1, ...]`` (a level per sharded dimension after the first), or None when the shard
    is the whole tensor.

    Args:
        global_shape: the whole tensor's shape.
        local_shape: the shard's shape.
        offsets: the shard's first index along each dimension.
    """
    n = len(global_shape)
    if tuple(local_shape) == tuple(global_shape):
        return None
    gstride, lstride = row_major_strides(global_shape), row_major_strides(local_shape)
    position = [sum(o * s for o, s in zip(offsets, gstride, strict=True))]
    for d in range(n - 1):  # l // lstride[d] counts whole rows of dim d + 1's shard
        missing = global_shape[d + 1] - local_shape[d + 1]
        if missing:
            position += [lstride[d], gstride[d + 1] * missing]
    if len(position) > 1 + 2 * _random.MAX_LEVELS:
        raise NotImplementedError(
            f"fastreg: a shard of more than {_random.MAX_LEVELS} dimensions after the first "
            f"(shape {tuple(local_shape)} of {tuple(global_shape)}) has no positioned seed"
        )
    return position


def sample_position(offset):
    """The position of a shard of samples (dim 0) starting at sample ``offset``, or None."""
    return [int(offset)] if offset else None


def positioned_seed(seed, position):
    """``seed`` (a one-element int64 tensor) with ``position`` appended, on its device: the
    seed tensor a shard's op takes. Made by fills, not a host-to-device copy, so it neither
    synchronizes nor breaks CUDA graph capture."""
    if position is None:
        return seed
    if seed.numel() != 1:
        raise ValueError("fastreg: the seed of a shard is already positioned")
    out = torch.empty(1 + len(position), dtype=torch.int64, device=seed.device)
    out[:1].copy_(seed.reshape(1))
    for i, value in enumerate(position):
        out[1 + i].fill_(value)
    return out


# --- data parallelism: the local batch as rows of the global one ----------------------------

_BATCH = threading.local()


@contextlib.contextmanager
def batch_offset(start):
    """Inside, fastreg's random ops on activations and images (dropout, alpha dropout,
    dropout_add, bias_act_dropout, drop path, Cutout, random erasing) draw for their input as
    rows ``[start, start + B)`` of a global batch along dim 0, so that DDP or FSDP ranks
    seeded alike draw, together, what one process draws for the whole batch, whatever the
    world size.

    DropConnect's weight mask is the same on every rank anyway; row-mode stochastic depth
    chooses from the local batch, and Mixup and CutMix pair the local batch's samples, as
    outside. Keep the backward pass inside too when it recomputes forwards (activation
    checkpointing): the recomputation draws its seed again.

    Example:
        >>> with fastreg.distributed.batch_offset(rank * local_batch):
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
    """
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"fastreg.distributed.batch_offset: start must be an int >= 0, got {start!r}")
    previous = getattr(_BATCH, "start", None)
    _BATCH.start = start
    try:
        yield
    finally:
        _BATCH.start = previous


def _batch_seed(seed, input, per_sample, fn):
    """The seed of a draw over ``input`` inside batch_offset (else ``seed`` itself)."""
    start = getattr(_BATCH, "start", None)
    if not start:
        return seed
    if input.dim() == 0:
        raise ValueError(f"fastreg.{fn}: inside batch_offset the input needs a batch dimension")
    if per_sample:
        return positioned_seed(seed, sample_position(start))
    rows = max(input.shape[0], 1)
    return positioned_seed(seed, [start * (input.numel() // rows)])


def batch_offset_active():
    return bool(getattr(_BATCH, "start", None))


# --- DTensor ------------------------------------------------------------------------------
# Registered when torch.distributed.tensor is imported (fastreg does not import it: it costs
# most of a second). The handlers and sharding rules live in fastreg/_dtensor.py.

DTENSOR = None  # torch.distributed.tensor.DTensor once fastreg is registered with it


def _register_dtensor():
    global DTENSOR
    if DTENSOR is not None:
        return
    from torch.distributed.tensor import DTensor

    from . import _dtensor

    _dtensor.register()
    DTENSOR = DTensor


class _AfterImport:
    """A meta path finder that registers fastreg with DTensor once
    ``torch.distributed.tensor`` has been imported."""

    name = "torch.distributed.tensor"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run(module):
            exec_module(module)
            _register_safely()

        spec.loader = _Loader(spec.loader, run)
        return spec


class _Loader:
    def __init__(self, loader, exec_module):
        self._loader, self.exec_module = loader, exec_module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _register_safely():
    """Registers; a failure warns rather than failing the import of torch.distributed.tensor
    (or of fastreg) that triggered it."""
    try:
        _register_dtensor()
    except Exception as exc:  # noqa: BLE001  (any failure: the imports must still succeed)
        warnings.warn(f"fastreg: its ops are not registered with DTensor ({exc!r})", stacklevel=2)


def _install():
    if "torch.distributed.tensor" in sys.modules:
        _register_safely()
    elif torch.distributed.is_available():
        sys.meta_path.insert(0, _AfterImport())
