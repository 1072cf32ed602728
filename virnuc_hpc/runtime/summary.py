"""The run's numbers as run.json records them: milestones, per-worker work and device use, the
bag timeline, the inputs' sizes and checksums, the software.

Why a module of its own: these are summaries of what happened, computed once the bags are done;
the pipeline only decides what happens, and reads simpler without the arithmetic.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnuc_hpc.outputs import store
from virnuc_hpc.reads.bags import HeadStats
from virnuc_hpc.reads.reading import ReadDigest
from virnuc_hpc.reads.samples import InputFile
from virnuc_hpc.reads.sizing import FileEstimate, decompressed_size, estimated_run_bags
from virnuc_hpc.runtime.encoding import encoder_totals, flat_encoder_totals
from virnuc_hpc.runtime.gpu_monitor import mean_utilization
from virnuc_hpc.runtime.worker import BagReport, BagSeconds

log = logging.getLogger("virnuc_hpc")

#: GPU utilisation samples kept per worker in run.json (every n-th, for the report's chart).
TIMELINE_GPU_POINTS = 2_000


@dataclass
class Milestones:
    """When the run started, and seconds from then to its milestones (models ready, first bag
    submitted, first bag done): run.json's ``milestones_s``."""
    started: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    t0: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, *, once: bool = False) -> None:
        """Record ``name`` now; with ``once``, keep the first time it was recorded."""
        if not (once and name in self.marks):
            self.marks[name] = time.perf_counter() - self.t0


def guard_totals(reports: list[BagReport]) -> dict[str, int]:
    """Batches recomputed in fp32 (NaN/Inf) or split after CUDA OOM, summed over this run's bags."""
    return flat_encoder_totals({name: stats.guards() for name, stats in encoder_totals(reports).items()})


def busy_fraction(intervals: list[tuple[float, float]]) -> float | None:
    """Fraction of the span from the first interval's start to the last one's end that the
    device was busy (intervals of one worker never overlap: they are taken under a lock)."""
    if not intervals:
        return None
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return sum(e - s for s, e in intervals) / span if span > 0 else 1.0


def estimated_bags(files: Sequence[InputFile], heads: dict[InputFile, HeadStats], bag_size: int) -> int | None:
    """Bags the inputs will make, judged from their heads (the progress lines' total until the
    whole input is cut); None when a file cannot be sized."""
    try:
        return estimated_run_bags([FileEstimate(f, heads[f], Path(f.path).stat().st_size,
                                                *decompressed_size(f.path)) for f in files], bag_size)
    except (OSError, ValueError, EOFError) as err:
        log.debug("no estimate of the run's bags: %s", err)
        return None


def timeline(reports: list[BagReport], t0: float) -> dict[str, Any]:
    """When each bag held its worker's device, and NVML's utilisation over time per worker, in
    seconds since the run started (both are wall-clock times taken on the workers)."""
    bags = [{"bag": r.bag, "worker": r.worker, "start": round(r.device_interval[0] - t0, 3),
             "end": round(r.device_interval[1] - t0, 3)} for r in sorted(reports, key=lambda r: r.bag)]
    gpu: dict[str, list[list[float]]] = {}
    for r in reports:
        gpu.setdefault(r.worker, []).extend([round(t - t0, 3), u] for t, u in r.gpu_utilization)
    for worker, samples in gpu.items():
        samples.sort()
        gpu[worker] = samples[::max(1, -(-len(samples) // TIMELINE_GPU_POINTS))]
    return {"bag_timeline": bags, "gpu_utilization": {w: s for w, s in gpu.items() if s}}


def worker_summary(reports: list[BagReport]) -> dict[str, Any]:
    """Per worker: bags, frames, tokens, summed stage seconds, counters, and how busy the device was:
    the device lock's hold time (an upper bound; overall, and in the steady state after the worker's
    first bag) and, on GPUs, NVML's utilization averaged over the steady state."""
    by_worker: dict[str, list[BagReport]] = {}
    for r in reports:
        by_worker.setdefault(r.worker, []).append(r)
    return {worker: _one_worker(mine) for worker, mine in by_worker.items()}


def _one_worker(reports: list[BagReport]) -> dict[str, Any]:
    """``worker_summary`` of one worker's reports."""
    seconds = BagSeconds()
    for r in reports:
        seconds = seconds + r.seconds
    encoders = encoder_totals(reports)
    spans = sorted(tuple(r.device_interval) for r in reports)
    samples = [s for r in reports for s in r.gpu_utilization]
    steady = spans[1:] or spans
    return {
        "bags": len(reports), "records": sum(r.records for r in reports),
        "frames": sum(r.frames for r in reports),
        "protein_tokens": sum(r.protein_tokens for r in reports),
        "seconds": seconds.as_dict(),
        "counters": flat_encoder_totals({name: stats.as_dict() for name, stats in encoders.items()}),
        "device_busy_fraction": busy_fraction(spans),
        "device_busy_fraction_steady": busy_fraction(spans[1:]),
        # NVML: None without a GPU
        "gpu_utilization_steady": mean_utilization(samples, min(s for s, _ in steady),
                                                   max(e for _, e in steady)),
    }


def environment() -> dict[str, Any]:
    """The host, Python and the versions of the packages the results depend on."""
    import importlib.metadata as md
    versions = {}
    for pkg in ("torch", "numpy", "xarray", "h5netcdf", "h5py", "dask", "distributed", "dask-cuda",
                "tokenizers", "pydantic", "deepspeed"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"host": socket.gethostname(), "python": platform.python_version(), "packages": versions}


def inputs_meta(files: list[InputFile], read: dict[InputFile, ReadDigest] | None = None) -> list[dict[str, Any]]:
    """Each input's sample, path, size and (given ``read``, once its bags are cut) sha256: with
    ``read``, size and sha256 are those of exactly the bytes read, even if the file grew meanwhile."""
    meta = []
    for f in files:
        entry: dict[str, Any] = {"sample": f.sample, "path": f.path, "mate": f.mate}
        digest = (read or {}).get(f)
        if read is None:
            entry["size"] = Path(f.path).stat().st_size
        elif digest is None or digest.sha256 is None:  # every bag is cut before the tables are written
            raise RuntimeError(f"{f.path} was not read to its end")
        else:
            entry.update(size=digest.size, sha256=digest.sha256)
        meta.append(entry)
    return meta


def bytes_per_frame(outdir: Path, frames: int) -> float | None:
    """Bag bytes on disk per frame (everything a frame costs: features, ids, table parts)."""
    if not frames:
        return None
    return sum(p.stat().st_size for p in store.bag_files(outdir)) / frames
