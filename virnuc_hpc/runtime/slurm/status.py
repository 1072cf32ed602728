"""Job status for ``virnuc-hpc status FOLDER`` and ``submit --wait``: each recorded job's state,
bags done and ETA, and where its log is.

The state comes from ``squeue`` (which also says why a job waits, and where it runs), else from
``sacct``; once Slurm no longer knows a job, submitit's Job API tells from the job's result files
whether its Python side succeeded. ``wait`` polls that state rather than ``submitit.Job.wait``:
submitit learns a job's end from its result file or from ``sacct``, and a job cancelled before it
ran leaves no result, on a site without Slurm accounting no ``sacct`` either.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit

from virnuc_hpc.runtime.slurm.registry import read_registry

#: Slurm states after which a job will not run again (a requeued job goes back to PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


@dataclass
class JobStatus:
    job_id: str
    state: str
    outdir: str
    log: str
    err: str
    bags_done: int
    node: str = ""
    reason: str = ""
    dashboard: str = ""
    tunnel: str = ""
    bags_total: int | None = None  # None: not known yet (the input is cut while the job reads it)
    total_exact: bool = False
    eta_s: float | None = None

    def bags(self) -> str:
        """done/total, done/~total while the total is an estimate, done/? before any estimate."""
        total = "?" if self.bags_total is None else f"{'' if self.total_exact else '~'}{self.bags_total}"
        return f"{self.bags_done}/{total}"


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _queue_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """job id -> (state, node, reason) from squeue (jobs Slurm still remembers), else sacct."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}
    states: dict[str, tuple[str, str, str]] = {}
    out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%r", "-j", ",".join(mains)])
    for line in (out or "").splitlines():
        jid, state, node, reason = (line.split("|") + ["", "", ""])[:4]
        states[jid.strip()] = (state.strip(), node.strip(), reason.strip())
    missing = [j for j in job_ids if j not in states]
    if missing:
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j",
                    ",".join(sorted({j.split("_")[0] for j in missing}))])
        for line in (out or "").splitlines():
            jid, state, node = (line.split("|") + ["", ""])[:3]
            states.setdefault(jid.strip(), (state.split()[0] if state else "", node, ""))
    return states


def result_state(folder: Path, job_id: str, tasks: int) -> str | None:
    """COMPLETED/FAILED from the results submitit's job runner left, once every task wrote one
    (None while none did; FAILED where only some did: the others died)."""
    job = submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tuple(range(max(1, tasks))))
    succeeded = []
    for task in range(max(1, tasks)):
        part = job.task(task)
        if not part.paths.result_pickle.exists():
            return None if not succeeded else "FAILED"
        try:
            succeeded.append(part.exception() is None)  # the result is there: no waiting
        except Exception:  # an unreadable result is no success
            succeeded.append(False)
    return "COMPLETED" if all(succeeded) else "FAILED"


def job_status(folder: str | Path, problems: list[str] | None = None) -> list[JobStatus]:
    """State, output and log files of every job submitted into FOLDER (``problems``: where the
    records read back are damaged, see ``read_registry``)."""
    from virnuc_hpc.outputs.layout import bag_files

    folder = Path(folder).resolve()
    records = read_registry(folder, problems)
    queue = _queue_states([r["job_id"] for r in records])
    result: list[JobStatus] = []
    for rec in records:
        jid = rec["job_id"]
        state, node, reason = queue.get(jid, ("", "", ""))
        finished = result_state(folder, jid, int(rec.get("tasks", 1)))
        if not state or state in FINAL_STATES:
            # submitit's result file knows whether the Python side failed (exit 0 or not)
            state = finished or state or "UNKNOWN"
            if state == "UNKNOWN" and (Path(rec["outdir"]) / "run.json").exists():
                state = "COMPLETED"
        status = JobStatus(job_id=jid, state=state, outdir=rec["outdir"], log=rec["log"], err=rec["err"],
                           bags_done=len(bag_files(rec["outdir"])), node=node, reason=reason)
        _add_progress(status, folder, problems)
        result.append(status)
    return result


def _add_progress(status: JobStatus, folder: Path, problems: list[str] | None = None) -> None:
    """Bags done/total and ETA: a finished run's run.json, else what the running job last wrote to
    its progress file; a multi-node job's dashboard from its scheduler file."""
    from virnuc_hpc.outputs.layout import PROGRESS, RUN_JSON
    from virnuc_hpc.outputs.records import read_json_object, text_field
    from virnuc_hpc.outputs.run_record import RunRecord
    from virnuc_hpc.runtime.progress import read_progress

    outdir = Path(status.outdir)
    run, run_problems = RunRecord.read(outdir)
    problem = run_problems[0] if run is None and run_problems else None
    total = run.bags_total() if run is not None else None
    if total is not None:
        status.bags_done = status.bags_total = total
        status.total_exact = True
        return
    if problems is not None and (problem or run is not None):
        problems.append(problem or f"{outdir / RUN_JSON}: no bags total; left out")
    if status.state != "RUNNING":
        return
    snap = read_progress(outdir / PROGRESS, problems)
    if snap is not None:
        status.bags_done = snap["bags_done"]
        status.bags_total, status.total_exact = snap["bags_total"], snap["total_exact"]
        status.eta_s = snap["eta_s"]
    info, _ = read_json_object(folder / f"{status.job_id}_scheduler.json")
    if info is not None:
        status.dashboard, status.tunnel = text_field(info, "dashboard") or "", text_field(info, "tunnel") or ""


def wait(folder: str | Path, job_ids: Sequence[str], timeout_s: float | None = None,
         poll_s: float = 2.0) -> list[JobStatus]:
    """Block until the given jobs are in a final state (COMPLETED, FAILED, ...)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wanted = set(job_ids)
    while True:
        states = [s for s in job_status(folder) if s.job_id in wanted]
        if states and all(s.state in FINAL_STATES for s in states):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("jobs not finished: " + ", ".join(
                f"{s.job_id} {s.state}" for s in states if s.state not in FINAL_STATES))
        time.sleep(poll_s)


def format_status(states: Sequence[JobStatus]) -> str:
    if not states:
        return "no jobs recorded in this folder"
    from virnuc_hpc.runtime.progress import duration

    rows = [("JOB", "STATE", "BAGS", "ETA", "OUTDIR", "LOG")]
    rows += [(s.job_id, s.state + (f" ({s.reason})" if s.state == "PENDING" and s.reason else ""),
              s.bags(), duration(s.eta_s) if s.eta_s is not None else "-", s.outdir, s.log) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    for s in states:
        if s.state == "FAILED":
            lines.append(f"{s.job_id}: see {s.err}")
        if s.dashboard:
            lines.append(f"{s.job_id}: dashboard {s.dashboard} on {s.node}; tunnel: {s.tunnel}")
    return "\n".join(lines)
