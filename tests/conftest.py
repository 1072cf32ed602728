"""Shared fixtures: the demo models in a per-session cache, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_FASTA = ROOT / "examples" / "demo.fasta"


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo models made once per test session (workers inherit the variable)."""
    cache = tmp_path_factory.mktemp("virnuc-cache")
    os.environ["VIRNUC_HPC_CACHE"] = str(cache)
    from virnuc_hpc.demo import ensure_demo_models
    ensure_demo_models()
    return cache


def cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300,
        **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "virnuc_hpc.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, **kwargs)


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
