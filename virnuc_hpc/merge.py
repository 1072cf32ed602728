"""External k-way merge of sorted texts: sorted output of any size with bounded memory.

Why: the sorted table (_highestscore.csv) and the duplicate-id check of a sample of 100M reads
cannot be sorted in memory. Each bag (or input block) provides its lines already sorted; this
merges them, a bounded number of texts at a time, through temporary run files when needed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

MERGE_FAN_IN = 32  # sorted texts held in memory at once


def merge_sorted(sources: Sequence[Callable[[], str]], tmpdir: Path, fan_in: int | None = None) -> Iterator[str]:
    """The lines of many sorted texts in sorted order, with at most ``fan_in`` texts in memory:
    groups are merged into temporary run files first, which are then merged line by line."""
    fan_in = fan_in or MERGE_FAN_IN

    def lines(text: str) -> list[str]:
        parts = text.split("\n")
        return [p + "\n" for p in parts[:-1]]  # every text ends with a newline (or is empty)

    if len(sources) <= fan_in:
        yield from heapq.merge(*(lines(source()) for source in sources))
        return
    runs: list[Path] = []
    for start in range(0, len(sources), fan_in):
        run = tmpdir / f"run-{len(runs):06d}"
        with open(run, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(heapq.merge(*(lines(source()) for source in sources[start:start + fan_in])))
        runs.append(run)
    yield from _merge_files(runs, tmpdir, fan_in)


def _merge_files(runs: list[Path], tmpdir: Path, fan_in: int) -> Iterator[str]:
    while len(runs) > fan_in:  # rare: more than fan_in**2 bags
        merged: list[Path] = []
        for start in range(0, len(runs), fan_in):
            out = tmpdir / f"run-{start}-{len(merged)}-{len(runs)}"
            group = runs[start:start + fan_in]
            handles = [open(r, encoding="utf-8", newline="\n") for r in group]
            try:
                with open(out, "w", encoding="utf-8", newline="\n") as fh:
                    fh.writelines(heapq.merge(*handles))
            finally:
                for h in handles:
                    h.close()
            merged.append(out)
        runs = merged
    handles = [open(r, encoding="utf-8", newline="\n") for r in runs]
    try:
        yield from heapq.merge(*handles)
    finally:
        for h in handles:
            h.close()
