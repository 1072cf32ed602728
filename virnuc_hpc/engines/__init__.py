"""Inference engines: how the encoders' maths is run (precision, kernels, compilation).

Encoders know the maths; an engine knows how to run it fast. The pipeline calls
``load_engine_encoders`` and never branches on the engine itself. An engine loads encoders through
the encoders package's factories and takes over their device work only through the one hook of the
Encoder protocol, ``encoder.with_engine(name, wrap)`` (encoders/contract.py); imports point one
way, engines -> encoders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..encoders import Encoder
    from ..spec import ModelSpec


def load_engine_encoders(spec: "ModelSpec") -> dict[str, "Encoder"]:
    """The roster's encoders by role, in feature-column order (``spec.encoders``), each with
    ``.embed(list[str]) -> (N, D) float32``.

    The compile cache is pointed at ``spec.compile_cache`` first (when set), so the packed encoders'
    compiled graphs land there whatever the worker's environment says."""
    if spec.compile_cache:
        from ..encoders.compile import configure_compile_cache
        configure_compile_cache(spec.compile_cache)
    if spec.engine == "native":
        from .native import load_native
        return load_native(spec)
    if spec.engine == "deepspeed":
        from .deepspeed import load_deepspeed
        return load_deepspeed(spec)
    raise ValueError(f"unknown engine {spec.engine!r}")
