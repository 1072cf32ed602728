"""Shared fixtures: the demo models in a per-session cache, and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_FASTA = ROOT / "examples" / "demo.fasta"
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def proteins(lengths, seed: int = 0) -> list[str]:
    """Random proteins of the given lengths (seeded), for the encoder tests."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(AMINO, int(n))) for n in lengths]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) feature matrices."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo models made once per test session (workers inherit the variable)."""
    cache = tmp_path_factory.mktemp("virnuc-cache")
    os.environ["VIRNUC_HPC_CACHE"] = str(cache)
    from virnuc_hpc.models.demo import ensure_demo_models
    ensure_demo_models()
    return cache


def cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300,
        **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "virnuc_hpc.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, **kwargs)


#: The CLI with its modules imported before the clock starts, the seconds until it exits written to
#: argv[1]: what a command spends on its work, whatever importing costs on a busy machine.
_TIMED_CLI = ("import sys, time\n"
              "import virnuc_hpc.cli, virnuc_hpc.runtime.cluster, virnuc_hpc.runtime.pipeline\n"
              "t0 = time.perf_counter()\n"
              "try:\n"
              "    virnuc_hpc.cli.main(args=sys.argv[2:], prog_name='virnuc-hpc')\n"
              "finally:\n"
              "    open(sys.argv[1], 'w').write(repr(time.perf_counter() - t0))\n")


def timed_cli(clock: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a subprocess and the seconds it ran once its modules were imported (kept in ``clock``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", _TIMED_CLI, str(clock), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    return proc, float(clock.read_text())


def cli_here(*args: str) -> tuple[Any, float]:
    """The CLI run in this process (click's CliRunner: no start-up to pay per case) and its seconds.

    The modules the commands import on first use are imported before the clock starts. What
    ``main`` and the commands change in the process (a log handler bound to the captured stderr,
    the SIGINT handler) is put back afterwards.
    """
    import logging

    from click.testing import CliRunner

    import virnuc_hpc.runtime.pipeline  # noqa: F401 - imported by predict on first use
    import virnuc_hpc.runtime.slurm  # noqa: F401 - imported by worker on first use
    from virnuc_hpc.cli import main
    ours, dask_log = logging.getLogger("virnuc_hpc"), logging.getLogger("distributed")
    saved = (list(ours.handlers), ours.level, dask_log.level, signal.getsignal(signal.SIGINT))
    t0 = time.perf_counter()
    try:
        result = CliRunner().invoke(main, list(args), prog_name="virnuc-hpc")
        return result, time.perf_counter() - t0
    finally:
        ours.handlers[:] = saved[0]
        ours.setLevel(saved[1])
        dask_log.setLevel(saved[2])
        signal.signal(signal.SIGINT, saved[3])


FINAL = ("prediction_results.txt", "prediction_results_highestscore.csv", "reads.tsv")
DEMO = ["--preset", "demo", "--no-progress", "--bag-size", "8"]


def finished_outputs(outdir: Path) -> dict[str, bytes]:
    return {name: (outdir / name).read_bytes() for name in FINAL}


def assert_nothing_finished(outdir: Path) -> None:
    for name in (*FINAL, "run.json"):
        assert not (outdir / name).exists(), f"{name} left behind by a failed run"


@pytest.fixture(scope="session")
def reference(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted demo run through the CLI: what every disturbed run must reproduce."""
    outdir = tmp_path_factory.mktemp("reference")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stdout
    return outdir


#: three samples of different reads (so that their % virus differ), cut from the demo
THREE_SAMPLES = {"gut": (0, 24), "soil": (24, 40), "lake": (36, 60)}


@pytest.fixture(scope="session")
def three_samples(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo run of three samples through the CLI (samples/<name>/, samples.tsv); not to be changed."""
    folder = tmp_path_factory.mktemp("three-samples")
    records = [">" + r for r in DEMO_FASTA.read_text().split(">")[1:]]
    inputs = []
    for name, (start, end) in THREE_SAMPLES.items():
        inputs.append(folder / f"{name}.fa")
        inputs[-1].write_text("".join(records[start:end]))
    outdir = folder / "out"
    proc = cli("predict", *map(str, inputs), "-o", str(outdir), *DEMO)
    assert proc.returncode == 0, proc.stderr
    return outdir


def finished_bags(outdir: Path) -> int:
    """Bag files present in OUTDIR (each one present is whole: they are written atomically)."""
    from virnuc_hpc.outputs import store
    return len(store.bag_files(outdir))


def killed_run(outdir: Path, *extra: str, after_bags: int, delay: float = 0.0, timeout: float = 120) -> int:
    """A demo CLI run killed with SIGKILL (its whole process group: client, scheduler, workers) once
    OUTDIR holds ``after_bags`` finished bags, ``delay`` seconds later. Returns the bags finished then.

    The callers check the kill fell mid-run (no run.json): a run may finish before it is killed."""
    args = [sys.executable, "-m", "virnuc_hpc.cli", "predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *extra]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and finished_bags(outdir) < after_bags:
        time.sleep(0.05)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group had already exited
        pass
    proc.wait()
    return finished_bags(outdir)


@contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real, tiny filesystem to fill up (full-disk tests); needs root, as CI has."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture(scope="session")
def slurm_up() -> None:
    """Slurm must answer: these tests fail (never skip) without it, so CI cannot silently drop them."""
    def usable() -> bool:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        return proc.returncode == 0 and proc.stdout.split()[:1] in (["idle"], ["mix"], ["alloc"])
    try:
        if not usable() and os.geteuid() == 0:
            subprocess.run(["bash", str(ROOT / "slurm" / "start-test-slurm.sh")], check=True,
                           timeout=300)
        ok = usable()
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        pytest.fail("no usable Slurm (`sinfo` fails or the node is down); "
                    "start it with slurm/start-test-slurm.sh (tests/run.sh does)")
