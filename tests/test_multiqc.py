"""MultiQC on a run's output: the virnuc-hpc section and reads, % virus and virus reads in General
Statistics, read back from the tables real MultiQC writes (multiqc_data/), against samples.tsv."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import THREE_SAMPLES as SAMPLES
from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.multiqc import GENERAL_STATS, HEADERS, MQC_FILES, general_stats, multiqc_table
from virnuc_hpc.outputs.run_record import RunRecord


def tsv(path: Path) -> list[dict[str, str]]:
    """A TSV as dicts, '#' comment lines above its header skipped."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def mqc_data(three_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MultiQC run on the output folder (no network: its version check off); its data folder."""
    report = tmp_path_factory.mktemp("multiqc-report")
    proc = subprocess.run([sys.executable, "-m", "multiqc", str(three_samples), "-o", str(report),
                           "--no-version-check", "--no-ansi", "-f"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = report / "multiqc_data"
    assert (report / "multiqc_report.html").is_file() and data.is_dir(), proc.stderr[-3000:]
    return data


def samples_tsv(outdir: Path) -> dict[str, dict[str, str]]:
    return {row["sample"]: row for row in tsv(outdir / store.SAMPLES_TSV)}


def percent(row: dict[str, str]) -> float:
    return round(100 * int(row["virus_reads"]) / int(row["reads"]), 2)


def test_general_stats_lists_percent_virus_per_sample(three_samples: Path, mqc_data: Path) -> None:
    want = samples_tsv(three_samples)
    assert set(want) == set(SAMPLES) and len({percent(r) for r in want.values()}) > 1  # they differ
    rows = tsv(mqc_data / "multiqc_general_stats.txt")
    column = {key.rsplit("-", 1)[-1]: key for key in rows[0] if key != "Sample"}
    assert set(column) == set(GENERAL_STATS), rows[0]
    got = {row["Sample"]: row for row in rows}
    assert set(got) == set(SAMPLES)
    for name, row in want.items():
        assert float(got[name][column["virus_percent"]]) == pytest.approx(percent(row), abs=0.005), name
        assert int(float(got[name][column["reads"]])) == int(row["reads"])
        assert int(float(got[name][column["virus_reads"]])) == int(row["virus_reads"])


def test_general_stats_columns_have_human_titles(mqc_data: Path) -> None:
    headers = json.loads((mqc_data / "multiqc_data.json").read_text())["report_general_stats_headers"]
    ours = {key: h for section in headers.values() for key, h in section.items() if key in GENERAL_STATS}
    assert set(ours) == set(GENERAL_STATS)
    assert ours["virus_percent"]["title"].startswith("% virus") and ours["virus_percent"]["suffix"] == "%"
    assert ours["reads"]["title"] == "Reads"
    for key in ("virus_percent", "virus_reads"):  # a demo run: its calls come from random weights
        assert "random weights" in ours[key]["title"] and "RANDOM WEIGHTS" in ours[key]["description"]
    assert all(h["description"] and "virnuc-hpc" in h["namespace"] for h in ours.values())


def test_section_table_holds_every_count_with_titles(three_samples: Path, mqc_data: Path) -> None:
    want = samples_tsv(three_samples)
    rows = {row["Sample"]: row for row in tsv(mqc_data / "multiqc_virnuc_hpc_table.txt")}
    assert set(rows) == set(SAMPLES)
    for name, row in want.items():
        for key in ("reads", "virus_reads", "reads_without_frames", "frames", "chunks", "chunks_called"):
            assert int(float(rows[name][key])) == int(row[key]), (name, key)
        assert float(rows[name]["virus_percent"]) == pytest.approx(percent(row), abs=0.005)
    doc = json.loads((three_samples / store.MQC_JSON).read_text())
    for key, header in doc["headers"].items():
        assert header["title"] != key and "_" not in header["title"] and len(header["title"]) <= 16, header
        assert header["description"] and header["description"] != key
    assert "RANDOM WEIGHTS" in doc["description"]


def test_both_files_are_outputs_of_the_run(three_samples: Path) -> None:
    owned = store.owned_files(three_samples)
    for name in MQC_FILES:
        assert name.endswith("_mqc.json") and three_samples / name in owned  # MultiQC finds them by the suffix
    assert store.foreign_entries(three_samples) == []


@dataclass
class Counts:
    name: str
    counts: dict[str, int | None] = field(default_factory=dict)


def test_no_calls_no_percent_and_no_marker_without_random_weights() -> None:
    """An embed run (no calls) gives reads only; a sample of no reads gives no % virus; trained
    weights give plain titles."""
    embed = general_stats(RunRecord(random_weights=True), [Counts("a", {"reads": 5, "virus_reads": None})])
    assert list(embed["headers"]) == ["reads"] and embed["data"] == {"a": {"reads": 5}}
    empty = multiqc_table(RunRecord(), [Counts("e", {"reads": 0, "virus_reads": 0}),
                               Counts("f", {"reads": 4, "virus_reads": 1})])
    assert empty["data"] == {"e": {"reads": 0, "virus_reads": 0},
                             "f": {"reads": 4, "virus_reads": 1, "virus_percent": 25.0}}
    trained = general_stats(RunRecord(random_weights=False), [Counts("f", {"reads": 4, "virus_reads": 1})])
    assert {k: h["title"] for k, h in trained["headers"].items()} == {k: HEADERS[k]["title"] for k in GENERAL_STATS}
