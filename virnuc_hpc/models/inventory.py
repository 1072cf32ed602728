"""``models verify`` and ``models list``: what a models directory holds, checked offline.

Why: files copied onto a cluster's shared disk arrive truncated or altered more often than one
expects (a full quota, an interrupted rsync), and a bad weight file otherwise surfaces as a
confusing load error inside a job, hours later. verify re-hashes every file against the manifest
and opens each model through the same safe loaders a run uses (weights-only, no remote code),
so a node that passes verify loads the models.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from virnuc_hpc.encoders.files import dnabert_is_random, file_sha256
from virnuc_hpc.errors import ModelFileError, UserError
from virnuc_hpc.models.manifest import Entry, read_manifest


@dataclass(frozen=True)
class Check:
    file: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Staged:
    entry: Entry
    present: bool
    random_weights: bool | None    # None: cannot tell (classifiers carry no flag) or not readable


def _file_problem(directory: Path, entry: Entry) -> str | None:
    path = directory / entry.file
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.size:
        return f"{'truncated' if size < entry.size else 'wrong size'}: {size:,} bytes, the manifest says {entry.size:,}"
    if file_sha256(path) != entry.sha256:
        return "altered: its sha256 differs from the manifest's"
    return None


def _open_esm2(directory: Path, entries: list[Entry]) -> str:
    from virnuc_hpc.encoders.esm2 import KNOWN_MODELS, read_esm2_checkpoint

    (entry,) = entries
    cfg, _, _ = read_esm2_checkpoint(directory / entry.file)
    shape = (cfg.num_layers, cfg.embed_dim, cfg.attention_heads)
    if entry.model in KNOWN_MODELS and KNOWN_MODELS[entry.model] != shape:
        raise ModelFileError(f"{entry.file}: holds an ESM-2 of {shape[0]} layers, {shape[1]} dim, {shape[2]} heads; "
                        f"{entry.model} has {KNOWN_MODELS[entry.model]}")
    return f"ESM-2, {cfg.num_layers} layers, {cfg.embed_dim} dim, {cfg.attention_heads} heads"


def _open_dnabert(directory: Path, entries: list[Entry]) -> str:
    import warnings

    from virnuc_hpc.encoders.dnabert import build_model, read_config, read_tokenizer, read_weights

    model_dir = (directory / entries[0].file).parent
    cfg = read_config(model_dir)
    read_tokenizer(model_dir, cfg)
    checkpoint, weights = read_weights(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown extra tensors are reported by a run, not here
        build_model(cfg, checkpoint, weights)
    return (f"DNABERT-2, {cfg.num_hidden_layers} layers, {cfg.hidden_size} dim, "
            f"vocabulary {cfg.vocab_size}")


def _open_classifier(directory: Path, entries: list[Entry]) -> str:
    from virnuc_hpc.models.classifier import load_classifier

    (entry,) = entries
    model = load_classifier(directory / entry.file, input_dim=None)
    return f"VirNucPro classifier, {model.input_dim} input features, hidden {model.hidden_dim}"


_OPENERS: dict[str, Callable[[Path, list[Entry]], str]] = {
    "esm2": _open_esm2, "dnabert": _open_dnabert, "classifier": _open_classifier}


def verify(directory: Path) -> list[Check]:
    """One Check per staged file, then one per model opened (only models whose files are whole)."""
    manifest = read_manifest(directory)
    entries = list(manifest.values())
    with ThreadPoolExecutor(min(4, max(len(entries), 1)), thread_name_prefix="virnuc-verify") as pool:
        problems = list(pool.map(lambda e: _file_problem(directory, e), entries))
    checks = [Check(e.file, p is None, p or f"{e.size:,} bytes, sha256 {e.sha256[:16]}...")
              for e, p in zip(entries, problems)]
    bad = {c.file for c in checks if not c.ok}
    models: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        models.setdefault((e.role, e.model), []).append(e)
    for (role, model), files in models.items():
        label = files[0].file if len(files) == 1 else str(Path(files[0].file).parent)
        if bad & {f.file for f in files}:
            checks.append(Check(label, False, f"{role} {model} not opened: a file of it failed above"))
            continue
        opener = _OPENERS.get(role)
        if opener is None:
            checks.append(Check(label, False, f"unknown role {role!r} in the manifest"))
            continue
        try:
            checks.append(Check(label, True, opener(directory, files)))
        except UserError as err:
            checks.append(Check(label, False, str(err)))
    return checks


def _is_random(directory: Path, entry: Entry) -> bool | None:
    path = directory / entry.file
    try:
        if entry.role == "esm2":
            from virnuc_hpc.encoders.esm2 import is_random_checkpoint
            return is_random_checkpoint(path)
        if entry.role == "dnabert":
            return dnabert_is_random(path.parent)
    except UserError:
        return None
    return None


def staged(directory: Path) -> list[Staged]:
    """The manifest's files, whether each is present, and the random-weight flag where one exists.
    Nothing is hashed (``verify`` does): listing stays instant for a 6 GB directory."""
    out = []
    for entry in read_manifest(directory).values():
        present = (directory / entry.file).is_file()
        out.append(Staged(entry, present, _is_random(directory, entry) if present else None))
    return out


def partial_downloads(directory: Path) -> list[Path]:
    """``.part`` files an interrupted fetch left (the next fetch resumes them)."""
    return sorted(directory.rglob("*.part"))
