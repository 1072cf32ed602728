"""What a Slurm job will need, checked on the submitting machine before anything is queued.

A job that waits hours for a GPU and then fails at once on a missing model file, a typo in an
input path or a locked OUTDIR wastes the wait. These checks read little: the first bytes of each
input, the classifier (small), enough of each encoder file to know what it is; no model is hashed,
nothing is downloaded (the job's node may have no network) and nothing is written. Each problem
raises a ``UserError`` whose message names the file or option.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from virnuc_hpc.config import RunConfig, with_environment
from virnuc_hpc.errors import ConfigError, ModelFileError, ModelNotFoundError, OutputError, OutputLockedError
from virnuc_hpc.models.manifest import read_manifest
from virnuc_hpc.models.resolve import DEMO, ModelFile, locate_models, models_directory


def check_job(inputs: Sequence[str], samplesheet: str | None, outdirs: Sequence[Path], folder: Path,
              config: RunConfig, *, classify: bool, python: str | None = None,
              launcher: str | None = None) -> None:
    """Everything below, in the order a user would fix it: inputs, models, output, interpreter."""
    check_inputs(inputs, samplesheet)
    check_models(config, classify=classify)
    for outdir in outdirs:
        if outdir == folder:
            raise ConfigError(f"the job folder {folder} is also the output directory of an input: "
                              "give another --folder")
        check_outdir(outdir, folder)
    _check_creatable(folder, "job folder (--folder)")
    check_python(python, launcher)


def check_inputs(inputs: Sequence[str], samplesheet: str | None) -> None:
    """Every input file (also those a samplesheet names) exists, is readable and holds FASTA/FASTQ."""
    from virnuc_hpc.reads.reading import sniff
    from virnuc_hpc.reads.samples import read_samplesheet, samples_from_paths

    samples = read_samplesheet(samplesheet) if samplesheet else samples_from_paths(list(inputs))
    for sample in samples:
        for file in sample.files:
            sniff(file.path)


def check_models(config: RunConfig, *, classify: bool) -> None:
    """The models are on this machine (no download), the classifier loads, and its chunk size is
    the run's (a 500_model on 300-bp chunks silently misclassifies)."""
    config = with_environment(config)
    try:
        located = locate_models(config.model_copy(update={"offline": True}), classify=classify)
    except ModelNotFoundError as err:
        if config.offline or "offline" not in str(err):
            raise
        raise ModelNotFoundError(f"{err}\n(submit looks for the job's models on this machine and downloads "
                                 "nothing: a compute node may have no network; stage them before submitting)"
                                 ) from err
    check_staged_sizes(config, located)
    classifier = located.get("classifier")
    if classifier is not None and classifier.spec != DEMO:
        from virnuc_hpc.models.classifier import check_chunk_size
        mismatch = check_chunk_size(classifier.path, config.expected_length)
        if mismatch:
            raise ConfigError(f"{mismatch}: pass the classifier's --expected-length, or the classifier "
                              "for this chunk size")


def check_staged_sizes(config: RunConfig, located: dict[str, ModelFile]) -> None:
    """Files the job takes from the models directory have the sizes its manifest recorded: a copy
    cut short on its way to a shared disk fails here, not hours later on the compute node (sizes
    only; ``models verify`` re-hashes)."""
    directory = models_directory(config).resolve()
    staged = read_manifest(directory, required=False)
    for model in located.values():
        for path in _model_files(Path(model.path)):
            try:
                name = path.resolve().relative_to(directory).as_posix()
            except ValueError:
                continue  # the user's own file, outside the models directory
            entry = staged.get(name)
            if entry is not None and path.stat().st_size != entry.size:
                raise ModelFileError(f"{path} is {path.stat().st_size:,} bytes, but the models manifest "
                                     f"records {entry.size:,}: the copy is incomplete or altered; run "
                                     f"`virnuc-hpc models verify --models-dir {directory}`")


def _model_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def check_outdir(outdir: Path, folder: Path) -> None:
    """OUTDIR can be written, is not in use by a live run, and holds nothing but a run of ours (or
    this submission's job folder)."""
    from virnuc_hpc.outputs import lock, store

    if not outdir.exists():
        _check_creatable(outdir, "output directory")
        return
    if not outdir.is_dir():
        raise OutputError(f"output directory {outdir} is not a directory")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {outdir} is not writable")
    held = lock.read_lock(outdir)
    if held is not None and not held["stale"]:
        holder = None if held.get("unreadable") else held
        raise OutputLockedError(f"output directory {outdir} is in use by a live run: "
                                f"{lock.describe_holder(holder, held['age_s'])}; wait for it to finish or "
                                "choose another output directory (-o)")
    if store.read_manifest(outdir) is None:
        found = [p for p in (*store.foreign_entries(outdir), *store.owned_files(outdir))
                 if p != folder and folder not in p.parents]
        if found:
            shown = ", ".join(str(p.relative_to(outdir)) for p in sorted(found)[:5])
            raise OutputError(f"{outdir} is not empty and was not written by virnuc-hpc (it holds {shown}"
                              f"{', ...' if len(found) > 5 else ''}); give a new or empty output directory")


def check_python(python: str | None, launcher: str | None) -> None:
    """``--python`` names an interpreter here, unless a launcher (a container) provides it."""
    if python is None or launcher is not None or "/" not in python:
        return  # the container's path, or a name the job finds on its PATH (after --setup)
    if not (Path(python).is_file() and os.access(python, os.X_OK)):
        raise ConfigError(f"--python {python}: no such executable file")


def _check_creatable(path: Path, what: str) -> None:
    """``path`` exists as a writable directory, or its nearest existing parent is one."""
    target = path
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if not target.is_dir():
        raise OutputError(f"{what} {path} cannot be made: {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable ({target} is not)")
