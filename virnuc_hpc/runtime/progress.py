"""Progress lines for batch logs: bags done/total, frames/s, ESM-2 tokens/s and an ETA.

Why: a run on a cluster lives in a Slurm log file for hours, where a progress bar cannot redraw
itself. When no bar is shown, a line goes to the ``virnuc_hpc`` logger every ``log_interval``
seconds, from a thread of its own, so a line comes also while no bag finishes (models loading, a
slow bag). The input is cut into bags while it is read, so the total is an estimate (``~``) from
the head of each file until the whole input has been cut.

The same snapshot goes to OUTDIR's progress file for ``virnuc-hpc status``. A run that ends with an
error leaves its last snapshot there with the error (``error``, ``error_type``, ``ended``): the one
record of why it stopped, replaced when the next run starts; a run that finishes removes the file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virnuc_hpc.errors import UserError, shorten
from virnuc_hpc.outputs.records import int_field, number_field, read_json_object

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

    def _write(self, snap: dict[str, Any]) -> None:
        from virnuc_hpc.outputs.atomic import write_text_atomic

        if self.path is None:
            return
        try:
            write_text_atomic(self.path, json.dumps(snap) + "\n")
        except (OSError, UserError) as err:  # status loses a line; the run goes on
            log.debug("progress file %s not written: %s", self.path, err)

    def _run(self) -> None:
        last_line = self.progress.clock()
        while not self._stop.wait(self.tick):
            snap = self.progress.snapshot()
            self._write(snap)
            if self.interval > 0 and self.progress.clock() - last_line >= self.interval - 1e-3:
                last_line = self.progress.clock()
                log.info("progress: %s", describe(snap))

    def __enter__(self) -> "ProgressLog":
        self._write(self.progress.snapshot())  # at once: also replaces an earlier run's error record
        if self.interval > 0 or self.path is not None:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.path is None:
            return
        if exc is None:
            self.path.unlink(missing_ok=True)
        else:
            self._write({**self.progress.snapshot(), **failure_record(exc)})


MAX_ERROR_CHARS = 2000  # an input error lists up to 50 problems: the record keeps the head of them


def failure_record(exc: BaseException) -> dict[str, Any]:
    """What the progress file keeps of the error that ended a run."""
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted (Ctrl-C or SIGINT); finished bags are kept"
    else:
        text = str(exc) or type(exc).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + f"... ({len(text):,} characters)"
    return {"error": text, "error_type": type(exc).__name__, "ended": time.time()}


#: A snapshot's fields: (required, kind); ``number`` is any finite number, ``count`` a whole one.
SNAPSHOT_FIELDS = {"bags_done": (True, "count"), "bags_total": (False, "count"), "total_exact": (False, "switch"),
                   "frames_per_s": (True, "number"), "tokens_per_s": (True, "number"), "eta_s": (False, "number"),
                   "elapsed_s": (True, "number"), "updated": (False, "number"), "error": (False, "text"),
                   "error_type": (False, "text"), "ended": (False, "number")}


def read_progress(path: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """What a run last wrote to its progress file: its known fields, checked (None: no file, or
    not a snapshot; then ``problems``, when given, gets one line naming the file and what is wrong)."""
    snap, problem = read_json_object(path)
    if snap is not None:
        snap, problem = _checked_snapshot(snap, path)
    if problem is not None and problems is not None:
        problems.append(problem)
    return snap


def _checked_snapshot(raw: dict[str, Any], path: Path) -> tuple[dict[str, Any] | None, str | None]:
    snap: dict[str, Any] = {}
    for key, (required, kind) in SNAPSHOT_FIELDS.items():
        if raw.get(key) is None:
            if required:
                return None, f"{path}: not a progress record ({key} missing)"
            snap[key] = None
            continue
        if kind == "count":
            value: Any = int_field(raw, key)
            value = value if value is not None and 0 <= value < 1 << 53 else None
        elif kind == "number":
            value = number_field(raw, key)
        elif kind == "switch":
            value = raw[key] if isinstance(raw[key], bool) else None
        else:
            value = raw[key] if isinstance(raw[key], str) else None
            value = value if value is None or len(value) <= MAX_ERROR_CHARS else value[:MAX_ERROR_CHARS] + "..."
        if value is None:
            return None, f"{path}: not a progress record ({key}: {shorten(json.dumps(raw[key])[:100], 60)})"
        snap[key] = value
    snap["total_exact"] = bool(snap["total_exact"])
    return snap, None
