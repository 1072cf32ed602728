"""Resolving model specifications to local files, once, on the client.

Workers receive plain paths; the run's identity records each file's sha256 so that a resumed run
with other weights is refused. ``demo`` resolves to random-weight models made on the fly.

This module only orchestrates: file handling (offline switch, sha256, DNABERT directories) lives in
encoders/files.py, ESM-2 checkpoint lookup in encoders/esm2.py. It may import the encoders; they
never import it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from virnuc_hpc.config import RunConfig
from virnuc_hpc.encoders.files import HASH_BLOCK, dnabert_is_random, file_sha256, resolve_dnabert_dir
from virnuc_hpc.encoders.files import dnabert_weights_file
from virnuc_hpc.errors import ModelNotFoundError

__all__ = ["DEMO", "HASH_BLOCK", "ModelFile", "file_sha256", "hash_models", "locate_models"]

DEMO = "demo"


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


def _esm2_is_random(path: Path) -> bool:
    from virnuc_hpc.encoders.esm2 import is_random_checkpoint
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
    from virnuc_hpc.encoders.esm2 import resolve_esm2_checkpoint

    demo = None
    if DEMO in (config.esm2_model, config.dnabert_model, config.classifier):
        from virnuc_hpc.models.demo import ensure_demo_models
        demo = ensure_demo_models(root=config.cache_dir)

    def record(role: str, spec: str, path: Path, weights: Path, random: bool) -> ModelFile:
        return ModelFile(role, spec, str(path), str(weights), "", random)

    out: dict[str, ModelFile] = {}
    esm2 = demo.esm2 if demo and config.esm2_model == DEMO else resolve_esm2_checkpoint(config.esm2_model, offline=config.offline)
    out["esm2"] = record("esm2", config.esm2_model, esm2, esm2, _esm2_is_random(esm2))
    dna = demo.dnabert if demo and config.dnabert_model == DEMO else resolve_dnabert_dir(config.dnabert_model, offline=config.offline)
    out["dnabert"] = record("dnabert", config.dnabert_model, dna, dnabert_weights_file(dna),
                            dnabert_is_random(dna))
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
            from virnuc_hpc.models.classifier import load_classifier
            checked = load_classifier(path, input_dim=None)  # small: refuse a bad file before workers start
            out["classifier"] = replace(record("classifier", config.classifier, path, path, False),
                                        sha256=checked.sha256)  # read once: hash_models keeps it
    return out
