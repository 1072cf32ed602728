"""--threads (how a run's CPU threads are split among workers) and the run's record: run.log and
the command line in run.json."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import DEMO_FASTA

from virnuc_hpc.cli import main
from virnuc_hpc.config import RunConfig
from virnuc_hpc.runtime.runlog import RunLog
from virnuc_hpc.runtime.threads import busiest_node, io_threads, per_worker, plan_threads


def test_predict_help_shows_threads():
    out = " ".join(CliRunner().invoke(main, ["predict", "--help"]).output.split())
    assert "--threads INTEGER CPU threads the run may use in all" in out
    assert "--threads-per-worker INTEGER" in out and "follows Slurm's allocation" in out


@pytest.mark.parametrize("total, workers, expected", [(16, 4, 4), (16, 3, 5), (2, 4, 1), (1, 1, 1), (7, 0, 7)])
def test_per_worker_threads(total: int, workers: int, expected: int):
    assert per_worker(total, workers) == expected


def test_threads_per_worker_wins_and_the_default_is_the_cpus():
    assert plan_threads(RunConfig(), 2, cpus=8).as_dict() == {
        "total": 8, "per_worker": 4, "workers_per_node": 2, "available_cpus": 8, "source": "available_cpus",
        "oversubscribed": False}
    assert plan_threads(RunConfig(threads=6), 4, cpus=8).per_worker == 1
    explicit = plan_threads(RunConfig(threads=6, threads_per_worker=3), 2, cpus=8)
    assert (explicit.per_worker, explicit.source, explicit.oversubscribed) == (3, "threads_per_worker", False)
    assert plan_threads(RunConfig(threads_per_worker=3), 4, cpus=8).oversubscribed  # 12 > 8
    assert plan_threads(RunConfig(threads=9), 1, cpus=8).oversubscribed
    assert busiest_node(["n1", "n2", "n1"]) == 2 and busiest_node([]) == 1
    assert io_threads(RunConfig(threads=2), cpus=64) == 2 and io_threads(RunConfig(), cpus=64) == 4


def test_the_cpus_counted_follow_the_affinity():
    """As under Slurm or a cgroup cpuset: a process bound to one CPU counts one, os.cpu_count() all."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from virnuc_hpc.runtime.threads import available_cpus, plan_threads; "
            "from virnuc_hpc.config import RunConfig; "
            "print(available_cpus(), plan_threads(RunConfig(), 1).per_worker)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]


def test_run_log_keeps_debug_lines_out_of_the_console(tmp_path: Path):
    """The file gets DEBUG, the handlers shown before keep their level, records held before the file
    opens are written, and the logger is as it was afterwards."""
    ours, root = logging.getLogger("virnuc_hpc"), logging.getLogger()
    console, seen_by_root = _Collect(), _Collect()
    ours.addHandler(console)
    root.addHandler(seen_by_root)
    saved = ours.level, ours.propagate
    ours.setLevel(logging.INFO)
    try:
        with pytest.raises(RuntimeError), RunLog("virnuc-hpc predict x -o out") as run_log:
            logging.getLogger("virnuc_hpc.runtime.pipeline").debug("before the file")
            run_log.open(tmp_path / "run.log")
            logging.getLogger("virnuc_hpc.runtime.pipeline").info("shown")
            raise RuntimeError("a failure")
        assert (ours.level, ours.propagate, ours.handlers.count(console)) == (logging.INFO, saved[1], 1)
    finally:
        ours.removeHandler(console)
        root.removeHandler(seen_by_root)
        ours.setLevel(saved[0])
    text = (tmp_path / "run.log").read_text()
    assert "virnuc-hpc predict x -o out" in text and "before the file" in text and "shown" in text
    assert "run stopped: RuntimeError: a failure" in text and "Traceback" in text
    assert console.messages == ["shown"] and seen_by_root.messages == ["shown"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_demo_run_records_its_log_command_line_and_threads(reference: Path):
    """The session's demo CLI run (conftest's reference)."""
    log = (reference / "run.log").read_text()
    assert "Dask scheduler" in log and " DEBUG " in log and "bags: " in log
    run = json.loads((reference / "run.json").read_text())
    assert run["command_line"].split()[1:4] == ["predict", str(DEMO_FASTA), "-o"]
    assert str(reference) in run["command_line"]
    # the demo preset: 2 workers, threads_per_worker 1
    assert run["threads"]["per_worker"] == 1 and run["threads"]["workers_per_node"] == 2
    assert run["threads"]["source"] == "threads_per_worker"
