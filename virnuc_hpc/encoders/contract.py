"""What the pipeline needs of an encoder, padded or packed, ESM-2 or DNABERT.

Imports neither torch nor numpy at run time: the client can import it for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch


@runtime_checkable
class Encoder(Protocol):
    """Sequences (protein or nucleotide strings) -> (N, dim) float32 rows, row i for input i.

    ``prepare`` does the host-side work (tokenising, packing) ahead, without the device; ``embed``
    accepts its result as well as plain strings. ``warm_up`` compiles what the encoder compiles
    (worker start-up), and leaves ``stats`` unchanged. ``stats`` counts work done (sequences,
    tokens, batches, fp32 recomputations, ...)."""

    dim: int
    device: torch.device
    precision: str
    stats: dict[str, int]

    def prepare(self, sequences: Sequence[str]) -> Any: ...

    def embed(self, sequences: Any) -> np.ndarray: ...

    def warm_up(self) -> None: ...
