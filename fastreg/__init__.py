"""fastreg: fused C++/CUDA kernels for activations, dropout and batch augmentations.

``import fastreg.functional as FR`` mirrors ``torch.nn.functional``;
``fastreg.nn`` mirrors ``torch.nn``; ``fastreg.reference`` is the plain-torch
specification every op is tested against.
"""

import torch  # noqa: F401  (loads libc10/libtorch before the extension)

try:
    from . import _C
except ImportError as exc:  # no silent fallback to plain torch
    raise ImportError(
        "fastreg's compiled extension fastreg._C is not built or does not load "
        f"({exc}). Build it from the repository root with `make build` "
        "(or `pip install --no-build-isolation -e .` in an environment that has torch)."
    ) from exc

from . import (  # noqa: E402
    _autograd,  # noqa: E402,F401  (fake kernels and autograd formulas)
    distributed,
    functional,
    nn,
    reference,
)
from .convert import convert, unconvert  # noqa: E402

distributed._install()  # DTensor support, once torch.distributed.tensor is imported
__version__ = _C.build_info()["version"]
build_info = _C.build_info

__all__ = ["functional", "nn", "reference", "distributed", "convert", "unconvert", "build_info"]
__all__ += ["__version__"]
