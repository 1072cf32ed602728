"""The encoders a run embeds with, declared once: the roster.

Each entry says what an encoder is called (its role: the key of its model file, counters and
run.json fields), where its columns go (entries are in feature-column order: DNABERT-S first, then
ESM-2, as VirNucPro's classifier reads them), which RunConfig fields set it up, and which function
loads it on a worker. The worker, the bag store, the resume identity, check-precision and the dry
run iterate the roster, so another encoder is one more entry, passed to a run as ``roster=``.

Imports neither torch nor numpy: the client builds the workers' ``EncoderSpec`` from it for nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..spec import EncoderSpec


@dataclass(frozen=True)
class RosterEntry:
    """One encoder of the roster."""

    role: str                           # "dnabert", "esm2": run.json's and the bags' key names
    loader: str                         # "module:function": (EncoderSpec, device=, precision=) -> Encoder
    sequences: str                      # which frame sequences it embeds: "nucleotide" | "protein"
    source: str = ""                    # the bags' per-column "source" label (default: the role)
    title: str = ""                     # its name in printed reports (default: the role)
    width: int | None = None            # its output width when fixed; None: the model file's
    model_field: str | None = None      # RunConfig field naming its model, located under ``role``
    max_tokens_field: str | None = None  # RunConfig field of its token budget per batch
    option_fields: tuple[tuple[str, str], ...] = ()  # (loader keyword, RunConfig field)
    int8: bool = False                  # it has int8 kernels: precision int8 and its self-check apply
    offload: bool = False               # the deepspeed engine may run it under ZeRO-3 offload

    @property
    def label(self) -> str:
        return self.source or self.role

    @property
    def name(self) -> str:
        return self.title or self.role

    def encoder_spec(self, config: Any, path: str | None) -> EncoderSpec:
        """What a worker is told about this encoder, its settings read from ``config``."""
        return EncoderSpec(
            role=self.role, loader=self.loader, path=path, sequences=self.sequences, source=self.label,
            max_tokens=getattr(config, self.max_tokens_field) if self.max_tokens_field else None,
            options=tuple((keyword, getattr(config, field)) for keyword, field in self.option_fields),
            int8=self.int8, offload=self.offload)


Roster = tuple[RosterEntry, ...]

DNABERT = RosterEntry(
    role="dnabert", loader="virnuc_hpc.encoders.factory:dnabert_from_spec", sequences="nucleotide",
    source="dnabert_s", title="DNABERT-S", model_field="dnabert_model",
    max_tokens_field="dnabert_max_tokens", option_fields=(("layout", "dnabert_layout"),))
ESM2 = RosterEntry(
    role="esm2", loader="virnuc_hpc.encoders.factory:esm2_from_spec", sequences="protein",
    source="esm2", title="ESM-2", model_field="esm2_model", max_tokens_field="esm2_max_tokens",
    option_fields=(("exact_gelu", "exact_gelu"), ("int8_smoothing", "int8_smoothing")),
    int8=True, offload=True)

#: VirNucPro's encoders, in its feature layout: [DNABERT-S | ESM-2].
STANDARD_ROSTER: Roster = (DNABERT, ESM2)


def checked(roster: Sequence[RosterEntry]) -> Roster:
    """``roster`` as a tuple, refused when it is empty or names a role twice."""
    entries = tuple(roster)
    roles = [e.role for e in entries]
    if not entries or len(set(roles)) != len(roles):
        raise ValueError(f"a roster needs at least one encoder and distinct roles, not {roles}")
    return entries


def int8_role(roster: Sequence[RosterEntry] | Sequence[EncoderSpec]) -> str | None:
    """The role of the encoder with int8 kernels (None when the roster has none)."""
    return next((e.role for e in roster if e.int8), None)


def identity(roster: Sequence[RosterEntry]) -> list[list[Any]] | None:
    """What of the roster decides the bags' bytes, for the run key; None for the standard roster,
    so the run keys of standard runs, and the resumes of their outputs, stay what they are."""
    if tuple(roster) == STANDARD_ROSTER:
        return None
    return [[e.role, e.loader, e.sequences, e.label, e.width, e.model_field, e.max_tokens_field,
             [list(o) for o in e.option_fields], e.int8] for e in roster]


def load_encoder(encoder: EncoderSpec, **settings: Any) -> Any:
    """The encoder from its loader ``module:function``, given ``settings`` (device, precision, ...)."""
    module, _, function = encoder.loader.partition(":")
    if not module or not function:
        raise ValueError(f"{encoder.role}: a loader is 'module:function', not {encoder.loader!r}")
    return getattr(importlib.import_module(module), function)(encoder, **settings)
