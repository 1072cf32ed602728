"""The output directory's lock: real CLI runs and real processes racing for it, no mocks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, ROOT, cli, finished_outputs, shared_scheduler
from virnuc_hpc.errors import OutputLockedError
from virnuc_hpc.outputs.lock import LOCK_NAME, locked, read_lock

OTHER_HOST = "other-node.example"


# --- helpers -------------------------------------------------------------------------------

def _dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(outdir: Path, *, host: str, pid: int, age_s: float = 0.0, **extra: str) -> Path:
    """A lock file as another run would have left it, last touched age_s ago."""
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / LOCK_NAME
    info = {"token": "f" * 32, "host": host, "pid": pid, "user": "someone",
            "started": "2024-01-01T00:00:00+00:00", "command": "virnuc-hpc predict old.fa -o there",
            "heartbeat_s": 10.0, **extra}
    path.write_text(json.dumps(info))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _leftovers(outdir: Path) -> list[str]:
    """Lock files (held or renamed stale ones) still in OUTDIR."""
    return sorted(p.name for p in outdir.glob(LOCK_NAME + "*"))


def _start_holder(outdir: Path, log: Path, *args: str) -> subprocess.Popen:
    """A CLI predict run in the background, returned once it holds OUTDIR's lock. It runs at the
    lowest CPU priority (its workers too), so that on a small machine the second run's timing
    measures its refusal rather than CPU contention with the first run's workers."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "virnuc_hpc.cli", "predict", str(DEMO_FASTA),
                                 "-o", str(outdir), *DEMO, *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: os.nice(19))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the first run ended before taking the lock:\n{log.read_text()}"
        info = read_lock(outdir)
        if info is not None and info.get("pid") == proc.pid:
            return proc
        time.sleep(0.05)
    _kill_group(proc)
    raise AssertionError(f"the first run never took the lock:\n{log.read_text()}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _refused_while_running(first: subprocess.Popen, outdir: Path, *args: str) -> str:
    """A second CLI run into OUTDIR, started 1 s after the first took the lock: it must exit 2 at
    once, naming the lock and the first run's pid. Returns its stderr."""
    time.sleep(1.0)
    # 5 s on an idle machine; on one running more processes than it has cores (parallel test
    # sessions) Python's own start-up and imports stretch by the load factor
    overload = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    t0 = time.monotonic()
    second = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *args, timeout=60)
    elapsed = time.monotonic() - t0
    assert second.returncode == 2, second.stderr[-3000:]
    assert elapsed < 5.0 * overload, f"the refusal took {elapsed:.1f} s (load factor {overload:.1f})"
    assert LOCK_NAME in second.stderr and f"pid {first.pid} " in second.stderr, second.stderr
    assert "virnuc-hpc status" in second.stderr and "Traceback" not in second.stderr
    assert first.poll() is None, "the first run had already finished: nothing ran concurrently"
    return second.stderr


# --- two runs into one directory -------------------------------------------------------------

def test_two_concurrent_runs_one_exits_2_naming_the_lock(reference: Path, tmp_path: Path,
                                                        demo_cache: Path):
    outdir = tmp_path / "shared"
    first = _start_holder(outdir, tmp_path / "first.log")
    try:
        _refused_while_running(first, outdir)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            _kill_group(first)
    assert finished_outputs(outdir) == finished_outputs(reference)
    assert _leftovers(outdir) == []


def test_overwrite_does_not_break_a_running_runs_lock(reference: Path, tmp_path: Path,
                                                      demo_cache: Path):
    """--overwrite with other settings would delete the first run's bags; it is refused too."""
    outdir = tmp_path / "shared"
    first = _start_holder(outdir, tmp_path / "first.log")
    try:
        _refused_while_running(first, outdir, "--overwrite", "--expected-length", "500")
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            _kill_group(first)
    assert finished_outputs(outdir) == finished_outputs(reference)
    assert json.loads((outdir / "run.json").read_text())["config"]["expected_length"] == 300
    assert _leftovers(outdir) == []


# --- stale locks (runs into a copy of the finished reference: they reuse every bag) -----------

def test_lock_of_a_dead_process_is_taken_over(reference: Path, tmp_path: Path, client):
    outdir = tmp_path / "out"
    shutil.copytree(reference, outdir)
    dead = _dead_pid()
    _write_lock(outdir, host=socket.gethostname(), pid=dead)
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stale lock" in proc.stderr and f"pid {dead} " in proc.stderr, proc.stderr
    assert finished_outputs(outdir) == finished_outputs(reference)
    assert _leftovers(outdir) == []  # neither our lock nor the renamed stale one is left


def test_lock_of_another_host_is_refused_while_fresh_and_taken_over_when_silent(
        reference: Path, tmp_path: Path, client):
    outdir = tmp_path / "out"
    shutil.copytree(reference, outdir)
    path = _write_lock(outdir, host=OTHER_HOST, pid=os.getpid())
    before = path.read_bytes()
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert OTHER_HOST in proc.stderr and str(path) in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == before  # the other host's lock is left alone

    ten_minutes_ago = time.time() - 600
    os.utime(path, (ten_minutes_ago, ten_minutes_ago))
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stale lock" in proc.stderr and OTHER_HOST in proc.stderr and "no heartbeat" in proc.stderr
    assert finished_outputs(outdir) == finished_outputs(reference)
    assert _leftovers(outdir) == []


def test_requeued_slurm_job_takes_its_own_lock_back(reference: Path, tmp_path: Path, client):
    """A fresh lock of another node is taken over by the same Slurm job (requeued), not by another."""
    outdir = tmp_path / "out"
    shutil.copytree(reference, outdir)
    _write_lock(outdir, host=OTHER_HOST, pid=12345, slurm_job_id="4242")
    other_job = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, timeout=60,
                    env_extra={"SLURM_JOB_ID": "999"})
    assert other_job.returncode == 2 and "Slurm job 4242" in other_job.stderr, other_job.stderr[-3000:]
    requeued = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client),
                   env_extra={"SLURM_JOB_ID": "4242"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "earlier attempt of this Slurm job" in requeued.stderr, requeued.stderr
    assert _leftovers(outdir) == []


# --- locked() itself ---------------------------------------------------------------------------

def test_locked_creates_outdir_and_removes_its_file_on_exit(tmp_path: Path):
    outdir = tmp_path / "a" / "b"
    with locked(outdir, command="test run") as held:
        info = json.loads(held.path.read_text())
        assert held.path == outdir / LOCK_NAME
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "test run" and info["token"] and info["started"].endswith("+00:00")
    assert not held.path.exists()
    with pytest.raises(RuntimeError, match="boom"), locked(outdir, command="test run") as held:
        raise RuntimeError("boom")
    assert _leftovers(outdir) == []


def test_live_lock_is_refused_at_once_naming_the_holder(tmp_path: Path):
    with locked(tmp_path, command="virnuc-hpc predict a.fa -o out") as held:
        t0 = time.monotonic()
        with pytest.raises(OutputLockedError) as err, locked(tmp_path, command="second"):
            pass
        assert time.monotonic() - t0 < 1.0
        message = str(err.value)
        assert str(held.path) in message and f"pid {os.getpid()} " in message
        assert "virnuc-hpc predict a.fa -o out" in message and "virnuc-hpc status" in message
        assert held.path.exists()  # the refused contender did not touch the holder's file
    assert not held.path.exists()


def test_lock_replaced_by_another_token_is_not_removed_and_reported_once(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR, logger="virnuc_hpc")
    with locked(tmp_path, command="mine", heartbeat_s=0.05) as held:
        theirs = dict(json.loads(held.path.read_text()), token="0" * 32, pid=4321)
        held.path.write_text(json.dumps(theirs))
        assert held.broken.wait(5.0), "the heartbeat did not notice"
        time.sleep(0.3)  # several more beats: still one report
    assert json.loads(held.path.read_text())["token"] == "0" * 32  # theirs stays
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "lock" in r.getMessage()]
    assert len(errors) == 1 and "pid 4321" in errors[0].getMessage()


def test_heartbeat_refreshes_the_mtime(tmp_path: Path):
    with locked(tmp_path, command="beat", heartbeat_s=0.05) as held:
        long_ago = time.time() - 3600
        os.utime(held.path, (long_ago, long_ago))
        deadline = time.monotonic() + 5
        while held.path.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.path.stat().st_mtime > time.time() - 60
        assert read_lock(tmp_path)["stale"] is False
    # without a heartbeat the same file reads as stale
    path = _write_lock(tmp_path, host=OTHER_HOST, pid=1, age_s=3600)
    info = read_lock(tmp_path)
    assert info["stale"] is True and info["age_s"] > 3000 and "token" not in info
    path.unlink()
    assert read_lock(tmp_path) is None


def test_half_written_lock_is_live_while_fresh_and_stale_when_old(tmp_path: Path):
    path = tmp_path / LOCK_NAME
    path.write_text('{"token": "ab')  # a crash mid-write, or a contender writing right now
    with pytest.raises(OutputLockedError, match="unreadable"), locked(tmp_path, command="x"):
        pass
    assert path.read_text() == '{"token": "ab'
    old = time.time() - 600
    os.utime(path, (old, old))
    with locked(tmp_path, command="x") as held:
        assert json.loads(held.path.read_text())["command"] == "x"
    assert _leftovers(tmp_path) == []


_CONTENDER = """
import sys, time
from pathlib import Path
from virnuc_hpc.errors import OutputLockedError
from virnuc_hpc.outputs.lock import locked
outdir, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    with locked(outdir, command="race", heartbeat_s=0.2):
        print("won", flush=True)
        time.sleep(3.0)  # held until every other contender has tried
except OutputLockedError:
    print("refused", flush=True)
"""


@pytest.mark.e2e  # 36 interpreters racing: the slowest test of the unit tier otherwise
@pytest.mark.parametrize("stale", ["dead_pid", "silent_other_host", "half_written"])
def test_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path, stale: str):
    for round_ in range(2):
        outdir = tmp_path / f"round{round_}"
        if stale == "dead_pid":
            _write_lock(outdir, host=socket.gethostname(), pid=_dead_pid())
        elif stale == "silent_other_host":
            _write_lock(outdir, host=OTHER_HOST, pid=1, age_s=600)
        else:
            outdir.mkdir()
            (outdir / LOCK_NAME).write_text("{")
            os.utime(outdir / LOCK_NAME, (time.time() - 600,) * 2)
        start = time.time() + 2.0  # every contender is up and waiting by then
        procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(outdir), str(start)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        outcomes = [p.communicate(timeout=60) for p in procs]
        said = sorted(out.strip() for out, _ in outcomes)
        assert said == ["refused"] * 5 + ["won"], outcomes
        assert all("Traceback" not in err for _, err in outcomes), outcomes
        # exactly one contender moved the stale lock away (and said so), whoever then won
        assert sum("taking over the stale lock" in err for _, err in outcomes) == 1, outcomes
        assert _leftovers(outdir) == []


def test_threads_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path):
    """Many rounds, in one process (same pid): thread switches land between reading a lock and
    replacing it far more often than between processes, so a takeover that could steal a fresh
    lock shows up here."""
    dead = _dead_pid()
    for round_ in range(30):
        outdir = tmp_path / f"round{round_}"
        _write_lock(outdir, host=socket.gethostname(), pid=dead)
        start, release = threading.Barrier(8), threading.Event()
        outcomes: list[str] = []

        def contend() -> None:
            start.wait()
            try:
                with locked(outdir, command="race"):
                    outcomes.append("won")
                    release.wait()
            except OutputLockedError:
                outcomes.append("refused")

        threads = [threading.Thread(target=contend) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(outcomes) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused"] * 7 + ["won"], (round_, outcomes)
        assert _leftovers(outdir) == []


def test_takeover_left_half_done_by_a_crash_is_finished(tmp_path: Path):
    """A contender that died in the middle of a takeover left its (old) takeover file behind."""
    _write_lock(tmp_path, host=OTHER_HOST, pid=1, age_s=600)
    mutex = tmp_path / (LOCK_NAME + ".takeover")
    mutex.write_text(json.dumps({"token": "1" * 32, "host": OTHER_HOST, "pid": 1}))
    os.utime(mutex, (time.time() - 600,) * 2)
    with locked(tmp_path, command="after the crash") as held:
        assert json.loads(held.path.read_text())["command"] == "after the crash"
        assert not mutex.exists()
    assert _leftovers(tmp_path) == []


# --- status ---------------------------------------------------------------------------------------

def test_status_shows_the_holder(tmp_path: Path):
    outdir = tmp_path / "out"
    with locked(outdir, command="virnuc-hpc predict reads.fa -o out"):
        proc = cli("status", str(outdir), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "live" in proc.stdout and f"pid {os.getpid()} " in proc.stdout
        assert socket.gethostname() in proc.stdout and "virnuc-hpc predict reads.fa -o out" in proc.stdout
        proc = cli("status", "--json", str(outdir), timeout=60)
        lock = json.loads(proc.stdout.splitlines()[0])["lock"]
        assert lock["pid"] == os.getpid() and lock["stale"] is False and "token" not in lock
    dead = _dead_pid()
    _write_lock(outdir, host=socket.gethostname(), pid=dead)
    proc = cli("status", str(outdir), timeout=60)
    assert "STALE" in proc.stdout and f"pid {dead} " in proc.stdout, proc.stdout
    (outdir / LOCK_NAME).unlink()
    proc = cli("status", str(outdir), timeout=60)  # no lock, nothing else: not an output directory
    assert proc.returncode == 2 and "not an output directory" in proc.stderr and "lock" not in proc.stdout
