"""The one typed configuration object, loaded from YAML (configs/*.yaml) with CLI overrides.

Precedence, lowest first: the model's defaults (== configs/default.yaml, a test keeps them equal),
a preset (configs/<name>.yaml), a user YAML (--config), then command-line options.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Fields that change what is computed for a frame; a resume with other values is refused.
RESULT_FIELDS = ("expected_length", "esm2_model", "dnabert_model", "classifier", "precision",
                 "bag_size", "skip_invalid", "engine", "exact_gelu", "features", "compression")


class RunConfig(BaseModel):
    """Everything a run needs besides its inputs and output directory."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    expected_length: Literal[300, 500] = Field(500, description="chunk size; must match the classifier")
    classifier: str | None = Field(None, description="VirNucPro classifier (.pth); None for embed-only")
    esm2_model: str = Field("esm2_t36_3B_UR50D", description="ESM-2 checkpoint path or fair-esm name")
    dnabert_model: str = Field("zhihan1996/DNABERT-S", description="DNABERT-S directory or hub id")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: Literal["native", "deepspeed"] = Field(
        "native", description="native: our PyTorch modules; deepspeed: the same modules inside DeepSpeed's "
                              "InferenceEngine (README, 'Inference engines')")
    zero_offload: Literal["none", "cpu", "nvme"] = Field(
        "none", description="deepspeed engine only: ZeRO-3 parameter offload of ESM-2 (models that do not fit)")
    nvme_path: str | None = Field(None, description="directory for zero_offload: nvme (fast local disk)")
    exact_gelu: bool = Field(
        False, description="fp16/bf16 on GPU: keep ESM-2's erf GELU instead of the tanh form fused into "
                           "fc1's GEMM (the fused form is 4% faster and within half-precision noise; "
                           "README, 'Speed')")
    workers: int | None = Field(None, ge=1, description="None: one per GPU, or 1 on CPU")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker (CPU)")
    bag_size: int = Field(20000, ge=1, description="frames per bag, about (unit of scheduling and output)")
    features: Literal["float32", "float16", "none"] = Field(
        "float32", description="features kept in the bag files: float32, float16 (HDF5 half floats, "
                               "half the disk) or none (ids and probabilities only)")
    compression: Literal["none", "gzip"] = Field(
        "none", description="gzip-compress the bag files' variables (smaller, slower to write and read)")
    esm2_max_tokens: int | None = Field(None, ge=64, description="token budget per ESM-2 batch")
    dnabert_max_tokens: int | None = Field(None, ge=64, description="token budget per DNABERT batch")
    bags_in_flight_per_worker: int = Field(2, ge=1)
    scheduler_address: str | None = None
    dashboard_address: str = "127.0.0.1:8787"
    skip_invalid: bool = False
    overwrite: bool = False
    progress: bool = True

    @field_validator("classifier", "esm2_model", "dnabert_model", mode="before")
    @classmethod
    def _paths_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @model_validator(mode="after")
    def _offload_needs_deepspeed(self) -> "RunConfig":
        if self.zero_offload != "none" and self.engine != "deepspeed":
            raise ValueError(f"zero_offload: {self.zero_offload} needs engine: deepspeed")
        if self.zero_offload == "nvme" and not self.nvme_path:
            raise ValueError("zero_offload: nvme needs nvme_path (a directory on a fast local disk)")
        return self


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read configuration {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"configuration {path} must be a mapping of option: value")
    return data


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    return path


def load_config(*, preset: str | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Merge preset, user file and overrides (None values are 'not given') into a RunConfig."""
    merged: dict[str, Any] = {}
    if preset:
        merged.update(_read_yaml(preset_path(preset)))
    if config_file:
        merged.update(_read_yaml(Path(config_file)))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return RunConfig(**merged)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def fingerprint(payload: Any) -> str:
    """Stable sha256 of a JSON-able payload (used for run and bag identity)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
