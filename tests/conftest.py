"""Shared fixtures: the demo models in a per-session cache, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
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
