"""The job folder's registry of submitted jobs, ``FOLDER/virnuc-jobs.jsonl``: one JSON line a job.

It lets ``virnuc-hpc status FOLDER`` list the jobs without Slurm accounting, and it marks the
folder as ours inside OUTDIR (outputs/store.py), which is why ``submit`` creates it first.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from virnuc_hpc.outputs.layout import JOB_REGISTRY as REGISTRY

JOB_ID = re.compile(r"\d{1,20}(_\d{1,10})?")  # a Slurm job id, or an array task's (123_4)
MAX_TASKS = 100_000


def create_registry(folder: Path) -> None:
    """The job folder and its (empty) registry, before anything else goes there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REGISTRY).touch()


def record_jobs(folder: Path, records: Iterable[dict[str, Any]], **fields: Any) -> None:
    """Append one line per submitted job, stamped with the submission time (and ``fields``)."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with open(folder / REGISTRY, "a") as registry:
        for record in records:
            registry.write(json.dumps({**record, "submitted": now, **fields}) + "\n")


def read_registry(folder: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Jobs submitted into FOLDER (newest record of a job id wins). A line that is no job record
    (garbage, or no job id, output or log path) is skipped, and ``problems``, when given, gets a
    line for it: ``FILE:LINE: what is wrong; skipped``."""
    from virnuc_hpc.outputs.records import read_json_lines

    records: dict[str, dict[str, Any]] = {}
    for number, rec, problem in read_json_lines(folder / REGISTRY):
        why = problem or registry_problem(rec or {})
        if why is None and rec is not None:
            records[rec["job_id"]] = {**rec, "tasks": rec.get("tasks", 1)}
        elif problems is not None:
            problems.append(f"{why}; skipped" if problem else f"{folder / REGISTRY}:{number}: {why}; skipped")
    return list(records.values())


def registry_problem(rec: dict[str, Any]) -> str | None:
    """What keeps a registry record from being a job of ours, or None."""
    from virnuc_hpc.errors import shorten
    from virnuc_hpc.outputs.records import int_field, text_field

    job_id = rec.get("job_id")
    if job_id is None:
        return "a record without job_id"
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        shown = job_id if isinstance(job_id, str) else json.dumps(job_id)[:100]
        return f"job_id {shorten(shown, 40)} is not a Slurm job id"
    for key in ("outdir", "log", "err"):
        if text_field(rec, key) is None:
            return f"job {job_id}: " + (f"no {key}" if key not in rec else f"{key} is not a path")
    tasks = int_field(rec, "tasks") if "tasks" in rec else 1
    if tasks is None or not 1 <= tasks <= MAX_TASKS:
        return f"job {job_id}: tasks {shorten(json.dumps(rec['tasks'])[:100], 40)} is not a task count"
    return None
