"""Everything that touches the output directory.

Layout of OUTDIR:
    manifest.json                         run identity (inputs + configuration), written first
    config.yaml                           the effective configuration
    bags/bag-NNNNNN.nc                    one NetCDF file per bag, written atomically
    prediction_results.txt                VirNucPro-compatible, one row per kept frame
    prediction_results_highestscore.csv   VirNucPro-compatible (tab-separated), one row per chunk
    reads.tsv                             one row per input record: chunks, calls, what was missing
    run.json                              provenance and counts; written last, marks a finished run

Every file is written to a temporary name in the same directory and renamed into place, so a file
that exists is whole. Final outputs are removed when a run starts and written only when every bag
is done, so nothing that looks finished is left behind by a failed or killed run.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dask
import h5netcdf
import numpy as np
import pandas as pd
import xarray as xr

from .bags import Bag
from .classifier import LABELS as CLASSES, labels_from_proba

ENGINE = "h5netcdf"
BAGS_DIR = "bags"
MANIFEST = "manifest.json"
PREDICTIONS = "prediction_results.txt"
HIGHEST = "prediction_results_highestscore.csv"
READS = "reads.tsv"
RUN_JSON = "run.json"
CONFIG = "config.yaml"
FAILED_BAGS = "failed_bags.tsv"  # only after bags that kept killing their worker
FINAL_OUTPUTS = (PREDICTIONS, HIGHEST, READS, RUN_JSON, FAILED_BAGS)
RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: produced by randomly initialised models (virnuc-hpc demo/"
                          "test); these numbers are NOT a biological result")


class OutputError(RuntimeError):
    """The output directory cannot be used (unwritable, full, or holds another run)."""


# --- atomic files ---------------------------------------------------------------------------

def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


def remove_stale_temporaries(outdir: Path) -> None:
    for folder in (outdir, outdir / BAGS_DIR):
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def check_writable(outdir: Path) -> None:
    """Fail early, with a clear message, when OUTDIR cannot be created or written."""
    try:
        (outdir / BAGS_DIR).mkdir(parents=True, exist_ok=True)
        probe = _tmp_name(outdir / "probe")
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise OutputError(f"output directory {outdir} is not writable: {err.strerror or err}") from err


# --- manifest -------------------------------------------------------------------------------

def read_manifest(outdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((outdir / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def bag_files(outdir: str | Path) -> list[Path]:
    """The bag files in OUTDIR, in bag order (written atomically: each one present is whole)."""
    return sorted((Path(outdir) / BAGS_DIR).glob("bag-*.nc"))


def clear_outputs(outdir: Path, *, bags: bool) -> None:
    for name in FINAL_OUTPUTS:
        (outdir / name).unlink(missing_ok=True)
    if bags:
        for path in bag_files(outdir):
            path.unlink()
        (outdir / MANIFEST).unlink(missing_ok=True)


# --- bag files ------------------------------------------------------------------------------

def bag_path(outdir: Path, bag: Bag) -> Path:
    return outdir / BAGS_DIR / f"{bag.name}.nc"


def write_bag(outdir: Path, bag: Bag, dnabert: np.ndarray, esm2: np.ndarray,
              probability: np.ndarray | None, attrs: dict[str, Any]) -> Path:
    """Write one bag's features (and probabilities) as NetCDF, atomically."""
    n = len(bag)
    if dnabert.shape[0] != n or esm2.shape[0] != n:
        raise ValueError(f"{bag.name}: {n} frames but {dnabert.shape[0]}/{esm2.shape[0]} vectors")
    features = np.concatenate([dnabert, esm2], axis=1).astype(np.float32, copy=False)
    source = np.array(["dnabert_s"] * dnabert.shape[1] + ["esm2"] * esm2.shape[1], dtype=object)
    data_vars: dict[str, Any] = {"features": (("frame", "feature"), features)}
    if probability is not None:
        data_vars["probability"] = (("frame", "class"), probability.astype(np.float32, copy=False))
    ds = xr.Dataset(
        data_vars,
        coords={
            "frame": np.array(bag.frame_ids, dtype=object),
            "frame_index": ("frame", np.arange(bag.start, bag.start + n, dtype=np.int64)),
            "chunk_id": ("frame", np.array(bag.chunk_ids, dtype=object)),
            "read_id": ("frame", np.array(bag.read_ids, dtype=object)),
            "feature": np.arange(features.shape[1], dtype=np.int32),
            "source": ("feature", source),
            "class": np.array(CLASSES, dtype=object),
        },
        attrs={**attrs, "bag": bag.index, "bag_digest": bag.digest, "n_frames": n,
               "dnabert_dim": dnabert.shape[1], "esm2_dim": esm2.shape[1]},
    )
    rows = max(1, min(n, 1024))
    encoding = {"features": {"chunksizes": (rows, features.shape[1])}}
    # Serialise in memory, then write plain bytes: HDF5 crashes the process on a full disk,
    # while a Python write raises ENOSPC that we can report.
    # Inside a Dask worker xarray would take a cluster-wide lock for the in-memory file; this
    # write is local to the task, so a plain (synchronous) writer is right.
    with dask.config.set(scheduler="synchronous"):
        data = ds.to_netcdf(None, engine=ENGINE, encoding=encoding)
    path = bag_path(outdir, bag)
    write_bytes_atomic(path, bytes(data) if not isinstance(data, bytes) else data)
    return path


def bag_is_complete(outdir: Path, bag: Bag, *, with_probability: bool) -> bool:
    """True when the bag's file exists, opens, and belongs to exactly this bag of this run."""
    path = bag_path(outdir, bag)
    if not path.is_file():
        return False
    try:  # h5netcdf directly: no cached file handles, so a file replaced on disk is seen as it is
        with h5netcdf.File(path, "r") as f:
            return (f.attrs.get("bag_digest") == bag.digest and f.dimensions["frame"].size == len(bag)
                    and (not with_probability or "probability" in f.variables))
    except Exception:  # unreadable or truncated: recompute it
        return False


def read_bag_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    with h5netcdf.File(path, "r") as f:
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in f.variables["frame"][...]]
        return ids, np.asarray(f.variables["probability"][...], dtype=np.float32)


def open_features(outdir: str | Path) -> xr.Dataset:
    """One lazy Dataset over all bags of OUTDIR, frames in input order."""
    outdir = Path(outdir)
    paths = bag_files(outdir)
    if not paths:
        raise FileNotFoundError(f"no bag files under {outdir / BAGS_DIR}")
    if not (outdir / RUN_JSON).is_file():
        import warnings
        warnings.warn(f"{outdir} holds an unfinished run: only {len(paths)} bag file(s) are present",
                      stacklevel=2)
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
    text = [list(map(str, column)) for column in columns]
    head = ([f"# {comment}\n"] if comment else []) + ["\t".join(header) + "\n"]
    body = "\n".join(map("\t".join, zip(*text)))
    return "".join(head) + (body + "\n" if body else "")


