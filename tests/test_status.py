"""`virnuc-hpc status FOLDER`: what it answers about an output directory (running, finished, failed,
resumable) and a Slurm job folder, the JSON form carrying the same facts, and damaged records
(registry, lock, run.json, manifest, progress file) reported by file and line, never a traceback."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import time
from pathlib import Path

import pytest

from conftest import THREE_SAMPLES, cli
from virnuc_hpc.outputs.layout import PROGRESS
from virnuc_hpc.outputs.lock import LOCK_NAME, locked
from virnuc_hpc.runtime.progress import Progress, ProgressLog
from virnuc_hpc.runtime.slurm import REGISTRY

#: A damaged record is answered at once: status's own work, in CPU seconds (Python and the CLI
#: take about half a second; the NetCDF stack alone would add one). Its wall time on a busy test
#: machine also counts other processes' turns; a hang or a wait shows as the CLI's timeout.
CPU_S = 1.0


def status(*args: str) -> tuple[object, float]:
    """The CLI's answer, and the CPU seconds it took."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = cli("status", *args, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return proc, cpu


def assert_reported(proc, seconds: float, *names: str) -> None:
    """No traceback, fast, and every stderr line short and naming one of the files."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert seconds < CPU_S, f"status took {seconds:.2f} s of CPU"
    lines = proc.stderr.strip().splitlines()
    assert lines, "the damaged record was not reported"
    for line in lines:
        assert len(line) < 500 and any(name in line for name in names), line


def resumable_dir(path: Path, bags: int = 2) -> Path:
    """What a killed run leaves: its manifest and some finished bags, no run.json."""
    (path / "bags").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"run_key": "0" * 16, "classify": True}))
    for i in range(bags):
        (path / "bags" / f"bag-{i:06d}.nc").write_bytes(b"not read by status")
    return path


# --- damaged records --------------------------------------------------------------------------

def test_registry_garbage_and_a_record_without_job_id_are_skipped(tmp_path: Path) -> None:
    registry = tmp_path / REGISTRY
    registry.write_bytes(b'{"job_id": "1", "outdir": "/x", "log": "/x.out", "err": "/x.err"}{{garbage\n'
                         b'{"outdir": "/x", "log": "/x.out", "err": "/x.err"}\n'
                         b'\xff\xfe not text\n' + b'[' * 100_000 + b'\n')
    proc, seconds = status(str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert_reported(proc, seconds, f"{registry}:")
    for line, what in ((1, "not valid JSON"), (2, "without job_id"), (3, "not UTF-8"), (4, "nested too deeply")):
        assert f"{registry}:{line}: " in proc.stderr and what in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 4
    assert "no jobs recorded" in proc.stdout
    proc, _ = status("--json", str(tmp_path))
    facts = json.loads(proc.stdout)  # one object, the problems in it too
    assert facts["jobs"] == [] and len(facts["problems"]) == 4 and facts["output"] is False


def test_lock_file_damaged_or_not_a_file(tmp_path: Path) -> None:
    outdir = resumable_dir(tmp_path / "out")
    lock = outdir / LOCK_NAME
    lock.write_bytes(b"\x00\x01{garbage" * 1000)
    os.utime(lock, (time.time() - 600,) * 2)  # old: whoever wrote it is gone
    proc, seconds = status(str(outdir))
    assert proc.returncode == 0, proc.stderr
    assert_reported(proc, seconds, str(lock))
    assert "resumable: 2 bag(s) kept" in proc.stdout and "STALE" in proc.stdout, proc.stdout
    lock.unlink()
    os.mkfifo(lock)  # would block a plain open() for ever
    proc, seconds = status("--json", str(outdir))
    assert_reported(proc, seconds, str(lock))
    facts = json.loads(proc.stdout)
    assert facts["lock"]["unreadable"] is True and "not a regular file" in facts["lock"]["problem"]


def test_run_json_damaged(tmp_path: Path) -> None:
    outdir = resumable_dir(tmp_path / "out")
    (outdir / "run.json").write_text('{\n  "tool": "virnuc-hpc",\n  "counts": {"reads": 1\n')  # cut short
    proc, seconds = status(str(outdir))
    assert proc.returncode == 0, proc.stderr
    assert_reported(proc, seconds, f"{outdir / 'run.json'}:")
    assert re.search(r"run\.json:\d+: not valid JSON", proc.stderr), proc.stderr
    assert "resumable" in proc.stdout  # a rerun reuses the bags and writes run.json again


def test_manifest_damaged(tmp_path: Path) -> None:
    outdir = resumable_dir(tmp_path / "out")
    (outdir / "manifest.json").write_bytes(b'{"run_key": "\xe9t\xe9"}')  # Latin-1, not UTF-8
    proc, seconds = status("--json", str(outdir))
    assert proc.returncode == 0, proc.stderr
    assert_reported(proc, seconds, f"{outdir / 'manifest.json'}:1:")
    facts = json.loads(proc.stdout)
    assert facts["state"] == "damaged" and facts["resumable"] is False and facts["bags_kept"] == 2


def test_a_manifest_alone_damaged_is_not_ours(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[1, 2")
    proc, seconds = status(str(tmp_path))
    assert proc.returncode == 2 and seconds < CPU_S
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virnuc-hpc: error: ") and len(lines[0]) < 500
    assert "not an output directory" in lines[0] and "manifest.json:1:" in lines[0]


@pytest.mark.parametrize("content", ["{}", "garbage", '{"bags_done": "many", "frames_per_s": 1, '
                                     '"tokens_per_s": 1, "elapsed_s": 1}'])
def test_progress_file_damaged(tmp_path: Path, content: str) -> None:
    outdir = tmp_path / "out"
    with locked(outdir, command="virnuc-hpc predict a.fa -o out"):
        (outdir / PROGRESS).write_text(content)
        proc, seconds = status("--json", str(outdir))
    assert proc.returncode == 0, proc.stderr
    assert_reported(proc, seconds, str(outdir / PROGRESS))
    facts = json.loads(proc.stdout)
    assert facts["state"] == "running" and facts["progress"] is None


# --- what status answers ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["files", "empty", "like /tmp", "missing", "a file"])
def test_not_an_output_directory(tmp_path: Path, kind: str) -> None:
    """One message and exit 2; with --json, also one JSON object saying so on stdout."""
    folder, said = tmp_path / "here", "is not an output directory of virnuc-hpc"
    if kind != "missing":
        folder.mkdir()
    if kind == "files":
        (folder / "notes.txt").write_text("mine")
    elif kind == "like /tmp":  # others' folders and files, one of them an output directory of ours
        (folder / "someone").mkdir()
        (folder / "x.log").write_text("log")
        resumable_dir(folder / "out")
    elif kind == "missing":
        said = "no such directory"
    elif kind == "a file":
        folder.rmdir()
        folder.write_text("a file")
        said = "not a directory"
    for args in ([str(folder)], ["--json", str(folder)]):
        proc, seconds = status(*args)
        assert proc.returncode == 2 and seconds < CPU_S, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("virnuc-hpc: error: ") and said in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        if args[0] == "--json":
            assert json.loads(proc.stdout) == {"folder": str(folder), "error": lines[0].split(": error: ", 1)[1]}
        else:
            assert proc.stdout == ""


def test_outdir_with_its_job_folder(tmp_path: Path) -> None:
    outdir = resumable_dir(tmp_path / "out")
    (outdir / "slurm").mkdir()
    (outdir / "slurm" / REGISTRY).write_text(json.dumps(
        {"job_id": "999999", "outdir": str(outdir), "log": "/x.out", "err": "/x.err", "tasks": 1}) + "\n")
    proc, _ = status("--json", str(outdir))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["state"] == "resumable" and facts["jobs_folder"] == str(outdir / "slurm")
    assert [(j["job_id"], j["bags_done"]) for j in facts["jobs"]] == [("999999", 2)]
    text, _ = status(str(outdir))
    assert f"jobs submitted into {outdir / 'slurm'}:" in text.stdout and "999999" in text.stdout, text.stdout


def test_running_local_run_json_carries_the_progress(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    progress = Progress(estimated_total=10)
    for _ in range(4):
        progress.bag_cut()
    progress.bag_reused()
    progress.bag_done(frames=300, tokens=15_000)
    with locked(outdir, command="virnuc-hpc predict reads.fa -o out"), \
            ProgressLog(progress, 0.0, path=outdir / PROGRESS):
        text, _ = status(str(outdir))
        proc, _ = status("--json", str(outdir))
    assert proc.returncode == 0 and text.returncode == 0, proc.stderr + text.stderr
    facts = json.loads(proc.stdout)
    assert facts["state"] == "running" and facts["lock"]["pid"] == os.getpid()
    snap = facts["progress"]
    assert (snap["bags_done"], snap["bags_total"], snap["total_exact"]) == (2, 10, False)
    assert snap["frames_per_s"] > 0 and snap["eta_s"] is not None
    assert re.search(r"progress: bags 2/~10 \(20%\), [\d,]+ frames/s", text.stdout), text.stdout
    assert "running" in text.stdout and f"pid {os.getpid()} " in text.stdout
    assert not (outdir / PROGRESS).exists()  # removed when the run ended well


def test_failed_run_says_why(tmp_path: Path) -> None:
    outdir = resumable_dir(tmp_path / "out")
    progress = Progress(estimated_total=5)
    with pytest.raises(RuntimeError):
        with locked(outdir, command="virnuc-hpc predict reads.fa -o out"), \
                ProgressLog(progress, 0.0, path=outdir / PROGRESS):
            raise RuntimeError("cannot write the final tables: No space left on device")
    proc, _ = status("--json", str(outdir))
    facts = json.loads(proc.stdout)
    assert facts["state"] == "failed" and facts["resumable"] is True
    assert facts["failure"]["error"] == "cannot write the final tables: No space left on device"
    assert facts["failure"]["error_type"] == "RuntimeError"
    proc, _ = status(str(outdir))
    assert proc.returncode == 0 and "failed (RuntimeError" in proc.stdout and "No space left" in proc.stdout
    assert "2 bag(s) kept: rerun the same command to resume" in proc.stdout, proc.stdout


def test_finished_and_resumable_demo_run(reference: Path, tmp_path: Path) -> None:
    recorded = json.loads((reference / "run.json").read_text())
    proc, _ = status("--json", str(reference))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    facts = json.loads(proc.stdout)  # exactly one JSON object
    assert facts["state"] == "finished" and facts["output"] is True and facts["problems"] == []
    run = facts["run"]
    counts = recorded["counts"]
    assert run["counts"] == counts
    assert run["virus_percent"] == round(100 * counts["virus_reads"] / counts["reads"], 2)
    assert run["bags"]["total"] == recorded["bags"]["total"] and run["wall_s"] > 0
    assert {"prediction_results.txt", "prediction_results_highestscore.csv", "reads.tsv"} <= set(run["tables"])
    text, _ = status(str(reference))
    assert text.returncode == 0 and f"{reference}: finished (predict" in text.stdout, text.stdout
    assert f"reads {counts['reads']:,}: {counts['virus_reads']:,} called virus ({run['virus_percent']:.2f}%)" \
        in text.stdout and "wall time" in text.stdout and "prediction_results.txt" in text.stdout
    assert "RANDOM WEIGHTS" in text.stdout

    killed = tmp_path / "killed"  # the same run without run.json: what a kill before the end leaves
    shutil.copytree(reference, killed)
    (killed / "run.json").unlink()
    proc, _ = status("--json", str(killed))
    facts = json.loads(proc.stdout)
    assert facts["state"] == "resumable" and facts["resumable"] is True
    assert facts["bags_kept"] == recorded["bags"]["total"] and facts["run"] is None
    text, _ = status(str(killed))
    assert f"resumable: {recorded['bags']['total']} bag(s) kept" in text.stdout, text.stdout


def test_finished_run_of_several_samples_gives_each_ones_percent(three_samples: Path) -> None:
    """samples.tsv's reads and virus reads per sample, with % virus, in the JSON and in the text."""
    rows = [line.split("\t") for line in (three_samples / "samples.tsv").read_text().splitlines()
            if not line.startswith("#")]
    want = [dict(zip(rows[0], row)) for row in rows[1:]]
    recorded = json.loads((three_samples / "run.json").read_text())
    proc, _ = status("--json", str(three_samples))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    run = json.loads(proc.stdout)["run"]
    assert run["counts"] == recorded["counts"] and run["samples"] == list(THREE_SAMPLES)
    per = {r["sample"]: r for r in run["per_sample"]}
    assert list(per) == [w["sample"] for w in want] == list(THREE_SAMPLES)
    for w in want:
        reads, virus = int(w["reads"]), int(w["virus_reads"])
        assert (per[w["sample"]]["reads"], per[w["sample"]]["virus_reads"]) == (reads, virus)
        assert per[w["sample"]]["virus_percent"] == round(100 * virus / reads, 2)
    assert len({r["virus_percent"] for r in per.values()}) > 1
    assert sum(r["reads"] for r in per.values()) == recorded["counts"]["reads"]
    assert "samples.tsv" in run["tables"] and run["sample_folders"] == 3
    text, _ = status(str(three_samples))
    for name, r in per.items():
        assert re.search(rf"^    {name} +{r['reads']} reads, {r['virus_reads']} called virus "
                         rf"\({r['virus_percent']:.2f}%\)$", text.stdout, re.M), text.stdout


def test_a_damaged_samples_table_row_is_left_out(three_samples: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    shutil.copytree(three_samples, outdir)
    table = outdir / "samples.tsv"
    lines = table.read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines, start=1) if line.startswith("soil\t"))
    lines[number - 1] = "soil\tmany\n"
    table.write_text("".join(lines))
    proc, _ = status("--json", str(outdir))  # a finished run: status reads its tables' names through store
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"virnuc-hpc: warning: {table}:{number}: not a row of counts; left out"]
    assert [r["sample"] for r in json.loads(proc.stdout)["run"]["per_sample"]] == ["gut", "lake"]
