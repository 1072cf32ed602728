"""The output directory's identity and its finish: whose run OUTDIR holds, claiming it for this
run, and publishing the staged tables with run.json last.

Why a module of its own: OUTDIR outlives every run. Deciding whether a directory may be written
(never over files we did not write, never mixing two runs' bags) and making its finished state
appear at once (tables, report, then run.json) are one concern, apart from computing the bags.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from virnuc_hpc.config import RESULT_FIELDS, RunConfig, dump_config
from virnuc_hpc.errors import ConfigError
from virnuc_hpc.models.resolve import ModelFile
from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.report import REPORT_FILES, write_report
from virnuc_hpc.outputs.run_record import RunRecord
from virnuc_hpc.yaml_files import read_yaml

log = logging.getLogger("virnuc_hpc")


def previous_run(outdir: Path) -> dict[str, Any] | None:
    """The manifest of the run OUTDIR holds (``{}`` if unreadable), None for a fresh directory.

    A directory without our manifest must be empty (or hold only what a run of ours leaves before
    its manifest): we never write over files we did not write. A manifest without any bag is a
    start that failed (a wrong model file, say): there are no results to protect, so it is
    treated as fresh and the corrected rerun goes ahead."""
    store.refuse_links(outdir)  # before anything in OUTDIR is read, removed or written
    previous = store.read_manifest(outdir)
    if previous is None:
        found = sorted(set(store.foreign_entries(outdir)) | set(store.owned_files(outdir)))
        if found:
            shown = ", ".join(str(p.relative_to(outdir)) for p in found[:5]) + (", ..." if len(found) > 5 else "")
            raise store.OutputError(
                f"{outdir} is not empty and was not written by virnuc-hpc (it holds {shown}); give a new "
                "or empty output directory (--overwrite only replaces a directory virnuc-hpc wrote)")
        return None
    if not store.bag_files(outdir):
        log.info("%s holds a run that never finished a bag: starting afresh", outdir)
        store.clear_outputs(outdir, bags=True)
        return None
    return previous


def claim_outdir(outdir: Path, previous: dict[str, Any] | None, run_key: str, config: RunConfig,
                 models: dict[str, ModelFile], inputs_meta: list[dict[str, Any]], classify: bool) -> None:
    """Refuse an OUTDIR holding another run (unless overwrite); clear finished-looking outputs."""
    models_meta = {role: m.as_dict() for role, m in models.items()}
    if previous is not None and previous.get("run_key") != run_key:
        found = changes(previous, previous_config(outdir), config, models_meta, inputs_meta, classify)
        listed = "".join(f"\n  {line}" for line in found)
        if not config.overwrite:
            raise store.OutputError(
                f"{outdir} holds results of a run with other inputs or settings{':' if found else ''}"
                f"{listed}\nuse --overwrite to replace them, or choose another output directory")
        log.warning("--overwrite: removing the previous run in %s%s", outdir, listed)
        store.clear_outputs(outdir, bags=True)
    store.clear_outputs(outdir, bags=False)
    store.remove_stale_temporaries(outdir)
    store.write_json(outdir / store.MANIFEST, {"run_key": run_key, "classify": classify,
                                               "inputs": inputs_meta, "models": models_meta})
    store.write_text_atomic(outdir / store.CONFIG, dump_config(config))


def previous_config(outdir: Path) -> dict[str, Any]:
    """The settings the run in OUTDIR recorded (``{}`` where unreadable: its changes go unnamed)."""
    try:
        loaded = read_yaml(outdir / store.CONFIG)  # with limits: OUTDIR may hold anything
    except ConfigError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _input_list(meta: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m.get('sample')}={m.get('path')}" + (f" (mate {m['mate']})" if m.get("mate") else "")
                     for m in meta)


def _model_text(meta: dict[str, Any]) -> str:
    return f"{meta['spec']} (sha256 {meta.get('sha256', '')[:12]})" if meta.get("spec") else "none"


def changes(previous: dict[str, Any], old_config: dict[str, Any], config: RunConfig,
            models_meta: dict[str, dict[str, Any]], inputs_meta: list[dict[str, Any]],
            classify: bool) -> list[str]:
    """What differs from the run in OUTDIR, one ``what: old -> new`` line each, for what the run key
    covers: the command, the inputs, the model files and the RESULT_FIELDS settings."""
    lines = []
    if "classify" in previous and previous["classify"] != classify:
        names = {True: "predict", False: "embed"}
        lines.append(f"command: {names[bool(previous['classify'])]} -> {names[classify]}")
    if "inputs" in previous and _input_list(previous["inputs"]) != _input_list(inputs_meta):
        lines.append(f"inputs: {_input_list(previous['inputs'])} -> {_input_list(inputs_meta)}")
    old_models = previous.get("models") or {}
    for role in sorted(set(old_models) | set(models_meta)):
        old, new = old_models.get(role) or {}, models_meta.get(role) or {}
        if old.get("sha256") != new.get("sha256"):
            lines.append(f"{role} model: {_model_text(old)} -> {_model_text(new)}")
    now = config.model_dump(mode="json")
    lines += [f"{key}: {_shown(old_config[key])} -> {_shown(now[key])}"
              for key in RESULT_FIELDS if key in old_config and old_config[key] != now[key]]
    return lines


def publish(stage: Path, outdir: Path, names: list[str], record: RunRecord) -> list[str]:
    """Move the staged tables into OUTDIR, write the report and MultiQC table, then run.json: the
    tables never stand without it, and a run.json that stands says everything was written. Any
    failure removes what was written (a kill in between leaves tables that the next run clears).
    Returns the report files written."""
    store.refuse_links(outdir)  # none placed while the run went on: the tables go into OUTDIR only
    moved: list[Path] = [outdir / name for name in REPORT_FILES]  # removed on failure: this run's own
    try:
        for name in names:
            target = outdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, target)
            moved.append(target)
        report_files = _write_report(outdir, record)
        store.write_text_atomic(outdir / store.RUN_JSON, record.dumps())  # last: marks the run finished
    except BaseException as err:
        for path in moved:
            path.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise store.OutputError(f"cannot write the final tables in {outdir}: {err.strerror or err}") from err
        raise
    return report_files


def _write_report(outdir: Path, record: RunRecord) -> list[str]:
    """report.html and the MultiQC table, made from the published tables and the run.json about to
    be written (as it will read back). A report that cannot be drawn is a warning: the results
    stand without it (``write_report(OUTDIR)`` makes it again). One that cannot be written (a full
    disk) fails the run like any other output, before run.json could say it finished."""
    try:
        write_report(outdir, run=record.read_back())
    except ValueError as err:
        log.warning("report not written: %s (the results are complete; "
                    "virnuc_hpc.outputs.report.write_report(OUTDIR) makes it again)", err)
        return []
    return list(REPORT_FILES)
