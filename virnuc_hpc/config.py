"""The one typed configuration object, loaded from YAML (configs/*.yaml) with CLI overrides.

Precedence, lowest first: the model's defaults (== configs/default.yaml, a test keeps them equal),
the environment variables of ``ENVIRONMENT`` (site-wide switches such as a model cache or offline
mode, set once in a shell profile or module file), a preset (configs/<name>.yaml), a user YAML
(--config), then command-line options. This module is the only one that reads those variables;
everything below gets their values from the ``RunConfig`` (workers through ``spec.ModelSpec``).

The presets ship inside the package (``virnuc_hpc/configs``, read with importlib.resources), so
they are found however the package was installed; the top-level ``configs`` is a link to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from virnuc_hpc.errors import ConfigError
from virnuc_hpc.yaml_files import read_yaml

#: The shipped presets, inside the package (a wheel has no files beside it).
CONFIG_DIR: Traversable = resources.files("virnuc_hpc") / "configs"

#: Environment variables accepted as defaults of RunConfig fields (below presets, files and options).
ENVIRONMENT = {"VIRNUC_HPC_HOST": "host", "VIRNUC_HPC_CACHE": "cache_dir",
               "VIRNUC_HPC_OFFLINE": "offline", "VIRNUC_HPC_COMPILE_CACHE": "compile_cache",
               "VIRNUC_HPC_DNABERT_PATH": "dnabert_layout", "VIRNUC_HPC_MODELS": "models_dir"}
#: Hugging Face's own offline switch counts as ours too (the same models come from its hub).
_OFFLINE_ALIASES = ("VIRNUC_HPC_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}

#: A host name, an IPv4 address or a bracketed IPv6 address (no spaces, no scheme).
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
_DASHBOARD = re.compile(rf"(?P<host>{_HOST})?:(?P<port>\d+)|(?P<bare>\d+)")
_SCHEDULER = re.compile(rf"(?:(?:tcp|tls|ucx)://)?{_HOST}:(?P<port>\d+)")

#: Fields that change what is computed for a frame; a resume with other values is refused.
# Settings that can change a byte of the outputs: a resume with any of them changed is refused
# (unless --overwrite). What the workers derive themselves (token budgets left unset, the card) is
# recorded per bag as its ``numerics`` and reconciled on resume (pipeline.py).
RESULT_FIELDS = ("expected_length", "esm2_model", "dnabert_model", "classifier", "precision",
                 "bag_size", "skip_invalid", "engine", "exact_gelu", "features", "compression",
                 "device", "esm2_max_tokens", "dnabert_max_tokens", "threads_per_worker",
                 "int8_smoothing", "int8_check_cosine")

#: The headings of ``predict --help``, in order (the common ones first); each field names its own.
OPTION_GROUPS = ("inputs", "models", "outputs", "performance", "cluster", "advanced")


def _group(name: str) -> dict[str, str]:
    """Where a field's option is listed in ``predict --help`` (one of ``OPTION_GROUPS``)."""
    return {"group": name}


class RunConfig(BaseModel):
    """Everything a run needs besides its inputs and output directory."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    expected_length: Literal[300, 500] = Field(
        500, description="chunk size; must match the classifier (300_model / 500_model)",
        json_schema_extra=_group("models"))
    classifier: str | None = Field(None, description="VirNucPro classifier (.pth); none for embed-only runs",
                                   json_schema_extra=_group("models"))
    esm2_model: str = Field(
        "esm2_t36_3B_UR50D", description="ESM-2: fair-esm .pt path or name, or a Hugging Face directory / "
                                         "hub id (facebook/esm2_*)", json_schema_extra=_group("models"))
    dnabert_model: str = Field("zhihan1996/DNABERT-S", description="DNABERT-S directory or hub id",
                               json_schema_extra=_group("models"))
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="auto (fp32 on CPU, fp16 on GPU), fp32, fp16, bf16 or int8 (ESM-2's linear "
                            "layers in int8, the rest fp16: faster; check it on your models first with "
                            "check-precision; docs/precision.md)",
        json_schema_extra=_group("performance"))
    int8_smoothing: Literal["weights", "none"] = Field(
        "weights", description="int8: migrate outlier channels into the weights before quantising "
                               "(weights), or quantise as they are (none); docs/precision.md",
        json_schema_extra=_group("advanced"))
    int8_check_cosine: float = Field(
        0.999, ge=0.0, le=1.0, strict=True,
        description="int8: before the first bag every worker embeds a sample in int8 and fp16; if any "
                    "frame's cosine is below this, the whole run goes on in fp16 (0 turns the check off)",
        json_schema_extra=_group("advanced"))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda",
                                                   json_schema_extra=_group("performance"))
    engine: Literal["native", "deepspeed"] = Field(
        "native", description="native: our PyTorch modules; deepspeed: the same modules inside DeepSpeed's "
                              "InferenceEngine, needs the deepspeed package (docs/precision.md)",
        json_schema_extra=_group("advanced"))
    zero_offload: Literal["none", "cpu", "nvme"] = Field(
        "none", description="deepspeed engine only: ZeRO-3 parameter offload of ESM-2 (models that do not fit)",
        json_schema_extra=_group("advanced"))
    nvme_path: str | None = Field(
        None, description="directory for zero_offload: nvme (a fast local disk; needs libaio)",
        json_schema_extra=_group("advanced"))
    exact_gelu: bool = Field(
        False, strict=True,
        description="fp16/bf16 on GPU: keep ESM-2's erf GELU instead of the tanh form fused into "
                    "fc1's GEMM (the fused form is 4% faster and within half-precision noise; "
                    "docs/precision.md)", json_schema_extra=_group("advanced"))
    workers: int | None = Field(None, ge=1, strict=True,
                                description="Dask workers (default: one per GPU, or 1 on CPU)",
                                json_schema_extra=_group("performance"))
    threads: int | None = Field(
        None, ge=1, strict=True,
        description="CPU threads the run may use in all on a node: each worker gets threads / workers "
                    "torch threads, the client's file hashing a few (default: the CPUs this process may "
                    "run on, which follows Slurm's allocation and cgroups)",
        json_schema_extra=_group("performance"))
    threads_per_worker: int | None = Field(None, ge=1, strict=True,
                                           description="torch threads per worker; wins over threads "
                                                       "(default: threads / workers)",
                                           json_schema_extra=_group("performance"))
    bag_size: int = Field(20000, ge=1, strict=True,
                          description="frames per bag, about (unit of scheduling and output)",
                          json_schema_extra=_group("performance"))
    features: Literal["float32", "float16", "none"] = Field(
        "float32", description="features kept in the bag files: float32, float16 (HDF5 half floats, "
                               "half the disk) or none (ids and probabilities only)",
        json_schema_extra=_group("outputs"))
    compression: Literal["none", "gzip"] = Field(
        "none", description="gzip-compress the bag files' variables and viral.fna (viral.fna.gz; "
                            "smaller, slower to write and read)",
        json_schema_extra=_group("outputs"))
    viral_format: Literal["fasta", "fastq"] = Field(
        "fasta", description="viral.fna holds the reads called virus as FASTA; fastq: as FASTQ "
                             "(viral.fastq, qualities kept) where the sample's input is FASTQ",
        json_schema_extra=_group("outputs"))
    write_frames: bool = Field(
        False, strict=True,
        description="also write VirNucPro's <input>_identified_nucleotide.fa and "
                    "_identified_protein.faa (every kept frame, as the original writes them)",
        json_schema_extra=_group("outputs"))
    esm2_max_tokens: int | None = Field(
        None, ge=64, strict=True, description="token budget per ESM-2 batch (default: derived from the device)",
        json_schema_extra=_group("performance"))
    dnabert_max_tokens: int | None = Field(
        None, ge=64, strict=True,
        description="token budget per DNABERT-S batch (default: derived from the device)",
        json_schema_extra=_group("performance"))
    bags_in_flight_per_worker: int = Field(2, ge=1, strict=True,
                                           description="bags queued per worker (bounded look-ahead)",
                                           json_schema_extra=_group("performance"))
    scheduler_address: str | None = Field(
        None, description="join a running Dask scheduler at tcp://HOST:PORT (or tls://, or HOST:PORT) "
                          "instead of starting a cluster", json_schema_extra=_group("cluster"))
    scheduler_file: str | None = Field(
        None, description="join the Dask scheduler named in this scheduler file (the JSON `dask scheduler "
                          "--scheduler-file` writes) instead of starting a cluster",
        json_schema_extra=_group("cluster"))
    scheduler_timeout: float = Field(10.0, gt=0, strict=True,
                                     description="seconds to reach the scheduler (or for its scheduler file "
                                                 "to appear) before giving up",
                                     json_schema_extra=_group("cluster"))
    dashboard_address: str = Field(
        "127.0.0.1:8787", description="Dask dashboard at [HOST]:PORT or PORT (a port alone binds 127.0.0.1; "
                                      "0.0.0.0:PORT every interface)", json_schema_extra=_group("cluster"))
    skip_invalid: bool = Field(False, strict=True,
                               description="skip empty records, bad characters and duplicate ids "
                                           "(listed in reads.tsv)", json_schema_extra=_group("inputs"))
    overwrite: bool = Field(False, strict=True,
                            description="replace an OUTDIR made with other inputs or settings",
                            json_schema_extra=_group("outputs"))
    progress: bool = Field(True, strict=True, description="live progress bar (on a terminal)",
                           json_schema_extra=_group("outputs"))
    log_interval: float = Field(60.0, ge=0, strict=True,
                                description="seconds between progress lines (bags done/total, frames/s, "
                                            "ESM-2 tokens/s, ETA) in the log when no progress bar is shown, "
                                            "as in a batch job's log file; 0: none",
                                json_schema_extra=_group("outputs"))
    host: str | None = Field(None, description="address other nodes reach this one at in multi-node "
                                               "Dask (default: this node's address; env VIRNUC_HPC_HOST)",
                             json_schema_extra=_group("cluster"))
    models_dir: str | None = Field(
        None, description="directory of the models staged by `virnuc-hpc models fetch`: model names are "
                          "looked up there first, and nothing is downloaded at run time (env "
                          "VIRNUC_HPC_MODELS; unset: names are also looked up in "
                          "$XDG_DATA_HOME/virnuc-hpc/models, else ~/.local/share/virnuc-hpc/models)",
        json_schema_extra=_group("models"))
    cache_dir: str | None = Field(None, description="directory of the demo models (default: "
                                                    "~/.cache/virnuc-hpc; env VIRNUC_HPC_CACHE)",
                                  json_schema_extra=_group("models"))
    offline: bool = Field(False, strict=True,
                          description="never download a model (env VIRNUC_HPC_OFFLINE or HF_HUB_OFFLINE "
                                      "set to 1/true/yes/on)", json_schema_extra=_group("models"))
    compile_cache: str | None = Field(None, description="torch.compile cache shared by a node's workers "
                                                        "(default: TMPDIR/virnuc_hpc-compile-USER; env "
                                                        "VIRNUC_HPC_COMPILE_CACHE)",
                                      json_schema_extra=_group("advanced"))
    dnabert_layout: Literal["auto", "packed", "padded"] = Field(
        "auto", description="DNABERT-S batches: auto (packed on GPU in fp16/bf16, else padded), packed, "
                            "or padded (the SDPA path, an escape hatch; env VIRNUC_HPC_DNABERT_PATH)",
        json_schema_extra=_group("advanced"))

    @field_validator("classifier", "esm2_model", "dnabert_model", "models_dir", mode="before")
    @classmethod
    def _paths_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("dashboard_address", mode="before")
    @classmethod
    def _dashboard_on_localhost(cls, value: Any) -> Any:
        """PORT and :PORT mean 127.0.0.1:PORT (Dask would bind every interface for :PORT and refuse a
        bare port): the dashboard is reachable from elsewhere only where a host says so."""
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return value  # the str type check reports it
        match = _DASHBOARD.fullmatch(str(value).strip())
        port = int(match["port"] or match["bare"]) if match else -1
        if not 0 <= port <= 65535:
            raise ValueError(f"{value!r} is not [HOST]:PORT; e.g. 8787 or 127.0.0.1:8787 (this machine "
                             "only), 0.0.0.0:8787 (every interface), or port 0 for any free one")
        return f"{match['host'] or '127.0.0.1'}:{port}"

    @field_validator("scheduler_address")
    @classmethod
    def _scheduler_address_form(cls, value: str | None) -> str | None:
        """Checked here, not by Dask: a malformed address made the client retry for a minute."""
        if value is None:
            return value
        match = _SCHEDULER.fullmatch(value.strip())
        if not match or not 0 < int(match["port"]) <= 65535:
            raise ValueError(f"{value!r} is not a Dask scheduler address; give tcp://HOST:PORT "
                             "(or tls://HOST:PORT, or HOST:PORT), e.g. tcp://head-node:8786")
        return value.strip()

    @model_validator(mode="after")
    def _one_scheduler(self) -> "RunConfig":
        if self.scheduler_address and self.scheduler_file:
            raise ValueError("give scheduler_address or scheduler_file, not both")
        return self

    @model_validator(mode="after")
    def _engine_options_fit(self) -> "RunConfig":
        if self.precision == "int8" and self.engine == "deepspeed":
            raise ValueError("precision: int8 runs on engine: native only (its int8 kernels are ours)")
        if self.zero_offload != "none" and self.engine != "deepspeed":
            raise ValueError(f"zero_offload: {self.zero_offload} needs engine: deepspeed")
        if self.zero_offload == "nvme" and not self.nvme_path:
            raise ValueError("zero_offload: nvme needs nvme_path (a directory on a fast local disk)")
        return self


def _read_yaml(path: Path | Traversable) -> dict[str, Any]:
    """A configuration file's options (read with limits: yaml_files)."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration {path} must be a mapping of option: value")
    named = [key for key in data if not isinstance(key, str)]
    if named:
        raise ConfigError(f"configuration {path}: option names are text, got {str(named[0])[:80]}")
    return data


def presets() -> list[str]:
    """Names of the presets shipped in the package (virnuc_hpc/configs)."""
    return sorted(p.name.removesuffix(".yaml") for p in CONFIG_DIR.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Traversable:
    """A preset is one of the shipped names, never a path (--config reads any file of yours)."""
    known = presets()
    if name not in known:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known)} "
                         "(a YAML file of your own goes to --config FILE)")
    return CONFIG_DIR / f"{name}.yaml"


def environment_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The RunConfig values the ``ENVIRONMENT`` variables give (unset or empty ones give none)."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for variable, key in ENVIRONMENT.items():
        value = env.get(variable, "").strip()
        if key == "offline":
            if any(env.get(v, "").strip().lower() in _TRUE for v in _OFFLINE_ALIASES):
                found[key] = True
        elif value:
            found[key] = value.lower() if key == "dnabert_layout" else value
    return found


def with_environment(config: RunConfig, environ: dict[str, str] | None = None) -> RunConfig:
    """``config`` with the environment's values for the fields nobody set (lowest precedence)."""
    pending = {k: v for k, v in environment_defaults(environ).items() if k not in config.model_fields_set}
    if not pending:
        return config
    try:
        return RunConfig(**{**config.model_dump(), **pending})
    except ValidationError as err:
        names = {key: variable for variable, key in ENVIRONMENT.items()}
        raise ConfigError("invalid environment variable(s): " + "; ".join(
            f"{names[str(p['loc'][0])]}: {p['msg'].removeprefix('Value error, ')}"
            for p in err.errors(include_url=False) if p["loc"] and p["loc"][0] in pending)) from err


def load_config(*, preset: str | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Merge preset, user file and overrides (None values are 'not given') into a RunConfig."""
    merged: dict[str, Any] = {}
    if preset:
        merged.update(_read_yaml(preset_path(preset)))
    if config_file:
        merged.update(_read_yaml(Path(config_file)))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return with_environment(RunConfig(**merged))


_EXPECTED = {"int_type": "expected a whole number", "bool_type": "expected true or false",
             "float_type": "expected a number", "string_type": "expected text",
             "extra_forbidden": "unknown option (configs/default.yaml lists them all)"}


def describe_errors(err: ValidationError) -> str:
    """One line per problem, ``option: what is wrong, got VALUE`` in YAML's spelling (pydantic's own
    text names Python types: ``True`` from a YAML ``true`` would be puzzling). Values are cut to 80
    characters, lines to 300, and 5 problems are listed: a hostile file gets a short answer too."""
    lines = []
    problems = err.errors(include_url=False)
    for problem in problems[:_LISTED]:
        where = _clip(".".join(str(part) for part in problem["loc"]), 80)
        what = _EXPECTED.get(problem["type"], problem["msg"].removeprefix("Value error, "))
        if problem["type"] in _EXPECTED and problem["type"] != "extra_forbidden":
            what += f", got {_clip(json.dumps(problem['input'], default=repr), 80)}"
        lines.append(_clip(f"{where}: {what}" if where else what, 300))
    if len(problems) > _LISTED:
        lines.append(f"... and {len(problems) - _LISTED} more")
    return "\n".join(lines)


_LISTED = 5  # problems spelled out by describe_errors


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def fingerprint(payload: Any) -> str:
    """Stable sha256 of a JSON-able payload (used for run and bag identity)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
