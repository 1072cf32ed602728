"""The native engine: our own encoder modules in PyTorch, on the worker's device.

Nothing to wrap: an encoder runs its batches through its own forward until an engine hooks in
(``Encoder.with_engine``), and its ``engine`` reads "native"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..encoders import Encoder, load_dnabert, load_esm2

if TYPE_CHECKING:
    from ..spec import ModelSpec


def load_native(spec: "ModelSpec") -> tuple[Encoder, Encoder]:
    esm2 = load_esm2(spec.esm2_path, device=spec.device, precision=spec.precision,
                     max_tokens=spec.esm2_max_tokens, exact_gelu=spec.exact_gelu,
                     int8_smoothing=spec.int8_smoothing)
    dnabert = load_dnabert(spec.dnabert_path, device=spec.device, precision=spec.precision,
                           max_tokens=spec.dnabert_max_tokens, layout=spec.dnabert_layout)
    return esm2, dnabert
