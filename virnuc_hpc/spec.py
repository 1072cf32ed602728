"""What a worker is told about the models, and what it holds once they are loaded.

Plain dataclasses with no imports from the package: ``worker`` (which loads the models) and
``engines`` (which run them) both use them, and neither imports the other for it. Nothing here
imports torch, so the client builds a ``ModelSpec`` and ships it to the workers cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Resolved, local model files plus how to run them; identical on every worker.

    Built from the RunConfig by the client (pipeline's ``_model_spec``): workers never read the
    environment for a setting, so a worker on another node runs exactly what the client asked."""

    esm2_path: str
    dnabert_path: str
    classifier_path: str | None
    device: str = "auto"
    precision: str = "auto"
    engine: str = "native"
    zero_offload: str = "none"
    nvme_path: str | None = None
    exact_gelu: bool = False
    esm2_max_tokens: int | None = None
    dnabert_max_tokens: int | None = None
    threads: int | None = None
    offline: bool = False                 # never download a model (RunConfig.offline)
    compile_cache: str | None = None      # torch.compile cache root (RunConfig.compile_cache)
    dnabert_layout: str = "auto"          # auto | packed | padded (RunConfig.dnabert_layout)
    int8_smoothing: str = "weights"       # weights | none (RunConfig.int8_smoothing)


@dataclass
class Encoders:
    """The models one worker process holds: both encoders, the classifier (None without one), and
    the precision and device they resolved to."""

    esm2: Any
    dnabert: Any
    classifier: Any | None
    precision: str
    device: str
