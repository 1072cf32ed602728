"""Progress lines for batch logs: bags done/total, frames/s, ESM-2 tokens/s and an ETA.

Why: a run on a cluster lives in a Slurm log file for hours, where a progress bar cannot redraw
itself. When no bar is shown, a line goes to the ``virnuc_hpc`` logger every ``log_interval``
seconds, from a thread of its own, so a line comes also while no bag finishes (models loading, a
slow bag). The input is cut into bags while it is read, so the total is an estimate (``~``) from
the head of each file until the whole input has been cut.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virnuc_hpc.outputs.store import write_text_atomic

log = logging.getLogger("virnuc_hpc")


def duration(seconds: float) -> str:
    """3h05m, 4m10s, 12s: one word, so that a status table stays splittable on spaces."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts of one run, updated by the client as bags are cut, reused and finished."""

    def __init__(self, estimated_total: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.estimated_total = estimated_total
        self.cut = 0             # bags cut from the input so far (computed or reused)
        self.input_done = False  # every bag has been cut: the total is exact
        self.reused = 0
        self.computed = 0
        self.frames = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def bag_cut(self) -> None:
        with self._lock:
            self.cut += 1

    def bag_reused(self) -> None:
        with self._lock:
            self.reused += 1

    def all_cut(self) -> None:
        with self._lock:
            self.input_done = True

    def bag_done(self, frames: int, tokens: int) -> None:
        with self._lock:
            self.computed += 1
            self.frames += frames
            self.tokens += tokens

    def total(self) -> tuple[int | None, bool]:
        """(bags in the run, whether exact)."""
        if self.input_done:
            return self.cut, True
        if self.estimated_total is None:
            return None, False
        return max(self.estimated_total, self.cut), False

    def snapshot(self) -> dict[str, Any]:
        """Bags done and total, rates and ETA now (what the log line and ``status`` show)."""
        with self._lock:
            elapsed = max(self.clock() - self.started, 1e-9)
            done = self.reused + self.computed
            total, exact = self.total()
            eta = (max(total - done, 0) * elapsed / self.computed
                   if total is not None and self.computed else None)
            return {"bags_done": done, "bags_total": total, "total_exact": exact,
                    "frames_per_s": self.frames / elapsed, "tokens_per_s": self.tokens / elapsed,
                    "eta_s": eta, "elapsed_s": elapsed, "updated": time.time()}

    def line(self) -> str:
        return "progress: " + describe(self.snapshot())


def bags_text(snap: dict[str, Any]) -> str:
    """12/40, 12/~40 (total still estimated) or 12/? ."""
    total = snap.get("bags_total")
    shown = "?" if total is None else (str(total) if snap.get("total_exact") else f"~{total}")
    return f"{snap.get('bags_done', 0)}/{shown}"


def describe(snap: dict[str, Any]) -> str:
    total, done = snap.get("bags_total"), snap.get("bags_done", 0)
    parts = [f"bags {bags_text(snap)}" + (f" ({100 * done / total:.0f}%)" if total else ""),
             f"{snap['frames_per_s']:,.0f} frames/s", f"{snap['tokens_per_s']:,.0f} ESM-2 tokens/s"]
    if snap.get("eta_s") is not None:
        parts.append(f"ETA {duration(snap['eta_s'])}{'' if snap.get('total_exact') else ' (estimated total)'}")
    parts.append(f"elapsed {duration(snap['elapsed_s'])}")
    return ", ".join(parts)


class ProgressLog:
    """While open: every ``tick`` seconds ``progress`` is written to ``path`` (for ``virnuc-hpc
    status``), and every ``interval`` seconds (0: never) a line goes to the log. ``path`` is removed
    when the run ends."""

    def __init__(self, progress: Progress, interval: float, path: Path | None = None, tick: float = 10.0):
        self.progress, self.interval, self.path = progress, interval, path
        self.tick = min(tick, interval) if interval > 0 else tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="virnuc-progress", daemon=True)

    def _run(self) -> None:
        last_line = self.progress.clock()
        while not self._stop.wait(self.tick):
            snap = self.progress.snapshot()
            if self.path is not None:
                try:
                    write_text_atomic(self.path, json.dumps(snap) + "\n")
                except OSError as err:  # status loses a line; the run goes on
                    log.debug("progress file %s not written: %s", self.path, err)
            if self.interval > 0 and self.progress.clock() - last_line >= self.interval - 1e-3:
                last_line = self.progress.clock()
                log.info("progress: %s", describe(snap))

    def __enter__(self) -> "ProgressLog":
        if self.interval > 0 or self.path is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def read_progress(path: Path) -> dict[str, Any] | None:
    """What a running run last wrote to its progress file (None: none, or unreadable)."""
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return snap if isinstance(snap, dict) else None
