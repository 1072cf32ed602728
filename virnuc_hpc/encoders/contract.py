"""What the pipeline needs of an encoder, padded or packed, ESM-2 or DNABERT, and the one hook an
engine uses to run it.

Imports neither torch nor numpy at run time: the client can import it for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

EngineWrap = Callable[["torch.nn.Module", Callable[..., Any]], Callable[..., Any]]
"""``wrap(module, run) -> runner``: given the module that owns the encoder's weights and the callable
that runs one device batch over them, return the callable to run every later batch through."""


@runtime_checkable
class Encoder(Protocol):
    """Sequences (protein or nucleotide strings) -> (N, dim) float32 rows, row i for input i.

    ``prepare`` does the host-side work (tokenising, packing) ahead, without the device; ``embed``
    accepts its result as well as plain strings. ``warm_up`` compiles what the encoder compiles
    (worker start-up), and leaves ``stats`` unchanged. ``stats`` counts work done (sequences,
    tokens, batches, fp32 recomputations, ...).

    ``with_engine(name, wrap)`` is how an engine takes over the device work, and the only way: the
    encoder calls ``wrap(module, runner)`` once and from then on runs each device batch through
    what it returns (``runner``), keeping its own batching, pooling and fp32 fallback; ``engine``
    names who runs it ("native" until an engine wraps it). The encoder's inputs and outputs do not
    change."""

    dim: int
    device: torch.device
    precision: str
    stats: dict[str, int]
    engine: str

    def prepare(self, sequences: Sequence[str]) -> Any: ...

    def embed(self, sequences: Any) -> np.ndarray: ...

    def warm_up(self) -> None: ...

    def with_engine(self, name: str, wrap: EngineWrap) -> None: ...


class EngineHook:
    """``with_engine`` written once, for encoders that hold ``model`` (the module owning their
    weights) and ``runner`` (what each device batch runs through, their own forward at first)."""

    model: Any
    runner: Callable[..., Any]
    engine: str = "native"

    def with_engine(self, name: str, wrap: EngineWrap) -> None:
        """Run every later device batch through ``wrap(self.model, self.runner)``; see ``Encoder``."""
        self.runner = wrap(self.model, self.runner)
        self.engine = name
