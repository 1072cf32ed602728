"""The Snakemake workflow (workflow/Snakefile), run by real Snakemake on the CPU demo models.

One real predict (one sample of two, asked for by its target), plus dry runs that show which jobs
each mode plans. The real run also checks the threads end to end: Snakemake's threads become
--threads, and with threads_per_worker left unset each worker gets threads / workers torch threads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import pytest
import yaml

from conftest import DEMO_FASTA, ROOT

pytestmark = pytest.mark.e2e  # snakemake, and the CLI it runs

SNAKEFILE = ROOT / "workflow" / "Snakefile"


def _records(text: str, first: int, count: int) -> str:
    records = [">" + r for r in text.split(">")[1:]]
    return "".join(records[first:first + count])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Two one-file samples in a samplesheet, and a configuration that leaves threads_per_worker unset."""
    if shutil.which("snakemake") is None:
        pytest.fail("snakemake is not installed (it is in the test extra: pip install -e '.[test]')")
    text = DEMO_FASTA.read_text()
    (tmp_path / "reads").mkdir()
    (tmp_path / "reads" / "a.fasta").write_text(_records(text, 0, 4))
    (tmp_path / "reads" / "b.fasta").write_text(_records(text, 4, 4))
    (tmp_path / "samples.tsv").write_text("sample\tfile\nalpha\treads/a.fasta\nbeta\treads/b.fasta\n")
    # the demo preset sets threads_per_worker: 1; null here gives the split of --threads
    (tmp_path / "threads.yaml").write_text("threads_per_worker: null\nworkers: 1\n")
    return tmp_path


def _snakemake(workdir: Path, mode: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    config = {"samplesheet": "samples.tsv", "outdir": "results", "mode": mode, "threads": 2,
              "options": f"--preset demo --bag-size 8 --config {workdir / 'threads.yaml'}"}
    (workdir / f"{mode}.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(["snakemake", "-s", str(SNAKEFILE), "--configfile", f"{mode}.yaml",
                           "--directory", str(workdir), "--cores", "2", *args],
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)


def _planned(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule from Snakemake's job stats table."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    table = text[text.index("Job stats"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m[1] != "total"}


def test_modes_plan_one_predict_per_sample_or_one_for_all(workdir: Path):
    per_sample = _planned(_snakemake(workdir, "per_sample", "--dry-run"))
    assert per_sample == {"all": 1, "samplesheet": 2, "predict": 2}
    together = _planned(_snakemake(workdir, "together", "--dry-run"))
    assert together == {"all": 1, "predict": 1}


def test_one_sample_runs_through_snakemake(workdir: Path, demo_cache: Path):
    proc = _snakemake(workdir, "per_sample", "results/alpha/run.json")
    log = workdir / "results" / ".logs" / "alpha.log"
    assert proc.returncode == 0, proc.stderr + (log.read_text() if log.exists() else "")
    out = workdir / "results" / "alpha"
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "reads.tsv", "run.log"):
        assert (out / name).stat().st_size > 0, name
    assert not (workdir / "results" / "beta").exists()  # only the target asked for
    run = json.loads((out / "run.json").read_text())
    assert run["samples"][0]["name"] == "alpha"
    assert "--threads 2" in run["command_line"] and "--samplesheet" in run["command_line"]
    assert run["threads"]["per_worker"] == 2 and run["threads"]["source"] == "threads"
    with h5py.File(next((out / "bags").glob("bag-*.nc"))) as bag:  # what the worker really ran with
        numerics = bag.attrs["numerics"]
    assert json.loads(numerics if isinstance(numerics, str) else numerics.decode())["torch_threads"] == 2
