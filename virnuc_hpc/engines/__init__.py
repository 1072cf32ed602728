"""Inference engines: how the encoders' maths is run (precision, kernels, compilation).

Encoders know the maths; an engine knows how to run it fast. The pipeline calls
``load_engine_encoders`` and never branches on the engine itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..spec import ModelSpec


def load_engine_encoders(spec: "ModelSpec") -> tuple[Any, Any]:
    """(esm2, dnabert) encoders, each with ``.embed(list[str]) -> (N, D) float32``."""
    if spec.engine == "native":
        from .native import load_native
        return load_native(spec)
    if spec.engine == "deepspeed":
        from .deepspeed import load_deepspeed
        return load_deepspeed(spec)
    raise ValueError(f"unknown engine {spec.engine!r}")
