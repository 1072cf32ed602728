"""Everything that touches the output directory.

Layout of OUTDIR:
    manifest.json                         run identity (inputs + configuration), written first
    config.yaml                           the effective configuration
    bags/bag-NNNNNN.nc                    one file per bag, written atomically, in the bag format
                                          (bag_format.py; NetCDF-4 today: netcdf_bags.py), and
    bags/bag-NNNNNN.nc.sha256             its checksum, written just before it (checksums.py)
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

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Several of these names are re-exported: callers use store.write_text_atomic, store.TABLE_PARTS...
from virnuc_hpc.checksums import CHECKSUM_SUFFIX, checksum_path, checksum_text, file_sha256, recorded_checksum  # noqa: F401
from virnuc_hpc.outputs.atomic import tmp_name, write_bytes_atomic, write_text_atomic  # noqa: F401
from virnuc_hpc.outputs.bag_format import (FEATURE_MODES, FRAME_PARTS, SOURCE_LABELS, TABLE_PARTS,  # noqa: F401
                                           BagFormat, BagPayload, BagTables)
from virnuc_hpc.errors import OutputError
from virnuc_hpc.outputs.layout import (BAG_NAME, BAGS_DIR, FAILED_BAGS, JOB_REGISTRY, MANIFEST, PROGRESS,
                                       RUN_JSON, SAMPLES_DIR, bag_files)
from virnuc_hpc.outputs.lock import LOCK_NAME
from virnuc_hpc.outputs.netcdf_bags import NetCDFBags
from virnuc_hpc.outputs.records import read_json_object
from virnuc_hpc.outputs.run_record import RunRecord
from virnuc_hpc.outputs.table_text import (PREDICTION_HEADER, chunk_calls, format_columns,  # noqa: F401
                                           format_highest_scores, format_prediction_results,
                                           format_prediction_rows, format_rows)

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

#: how bags are encoded on disk (bag_format.py says what a format provides)
BAGS: BagFormat = NetCDFBags()
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


# --- temporaries (outputs/atomic.py writes every file) ---------------------------------------

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


LOCK = LOCK_NAME  # held by a running run (lock.py)


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


# --- bag files ------------------------------------------------------------------------------

def bag_path(outdir: Path, bag: Any) -> Path:
    return outdir / BAGS_DIR / f"{bag.name}{BAGS.suffix}"


def write_bag(outdir: Path, bag: Any, frames: Any, parts: Sequence[tuple[str, np.ndarray]] | None,
              probability: np.ndarray | None, attrs: dict[str, Any], *, features: str = "float32",
              compression: str = "none", tables: dict[str, str] | None = None,
              counts: dict[str, int] | None = None, sources: Mapping[str, str] | None = None) -> Path:
    """Write one bag (features per ``features`` mode, probabilities, frame coordinates and the
    bag's table parts) in the bag format, atomically, its checksum first.

    ``frames`` has columns frame_id, chunk_id, read_id and ``record`` (record number in its file).
    ``parts`` is (role, vectors) per encoder in feature column order (not needed with features
    "none"); ``sources`` labels each role's columns (default ``SOURCE_LABELS``, else the role).
    """
    payload = BagPayload(bag, frames, parts, probability, attrs, features=features, compression=compression,
                         tables=tables, counts=counts or {}, sources=SOURCE_LABELS if sources is None else sources)
    data = BAGS.encode(payload)
    path = bag_path(outdir, bag)
    # The checksum first: a kill between the two writes leaves a checksum that matches no bag file
    write_text_atomic(checksum_path(path), checksum_text(data))
    write_bytes_atomic(path, data)
    return path


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
    recorded = recorded_checksum(path)
    if recorded is None:
        return None  # never finished writing (or written before checksums were kept)
    if file_sha256(path) != recorded:
        log.warning("%s does not match the checksum recorded when it was written (edited or damaged "
                    "since?): it is recomputed", path)
        return None
    try:
        info = BAGS.describe(path)
    except Exception:  # unreadable or truncated: recompute it
        return None
    ok = (info.attrs.get("bag_digest") == bag.digest and set(parts) <= info.tables
          and (not with_probability or "probability" in info.variables))
    return str(info.attrs.get("numerics", "")) if ok else None


def read_bag_tables(path: Path, names: Sequence[str] = TABLE_PARTS) -> BagTables:
    """Some (default all) of a bag's table parts, and its counts."""
    return BAGS.read_tables(path, names)


def read_bag_frames(path: Path) -> tuple[list[str], list[str]]:
    """(frame ids, read ids) of one bag, in order."""
    return BAGS.read_frames(path)


def open_features(outdir: str | Path) -> xr.Dataset:
    """One lazy Dataset over all bags of OUTDIR, frames in input order (coordinate ``sample`` says
    which sample a frame belongs to; frame ids are unique within a sample)."""
    outdir = Path(outdir)
    run, _ = RunRecord.read(outdir)  # a finished run names its bags: files that merely look like ours are not read
    total = run.bags_total() if run is not None else None
    if total is not None:
        paths = [outdir / BAGS_DIR / f"bag-{i:06d}{BAGS.suffix}" for i in range(total)]
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
    return BAGS.open_many(paths)
