"""Model-file handling shared by the encoders and models/resolve.py, without torch at import.

Finding model files (a DNABERT directory or hub id, the Hugging Face cache), the offline switch,
the flag that marks random-weight models, and the sha256 of a weights file. The encoder modules
and models/resolve.py both import from here, so neither has to import the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ..checksums import HASH_BLOCK, file_sha256  # noqa: F401  (models/ imports both from here)
from ..errors import ModelFileError, ModelNotFoundError

# Set by models/random_weights: in cfg['model'] of an ESM-2 checkpoint, in config.json of a DNABERT directory.
RANDOM_WEIGHTS_FLAG = "virnuc_hpc_random_weights"

DNABERT_HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"]


# --------------------------------------------------------------------------- DNABERT directories

def dnabert_weights_file(directory: Path) -> Path:
    """model.safetensors (preferred) or pytorch_model.bin in a model directory."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise ModelFileError(f"no model.safetensors or pytorch_model.bin in {directory}")


def dnabert_is_random(directory: Path) -> bool:
    """True for directories written by models.random_weights.dnabert (the flag in config.json)."""
    return hf_is_random(directory)


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment now (not at import)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(spec: str, patterns: list[str], *, offline: bool) -> tuple[Path | None, str]:
    """The local snapshot of hub repository ``spec`` (only files matching ``patterns``): from the HF
    cache, else downloaded (never when ``offline``); or None and the reason there is none."""
    from huggingface_hub import snapshot_download
    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns, cache_dir=cache,
                                      local_files_only=True)), ""
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if not offline:
        try:
            return Path(snapshot_download(spec, allow_patterns=patterns, cache_dir=cache)), ""
        except Exception as exc:
            reason = f"download failed ({type(exc).__name__}: {exc})"
    else:
        reason += "; offline mode (the offline setting), no download tried"
    return None, reason


def resolve_dnabert_dir(spec: str, *, offline: bool = False) -> Path:
    """A directory as is; a hub id (``zhihan1996/DNABERT-S``) from the HF cache, else downloaded
    (never when ``offline``: RunConfig.offline)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        raise ModelNotFoundError(f"DNABERT model {spec!r}: not a directory (expected one holding "
                                 "config.json, model.safetensors or pytorch_model.bin, and tokenizer.json)")
    return _from_hub(spec, DNABERT_HUB_FILES, offline, "DNABERT model", "no such directory",
        f"Stage it with `virnuc-hpc models fetch --dnabert {spec}` on a machine with network access, "
        "or pass a directory holding config.json, model.safetensors or pytorch_model.bin, and tokenizer.json.")


# --------------------------------------------------------------------------- ESM-2 in the Hugging Face format

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"  # sharded files: model-00001-of-0000N.safetensors
ESM2_HUB_FILES = [HF_CONFIG, HF_SAFETENSORS, HF_SAFETENSORS_INDEX, "model-*-of-*.safetensors", "vocab.txt"]
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json")


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` that names no local file type (``facebook/esm2_t36_3B_UR50D``, not ``dir/x.pt``)."""
    return bool(_HUB_ID.fullmatch(spec)) and not spec.lower().endswith(_FILE_SUFFIXES)


def hf_safetensors_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a Hugging Face model directory: model.safetensors, or the shards that
    model.safetensors.index.json names (large models are saved in shards). Pickle weights
    (pytorch_model.bin) are not read: ModelFileError says how to convert them."""
    if (directory / HF_SAFETENSORS).is_file():
        return [directory / HF_SAFETENSORS]
    index = directory / HF_SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{index}: not a readable safetensors index ({type(exc).__name__}: {exc})") from exc
        if not names or not all(isinstance(n, str) and Path(n).name == n for n in names):
            raise ModelFileError(f"{index}: its weight_map names no shard files in the directory")
        if missing := [n for n in names if not (directory / n).is_file()]:
            raise ModelFileError(f"{directory}: shard(s) named in {index.name} are missing: {', '.join(missing[:4])}")
        return [directory / n for n in names]
    pickles = sorted(p.name for p in directory.glob("*.bin"))
    hint = (f" It holds only {', '.join(pickles)} (a pickle, not read); convert it once with transformers: "
            f"`EsmModel.from_pretrained(DIR).save_pretrained(NEWDIR)` writes model.safetensors") if pickles else ""
    raise ModelFileError(f"{directory}: no {HF_SAFETENSORS} (or {HF_SAFETENSORS_INDEX} with its shards).{hint}")


def hf_identity_files(directory: Path) -> list[Path]:
    """The files whose bytes make a Hugging Face ESM-2 directory's identity: config.json (it sets
    sizes, LayerNorm eps and token dropout) and the safetensors weights."""
    return [directory / HF_CONFIG, *hf_safetensors_files(directory)]


def weights_sha256(path: Path) -> str:
    """A model's identity. A file: its sha256. A Hugging Face ESM-2 directory: the sha256 of the
    ``sha256sum`` listing of config.json and its safetensors file(s), so that
    ``cd DIR && sha256sum config.json model.safetensors | sha256sum`` reproduces it."""
    if not path.is_dir():
        return file_sha256(path)
    listing = "".join(f"{file_sha256(f)}  {f.name}\n" for f in hf_identity_files(path))
    return hashlib.sha256(listing.encode()).hexdigest()


def hf_is_random(directory: Path) -> bool:
    """True for model directories whose config.json carries the random-weights flag."""
    try:
        return bool(json.loads((directory / HF_CONFIG).read_text()).get(RANDOM_WEIGHTS_FLAG))
    except (OSError, ValueError, AttributeError):
        return False


def _from_hub(spec: str, files: list[str], offline: bool, what: str, missing: str, how: str) -> Path:
    """The hub snapshot of ``spec`` in the HF cache (downloaded unless ``offline``), or an error
    saying where it looked and ``how`` to get the files."""
    snapshot, reason = hub_snapshot(spec, files, offline=offline)
    if snapshot is not None:
        return snapshot
    cache = hf_cache_dir()
    raise ModelNotFoundError(
        f"{what} {spec!r} not found: {missing}, and no copy in the Hugging Face cache {cache} "
        f"(looked for {cache / ('models--' + spec.replace('/', '--'))}); {reason}. {how}")


def resolve_esm2_hub(spec: str, *, offline: bool = False) -> Path:
    """A hub id (``facebook/esm2_t36_3B_UR50D``) from the HF cache, else downloaded (never when
    ``offline``); only config.json, the safetensors weights and vocab.txt, never modelling code."""
    return _from_hub(spec, ESM2_HUB_FILES, offline, "ESM-2 model", "no such file or directory",
        f"Get it with `hf download {spec} --include config.json --include '*.safetensors*' --include "
        "vocab.txt` on a machine with "
        "network access (and copy the cache here, or set HF_HOME / HF_HUB_CACHE to it), or pass a "
        "directory holding config.json and model.safetensors, or a fair-esm .pt file.")
