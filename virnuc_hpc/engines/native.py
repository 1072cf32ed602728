"""The native engine: our own encoder modules in PyTorch, on the worker's device.

Nothing to wrap: an encoder runs its batches through its own forward until an engine hooks in
(``Encoder.with_engine``), and its ``engine`` reads "native"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..encoders import Encoder
from ..encoders.roster import load_encoder

if TYPE_CHECKING:
    from ..spec import ModelSpec


def load_native(spec: "ModelSpec") -> dict[str, Encoder]:
    """Each roster encoder from its own loader, as it is."""
    return {e.role: load_encoder(e, device=spec.device, precision=spec.precision) for e in spec.encoders}
