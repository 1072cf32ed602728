"""Everything that touches the output directory.

Layout of OUTDIR:
    manifest.json                         run identity (inputs + configuration), written first
    config.yaml                           the effective configuration
    bags/bag-NNNNNN.nc                    one NetCDF file per bag, written atomically
    prediction_results.txt                VirNucPro-compatible, one row per kept frame
    prediction_results_highestscore.csv   VirNucPro-compatible (tab-separated), one row per chunk
    reads.tsv                             one row per input record: chunks, calls, what was missing
    viral.fna, *_identified_*.fa(a)       the reads called virus; the kept frames (sequences.py)
    run.json                              provenance and counts; written last, marks a finished run
    report.html, virnuc_mqc.json,         a page to look at (report.py) and MultiQC custom content
    virnuc_general_stats_mqc.json         (multiqc.py), made from the tables and run.json's content,
                                          just before it

Every file is written to a temporary name in the same directory and renamed into place, so a file
that exists is whole. Final outputs are removed when a run starts and written only when every bag
is done, so nothing that looks finished is left behind by a failed or killed run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import h5netcdf
import h5py
import numpy as np
import pandas as pd
import xarray as xr

from virnuc_hpc.outputs.calls import LABELS as CLASSES, labels_from_proba
from virnuc_hpc.errors import OutputError
from virnuc_hpc.outputs.layout import (BAG_NAME, BAGS_DIR, FAILED_BAGS, MANIFEST, PROGRESS, RUN_JSON,
                                       SAMPLES_DIR, bag_files)
from virnuc_hpc.outputs.lock import LOCK_NAME
from virnuc_hpc.outputs.records import read_json_object

ENGINE = "h5netcdf"
PREDICTIONS = "prediction_results.txt"
HIGHEST = "prediction_results_highestscore.csv"
READS = "reads.tsv"
CONFIG = "config.yaml"
RUN_LOG = "run.log"              # what a run logged (runtime/runlog.py), appended by each attempt
INT8_CHECK = "int8_check.json"   # an int8 run's self-check and its decision (runtime/int8_check.py)
PAIRS = "pairs.tsv"              # paired samples: one call per read pair
SAMPLES_TSV = "samples.tsv"      # several samples: one row of counts each
REPORT = "report.html"           # report.py, just before run.json
MQC_JSON = "virnuc_mqc.json"     # multiqc.py: MultiQC custom content, one row per sample
MQC_GENERAL_STATS = "virnuc_general_stats_mqc.json"  # multiqc.py: columns of General Statistics
#: viral.fna (or .fastq, gzip-compressed with ``compression: gzip``) of a sample; viral_1/viral_2
#: per mate file of a paired one (outputs/sequences.py)
VIRAL_OUTPUTS = tuple(f"{stem}{ext}{gz}" for stem in ("viral", "viral_1", "viral_2")
                      for ext in (".fna", ".fastq") for gz in ("", ".gz"))
#: --write-frames: VirNucPro's files, named after their input file, so told by how the name ends
FRAME_SUFFIXES = ("_identified_nucleotide.fa", "_identified_protein.faa")
SAMPLE_OUTPUTS = (PREDICTIONS, HIGHEST, READS, PAIRS, *VIRAL_OUTPUTS)
FINAL_OUTPUTS = (PREDICTIONS, HIGHEST, READS, PAIRS, *VIRAL_OUTPUTS, SAMPLES_TSV, RUN_JSON, FAILED_BAGS, REPORT,
                 MQC_JSON, MQC_GENERAL_STATS)
log = logging.getLogger(__name__)
RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: produced by randomly initialised models (virnuc-hpc demo/"
                          "test); these numbers are NOT a biological result")


# --- atomic files ---------------------------------------------------------------------------

def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = tmp_name(path)
    try:  # a new file (O_EXCL), never through a link placed at the temporary's name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


def remove_stale_temporaries(outdir: Path) -> None:
    """Temporaries of an earlier run that was killed (the lock says no run is writing now)."""
    for folder in (outdir, outdir / BAGS_DIR):
        if folder != outdir and not _own_dir(folder):  # OUTDIR itself may be a link; nothing in it is followed
            continue
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
    for stage in outdir.glob(".merge-*"):
        if stage.is_dir() and not stage.is_symlink():
            shutil.rmtree(stage, ignore_errors=True)


def check_writable(outdir: Path) -> None:
    """Fail early, with a clear message, when OUTDIR cannot be created or written."""
    try:
        (outdir / BAGS_DIR).mkdir(parents=True, exist_ok=True)
        probe = tmp_name(outdir / "probe")
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise OutputError(f"output directory {outdir} is not writable: {err.strerror or err}") from err


# --- manifest -------------------------------------------------------------------------------

def read_manifest(outdir: Path) -> dict[str, Any] | None:
    """The manifest of the run OUTDIR holds; None when there is none; ``{}`` when it is damaged
    (not one JSON object): said in a warning naming the file and line, it counts as another run's."""
    manifest, problem = read_json_object(outdir / MANIFEST)
    if problem is not None:
        log.warning("warning: %s", problem)
        return {}
    return manifest


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


CHECKSUM_SUFFIX = ".sha256"  # bags/bag-000001.nc.sha256: the sha256 of the bag file's bytes
LOCK = LOCK_NAME  # held by a running run (lock.py)
JOB_REGISTRY = "virnuc-jobs.jsonl"  # marks a job folder of `virnuc-hpc submit` (runtime/slurm.REGISTRY)


def owned_files(outdir: Path) -> list[Path]:
    """Every file virnuc-hpc writes in OUTDIR (told by name) that exists now: what --overwrite removes."""
    found = [outdir / name for name in (*FINAL_OUTPUTS, CONFIG, MANIFEST, RUN_LOG, INT8_CHECK)]
    found += frame_files(outdir)
    samples = outdir / SAMPLES_DIR
    if samples.is_dir() and not samples.is_symlink():
        found += [folder / name for folder in samples.iterdir() if folder.is_dir() and not folder.is_symlink()
                  for name in SAMPLE_OUTPUTS]
        found += [p for folder in samples.iterdir() for p in frame_files(folder)]
    found += bag_files(outdir)
    folder = outdir / BAGS_DIR
    if _own_dir(folder):  # every checksum named like ours, also one whose bag is gone (a kill between the writes)
        found += [p for p in folder.iterdir()
                  if p.name.endswith(CHECKSUM_SUFFIX) and BAG_NAME.fullmatch(p.name[:-len(CHECKSUM_SUFFIX)])]
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def foreign_entries(outdir: Path) -> list[Path]:
    """What OUTDIR holds that virnuc-hpc would not have written there: the user's own files.

    Ours: the names in ``owned_files``, the lock, our temporaries and merge folders, the
    (possibly empty) bags/ and samples/ folders, and a job folder of ``virnuc-hpc submit`` (its
    default is OUTDIR/slurm: the logs and scripts of the job writing here), told by its job
    registry; --overwrite never removes it."""
    if not outdir.is_dir():
        return []
    ours = set(owned_files(outdir))
    found: list[Path] = []
    for entry in sorted(outdir.iterdir()):
        if entry.name == LOCK or _is_temporary(entry.name) or is_job_folder(entry):
            continue
        if entry.name in (BAGS_DIR, SAMPLES_DIR) and entry.is_dir() and not entry.is_symlink():
            found += [p for p in _walk(entry) if p not in ours and not _is_temporary(p.name)]
        elif entry not in ours:
            found.append(entry)
    return found


def is_job_folder(path: Path) -> bool:
    """A folder (not a link) holding the job registry that `virnuc-hpc submit` writes first."""
    return path.is_dir() and not path.is_symlink() and (path / JOB_REGISTRY).is_file()


def _walk(folder: Path) -> list[Path]:
    """Files and links under folder (and empty folders other than sample folders we made)."""
    out: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            out += _walk(entry) if any(entry.iterdir()) else ([] if folder.name == SAMPLES_DIR else [entry])
        else:
            out.append(entry)
    return out


def _is_temporary(name: str) -> bool:
    return (name.startswith(".") and ".tmp-" in name) or name.startswith((".merge-", LOCK + "."))


def _own_dir(folder: Path) -> bool:
    """A real folder, not a link to one: the only kind a run reads, writes or clears inside OUTDIR."""
    return folder.is_dir() and not folder.is_symlink()


def frame_files(folder: Path) -> list[Path]:
    """The --write-frames files in a folder of ours (links too: the callers tell them apart)."""
    if not _own_dir(folder):
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(FRAME_SUFFIXES) and not _is_temporary(p.name))


def _named_like_a_bag(name: str) -> bool:
    stem = name[:-len(CHECKSUM_SUFFIX)] if name.endswith(CHECKSUM_SUFFIX) else name
    return BAG_NAME.fullmatch(stem) is not None


def linked_entries(outdir: Path) -> list[Path]:
    """Symbolic links inside OUTDIR where a run would read, write or remove its own files.

    A run follows no link inside OUTDIR: through ``bags`` linked elsewhere, --overwrite would
    remove and rewrite another folder's files, and a resume would take them for its own bags."""
    found = [outdir / name for name in (BAGS_DIR, SAMPLES_DIR, *FINAL_OUTPUTS, CONFIG, MANIFEST, RUN_LOG,
                                        INT8_CHECK)
             if (outdir / name).is_symlink()]
    found += [p for p in frame_files(outdir) if p.is_symlink()]
    bags, samples = outdir / BAGS_DIR, outdir / SAMPLES_DIR
    if _own_dir(bags):
        found += [p for p in bags.iterdir() if _named_like_a_bag(p.name) and p.is_symlink()]
    if _own_dir(samples):
        for folder in samples.iterdir():
            if folder.is_symlink():
                found.append(folder)
            elif folder.is_dir():
                found += [folder / name for name in SAMPLE_OUTPUTS if (folder / name).is_symlink()]
                found += [p for p in frame_files(folder) if p.is_symlink()]
    return sorted(found)


def refuse_links(outdir: Path) -> None:
    """Refuse an OUTDIR where a run would follow a symbolic link (``linked_entries``): nothing is
    written, removed or read outside OUTDIR."""
    found = linked_entries(outdir)
    if found:
        shown = ", ".join(str(p.relative_to(outdir)) for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise OutputError(
            f"{outdir} holds symbolic links where virnuc-hpc keeps its own files ({shown}); a run "
            "writes only inside its output directory and follows no link there: remove the links "
            "or give another output directory")


def clear_outputs(outdir: Path, *, bags: bool) -> None:
    """Remove our final tables; with ``bags``, every file we write (bags, checksums, manifest,
    config). The user's own files stay, also inside our folders."""
    for path in [outdir / name for name in FINAL_OUTPUTS] + frame_files(outdir):
        if path.is_file() and not path.is_symlink():
            path.unlink()
    samples = outdir / SAMPLES_DIR
    if samples.is_dir() and not samples.is_symlink():
        for folder in samples.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                continue
            for path in [folder / name for name in SAMPLE_OUTPUTS] + frame_files(folder):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
    if bags:
        for path in owned_files(outdir):
            path.unlink(missing_ok=True)


def remove_bags_beyond(outdir: Path, total: int) -> None:
    """Remove our bag files numbered ``total`` or more: left by an earlier run with more bags."""
    for path in bag_files(outdir):
        if int(path.name[4:10]) >= total:
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)


def checksum_path(bag_file: Path) -> Path:
    return bag_file.with_name(bag_file.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# --- bag files ------------------------------------------------------------------------------

#: bytes of each features mode: float32 (NetCDF-4), float16 (HDF5 half floats), none (ids and
#: probabilities only). See README, "Features".
FEATURE_MODES = ("float32", "float16", "none")
_STRING_COORDS = ("frame", "chunk_id", "read_id", "sample")
TABLES_GROUP = "tables"  # per-bag table parts, beside the features; xarray does not open groups
#: "viral": the records viral.fna is made from (outputs/sequences.py), in every bag, maybe empty
TABLE_PARTS = ("predictions", "chunk_calls", "reads", "ids", "problems", "viral")
FRAME_PARTS = ("nucleotide", "protein")  # only in the bags of a --write-frames run


def bag_path(outdir: Path, bag: Any) -> Path:
    return outdir / BAGS_DIR / f"{bag.name}.nc"


def write_bag(outdir: Path, bag: Any, frames: Any, dnabert: np.ndarray | None, esm2: np.ndarray | None,
              probability: np.ndarray | None, attrs: dict[str, Any], *, features: str = "float32",
              compression: str = "none", tables: dict[str, str] | None = None,
              counts: dict[str, int] | None = None) -> Path:
    """Write one bag (features per ``features`` mode, probabilities, frame coordinates and the
    bag's table parts) as one NetCDF-4/HDF5 file, atomically.

    ``frames`` has columns frame_id, chunk_id, read_id and ``record`` (record number in its file).
    """
    if features not in FEATURE_MODES:
        raise ValueError(f"features must be one of {FEATURE_MODES}, got {features!r}")
    n = len(frames.frame_id)
    packed = compression == "gzip"
    gz: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if packed else {}
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {name: {"dtype": "S1", **gz} for name in _STRING_COORDS}
    encoding["record"] = dict(gz)
    dims = {"dnabert_dim": 0, "esm2_dim": 0}
    if features != "none":
        assert dnabert is not None and esm2 is not None
        if dnabert.shape[0] != n or esm2.shape[0] != n:
            raise ValueError(f"{bag.name}: {n} frames but {dnabert.shape[0]}/{esm2.shape[0]} vectors")
        feats = np.concatenate([dnabert, esm2], axis=1).astype(np.float32, copy=False)
        data_vars["features"] = (("frame", "feature"), feats)
        # HDF5 stores whole chunks: rows per chunk split the bag evenly, so no chunk is mostly empty
        rows = -(-n // max(1, -(-n // 1024))) if n else 1
        encoding["features"] = {"chunksizes": (rows, feats.shape[1]), **gz}
        if features == "float16":
            encoding["features"]["dtype"] = "float16"
        dims = {"dnabert_dim": dnabert.shape[1], "esm2_dim": esm2.shape[1]}
    if probability is not None:
        data_vars["probability"] = (("frame", "class"), probability.astype(np.float32, copy=False))
        encoding["probability"] = dict(gz)
    coords: dict[str, Any] = {
        "frame": np.array(frames.frame_id, dtype=object),
        "chunk_id": ("frame", np.array(frames.chunk_id, dtype=object)),
        "read_id": ("frame", np.array(frames.read_id, dtype=object)),
        "sample": ("frame", np.array([bag.sample] * n, dtype=object)),
        "record": ("frame", np.asarray(frames.record, dtype=np.int64)),
        "class": np.array(CLASSES, dtype=object),
    }
    if features != "none":
        source = ["dnabert_s"] * dims["dnabert_dim"] + ["esm2"] * dims["esm2_dim"]
        coords["feature"] = np.arange(len(source), dtype=np.int32)
        coords["source"] = ("feature", np.array(source, dtype=object))
    ds = xr.Dataset(data_vars, coords=coords, attrs={
        **attrs, "bag": bag.index, "bag_digest": bag.digest, "n_frames": n, "features_mode": features,
        "input_file": bag.path, "first_record": bag.first_record, "n_records": bag.n_records, **dims})
    # Serialise in memory, then write plain bytes: HDF5 crashes the process on a full disk,
    # while a Python write raises ENOSPC that we can report.
    # Inside a Dask worker xarray would take a cluster-wide lock for the in-memory file; this
    # write is local to the task, so a plain (synchronous) writer is right.
    with dask.config.set(scheduler="synchronous"):
        data = ds.to_netcdf(None, engine=ENGINE, encoding=encoding, invalid_netcdf=features == "float16")
    data = bytes(data) if not isinstance(data, bytes) else data
    if tables is not None:
        data = _with_tables(data, tables, counts or {})
    path = bag_path(outdir, bag)
    # The checksum first: a kill between the two writes leaves a checksum that matches no bag file
    write_text_atomic(checksum_path(path), hashlib.sha256(data).hexdigest() + "\n")
    write_bytes_atomic(path, data)
    return path


def _with_tables(data: bytes, tables: dict[str, str], counts: dict[str, int]) -> bytes:
    """Add the bag's table parts (UTF-8 text, gzip-compressed) as a group of the in-memory file."""
    buffer = io.BytesIO(data)
    with h5netcdf.File(buffer, "a") as f:
        group = f.create_group(TABLES_GROUP)
        for name in (*TABLE_PARTS, *(part for part in FRAME_PARTS if part in tables)):
            raw = np.frombuffer(tables.get(name, "").encode(), dtype=np.uint8)
            group.dimensions[f"{name}_bytes"] = len(raw)
            var = group.create_variable(name, (f"{name}_bytes",), dtype=np.uint8,
                                        **({"compression": "gzip", "compression_opts": 1,
                                            "chunks": (min(len(raw), 1 << 20),)} if len(raw) else {}))
            if len(raw):
                var[...] = raw
        for key, value in counts.items():
            group.attrs[key] = int(value)
    return buffer.getvalue()


def bag_is_complete(outdir: Path, bag: Any, *, with_probability: bool) -> bool:
    """True when the bag's file exists, matches the checksum recorded when it was written, opens,
    and belongs to exactly this bag of this run."""
    return reusable_bag(outdir, bag, with_probability=with_probability) is not None


def reusable_bag(outdir: Path, bag: Any, *, with_probability: bool,
                 parts: Sequence[str] = TABLE_PARTS) -> str | None:
    """The ``numerics`` attribute of a finished bag that may be reused ("" if it has none), else None.

    The bag must hold the table ``parts`` the run needs (a bag of an earlier version, or of a run
    without --write-frames, lacks some: it is recomputed).

    A bag whose bytes differ from its recorded checksum (edited or damaged after it was written)
    is recomputed, with a warning."""
    path = bag_path(outdir, bag)
    if not path.is_file():
        return None
    try:
        recorded = checksum_path(path).read_text().strip()
    except OSError:
        return None  # never finished writing (or written before checksums were kept)
    if file_sha256(path) != recorded:
        log.warning("%s does not match the checksum recorded when it was written (edited or damaged "
                    "since?): it is recomputed", path)
        return None
    try:  # h5netcdf directly: no cached file handles, so a file replaced on disk is seen as it is
        with h5netcdf.File(path, "r") as f:
            ok = (f.attrs.get("bag_digest") == bag.digest and TABLES_GROUP in f.groups
                  and set(parts) <= set(f.groups[TABLES_GROUP].variables)
                  and (not with_probability or "probability" in f.variables))
            return str(f.attrs.get("numerics", "")) if ok else None
    except Exception:  # unreadable or truncated: recompute it
        return None


@dataclass(frozen=True)
class BagTables:
    """One bag's table parts as text, and its counts (read back from its file)."""

    parts: dict[str, str]
    counts: dict[str, int]

    def __getitem__(self, name: str) -> str:
        return self.parts[name]


def read_bag_tables(path: Path, names: Sequence[str] = TABLE_PARTS) -> BagTables:
    """Some (default all) of a bag's table parts, and its counts. h5py directly: the tables are
    plain byte arrays, and h5netcdf's dimension bookkeeping would cost more than reading them."""
    with h5py.File(path, "r") as f:
        group = f[TABLES_GROUP]
        parts = {name: group[name][()].tobytes().decode() for name in names}
        counts = {k: int(np.asarray(v).reshape(-1)[0]) for k, v in group.attrs.items()
                  if not k.startswith("_") and np.size(v) == 1}
    return BagTables(parts, counts)


def read_bag_frames(path: Path) -> tuple[list[str], list[str]]:
    """(frame ids, read ids) of one bag, in order."""
    with h5netcdf.File(path, "r") as f:
        return [_text(x) for x in f.variables["frame"][...]], [_text(x) for x in f.variables["read_id"][...]]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):  # a char array row
        return value.tobytes().decode().rstrip("\0")
    return str(value)


def open_features(outdir: str | Path) -> xr.Dataset:
    """One lazy Dataset over all bags of OUTDIR, frames in input order (coordinate ``sample`` says
    which sample a frame belongs to; frame ids are unique within a sample)."""
    outdir = Path(outdir)
    try:  # a finished run names its bags: files that merely look like ours are not read
        total = int(json.loads((outdir / RUN_JSON).read_text())["bags"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        total = None
    if total is not None:
        paths = [outdir / BAGS_DIR / f"bag-{i:06d}.nc" for i in range(total)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{outdir}: {len(missing)} of the run's {total} bag files are missing "
                                    f"(e.g. {missing[0]}); rerun the same command to recompute them")
    else:
        paths = bag_files(outdir)
        if paths:
            import warnings
            warnings.warn(f"{outdir} holds an unfinished run: only {len(paths)} bag file(s) are present",
                          stacklevel=2)
    if not paths:
        raise FileNotFoundError(f"no bag files under {outdir / BAGS_DIR}")
    return xr.open_mfdataset(paths, engine=ENGINE, combine="nested", concat_dim="frame",
                             data_vars="minimal", coords="minimal", compat="override",
                             join="override", chunks={}, combine_attrs="drop_conflicts")


# --- VirNucPro-compatible tables (pure functions) -------------------------------------------

PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"


def format_prediction_rows(frame_ids: Sequence[str], probability: np.ndarray) -> str:
    """prediction_results.txt's rows (no header): frames of consecutive bags concatenate."""
    prob = np.asarray(probability, dtype=np.float32)
    return "".join(f"{fid}\t{label}\t{str(p[0])}\t{str(p[1])}\n"
                   for fid, label, p in zip(frame_ids, labels_from_proba(prob), prob))


def format_prediction_results(frame_ids: Sequence[str], probability: np.ndarray) -> str:
    return PREDICTION_HEADER + format_prediction_rows(frame_ids, probability)


def chunk_calls(frame_ids: Sequence[str], probability: np.ndarray) -> dict[str, bool]:
    """Chunk id (frame id minus its last 2 characters) -> max P(virus) >= max P(others)."""
    prob = np.asarray(probability, dtype=np.float32).reshape(-1, 2)
    best = pd.DataFrame({"others": prob[:, 0], "virus": prob[:, 1]},
                        index=pd.Index([fid[:-2] for fid in frame_ids])).groupby(level=0, sort=False).max()
    return dict(zip(best.index.tolist(), (best["virus"].to_numpy() >= best["others"].to_numpy()).tolist()))


def format_highest_scores(calls: dict[str, bool]) -> str:
    lines = ["Modified_ID\tIs_Virus\n"]
    lines += [f"{chunk}\t{calls[chunk]}\n" for chunk in sorted(calls)]
    return "".join(lines)


def format_columns(header: Iterable[str], columns: Sequence[Sequence[Any]],
                   comment: str | None = None) -> str:
    """A TSV (optional '# comment' line, header, rows) from data held as columns: each column is
    converted to text once, then joined row-wise."""
    head = ([f"# {comment}\n"] if comment else []) + ["\t".join(header) + "\n"]
    return "".join(head) + format_rows(columns)


def format_rows(columns: Sequence[Sequence[Any]]) -> str:
    """TSV rows (no header) from columns; '' when there are none."""
    text = [list(map(str, column)) for column in columns]
    body = "\n".join(map("\t".join, zip(*text)))
    return body + "\n" if body else ""


