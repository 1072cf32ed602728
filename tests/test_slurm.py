"""``virnuc-hpc submit/status`` against a real one-node Slurm (slurm/start-test-slurm.sh).

All jobs are submitted at once by one module fixture, so their start-up and requeue waits overlap;
each test then waits for its own jobs. Jobs run the demo preset (random tiny models, CPU) with small
bags, so there are many bags to resume from.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, cli, finished_outputs
from virnuc_hpc.runtime import slurm
from virnuc_hpc.testing.loading import load_records
from virnuc_hpc.reads.frames import frames_for_records

pytestmark = pytest.mark.slurm
JOB_TIMEOUT_S = 420


@dataclass
class Submission:
    folder: Path
    outdir: Path
    job_ids: list[str]
    args: tuple[str, ...] = ()  # submit's arguments

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.folder.glob("*_log.*")))


def _submit(tmp: Path, name: str, inputs: list[Path], *options: str, run_args: tuple[str, ...] = (),
            ) -> Submission:
    outdir, folder = tmp / name, tmp / f"{name}-jobs"
    args = ("--folder", str(folder), *options, "--", *map(str, inputs), "-o", str(outdir), *DEMO, *run_args)
    proc = cli("submit", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = re.findall(r"^submitted job (\S+):", proc.stdout, re.M)
    assert ids, proc.stdout
    return Submission(folder, outdir, ids, args)


def _assert_preview_is_submitted_script(sub: Submission, script: Path) -> None:
    """``submit --show-script`` with the same arguments prints the very script submitit submitted
    (our template, script.py, against submitit's own)."""
    proc = cli("submit", "--show-script", *sub.args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == script.read_text(), f"--show-script:\n{proc.stdout}\nsubmitted:\n{script.read_text()}"


def _wait(sub: Submission, timeout: float = JOB_TIMEOUT_S) -> list[slurm.JobStatus]:
    try:
        states = slurm.wait(sub.folder, sub.job_ids, timeout_s=timeout, poll_s=1.0)
    except TimeoutError as err:
        pytest.fail(f"{err}\n{sub.logs()}")
    assert all(s.state == "COMPLETED" for s in states), f"{states}\n{sub.logs()}"
    return states


class Interruption(threading.Thread):
    """Runs ``command`` once the job has written ``bags`` bags: in the middle of the job, whatever
    order the tests run in (all jobs run at once)."""

    def __init__(self, outdir: Path, command: list[str], bags: int = 2, timeout: float = 300):
        super().__init__(daemon=True)
        self.outdir, self.command, self.bags, self.timeout = outdir, command, bags, timeout
        self.bags_before: int | None = None
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            done = len(list((self.outdir / "bags").glob("bag-*.nc")))
            if done >= self.bags:
                proc = subprocess.run(self.command, capture_output=True, text=True)
                self.bags_before = done
                self.error = proc.stderr if proc.returncode else None
                return
            time.sleep(0.1)
        self.error = f"fewer than {self.bags} bags in {self.outdir} after {self.timeout} s"

    def check(self) -> int:
        self.join(self.timeout)
        assert self.bags_before is not None and self.error is None, self.error
        return self.bags_before


def _local_predict(fasta: Path, outdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "virnuc_hpc.cli", "predict", str(fasta), "-o",
                             str(outdir), *DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


# Site options the test Slurm accepts (its node has the feature virnuc-test): recorded with the job.
SITE_OPTIONS = ("--constraint", "virnuc-test", "--mail-type", "END", "--mail-user", "nobody@localhost",
                "--slurm-opt", "comment=virnuc-site-options", "--slurm-opt", "wckey=virnuc")


@dataclass
class Jobs:
    tmp: Path
    big: Path
    parts: list[Path]
    plain: Submission
    array: Submission
    requeue: Submission
    timeout: Submission
    requeued: Interruption
    signalled: Interruption
    two_tasks: Submission
    big_reference: subprocess.Popen


@pytest.fixture(scope="module")
def jobs(slurm_up: None, demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """Every job of this module, submitted up front; plus a local reference run of the big input."""
    tmp = tmp_path_factory.mktemp("slurm")
    demo = DEMO_FASTA.read_text()
    big = tmp / "big.fa"  # three renamed copies of the demo: ~45 bags, time to interrupt a job
    big.write_text("".join(demo.replace(">", f">copy{k}_") for k in range(3)))
    records = demo.split(">")[1:]
    parts = []
    for i in range(3):
        part = tmp / f"part{i + 1}.fa"
        part.write_text("".join(">" + r for r in records[i::3]))
        parts.append(part)
    requeue, timeout = _submit(tmp, "requeue", [big]), _submit(tmp, "timeout", [big])
    return Jobs(
        tmp=tmp, big=big, parts=parts, requeue=requeue, timeout=timeout,
        # an admin's or a preemption's requeue: SIGTERM, kill, back to the queue
        requeued=Interruption(requeue.outdir, ["scontrol", "requeue", *requeue.job_ids]),
        # what Slurm sends ahead of the time limit (--signal=USR2@...): submitit's checkpoint
        signalled=Interruption(timeout.outdir, ["scancel", "--signal=USR2", *timeout.job_ids]),
        plain=_submit(tmp, "plain", [DEMO_FASTA], "--gpus-per-node", "1", "--time", "00:10:00",
                      *SITE_OPTIONS),
        array=_submit(tmp, "array", parts, "--array-parallelism", "3"),
        two_tasks=_submit(tmp, "two-tasks", [DEMO_FASTA], "--tasks-per-node", "2",
                          run_args=("--workers", "1")),
        big_reference=_local_predict(big, tmp / "big-reference"),
    )


def _big_reference(jobs: Jobs) -> Path:
    out, _ = jobs.big_reference.communicate(timeout=JOB_TIMEOUT_S)
    assert jobs.big_reference.returncode == 0, out
    return jobs.tmp / "big-reference"


@pytest.mark.timeout(900)  # the first test carries the module fixture: six submissions, each checking its models
def test_submitted_job_matches_local_run(jobs: Jobs, reference: Path):
    sub = jobs.plain
    (state,) = _wait(sub)
    assert finished_outputs(sub.outdir) == finished_outputs(reference)
    log = Path(state.log).read_text()
    # the GPU Slurm granted is visible to the job; the demo preset still runs on the CPU
    assert "GPUs granted: 0;" in log, log
    assert re.search(r"Dask dashboard on \S+: http://127\.0\.0\.1:\d+/status", log), log
    assert re.search(r"ssh -N -L 8787:127\.0\.0\.1:\d+ -J \S+ \S+", log), log
    script = (sub.folder / f"{state.job_id}_submission.sh").read_text()
    for flag in ("--gpus-per-node=1", "--time=10", "--requeue", "--signal=USR2@", "--constraint=virnuc-test",
                 "--mail-type=END", "--mail-user=nobody@localhost", "--comment=virnuc-site-options",
                 "--wckey=virnuc"):
        assert f"#SBATCH {flag}" in script, script
    assert script.count("--wckey") == 1, script  # the user's replaces submitit's default
    _assert_preview_is_submitted_script(sub, sub.folder / f"{state.job_id}_submission.sh")
    recorded = subprocess.run(["scontrol", "show", "job", "-o", state.job_id], capture_output=True,
                              text=True).stdout  # what Slurm holds of the job (kept MinJobAge seconds)
    for field in ("Features=virnuc-test", "Comment=virnuc-site-options", "MailUser=nobody@localhost",
                  "MailType=END"):
        assert field in recorded, recorded
    # `virnuc-hpc status FOLDER` lists the job, its state and its log
    proc = cli("status", str(sub.folder))
    assert proc.returncode == 0, proc.stderr
    row = proc.stdout.splitlines()[1].split()
    assert row[:2] == [state.job_id, "COMPLETED"] and row[-1] == state.log and Path(row[-1]).is_file()
    total = json.loads((sub.outdir / "run.json").read_text())["bags"]["total"]
    assert row[2:4] == [f"{total}/{total}", "-"], row  # bags done/total, no ETA once finished


def test_show_script_passes_site_options_through(tmp_path: Path):
    outdir = tmp_path / "out"
    proc = cli("submit", "--show-script", "--gres", "gpu:2", "--constraint", "h100", "--exclusive",
               "--mail-type", "END,FAIL", "--mail-user", "me@example.org", "--slurm-opt", "reservation=x",
               "--slurm-opt", "--hint=nomultithread", "--slurm-opt", "overcommit",
               "--", str(DEMO_FASTA), "-o", str(outdir), *DEMO)
    assert proc.returncode == 0, proc.stderr
    lines = set(proc.stdout.splitlines())
    for flag in ("--gres=gpu:2", "--constraint=h100", "--exclusive", "--mail-type=END,FAIL",
                 "--mail-user=me@example.org", "--reservation=x", "--hint=nomultithread", "--overcommit"):
        assert f"#SBATCH {flag}" in lines, proc.stdout
    assert not outdir.exists()  # nothing submitted, no job folder made


@pytest.mark.parametrize("option, message", [
    ("time=5", "use submit's own option --time"),
    ("output=/tmp/x", "virnuc-hpc sets it"),
    ("bad key=1", "expected KEY=VALUE"),
    ("reservation=", "no value after '='"),
])
def test_slurm_opt_refusals(tmp_path: Path, option: str, message: str):
    proc = cli("submit", "--show-script", "--slurm-opt", option, "--", str(DEMO_FASTA), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_job_array_over_three_inputs(jobs: Jobs):
    sub = jobs.array
    states = _wait(sub)
    assert len(states) == 3 and len({s.job_id.split("_")[0] for s in states}) == 1  # one array
    array_id = states[0].job_id.split("_")[0]
    script = sub.folder / f"{array_id}_submission.sh"
    assert "#SBATCH --array=0-2%3" in script.read_text().splitlines(), script.read_text()
    _assert_preview_is_submitted_script(sub, script)
    for part, state in zip(jobs.parts, states):
        outdir = Path(state.outdir)
        assert outdir == sub.outdir / part.stem and (outdir / "run.json").is_file()
        records = load_records([part], skip_invalid=False).records
        rows = (outdir / "reads.tsv").read_text().splitlines()[2:]
        assert [r.split("\t")[0] for r in rows] == [r.id for r in records]
        frames = frames_for_records(records, 300).frame_id
        lines = (outdir / "prediction_results.txt").read_text().splitlines()[2:]
        assert [line.split("\t")[0] for line in lines] == list(frames)


def _assert_resumed(jobs: Jobs, sub, interruption, log_markers: list[str]) -> dict:
    """The interrupted job ran again, reused finished bags, and matches the local reference."""
    (job_id,) = sub.job_ids
    interruption.check()
    _wait(sub)
    log = (sub.folder / f"{job_id}_0_log.out").read_text()
    assert all(marker in log for marker in log_markers), log
    run = json.loads((sub.outdir / "run.json").read_text())
    assert run["bags"]["reused"] >= 2, run["bags"]
    assert finished_outputs(sub.outdir) == finished_outputs(_big_reference(jobs))
    return run


def test_scontrol_requeue_resumes_with_identical_outputs(jobs: Jobs):
    run = _assert_resumed(jobs, jobs.requeue, jobs.requeued, ["attempt 2"])
    assert run["bags"]["computed_now"] >= 1, run["bags"]


def test_time_limit_signal_checkpoints_and_requeues(jobs: Jobs):
    """USR2 is what Slurm sends before the time limit (--signal): checkpoint(), requeue, resume."""
    _assert_resumed(jobs, jobs.timeout, jobs.signalled, ["checkpoint: requeueing", "attempt 2"])


def test_second_task_joins_first_tasks_scheduler(jobs: Jobs, reference: Path):
    sub = jobs.two_tasks
    (state,) = _wait(sub)
    assert finished_outputs(sub.outdir) == finished_outputs(reference)
    rank0 = slurm_result(sub.folder, state.job_id, 0)
    rank1 = slurm_result(sub.folder, state.job_id, 1)
    assert rank1["joined"].startswith("tcp://")
    # the rendezvous is a Dask scheduler file (any `dask worker --scheduler-file` could join)
    identity = json.loads((sub.folder / f"{state.job_id}_scheduler.json").read_text())
    assert identity["type"] == "Scheduler" and identity["address"] == rank1["joined"], identity
    names = rank0["worker_names"]  # worker address -> name; rank 1's are "rank1-<i>"
    run = json.loads((sub.outdir / "run.json").read_text())
    bags_by_name = {names.get(addr, "?"): w["bags"] for addr, w in run["workers"].items()}
    assert any(n.startswith("rank1-") and b > 0 for n, b in bags_by_name.items()), bags_by_name
    assert sum(bags_by_name.values()) == run["bags"]["total"]


def slurm_result(folder: Path, job_id: str, task: int) -> dict:
    """What task ``task`` of the (finished) job returned, through submitit's Job API."""
    import submitit

    return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=(0, 1)).task(task).result()

