"""What the client derives from the config, the roster and the located models for the encoders:
the workers' ``ModelSpec`` (built here only), the bags' provenance attributes, and the per-encoder
counters summed for run.json."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from virnuc_hpc import __version__
from virnuc_hpc.config import RunConfig
from virnuc_hpc.encoders.roster import STANDARD_ROSTER, RosterEntry, checked
from virnuc_hpc.models.resolve import ModelFile
from virnuc_hpc.outputs import store
from virnuc_hpc.spec import ModelSpec

if TYPE_CHECKING:  # the worker module (Dask) is imported only where bags are summed
    from virnuc_hpc.runtime.worker import BagReport, EncoderStats

log = logging.getLogger("virnuc_hpc")


def model_spec(config: RunConfig, located: dict[str, ModelFile],
               roster: Sequence[RosterEntry] = STANDARD_ROSTER, *, precision: str | None = None,
               classifier: bool = True) -> ModelSpec:
    """What every worker needs to load the models: each roster encoder's local path and settings,
    and how to run them. ``precision`` replaces the config's (check-precision tries several);
    ``classifier=False`` leaves the classifier out (it is then loaded apart)."""
    encoders = []
    for entry in checked(roster):
        found = located.get(entry.role)
        if entry.model_field and found is None:
            raise ValueError(f"no model file was located for the roster's {entry.role!r}")
        encoders.append(entry.encoder_spec(config, found.path if found is not None else None))
    spec = ModelSpec(encoders=tuple(encoders),
                     classifier_path=located["classifier"].path if "classifier" in located else None,
                     device=config.device, precision=config.precision, engine=config.engine,
                     zero_offload=config.zero_offload, nvme_path=config.nvme_path,
                     threads=config.threads_per_worker, offline=config.offline,
                     compile_cache=config.compile_cache)
    if precision is not None:
        spec = dataclasses.replace(spec, precision=precision)
    return spec if classifier else dataclasses.replace(spec, classifier_path=None)


def chunk_size_warnings(config: RunConfig, models: dict[str, ModelFile]) -> list[str]:
    """A classifier file named for the other chunk size (300_model vs 500) is almost surely a mistake."""
    if models.get("classifier") is None or models["classifier"].spec == "demo":
        return []  # classifier.py (torch) is imported only when there is a file to check
    from virnuc_hpc.models.classifier import chunk_size_warnings as named_for_other_size
    warnings = named_for_other_size(models, config.expected_length)
    for warning in warnings:
        log.warning("warning: %s", warning)
    return warnings


def bag_attributes(run_key: str, config: RunConfig, models: dict[str, ModelFile],
                   random_weights: bool) -> dict[str, Any]:
    """NetCDF attributes of every bag: provenance, and the random-weights warning where it applies."""
    attrs: dict[str, Any] = {
        "virnuc_hpc_version": __version__, "run_key": run_key, "random_weights": int(random_weights),
        "expected_length": config.expected_length,
        **{f"{role}_sha256": m.sha256 for role, m in models.items()},
        **{f"{role}_model": m.spec for role, m in models.items()}}
    if random_weights:
        attrs["warning"] = store.RANDOM_WEIGHTS_WARNING
    return attrs


def encoder_totals(reports: list[BagReport], roles: Sequence[str] = ()) -> dict[str, EncoderStats]:
    """Each encoder's work summed over ``reports``, by role in roster order: ``roles`` (default:
    the standard roster's) with zeros where no bag was computed, then any other reported role."""
    from virnuc_hpc.runtime.worker import EncoderStats
    totals = {role: EncoderStats() for role in roles or [e.role for e in STANDARD_ROSTER]}
    for r in reports:
        for name, stats in r.encoder_stats().items():
            totals[name] = totals.get(name, EncoderStats()) + stats
    return totals


def flat_encoder_totals(per_encoder: dict[str, dict[str, int]]) -> dict[str, int]:
    """``{"esm2": {"batches": 3}}`` -> ``{"esm2_batches": 3}``: run.json's spelling."""
    return {f"{name}_{key}": value for name, values in per_encoder.items() for key, value in values.items()}
