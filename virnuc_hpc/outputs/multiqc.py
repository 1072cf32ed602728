"""MultiQC custom content: a virnuc-hpc section and the key columns in General Statistics.

Why two files: MultiQC makes one section per ``*_mqc.json`` file, and a file is either a section
(``plot_type: table``) or columns of the General Statistics table (``plot_type: generalstats``).
``virnuc_mqc.json`` is the section, one row per sample with every count; the General Statistics
file carries reads, % virus and virus reads, the numbers a group compares across samples beside
the other tools' columns. MultiQC finds both in OUTDIR by their ``_mqc.json`` suffix.

MultiQC renders descriptions as HTML, so every value taken from run.json is escaped there. The
sample names (the rows' keys) stay as they are: they are the names MultiQC matches across tools,
which escaping would change.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.run_record import RunRecord

MQC_JSON = store.MQC_JSON
MQC_GENERAL_STATS = store.MQC_GENERAL_STATS
MQC_FILES = (MQC_JSON, MQC_GENERAL_STATS)
NAMESPACE = "virnuc-hpc"
PERCENT = "virus_percent"  # derived: virus_reads / reads, in percent
GENERAL_STATS = ("reads", PERCENT, "virus_reads")  # the columns shown in General Statistics

_COUNT = {"format": "{:,.0f}", "min": 0}
#: every column MultiQC shows: a title a person reads and what it counts
HEADERS: dict[str, dict[str, Any]] = {
    "records": {"title": "Records", "description": "Records in the input (valid and skipped)", **_COUNT},
    "reads": {"title": "Reads", "description": "Valid reads classified", "scale": "Blues", **_COUNT},
    PERCENT: {"title": "% virus", "description": "Reads called virus, in percent of the valid reads",
              "suffix": "%", "min": 0, "max": 100, "format": "{:,.2f}", "scale": "OrRd"},
    "virus_reads": {"title": "Virus reads", "description": "Reads called virus (a chunk of the read called virus)",
                    "scale": "Reds", **_COUNT},
    "other_reads": {"title": "Other reads", "description": "Reads called others (not virus)", **_COUNT},
    "reads_without_frames": {"title": "No ORF", "description": "Valid reads without an open reading frame: "
                             "no call", **_COUNT},
    "skipped_records": {"title": "Skipped", "description": "Records skipped as invalid (--skip-invalid)",
                        **_COUNT},
    "chunks": {"title": "Chunks", "description": "Chunks the valid reads were cut into", **_COUNT},
    "frames": {"title": "Frames", "description": "Kept reading frames (rows of prediction_results.txt)",
               **_COUNT},
    "chunks_called": {"title": "Chunks called", "description": "Chunks with a call "
                      "(rows of prediction_results_highestscore.csv)", **_COUNT},
    "virus_chunks": {"title": "Virus chunks", "description": "Chunks called virus", **_COUNT},
}


class SampleCounts(Protocol):
    """What the tables need of a sample: its name and its counts (report.SampleSummary)."""

    name: str
    counts: Mapping[str, int | None]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def sample_row(counts: Mapping[str, int | None]) -> dict[str, int | float]:
    """A sample's values: its counts and % virus (absent without calls or without reads)."""
    row: dict[str, int | float] = {k: v for k, v in counts.items() if k in HEADERS and v is not None}
    reads, virus = counts.get("reads"), counts.get("virus_reads")
    if reads and virus is not None:
        row[PERCENT] = round(100 * virus / reads, 2)
    return row


def _columns(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if any(k in row for row in rows)]


def multiqc_table(run: RunRecord, samples: Sequence[SampleCounts]) -> dict[str, Any]:
    """The virnuc-hpc section (plot_type table): one row per sample, one column per count."""
    random_note = " RANDOM WEIGHTS: not a biological result." if run.random_weights else ""
    rows = {s.name: sample_row(s.counts) for s in samples}
    keys = _columns(list(rows.values()), list(HEADERS))
    return {
        "id": "virnuc_hpc",
        "section_name": NAMESPACE,
        "description": f"Reads and calls per sample (virnuc-hpc {_esc(run.version or '')}).{random_note}",
        "plot_type": "table",
        "pconfig": {"id": "virnuc_hpc_table", "title": "virnuc-hpc: reads and calls", "col1_header": "Sample"},
        "headers": {k: {**HEADERS[k], "namespace": NAMESPACE} for k in keys},
        "data": {name: {k: row[k] for k in keys if k in row} for name, row in rows.items()},
    }


def general_stats(run: RunRecord, samples: Sequence[SampleCounts]) -> dict[str, Any]:
    """Columns for MultiQC's General Statistics (plot_type generalstats): reads, % virus, virus reads.

    With random weights the calls' titles say so: this table is read first, away from the section's
    description."""
    rows = {s.name: sample_row(s.counts) for s in samples}
    keys = _columns(list(rows.values()), GENERAL_STATS)
    headers = {k: {**HEADERS[k], "namespace": NAMESPACE} for k in keys}
    if run.random_weights:  # the calls' columns: the read counts do not depend on the weights
        for h in (headers[k] for k in (PERCENT, "virus_reads") if k in headers):
            h["title"] += " (random weights)"
            h["description"] += ". RANDOM WEIGHTS: not a biological result"
    return {
        "id": "virnuc_hpc_general_stats",
        "plot_type": "generalstats",
        "headers": headers,
        "data": {name: {k: row[k] for k in keys if k in row} for name, row in rows.items()},
    }


def multiqc_files(run: RunRecord, samples: Sequence[SampleCounts]) -> dict[str, str]:
    """Both files' text, by name (made before any is written: an error writes neither)."""
    return {MQC_JSON: json.dumps(multiqc_table(run, samples), indent=1) + "\n",
            MQC_GENERAL_STATS: json.dumps(general_stats(run, samples), indent=1) + "\n"}


def write_multiqc(outdir: Path, files: Mapping[str, str]) -> None:
    """Write the files of ``multiqc_files`` into OUTDIR, each atomically."""
    for name, text in files.items():
        store.write_text_atomic(outdir / name, text)
