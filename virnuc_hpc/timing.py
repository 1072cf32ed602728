"""Seconds per named stage: the client's run stages and a worker's start-up phases alike."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """``with timer("stage"):`` adds the block's wall time to ``timer.seconds["stage"]``, and
    notes the process's peak RSS so far in ``timer.peak_rss_mb["stage"]`` (where memory grew)."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {} if seconds is None else seconds
        self.peak_rss_mb: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
            self.peak_rss_mb[stage] = peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB.

    Linux's VmHWM, not getrusage's ru_maxrss: ru_maxrss survives fork and exec, so a process
    started by a big parent (a benchmark that just built a 5 GB model) reports the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
