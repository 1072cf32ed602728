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

from ..errors import ModelFileError, ModelNotFoundError

HASH_BLOCK = 1 << 24  # 16 MB reads: few syscalls, little memory per thread

# Set by models/random_weights: in cfg['model'] of an ESM-2 checkpoint, in config.json of a DNABERT directory.
RANDOM_WEIGHTS_FLAG = "virnuc_hpc_random_weights"

DNABERT_HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, always read: size and mtime prove nothing (weights rewritten in place
    with the mtime restored keep both). Streams 16 MB blocks; hashlib releases the GIL on each, so
    several files hash in parallel threads."""
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# --------------------------------------------------------------------------- DNABERT directories

def dnabert_weights_file(directory: Path) -> Path:
    """model.safetensors (preferred) or pytorch_model.bin in a model directory."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise ModelFileError(f"no model.safetensors or pytorch_model.bin in {directory}")


def dnabert_is_random(directory: Path) -> bool:
    """True for directories written by models.random_weights.dnabert (the flag in config.json)."""
    try:
        return bool(json.loads((directory / "config.json").read_text()).get(RANDOM_WEIGHTS_FLAG))
    except (OSError, ValueError):
        return False


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment now (not at import)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_dnabert_dir(spec: str, *, offline: bool = False) -> Path:
    """A directory as is; a hub id (``zhihan1996/DNABERT-S``) from the HF cache, else downloaded
    (never when ``offline``: RunConfig.offline)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        raise ModelNotFoundError(f"DNABERT model {spec!r}: not a directory (expected one holding "
                                 "config.json, model.safetensors or pytorch_model.bin, and tokenizer.json)")
    from huggingface_hub import snapshot_download
    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(spec, allow_patterns=DNABERT_HUB_FILES, cache_dir=cache,
                                      local_files_only=True))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if not offline:
        try:
            return Path(snapshot_download(spec, allow_patterns=DNABERT_HUB_FILES, cache_dir=cache))
        except Exception as exc:
            reason = f"download failed ({type(exc).__name__}: {exc})"
    else:
        reason += "; offline mode (the offline setting), no download tried"
    raise ModelNotFoundError(
        f"DNABERT model {spec!r} not found: no such directory, and no copy in the Hugging Face cache "
        f"{cache} (looked for {cache / ('models--' + spec.replace('/', '--'))}); {reason}. "
        f"Get the files with `huggingface-cli download {spec}` on a machine with network access "
        "(and copy the cache here, or set HF_HOME / HF_HUB_CACHE to it), or pass a directory holding "
        "config.json, model.safetensors or pytorch_model.bin, and tokenizer.json.")
