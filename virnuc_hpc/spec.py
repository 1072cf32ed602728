"""What a worker is told about the models, and what it holds once they are loaded.

Plain dataclasses with no imports from the package: ``worker`` (which loads the models) and
``engines`` (which run them) both use them, and neither imports the other for it. Nothing here
imports torch, so the client builds a ``ModelSpec`` and ships it to the workers cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncoderSpec:
    """One roster encoder as a worker loads it (encoders/roster.py declares it, the client fills
    in the values from the RunConfig): the worker needs nothing else to load and run it."""

    role: str                              # "dnabert", "esm2": keys of its counters and run.json fields
    loader: str                            # "module:function", called as loader(self, device=, precision=)
    path: str | None                       # its local model file or directory (None: it has none)
    sequences: str                         # which frame sequences it embeds: "nucleotide" | "protein"
    source: str = ""                       # the bags' per-column "source" label
    max_tokens: int | None = None          # its token budget per batch (None: derived on the worker)
    options: tuple[tuple[str, Any], ...] = ()  # further loader keywords, taken from the config
    int8: bool = False                     # it has int8 kernels (precision int8, the int8 self-check)
    offload: bool = False                  # the deepspeed engine may run it under ZeRO-3 offload

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


@dataclass(frozen=True)
class ModelSpec:
    """Resolved, local model files plus how to run them; identical on every worker.

    Built from the RunConfig and a roster by the client (runtime/encoding.py ``model_spec``):
    workers never read the environment for a setting, so a worker on another node runs exactly
    what the client asked. ``encoders`` is in feature-column order."""

    encoders: tuple[EncoderSpec, ...]
    classifier_path: str | None = None
    device: str = "auto"
    precision: str = "auto"
    engine: str = "native"
    zero_offload: str = "none"
    nvme_path: str | None = None
    threads: int | None = None
    offline: bool = False                 # never download a model (RunConfig.offline)
    compile_cache: str | None = None      # torch.compile cache root (RunConfig.compile_cache)

    def encoder(self, role: str) -> EncoderSpec:
        """The encoder of ``role`` (KeyError when the roster has none)."""
        found = next((e for e in self.encoders if e.role == role), None)
        if found is None:
            raise KeyError(role)
        return found


@dataclass
class Encoders:
    """The models one worker process holds: the roster's encoders by role (in feature-column order),
    the classifier (None without one), and the precision and device they resolved to."""

    encoders: dict[str, Any]
    classifier: Any | None
    precision: str
    device: str
    int8_role: str | None = None  # the encoder with int8 kernels: its precision is the run's
