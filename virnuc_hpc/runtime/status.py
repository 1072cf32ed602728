"""What ``virnuc-hpc status FOLDER`` answers: the state of an output directory (running, finished,
failed, resumable) and the Slurm jobs of a job folder.

The answer is one set of facts (``folder_status``), printed as text (``render``) or as one JSON
object: both forms say the same, because the text is written from the facts alone.

Where the facts come from: a live lock means a run is writing (its holder, and its progress file:
bags done/total, rates, ETA); run.json marks a finished run (counts, wall time), and samples.tsv
gives each sample's reads and % virus; a progress file holding an error tells why the last run
stopped; bags without run.json can be resumed. Every
record is read back without trust (``outputs.records``): a damaged one becomes a line in
``problems`` (``FILE:LINE: what is wrong``) and is left out. A folder holding none of these is
not ours, and is refused.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from virnuc_hpc.errors import OutputError
from virnuc_hpc.outputs.layout import (BAGS_DIR, FAILED_BAGS, MANIFEST, PROGRESS, RUN_JSON, SAMPLES_DIR,
                                       bag_files)
from virnuc_hpc.outputs.lock import describe_holder, read_lock
from virnuc_hpc.outputs.records import MAX_TEXT, number_field, read_json_object, text_field
from virnuc_hpc.outputs.run_record import TOOL, RunRecord
from virnuc_hpc.runtime.progress import describe, duration, read_progress

DEFAULT_JOB_FOLDER = "slurm"  # `submit` puts its job folder in OUTDIR/slurm unless --folder says otherwise
SAMPLES_TSV = "samples.tsv"  # store.SAMPLES_TSV (store imports the NetCDF stack, which status needs not)
MAX_SAMPLES_LISTED = 1000
MAX_SAMPLES_TSV = 1 << 20  # characters of samples.tsv read: its first thousand rows, and more
MAX_NAME = 256
MAX_SAMPLES_SHOWN = 10
MAX_ERROR_LINES = 12


def folder_status(folder: str | Path) -> dict[str, Any]:
    """The facts about FOLDER: an output directory, a Slurm job folder, or both (an OUTDIR holding
    the default job folder ``slurm``, also one whose job array writes OUTDIR/<sample>). Raises
    OutputError for a folder that is neither."""
    from virnuc_hpc.runtime import slurm  # submitit: light, but only a job folder needs it

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise OutputError(f"{folder}: " + ("not a directory" if folder.exists() else "no such directory")
                          + f"; status takes an output directory of {TOOL} or a job folder of `{TOOL} submit`")
    problems: list[str] = []
    manifest, problem = read_json_object(folder / MANIFEST)
    manifest_problem = problem
    run, run_problems = RunRecord.read(folder)
    run_problem = run_problems[0] if run is None and run_problems else None
    lock = read_lock(folder)
    progress = read_progress(folder / PROGRESS, problems)
    bags = bag_files(folder)
    ours_manifest = manifest is not None and isinstance(manifest.get("run_key"), str)
    ours_run = run is not None and run.ours
    output = bool(ours_manifest or ours_run or lock is not None or bags or (folder / PROGRESS).exists())
    jobs_at = next((f for f in (folder, folder / DEFAULT_JOB_FOLDER) if (f / slurm.REGISTRY).is_file()), None)
    jobs_folder = jobs_at is not None
    if output:  # records damaged in a folder that is ours are worth a word; elsewhere they are not ours
        problems[:0] = [f"{p}; left out" for p in (manifest_problem, run_problem) if p]
        if manifest is not None and not ours_manifest:
            problems.insert(0, f"{folder / MANIFEST}:1: not a manifest of {TOOL} (no run_key); left out")
        if run is not None and not ours_run:
            problems.insert(0, f"{folder / RUN_JSON}:1: not a run record of {TOOL}; left out")
        if lock is not None and lock.get("problem"):
            problems.append(lock["problem"])
    elif not jobs_folder:
        damaged = next((p for p in (manifest_problem, run_problem) if p), None)
        raise OutputError(f"{folder} is not an output directory of {TOOL} (no {MANIFEST}, {RUN_JSON}, "
                          f"{BAGS_DIR}/ or lock of a run) nor a job folder of `{TOOL} submit` (no "
                          f"{slurm.REGISTRY})" + (f"; {damaged}" if damaged else ""))
    facts: dict[str, Any] = {"folder": str(folder), "output": output, "state": None, "lock": lock,
                             "progress": None, "bags_kept": None, "run": None, "failure": None,
                             "resumable": False, "jobs_folder": str(jobs_at) if jobs_at else None,
                             "jobs": None, "problems": problems}
    if output:
        facts.update(_output_facts(folder, lock, progress, bags, ours_manifest, run if ours_run else None,
                                   problems, run_problems))
    if jobs_folder:
        facts["jobs"] = [asdict(s) for s in slurm.job_status(jobs_at, problems)]
    return facts


def _output_facts(folder: Path, lock: dict[str, Any] | None, progress: dict[str, Any] | None,
                  bags: list[Path], manifest_ok: bool, run: RunRecord | None,
                  problems: list[str], run_problems: list[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {"bags_kept": len(bags)}
    if progress is not None:
        updated = progress.get("updated")
        facts["progress"] = {**progress, "age_s": None if updated is None else round(max(0.0, time.time() - updated), 1)}
    failed_bags = folder / FAILED_BAGS
    if lock is not None and not lock["stale"]:
        facts["state"] = "running"
        facts["progress"] = facts.get("progress") if not (progress or {}).get("error") else None
    elif run is not None:
        problems.extend(run_problems)  # its values of the wrong type, left out of the facts
        facts["state"], facts["run"] = "finished", _run_facts(folder, run, problems)
    elif (progress or {}).get("error") or failed_bags.is_file():
        facts["state"] = "failed"
        facts["failure"] = {"error": (progress or {}).get("error"), "error_type": (progress or {}).get("error_type"),
                            "ended": _iso((progress or {}).get("ended")),
                            "failed_bags": str(failed_bags) if failed_bags.is_file() else None}
    elif bags:
        facts["state"] = "resumable" if manifest_ok else "damaged"
    else:
        facts["state"] = "stopped"
    facts["resumable"] = facts["state"] in ("failed", "resumable") and bool(bags) and manifest_ok
    return facts


def _run_facts(folder: Path, run: RunRecord, problems: list[str]) -> dict[str, Any]:
    """What run.json says of a finished run, its values checked (RunRecord left out those of the
    wrong type; here those out of range go too)."""
    if "counts" not in run.model_fields_set:
        problems.append(f"{folder / RUN_JSON}: no counts; left out")
    counts = {k: v for k, v in run.counts.items() if len(k) <= 64 and _whole(v) is not None}
    if len(counts) < len(run.counts):
        problems.append(f"{folder / RUN_JSON}: {len(run.counts) - len(counts)} count(s) that are not whole "
                        "numbers; left out")
    reads, virus = counts.get("reads"), counts.get("virus_reads")
    names = [text_field(s, "name") for s in run.samples[:MAX_SAMPLES_LISTED]]
    started, finished = _text(run.started), _text(run.finished)
    return {"command": _text(run.command), "version": _text(run.version),
            "random_weights": run.random_weights,
            "started": started, "finished": finished, "wall_s": _wall_s(run, started, finished),
            "counts": counts,
            "virus_percent": round(100 * virus / reads, 2) if virus is not None and reads else None,
            "bags": {k: _whole(run.bags.get(k)) for k in ("total", "computed_now", "reused")},
            "samples": [n for n in names if n is not None],
            "per_sample": _per_sample(folder / SAMPLES_TSV, problems), **_tables(folder)}


def _per_sample(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    """Reads, virus reads and % virus of each sample, from samples.tsv (a run of several samples);
    None without it. A row that is not ours is a problem, left out."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read(MAX_SAMPLES_TSV + 1).splitlines()
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err}); left out")
        return None
    rows: list[dict[str, Any]] = []
    header: list[str] | None = None
    for number, line in enumerate(lines[:MAX_SAMPLES_LISTED + 10], start=1):
        if line.startswith("#"):
            continue
        cells = line.split("\t")
        if header is None:
            header = cells
            if not {"sample", "reads"} <= set(header):
                problems.append(f"{path}:{number}: not the header of a samples table; left out")
                return None
            continue
        row = dict(zip(header, cells))
        reads, virus = _count(row.get("reads")), _count(row.get("virus_reads"))
        if len(cells) != len(header) or reads is None or (virus is None and row.get("virus_reads") != "-"):
            problems.append(f"{path}:{number}: not a row of counts; left out")
            continue
        rows.append({"sample": row["sample"][:MAX_NAME], "reads": reads, "virus_reads": virus,
                     "virus_percent": round(100 * virus / reads, 2) if virus is not None and reads else None})
    return rows[:MAX_SAMPLES_LISTED]


def _count(text: str | None) -> int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) < 20 else None


def _text(value: str | None) -> str | None:
    """Text of a plausible length (a path or a command), else None."""
    return value if value is not None and len(value) <= MAX_TEXT else None


def _whole(value: int | None) -> int | None:
    """A whole number of at most 64 bits, else None."""
    return value if value is not None and abs(value) < 1 << 63 else None


def _wall_s(run: RunRecord, started: str | None, finished: str | None) -> float | None:
    try:
        span = _dt.datetime.fromisoformat(finished or "") - _dt.datetime.fromisoformat(started or "")
        return round(span.total_seconds(), 1)
    except (TypeError, ValueError):  # no times, or naive and aware ones mixed
        values = [v for v in (number_field(run.seconds, k) for k in run.seconds) if v is not None]
        return round(sum(values), 1) if values else None


def _tables(folder: Path) -> dict[str, Any]:
    """The tables a finished run left, by name (store knows them: read only for a finished run)."""
    from virnuc_hpc.outputs import store

    skip = {store.MANIFEST, store.CONFIG, store.RUN_JSON}
    files = store.owned_files(folder)
    top = [p.name for p in files if p.parent == folder and p.name not in skip]
    samples = sorted({p.parent.name for p in files if p.parent.parent == folder / SAMPLES_DIR})
    return {"tables": top, "sample_folders": len(samples)}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


# --- text ------------------------------------------------------------------------------------

def render(facts: dict[str, Any]) -> str:
    """The facts as lines for people."""
    lines: list[str] = []
    if facts["output"]:
        lines += _output_lines(facts)
    if facts["jobs"] is not None:
        from virnuc_hpc.runtime.slurm import JobStatus, format_status

        if lines:
            lines.append("")
        if facts["jobs_folder"] != facts["folder"]:
            lines.append(f"jobs submitted into {facts['jobs_folder']}:")
        lines.append(format_status([JobStatus(**job) for job in facts["jobs"]]))
    return "\n".join(lines)


def _output_lines(facts: dict[str, Any]) -> list[str]:
    folder, state, kept = facts["folder"], facts["state"], facts["bags_kept"]
    progress, failure, run = facts["progress"], facts["failure"], facts["run"]
    lines: list[str] = []
    if state == "running":
        lines.append(f"{folder}: running")
    elif state == "finished":
        lines += _finished_lines(folder, run)
    elif state == "failed":
        head = ", ".join(x for x in (failure["error_type"], failure["ended"] and f"at {failure['ended']}") if x)
        error = (failure["error"] or "no error recorded").splitlines() or [""]
        lines.append(f"{folder}: failed" + (f" ({head})" if head else "") + f": {error[0]}")
        lines += [f"  {line}" for line in error[1:MAX_ERROR_LINES]]
        if len(error) > MAX_ERROR_LINES:
            lines.append(f"  ... ({len(error) - MAX_ERROR_LINES} more lines)")
        if failure["failed_bags"]:
            lines.append(f"  bags that kept killing their worker: {failure['failed_bags']}")
    elif state == "resumable":
        of = ""
        if progress and progress.get("bags_total") is not None:
            of = f" (of {'' if progress['total_exact'] else '~'}{progress['bags_total']} at the last progress record)"
        lines.append(f"{folder}: resumable: {kept} bag(s) kept{of}, no {RUN_JSON}; rerun the same command "
                     "to resume")
    elif state == "damaged":
        lines.append(f"{folder}: damaged: {kept} bag(s) kept, but its {MANIFEST} cannot be read: a rerun "
                     "needs --overwrite (and computes every bag again)")
    else:
        lines.append(f"{folder}: stopped before finishing a bag (no {RUN_JSON}, no bags kept); a rerun "
                     "starts afresh")
    if state == "failed" and kept:
        lines.append(f"  {kept} bag(s) kept: " + ("rerun the same command to resume" if facts["resumable"]
                                                  else f"its {MANIFEST} cannot be read, a rerun needs --overwrite"))
    lines += _lock_lines(facts["lock"])
    if progress is not None and state != "finished":
        age = "" if progress["age_s"] is None else f", updated {duration(progress['age_s'])} ago"
        label = "progress" if state == "running" else "last progress record"
        lines.append(f"  {label}: {describe(progress)}{age}")
    elif state == "running":
        lines.append(f"  progress: none recorded yet (starting: reading inputs, loading models); "
                     f"{kept} bag(s) on disk")
    return lines


def _finished_lines(folder: str, run: dict[str, Any]) -> list[str]:
    c = run["counts"]
    what = ", ".join(x for x in (run["command"], run["version"] and f"{TOOL} {run['version']}") if x)
    wall = "" if run["wall_s"] is None else f": wall time {duration(run['wall_s'])}"
    lines = [f"{folder}: finished" + (f" ({what})" if what else "") + wall
             + (f", {_seconds(run['started'])} to {_seconds(run['finished'])}"
                if run["started"] and run["finished"] else "")]
    if run["random_weights"]:
        lines.append("  !! RANDOM WEIGHTS: randomly initialised models; these numbers are NOT a biological result")
    if "reads" in c:
        calls = ""
        if c.get("virus_reads") is not None:
            pct = "" if run["virus_percent"] is None else f" ({run['virus_percent']:.2f}%)"
            calls = f": {c['virus_reads']:,} called virus{pct}"
        lines.append(f"  reads {c['reads']:,}{calls}")
    others = [f"{k.replace('_', ' ')} {v:,}" for k, v in c.items() if k not in ("reads", "virus_reads", "bags")]
    if others:
        lines.append("  " + ", ".join(others))
    b = run["bags"]
    if b["total"] is not None:
        lines.append(f"  bags {b['total']:,}" + (f" ({b['computed_now']:,} computed, {b['reused']:,} reused)"
                                                  if b["computed_now"] is not None and b["reused"] is not None else ""))
    if run["per_sample"]:
        lines.append(f"  samples ({len(run['samples'])}):")
        width = max(len(r["sample"]) for r in run["per_sample"][:MAX_SAMPLES_SHOWN])
        for r in run["per_sample"][:MAX_SAMPLES_SHOWN]:
            calls = "" if r["virus_reads"] is None else f", {r['virus_reads']:,} called virus"
            pct = "" if r["virus_percent"] is None else f" ({r['virus_percent']:.2f}%)"
            lines.append(f"    {r['sample']:<{width}}  {r['reads']:,} reads{calls}{pct}")
        if len(run["per_sample"]) > MAX_SAMPLES_SHOWN:
            lines.append(f"    ... ({len(run['per_sample']) - MAX_SAMPLES_SHOWN} more in {SAMPLES_TSV})")
    elif run["samples"]:
        shown = ", ".join(run["samples"][:10]) + (", ..." if len(run["samples"]) > 10 else "")
        lines.append(f"  samples ({len(run['samples'])}): {shown}")
    tables = ", ".join(run["tables"]) or "none"
    folders = f"; {SAMPLES_DIR}/ ({run['sample_folders']} sample folders)" if run["sample_folders"] else ""
    lines.append(f"  tables in {folder}/: {tables}{folders}")
    return lines


def _seconds(iso: str) -> str:
    """An ISO time to the second, for reading (run.json keeps microseconds)."""
    try:
        return _dt.datetime.fromisoformat(iso).isoformat(timespec="seconds")
    except ValueError:
        return iso


def _lock_lines(lock: dict[str, Any] | None) -> list[str]:
    if lock is None:
        return []
    if lock.get("unreadable"):
        holder = lock["problem"] if lock["age_s"] is None else describe_holder(None, lock["age_s"])
    else:
        holder = describe_holder(lock, lock["age_s"])
    state = f"STALE ({lock['stale_reason']}; the next run takes it over)" if lock["stale"] else "live"
    return [f"  lock {lock['path']}: {state}", f"    held by {holder}"]
