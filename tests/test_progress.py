"""Progress in batch logs: a line every --log-interval seconds with bags done/total and an ETA, and
`virnuc-hpc status OUTDIR` showing a running run's progress."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, cli
from virnuc_hpc.outputs.store import PROGRESS
from virnuc_hpc.runtime.progress import Progress, bags_text, describe, duration

LINE = re.compile(r"progress: bags (\d+)/(~?)(\d+) \((\d+)%\), [\d,]+ frames/s, [\d,]+ ESM-2 tokens/s"
                  r"(?:, ETA (\S+)(?: \(estimated total\))?)?, elapsed \S+")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_counts_estimate_and_eta() -> None:
    clock = Clock()
    progress = Progress(estimated_total=10, clock=clock)
    for _ in range(4):
        progress.bag_cut()
    progress.bag_reused()                       # a bag kept from an earlier run counts as done
    clock.now += 30
    progress.bag_done(frames=300, tokens=15_000)
    progress.bag_done(frames=300, tokens=15_000)
    snap = progress.snapshot()
    assert (snap["bags_done"], snap["bags_total"], snap["total_exact"]) == (3, 10, False)
    assert snap["eta_s"] == 7 * 30 / 2           # 7 bags left at 2 computed bags per 30 s
    assert snap["frames_per_s"] == 20 and snap["tokens_per_s"] == 1_000
    assert bags_text(snap) == "3/~10"
    assert describe(snap).startswith("bags 3/~10 (30%), 20 frames/s, 1,000 ESM-2 tokens/s, ETA 1m45s "
                                      "(estimated total)")
    for _ in range(8):                           # the input held more bags than its head suggested
        progress.bag_cut()
    assert progress.snapshot()["bags_total"] == 12
    progress.all_cut()                           # every bag cut: the total is exact
    snap = progress.snapshot()
    assert bags_text(snap) == "3/12" and "estimated" not in describe(snap)
    assert bags_text(Progress().snapshot()) == "0/?"


def test_duration_is_one_word() -> None:
    assert [duration(s) for s in (0, 12.4, 250, 3 * 3600 + 5 * 60 + 59)] == ["0s", "12s", "4m10s", "3h05m"]


@pytest.mark.e2e
def test_batch_log_has_progress_lines(tmp_path: Path, demo_cache: Path) -> None:
    """Piped to a file (no terminal), a run longer than the interval logs done/total and an ETA."""
    log_file = tmp_path / "job.log"
    with open(log_file, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "virnuc_hpc.cli", "predict", str(DEMO_FASTA), "-o",
                               str(tmp_path / "out"), *DEMO, "--log-interval", "1"],
                              stdout=log, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = log_file.read_text()
    assert proc.returncode == 0, text
    lines = [m for m in LINE.finditer(text)]
    total = json.loads((tmp_path / "out" / "run.json").read_text())["bags"]["total"]
    assert len(lines) >= 2, text                 # at least one during the run, and the last
    last = lines[-1]
    assert (int(last[1]), last[2], int(last[3]), last[4]) == (total, "", total, "100"), last[0]
    assert any(m[5] is not None for m in lines), text  # an ETA once a bag was computed
    assert not (tmp_path / "out" / PROGRESS).exists()  # removed when the run ends


def test_status_shows_a_running_runs_progress(tmp_path: Path, demo_cache: Path) -> None:
    outdir = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "virnuc_hpc.cli", "predict", str(DEMO_FASTA), "-o", str(outdir),
                            *DEMO, "--bag-size", "2", "--log-interval", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (outdir / PROGRESS).exists():
            assert run.poll() is None and time.monotonic() < deadline, "no progress file while running"
            time.sleep(0.2)
        proc = cli("status", str(outdir), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"progress: bags \d+/~?\d+", proc.stdout), proc.stdout
    finally:
        assert run.wait(timeout=300) == 0
