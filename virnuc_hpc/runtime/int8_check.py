"""An int8 run checks itself before it writes a bag, and goes on in fp16 if int8 drifts.

Why: how far int8 moves ESM-2's features depends on the weights (trained models have outlier
channels that random ones do not), and a user's weights are not the ones we measured. So before the
first bag is scheduled every worker embeds the same sample, the first bag's distinct protein frames,
in int8 and in half precision over the same weights and compares them frame by frame. If any frame
of any worker falls below the bar, every bag of the run is computed in fp16 instead: the decision is
taken once, before any bag exists, so no run mixes the two. It is logged once, kept in
OUTDIR/int8_check.json (a resume makes the same choice without checking again) and recorded in
run.json; each bag's numerics name the precision it was computed in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_hpc.outputs.records import read_json_object
from virnuc_hpc.runtime.cosines import row_cosines

log = logging.getLogger("virnuc_hpc")

SAMPLE_FRAMES = 256  # distinct frames each worker embeds twice: a second or two on a GPU
FALLBACK = "fp16"    # what the run computes in when int8 does not hold (fp32 on a CPU worker)


@dataclass(frozen=True)
class WorkerCheck:
    """One worker's comparison of int8 with half precision on the sample."""

    worker: str
    processor: str
    frames: int
    cosine_min: float
    cosine_median: float
    fallback: str = FALLBACK  # what this worker computes in without int8 (fp32 on a CPU)


@dataclass(frozen=True)
class Int8Decision:
    """What the run computes ESM-2 in, and the checks that decided it."""

    precision: str                      # "int8", or FALLBACK when a check failed
    bar: float                          # the lowest cosine a frame may have
    checks: tuple[WorkerCheck, ...]

    @property
    def fell_back(self) -> bool:
        return self.precision != "int8"

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "bar": self.bar, "fell_back": self.fell_back,
                "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Decision:
        return cls(precision=str(data["precision"]), bar=float(data["bar"]),
                   checks=tuple(WorkerCheck(**c) for c in data.get("checks", [])))

    def message(self) -> str:
        worst = min(self.checks, key=lambda c: c.cosine_min, default=None)
        where = (f" (lowest frame cosine {worst.cosine_min:.6f} on {worst.worker}, bar {self.bar})"
                 if worst is not None else "")
        if self.fell_back:
            return (f"int8 drifts too far from fp16 on these ESM-2 weights{where}: the whole run goes on "
                    f"in {self.precision}; run.json records it")
        return f"int8 holds on these ESM-2 weights{where}"


def sample_proteins(proteins: Sequence[str], limit: int = SAMPLE_FRAMES) -> list[str]:
    """Up to ``limit`` distinct frames, spread evenly over the bag (all lengths, all reads)."""
    distinct = list(dict.fromkeys(proteins))
    if len(distinct) <= limit:
        return distinct
    picks = np.linspace(0, len(distinct) - 1, limit).round().astype(int)
    return [distinct[i] for i in dict.fromkeys(picks.tolist())]


def compare(worker: str, processor: str, quantized: np.ndarray, half: np.ndarray,
            fallback: str = FALLBACK) -> WorkerCheck:
    """The frame-by-frame cosines of int8 rows to half-precision rows, summarised."""
    cos = row_cosines(half, quantized)
    if not len(cos):
        return WorkerCheck(worker, processor, 0, 1.0, 1.0, fallback)
    cos = np.nan_to_num(cos, nan=-1.0)  # a non-finite row fails the bar
    return WorkerCheck(worker, processor, len(cos), float(cos.min()), float(np.median(cos)), fallback)


def decide(checks: Sequence[WorkerCheck], bar: float) -> Int8Decision:
    """int8 when every worker's every frame meets the bar; else the fallback for the whole run."""
    held = all(c.cosine_min >= bar for c in checks)
    fallback = checks[0].fallback if checks else FALLBACK
    return Int8Decision("int8" if held else fallback, bar, tuple(checks))


def read_decision(path: Path) -> Int8Decision | None:
    """The decision an earlier attempt of this run took; None when there is none (or it is damaged:
    then the check runs again, which decides the same on the same bag and cards)."""
    data, problem = read_json_object(path)
    if problem is not None:
        log.warning("warning: %s; the int8 check runs again", problem)
    if not data:
        return None
    try:
        return Int8Decision.from_dict(data)
    except (KeyError, TypeError, ValueError):
        log.warning("warning: %s does not hold an int8 decision; the int8 check runs again", path)
        return None


def write_decision(path: Path, decision: Int8Decision) -> None:
    from virnuc_hpc.outputs.store import write_text_atomic

    write_text_atomic(path, json.dumps(decision.as_dict(), indent=2) + "\n")
