"""run.json through RunRecord: written and read back unchanged, unknown keys kept, a value of the
wrong type left out (and named) while the rest of the record stands."""

from __future__ import annotations

import json
from pathlib import Path

from virnuc_hpc.outputs.run_record import RunRecord

RECORD = {
    "tool": "virnuc-hpc", "version": "0.1.0", "command": "predict", "command_line": "virnuc-hpc predict x",
    "random_weights": False, "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
    "run_key": "k", "inputs": [{"sample": "s", "path": "x.fa", "mate": None, "size": 3, "sha256": "ab"}],
    "models": {"esm2": {"spec": "demo", "sha256": "cd"}}, "samples": [{"name": "s", "files": ["x.fa"], "paired": False}],
    "config": {"bag_size": 8}, "counts": {"reads": 3, "bags": 1}, "seconds": {"plan": 0.5, "setup": 1},
    "milestones_s": {}, "client_peak_rss_mb": 100, "client_peak_rss_mb_after_stage": {"plan": 99.5},
    "features": {"mode": "float16", "compression": "none", "bytes_per_frame": None},
    "model_load_on_workers_s": None, "model_load_on_workers_phases_s": {},
    "bags": {"total": 1, "computed_now": 1, "reused": 0}, "warnings": [], "guards": {}, "workers": {},
    "environment": {"host": "h"}, "threads": None, "int8_check": None, "bag_timeline": [],
    "gpu_utilization": {}, "from_a_newer_version": {"kept": True},
}


def test_a_record_reads_back_byte_for_byte(tmp_path: Path):
    text = json.dumps(RECORD, indent=2) + "\n"
    (tmp_path / "run.json").write_text(text)
    record, problems = RunRecord.read(tmp_path)
    assert problems == [] and record is not None and record.ours
    assert record.dumps() == text  # same keys, same order, ints stay ints, unknown keys kept
    assert record.bags_total() == 1 and record.model_extra == {"from_a_newer_version": {"kept": True}}


def test_a_wrong_value_is_left_out_and_named(tmp_path: Path):
    damaged = {**RECORD, "counts": {"reads": 3, "frames": "7", "bags": True}, "started": 5, "bags": [1]}
    (tmp_path / "run.json").write_text(json.dumps(damaged))
    record, problems = RunRecord.read(tmp_path)
    assert record is not None and record.counts == {"reads": 3}
    assert record.started is None and record.bags_total() is None and record.finished == RECORD["finished"]
    assert len(problems) == 3 and all(p.endswith("; left out") for p in problems)


def test_no_record_and_a_damaged_one(tmp_path: Path):
    assert RunRecord.read(tmp_path) == (None, [])
    (tmp_path / "run.json").write_text('{"tool": "virnuc-hpc", "counts": {"reads": 1')
    record, problems = RunRecord.read(tmp_path)
    assert record is None and len(problems) == 1 and "run.json:1: not valid JSON" in problems[0]
