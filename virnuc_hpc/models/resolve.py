"""Resolving model specifications to local files, once, on the client.

Workers receive plain paths; the run's identity records each file's sha256 so that a resumed run
with other weights is refused. ``demo`` resolves to random-weight models made on the fly.

A model name is looked up in the models directory first (what ``virnuc-hpc models fetch`` staged:
``esm2_t36_3B_UR50D``, ``zhihan1996/DNABERT-S``, ``500`` or ``500_model.pth``), then as a path,
then in the torch-hub / Hugging Face caches. When a models directory is configured
(RunConfig.models_dir), nothing is downloaded at run time: compute nodes are offline, and a model
missing there is an error naming the fetch command, not a silent download on some node.

This module only orchestrates: file handling (offline switch, sha256, DNABERT directories) lives in
encoders/files.py, ESM-2 checkpoint lookup in encoders/esm2.py. It may import the encoders; they
never import it.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from virnuc_hpc.config import RunConfig
from virnuc_hpc.encoders.files import HASH_BLOCK, dnabert_is_random, file_sha256, resolve_dnabert_dir
from virnuc_hpc.encoders.files import dnabert_weights_file, weights_sha256
from virnuc_hpc.errors import ModelNotFoundError
from virnuc_hpc.models.sources import CLASSIFIER_LENGTHS, classifier_file, default_models_dir, esm2_file

__all__ = ["DEMO", "HASH_BLOCK", "ModelFile", "file_sha256", "hash_models", "locate_models", "models_directory",
           "staged_model"]

DEMO = "demo"


@dataclass(frozen=True)
class ModelFile:
    role: str          # esm2 | dnabert | classifier
    spec: str          # what the user asked for
    path: str          # the local file or directory used
    weights: str       # the file whose checksum identifies the weights (a Hugging Face ESM-2 directory: weights_sha256)
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
            digests = pool.map(lambda role: weights_sha256(Path(located[role].weights)), todo)
            for role, digest in zip(todo, digests):
                out[role] = replace(located[role], sha256=digest)
    return out


def models_directory(config: RunConfig) -> Path:
    """The configured models directory, else the per-user default (sources.default_models_dir)."""
    return Path(config.models_dir).expanduser() if config.models_dir else default_models_dir()


def staged_model(directory: Path, role: str, spec: str) -> Path | None:
    """What a model name names inside the models directory, when it is there; paths that are
    absolute are the user's own and are never looked up there."""
    if not spec or Path(spec).expanduser().is_absolute():
        return None
    names = [spec]
    if role == "esm2" and not spec.endswith(".pt"):
        names.append(esm2_file(spec))
    if role == "classifier" and spec in {str(n) for n in CLASSIFIER_LENGTHS}:
        names = [classifier_file(spec)]
    for name in names:
        path = directory / name
        if path.is_dir() if role == "dnabert" else path.exists():
            return path
    return None


#: Names `models fetch` can stage, by role, and its option for them.
_FETCHABLE = {"esm2": ("--esm2", re.compile(r"esm2_t\d+_\d+[MB]_UR50D")),
              "dnabert": ("--dnabert", re.compile(r"[\w.-]+/[\w.-]+")),
              "classifier": ("--classifiers", re.compile(r"300|500"))}


def _not_staged(role: str, spec: str, directory: Path, err: Exception) -> ModelNotFoundError:
    option, names = _FETCHABLE[role]
    name = spec.removesuffix(".pt") if role == "esm2" else spec.removesuffix("_model.pth")
    said = "models fetch" in str(err)  # the encoder's own message already names the command
    how = f"; `virnuc-hpc models fetch {option} {name}` stages it there" if names.fullmatch(name) and not said else ""
    return ModelNotFoundError(f"{err} (not in the models directory {directory} either{how})")


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

    directory = models_directory(config)
    offline = config.offline or config.models_dir is not None  # staged models: no download at run time

    def find(role: str, spec: str, resolve: Any) -> Path:
        try:
            return resolve(staged_model(directory, role, spec) or spec, offline=offline)
        except ModelNotFoundError as err:
            if Path(spec).expanduser().is_absolute():
                raise
            raise _not_staged(role, spec, directory, err) from err

    out: dict[str, ModelFile] = {}
    problems: list[ModelNotFoundError] = []  # every missing model named at once, not one per attempt
    try:
        esm2 = demo.esm2 if demo and config.esm2_model == DEMO else find("esm2", config.esm2_model,
                                                                         resolve_esm2_checkpoint)
        out["esm2"] = record("esm2", config.esm2_model, esm2, esm2, _esm2_is_random(esm2))
    except ModelNotFoundError as err:
        problems.append(err)
    try:
        dna = demo.dnabert if demo and config.dnabert_model == DEMO else find(
            "dnabert", config.dnabert_model, lambda spec, offline: resolve_dnabert_dir(str(spec), offline=offline))
        out["dnabert"] = record("dnabert", config.dnabert_model, dna, dnabert_weights_file(dna),
                                dnabert_is_random(dna))
    except ModelNotFoundError as err:
        problems.append(err)
    if classify:
        try:
            out["classifier"] = _locate_classifier(config, directory, demo, record)
        except ModelNotFoundError as err:
            problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ModelNotFoundError(f"{len(problems)} models are missing:\n" + "\n".join(f"- {p}" for p in problems))
    return out


def _locate_classifier(config: RunConfig, directory: Path, demo: Any, record: Any) -> ModelFile:
    """The classifier file, loaded once here: it is small, and a bad file is refused before workers start."""
    if not config.classifier:
        raise ModelNotFoundError("predict needs a classifier: pass --classifier 500_model.pth "
                                 "(VirNucPro's 300_model.pth / 500_model.pth), or use `embed`")
    if demo and config.classifier == DEMO:
        return record("classifier", DEMO, demo.classifier, demo.classifier, True)
    path = staged_model(directory, "classifier", config.classifier) or Path(config.classifier).expanduser()
    if not path.is_file():
        err = ModelNotFoundError(f"classifier file {path} does not exist (VirNucPro ships "
                                 "300_model.pth and 500_model.pth in its repository)")
        if path.is_absolute():
            raise err
        raise _not_staged("classifier", config.classifier, directory, err)
    from virnuc_hpc.models.classifier import load_classifier
    checked = load_classifier(path, input_dim=None)
    return replace(record("classifier", config.classifier, path, path, False),
                   sha256=checked.sha256)  # read once: hash_models keeps it
