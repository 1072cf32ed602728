"""Workers on other "nodes" join a running predict: `virnuc-hpc worker --scheduler-address`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from conftest import DEMO, DEMO_FASTA, finished_outputs
from virnuc_hpc.runtime.worker import PLUGIN_NAME

pytestmark = pytest.mark.e2e  # workers joining a scheduler, and the CLI in subprocesses


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "virnuc_hpc.cli", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(condition: Callable[[], bool], run: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until condition() holds; fail at once if predict exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.poll() is None, f"predict exited early: {run.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_late_workers_join_a_running_predict(reference: Path, tmp_path: Path, demo_cache: Path):
    outdir = tmp_path / "joined"
    # a bare scheduler, as on a cluster's head node: no workers of its own
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        run = _popen("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO,
                     "--scheduler-address", cluster.scheduler_address)
        # predict has registered its encoder plugin and waits for workers; now two "nodes" join,
        # one after the other
        wait_for(lambda: PLUGIN_NAME in cluster.scheduler.worker_plugins, run)
        workers = [_popen("worker", "--scheduler-address", cluster.scheduler_address, "--device", "cpu")]
        wait_for(lambda: len(cluster.scheduler.workers) == 1, run)
        workers.append(_popen("worker", "--scheduler-address", cluster.scheduler_address,
                              "--device", "cpu"))
        try:
            out, _ = run.communicate(timeout=240)
            assert run.returncode == 0, out
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        finally:
            for proc in workers:
                os.killpg(proc.pid, signal.SIGTERM)
            for proc in workers:
                proc.wait(timeout=60)
    assert finished_outputs(outdir) == finished_outputs(reference)
    used = json.loads((outdir / "run.json").read_text())["workers"]
    assert len(used) == 2 and all(w["bags"] > 0 for w in used.values()), used


def test_scheduler_file_joins_dask_conventions(reference: Path, tmp_path: Path, demo_cache: Path):
    """Dask's own rendezvous: `dask scheduler --scheduler-file`, then `virnuc-hpc worker
    --scheduler-file` (started first: it waits for the file) and `predict --scheduler-file`."""
    scheduler_file, outdir = tmp_path / "scheduler.json", tmp_path / "out"
    worker = _popen("worker", "--scheduler-file", str(scheduler_file), "--device", "cpu")
    time.sleep(1)  # the worker is waiting for the file when the scheduler writes it
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = _popen("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--scheduler-file",
                     str(scheduler_file), "--scheduler-timeout", "60")
        out, _ = run.communicate(timeout=240)
        assert run.returncode == 0, out
        assert worker.poll() is None, worker.communicate()[0][-3000:]
    finally:
        for proc in (worker, scheduler):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, scheduler):
            proc.wait(timeout=60)
    assert finished_outputs(outdir) == finished_outputs(reference)
    assert len(json.loads((outdir / "run.json").read_text())["workers"]) == 1


def test_scheduler_file_mistakes_exit_2(tmp_path: Path):
    missing = _popen("predict", str(DEMO_FASTA), "-o", str(tmp_path / "a"), *DEMO, "--scheduler-file",
                     str(tmp_path / "none.json"), "--scheduler-timeout", "0.5")
    both = _popen("worker", "--scheduler-file", str(tmp_path / "none.json"), "--scheduler-address",
                  "tcp://127.0.0.1:1")
    (tmp_path / "bad.json").write_text('{"id": "Scheduler-1"}')
    bad = _popen("worker", "--scheduler-file", str(tmp_path / "bad.json"), "--death-timeout", "1")
    for proc, message in ((missing, "no Dask scheduler file at"), (both, "one of them"),
                          (bad, "is not a Dask scheduler file")):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in out and "Traceback" not in out, out
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
