"""Sequence encoders: ESM-2 (proteins) and DNABERT-S (nucleotides), each padded and packed.

``load_esm2`` / ``load_dnabert`` pick the padded or packed implementation for the device and
precision and return an ``Encoder``. They are imported on first use, so that importing this package
(or its torch-free ``files`` module) does not import torch.

The modules, one job each:
- ``contract``: the ``Encoder`` protocol and its engine hook ``with_engine``;
- ``factory``: model name or file -> ready encoder (the one place that picks padded or packed);
- ``esm2``, ``dnabert``: the model maths, the file readers and the padded encoders;
- ``esm2_packed``, ``dnabert_packed``: packing, attention kernels and the packed encoders;
- ``batching``: what both encoders batch with (plans, pinned copies, batches in flight, the fp32
  recompute, the prefetch thread); ``layers``: the fp32 LayerNorm and the attention callable type;
- ``compile``: torch.compile settings and the node-shared compile cache;
- ``files``: model files, hub cache and checksums, without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contract import Encoder

if TYPE_CHECKING:
    from .factory import load_dnabert, load_esm2

__all__ = ["Encoder", "load_dnabert", "load_esm2"]


def __getattr__(name: str) -> Any:
    if name in ("load_esm2", "load_dnabert"):
        from . import factory
        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
