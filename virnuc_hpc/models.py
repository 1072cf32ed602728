"""Resolving model specifications to local files, once, on the client.

Workers receive plain paths; the run's identity records each file's sha256 so that a resumed run
with other weights is refused. ``demo`` resolves to random-weight models made on the fly.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ModelNotFoundError

DEMO = "demo"
HASH_BLOCK = 1 << 24  # 16 MB reads: few syscalls, little memory per thread


@dataclass(frozen=True)
class ModelFile:
    role: str          # esm2 | dnabert | classifier
    spec: str          # what the user asked for
    path: str          # the local file or directory used
    weights: str       # the file whose checksum identifies the weights
    sha256: str
    random_weights: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def offline() -> bool:
    """VIRNUC_HPC_OFFLINE or HF_HUB_OFFLINE set to 1/true/yes/on (Hugging Face's reading): no
    model download is tried, for ESM-2 and DNABERT alike."""
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("VIRNUC_HPC_OFFLINE", "HF_HUB_OFFLINE"))


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


def _dnabert_is_random(directory: Path) -> bool:
    try:
        from .encoders.dnabert import RANDOM_WEIGHTS_FLAG
        return bool(json.loads((directory / "config.json").read_text()).get(RANDOM_WEIGHTS_FLAG))
    except (OSError, ValueError):
        return False


def _esm2_is_random(path: Path) -> bool:
    from .encoders.esm2 import is_random_checkpoint
    return is_random_checkpoint(path)


def hash_models(located: dict[str, ModelFile]) -> dict[str, ModelFile]:
    """Fill in each model's sha256 from the bytes of its weights file, every run, the files in
    parallel threads. Slow for big files (ESM-2 3B is 5.6-11 GB): run it beside other work."""
    todo = [role for role, m in located.items() if not m.sha256]
    out = dict(located)
    if todo:
        with ThreadPoolExecutor(len(todo), thread_name_prefix="virnuc-model-sha256") as pool:
            digests = pool.map(lambda role: file_sha256(Path(located[role].weights)), todo)
            for role, digest in zip(todo, digests):
                out[role] = replace(located[role], sha256=digest)
    return out


def locate_models(config: RunConfig, *, classify: bool) -> dict[str, ModelFile]:
    """Local files for each model the run needs, checksums not yet computed (``sha256`` empty, but
    for the classifier, which is read here anyway);
    raises ModelNotFoundError with where it looked. Fast, so workers can start loading at once."""
    from .encoders.dnabert import resolve_dnabert_dir
    from .encoders.dnabert import weights_file as dnabert_weights_file
    from .encoders.esm2 import resolve_esm2_checkpoint

    demo = None
    if DEMO in (config.esm2_model, config.dnabert_model, config.classifier):
        from .demo import ensure_demo_models
        demo = ensure_demo_models()

    def record(role: str, spec: str, path: Path, weights: Path, random: bool) -> ModelFile:
        return ModelFile(role, spec, str(path), str(weights), "", random)

    out: dict[str, ModelFile] = {}
    esm2 = demo.esm2 if demo and config.esm2_model == DEMO else resolve_esm2_checkpoint(config.esm2_model)
    out["esm2"] = record("esm2", config.esm2_model, esm2, esm2, _esm2_is_random(esm2))
    dna = demo.dnabert if demo and config.dnabert_model == DEMO else resolve_dnabert_dir(config.dnabert_model)
    out["dnabert"] = record("dnabert", config.dnabert_model, dna, dnabert_weights_file(dna),
                            _dnabert_is_random(dna))
    if classify:
        if not config.classifier:
            raise ModelNotFoundError("predict needs a classifier: pass --classifier 500_model.pth "
                                     "(VirNucPro's 300_model.pth / 500_model.pth), or use `embed`")
        if demo and config.classifier == DEMO:
            out["classifier"] = record("classifier", DEMO, demo.classifier, demo.classifier, True)
        else:
            path = Path(config.classifier).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"classifier file {path} does not exist (VirNucPro ships "
                                         "300_model.pth and 500_model.pth in its repository)")
            from .classifier import load_classifier
            checked = load_classifier(path, input_dim=None)  # small: refuse a bad file before workers start
            out["classifier"] = replace(record("classifier", config.classifier, path, path, False),
                                        sha256=checked.sha256)  # read once: hash_models keeps it
    return out
