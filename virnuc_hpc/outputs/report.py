"""report.html and a MultiQC table: a finished run to look at, without the network.

Why a file of its own: a run's numbers sit in several tables and in run.json; a person wants one
page. The page is self-contained (inline CSS, inline SVG drawn here; no script, font, image or
link to fetch), so it opens on a cluster's login node, from an e-mail or in an archive. Everything
shown is read back from OUTDIR (run.json and the sample tables), so ``write_report`` remakes it
for any finished run. The tables are streamed in chunks: a sample of 100M reads is not held.

Beside it, ``virnuc_mqc.json`` is a MultiQC custom-content table (one row per sample), picked up
by MultiQC's ``*_mqc.json`` file search.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from virnuc_hpc.outputs import store

REPORT = store.REPORT
MQC_JSON = store.MQC_JSON
REPORT_FILES = (REPORT, MQC_JSON)
HIST_BINS = 20  # P(virus) from 0 to 1 in steps of 0.05
_ROWS_PER_CHUNK = 1 << 20
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
           "#bab0ac", "#ff9da7")

#: the per-sample numbers, in the order of the report's table and the MultiQC table
COLUMNS: dict[str, str] = {
    "records": "records in reads.tsv (valid and skipped)",
    "reads": "valid reads",
    "skipped_records": "records skipped as invalid (--skip-invalid)",
    "reads_without_frames": "valid reads without an open reading frame (no call)",
    "virus_reads": "reads called virus (any chunk virus)",
    "other_reads": "reads called others",
    "chunks": "chunks of the valid reads",
    "frames": "kept frames (rows of prediction_results.txt)",
    "virus_chunks": "chunks called virus (prediction_results_highestscore.csv)",
    "chunks_called": "chunks with a call",
}


@dataclass
class SampleSummary:
    """What the report shows of one sample, counted from its tables."""

    name: str
    counts: dict[str, int | None]
    histogram: list[int] | None  # frames per P(virus) bin; None without prediction_results.txt


# --- reading the run back ---------------------------------------------------------------------

def read_run(outdir: Path) -> dict[str, Any]:
    """run.json of a finished run (the report describes finished runs only)."""
    try:
        return json.loads((outdir / store.RUN_JSON).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{outdir} holds no finished run ({store.RUN_JSON} is missing)") from None


def sample_folder(outdir: Path, run: dict[str, Any], name: str) -> Path:
    """Where a sample's tables are: OUTDIR itself for a single sample, else samples/<name>/."""
    return outdir if len(run.get("samples", [])) <= 1 else outdir / store.SAMPLES_DIR / name


def _comment_lines(path: Path) -> int:
    """Lines starting with '#' above the header (the random-weights comment)."""
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            n += 1
    return n


def read_table(path: Path, columns: Sequence[str], dtype: Any = str) -> Iterator[pd.DataFrame]:
    """Chunks of some columns of one of our TSV tables (comment lines skipped, text taken as is)."""
    yield from pd.read_csv(path, sep="\t", skiprows=_comment_lines(path), usecols=list(columns),
                           dtype=dtype, chunksize=_ROWS_PER_CHUNK, quoting=csv.QUOTE_NONE,
                           keep_default_na=False, na_filter=False)


def count_reads(path: Path, classify: bool) -> dict[str, int | None]:
    """The read counts of one reads.tsv."""
    c = dict.fromkeys(("records", "reads", "skipped_records", "reads_without_frames", "virus_reads",
                       "other_reads", "chunks", "frames"), 0)
    for chunk in read_table(path, ("status", "call", "chunks", "frames")):
        skipped = chunk["status"].str.startswith("skipped")
        valid = chunk[~skipped]
        c["records"] += len(chunk)
        c["skipped_records"] += int(skipped.sum())
        c["reads"] += len(valid)
        c["reads_without_frames"] += int((valid["status"] == "no_open_frame").sum())
        c["virus_reads"] += int((valid["call"] == "virus").sum())
        c["other_reads"] += int((valid["call"] == "others").sum())
        c["chunks"] += int(valid["chunks"].astype(np.int64).sum())
        c["frames"] += int(valid["frames"].astype(np.int64).sum())
    counts: dict[str, int | None] = dict(c)
    if not classify:
        counts["virus_reads"] = counts["other_reads"] = None
    return counts


def count_chunk_calls(path: Path) -> dict[str, int]:
    """Chunks called, and called virus, in one prediction_results_highestscore.csv."""
    called = virus = 0
    for chunk in read_table(path, ("Is_Virus",)):
        called += len(chunk)
        virus += int((chunk["Is_Virus"] == "True").sum())
    return {"chunks_called": called, "virus_chunks": virus}


def score_histogram(path: Path, bins: int = HIST_BINS) -> list[int]:
    """Frames per P(virus) bin (score2 of prediction_results.txt); the last bin holds 1.0."""
    total = np.zeros(bins, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for chunk in read_table(path, ("score2",), dtype={"score2": np.float64}):
        total += np.histogram(chunk["score2"].to_numpy(), bins=edges)[0]
    return total.tolist()


def summarise_sample(folder: Path, name: str, classify: bool) -> SampleSummary:
    counts = count_reads(folder / store.READS, classify)
    highest, predictions = folder / store.HIGHEST, folder / store.PREDICTIONS
    if classify and highest.is_file():
        counts.update(count_chunk_calls(highest))
    else:
        counts.update({"chunks_called": None, "virus_chunks": None})
    histogram = score_histogram(predictions) if classify and predictions.is_file() else None
    return SampleSummary(name, counts, histogram)


# --- the files --------------------------------------------------------------------------------

def write_report(outdir: str | Path, run: dict[str, Any] | None = None) -> Path:
    """Write report.html and virnuc_mqc.json into OUTDIR (atomically, like every output); returns
    the report's path.

    ``run`` is the content of run.json: a run passes the one it is about to write (run.json comes
    last, marking the run finished), ``write_report(OUTDIR)`` reads it back from a finished run."""
    outdir = Path(outdir)
    run = read_run(outdir) if run is None else run
    classify = run.get("command") != "embed"
    names = [s["name"] for s in run.get("samples", [])]
    samples = [summarise_sample(sample_folder(outdir, run, name), name, classify) for name in names]
    table, page = json.dumps(multiqc_table(run, samples), indent=1) + "\n", render(run, samples)
    path = outdir / REPORT  # both made before either is written: a drawing error writes neither
    store.write_text_atomic(outdir / MQC_JSON, table)
    store.write_text_atomic(path, page)
    return path


def multiqc_table(run: dict[str, Any], samples: list[SampleSummary]) -> dict[str, Any]:
    """MultiQC custom content (plot_type table): one row per sample, one column per count.

    MultiQC renders the descriptions as HTML, so every value taken from run.json is escaped there.
    The sample names (the rows' keys) stay as they are: they are the names MultiQC matches across
    tools, which escaping would change."""
    random_note = " RANDOM WEIGHTS: not a biological result." if run.get("random_weights") else ""
    keys = [k for k in COLUMNS if any(s.counts.get(k) is not None for s in samples)]
    return {
        "id": "virnuc_hpc",
        "section_name": "virnuc-hpc",
        "description": f"Reads and calls per sample (virnuc-hpc {esc(run.get('version', ''))}).{random_note}",
        "plot_type": "table",
        "pconfig": {"id": "virnuc_hpc_table", "title": "virnuc-hpc: reads and calls", "col1_header": "Sample"},
        "headers": {k: {"title": k, "description": COLUMNS[k], "format": "{:,.0f}"} for k in keys},
        "data": {s.name: {k: s.counts[k] for k in keys if s.counts.get(k) is not None} for s in samples},
    }


# --- HTML -------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
.banner { background: #b00020; color: #fff; padding: 0.8em 1em; font-weight: bold; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-style: italic; }
svg text { font-size: 11px; fill: #333; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(run: dict[str, Any], samples: list[SampleSummary]) -> str:
    """The whole page."""
    title = f"virnuc-hpc {run.get('command', 'run')}: {', '.join(s.name for s in samples)}"
    body = [
        _banner(run),
        f"<h1>{esc(title)}</h1>",
        _run_facts(run),
        _samples_section(samples),
        _scores_section(samples),
        _timeline_section(run),
        _gpu_section(run),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body></html>\n")


def _banner(run: dict[str, Any]) -> str:
    if not run.get("random_weights"):
        return ""
    warning = run.get("warning") or store.RANDOM_WEIGHTS_WARNING
    return (f"<div class=\"banner\" id=\"random-weights\"><strong>Random weights: not a biological "
            f"result.</strong> {esc(warning)}</div>")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], row_attrs: Sequence[str] | None = None) -> str:
    """An HTML table; cells are given as finished HTML (escaped by the caller)."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    attrs = row_attrs or [""] * len(rows)
    body = "".join(f"<tr{a}>" + "".join(cells) + "</tr>" for a, cells in zip(attrs, rows))
    return f"<table>{head}{body}</table>"


def _run_facts(run: dict[str, Any]) -> str:
    config, bags = run.get("config", {}), run.get("bags", {})
    facts = [
        ("version", run.get("version")), ("started", run.get("started")), ("finished", run.get("finished")),
        ("device", config.get("device")), ("precision", config.get("precision")),
        ("engine", config.get("engine")), ("chunk size", config.get("expected_length")),
        ("features", config.get("features")), ("bags (total / computed now / reused)",
                                               f"{bags.get('total')} / {bags.get('computed_now')} / {bags.get('reused')}"),
    ]
    models = run.get("models", {})
    paths = [str(f.get("path")) for f in run.get("inputs", []) if isinstance(f, dict)]
    facts += [(name, value) for name, value in (
        ("models", "; ".join(f"{role}: {m.get('spec')}" for role, m in models.items() if isinstance(m, dict))),
        ("inputs", ", ".join(paths[:10]) + (f", ... ({len(paths)} files)" if len(paths) > 10 else "")),
        ("command line", run.get("command_line"))) if value]
    rows = [[f"<th>{esc(k)}</th>", f"<td>{esc(_number(v))}</td>"] for k, v in facts]
    warnings = "".join(f"<p class=\"note\">warning: {esc(w)}</p>" for w in run.get("warnings", []))
    return "<h2>Run</h2>" + _table([], rows) + warnings


def _samples_section(samples: list[SampleSummary]) -> str:
    keys = list(COLUMNS)
    rows = [[f"<td>{esc(s.name)}</td>"] + [f"<td class=\"num\" data-key=\"{k}\">{_number(s.counts.get(k))}</td>"
                                           for k in keys] for s in samples]
    attrs = [f" data-sample=\"{esc(s.name)}\"" for s in samples]
    legend = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in COLUMNS.items())
    return ("<h2>Samples: counts and calls</h2><p>Counted from each sample's reads.tsv and "
            "prediction_results_highestscore.csv.</p>" + _table(["sample", *keys], rows, attrs)
            + f"<ul>{legend}</ul>")


def _scores_section(samples: list[SampleSummary]) -> str:
    parts = ["<h2>Score distribution</h2>"]
    shown = [s for s in samples if s.histogram is not None]
    if not shown:
        return parts[0] + "<p class=\"note\">No prediction_results.txt (an embed run): no scores.</p>"
    parts.append("<p>Frames per P(virus) (score2 of prediction_results.txt), in bins of "
                 f"{1 / HIST_BINS:g}.</p>")
    for s in shown:
        parts.append(f"<h3>{esc(s.name)}</h3>" + histogram_svg(s.histogram or [], s.name))
    return "".join(parts)


def _timeline_section(run: dict[str, Any]) -> str:
    parts = ["<h2>Timeline</h2>"]
    seconds = run.get("seconds", {})
    if seconds:
        parts.append("<h3>Client stages (seconds)</h3>" + bar_chart_svg(seconds, unit="s"))
    milestones = run.get("milestones_s", {})
    if milestones:
        rows = [[f"<td>{esc(k)}</td>", f"<td class=\"num\">{v:.2f}</td>"] for k, v in milestones.items()]
        parts.append("<h3>Milestones (seconds from the start)</h3>" + _table(["milestone", "s"], rows))
    parts.append(_chart_or_note(run.get("bag_timeline"), "Bags on workers", gantt_svg,
                                "This run.json records no start and end per bag: the stage seconds of "
                                "the bags are shown summed per worker."))
    workers = {w: v.get("seconds", {}) for w, v in run.get("workers", {}).items()}
    if workers:
        parts.append("<h3>Bag stages per worker (seconds, summed over its bags)</h3>" + stacked_bars_svg(workers))
    return "".join(parts)


def _gpu_section(run: dict[str, Any]) -> str:
    parts = ["<h2>Device utilisation</h2>"]
    rows = []
    for worker, w in run.get("workers", {}).items():
        rows.append([f"<td>{esc(worker)}</td>", f"<td class=\"num\">{_number(w.get('bags'))}</td>"]
                    + [f"<td class=\"num\">{_percent(w.get(k))}</td>" for k in
                       ("device_busy_fraction", "device_busy_fraction_steady", "gpu_utilization_steady")])
    if rows:
        parts.append(_table(["worker", "bags", "device lock held", "held, after the first bag",
                             "GPU busy (NVML), after the first bag"], rows))
        parts.append("<p class=\"note\">The device lock's hold time is an upper bound on device busy; "
                     "NVML's figure is absent without a GPU.</p>")
    parts.append(_chart_or_note(run.get("gpu_utilization"), "GPU utilisation over time (NVML)", line_chart_svg,
                                "No GPU utilisation time series is recorded in this run.json; the means "
                                "above are what the run keeps."))
    return "".join(parts)


def _chart_or_note(data: Any, heading: str, draw: Callable[[Any], str], note: str) -> str:
    """A chart under its heading when run.json has the data (older run.json files lack it), else the note."""
    return f"<h3>{heading}</h3>" + draw(data) if data else f"<p class=\"note\">{note}</p>"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


# --- inline SVG -------------------------------------------------------------------------------

def _svg(width: int, height: int, content: list[str], label: str) -> str:
    return (f"<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" "
            f"aria-label=\"{esc(label)}\">" + "".join(content) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start") -> str:
    return f"<text x=\"{x:.1f}\" y=\"{y:.1f}\" text-anchor=\"{anchor}\">{esc(text)}</text>"


def _rect(x: float, y: float, w: float, h: float, color: str, title: str = "") -> str:
    tip = f"<title>{esc(title)}</title>" if title else ""
    return (f"<rect x=\"{x:.1f}\" y=\"{y:.1f}\" width=\"{max(w, 0):.1f}\" height=\"{h:.1f}\" "
            f"fill=\"{color}\">{tip}</rect>")


def histogram_svg(counts: Sequence[int], label: str, width: int = 640, height: int = 220) -> str:
    """Vertical bars over [0, 1], the count above each bar."""
    left, bottom, top = 40, 30, 15
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(counts, default=0) or 1
    bar_w = plot_w / max(len(counts), 1)
    out = [f"<line x1=\"{left}\" y1=\"{top + plot_h}\" x2=\"{left + plot_w}\" y2=\"{top + plot_h}\" stroke=\"#333\"/>"]
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + i * bar_w
        lo, hi = i / len(counts), (i + 1) / len(counts)
        out.append(_rect(x + 1, top + plot_h - h, bar_w - 2, h, PALETTE[0], f"{lo:.2f}-{hi:.2f}: {n} frames"))
        if n:
            out.append(_text(x + bar_w / 2, top + plot_h - h - 3, str(n), "middle"))
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(_text(left + tick * plot_w, height - 12, f"{tick:g}", "middle"))
    out.append(_text(left + plot_w / 2, height - 1, "P(virus)", "middle"))
    return _svg(width, height, out, f"score histogram of {label}")


def bar_chart_svg(values: dict[str, float], unit: str, width: int = 640) -> str:
    """One horizontal bar per key, its value written beside it."""
    row, left = 20, 150
    height = row * len(values) + 10
    peak = max(values.values(), default=0) or 1
    out = []
    for i, (name, v) in enumerate(values.items()):
        y = 5 + i * row
        w = (width - left - 80) * v / peak
        out += [_text(left - 6, y + 13, name, "end"), _rect(left, y + 2, w, row - 6, PALETTE[i % len(PALETTE)]),
                _text(left + w + 4, y + 13, f"{v:.2f} {unit}")]
    return _svg(width, height, out, "seconds per stage")


def stacked_bars_svg(rows: dict[str, dict[str, float]], width: int = 760) -> str:
    """One horizontal bar per row, split by key (the same colour for a key in every row), a legend below."""
    keys = list(dict.fromkeys(k for parts in rows.values() for k in parts))
    colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    row, left = 22, 190
    peak = max((sum(parts.values()) for parts in rows.values()), default=0) or 1
    out: list[str] = []
    for i, (name, parts) in enumerate(rows.items()):
        y, x = 5 + i * row, float(left)
        out.append(_text(left - 6, y + 14, name, "end"))
        for k, v in parts.items():
            w = (width - left - 80) * v / peak
            out.append(_rect(x, y + 3, w, row - 6, colour[k], f"{k}: {v:.3f} s"))
            x += w
        out.append(_text(x + 4, y + 14, f"{sum(parts.values()):.2f} s"))
    legend_y = 10 + len(rows) * row
    for j, k in enumerate(keys):
        x, y = 10 + (j % 5) * 150, legend_y + (j // 5) * 18
        out += [_rect(x, y, 10, 10, colour[k]), _text(x + 14, y + 9, k)]
    height = legend_y + 18 * (-(-len(keys) // 5)) + 5
    return _svg(width, height, out, "stage seconds per worker")


def gantt_svg(timeline: list[dict[str, Any]], width: int = 760) -> str:
    """Bags as bars on their worker's row, along the run's time (entries: bag, worker, start, end in unix s)."""
    workers = list(dict.fromkeys(str(t["worker"]) for t in timeline))
    t0 = min(float(t["start"]) for t in timeline)
    span = max(float(t["end"]) for t in timeline) - t0 or 1.0
    row, left = 22, 190
    scale = (width - left - 20) / span
    out: list[str] = []
    for i, w in enumerate(workers):
        out.append(_text(left - 6, 5 + i * row + 14, w, "end"))
    for t in timeline:
        i = workers.index(str(t["worker"]))
        x = left + (float(t["start"]) - t0) * scale
        out.append(_rect(x, 5 + i * row + 3, (float(t["end"]) - float(t["start"])) * scale, row - 6,
                         PALETTE[int(t.get("bag", 0)) % len(PALETTE)],
                         f"bag {t.get('bag')}: {float(t['end']) - float(t['start']):.2f} s"))
    axis_y = 10 + len(workers) * row
    out += [_text(left, axis_y + 10, "0 s"), _text(width - 20, axis_y + 10, f"{span:.1f} s", "end")]
    return _svg(width, axis_y + 16, out, "bags on workers over time")


def line_chart_svg(series: dict[str, list[Sequence[float]]], width: int = 760, height: int = 220) -> str:
    """Percent busy over time, one line per worker (samples: [unix time, percent])."""
    points = [(float(t), float(u)) for s in series.values() for t, u in s]
    if not points:
        return "<p class=\"note\">No samples.</p>"
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    span = (t1 - t0) or 1.0
    left, bottom, top = 40, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    out = [_text(left - 4, top + 8, "100%", "end"), _text(left - 4, top + plot_h, "0%", "end"),
           _text(left, height - 8, "0 s"), _text(left + plot_w, height - 8, f"{span:.0f} s", "end")]
    for i, (worker, samples) in enumerate(series.items()):
        coords = " ".join(f"{left + (float(t) - t0) / span * plot_w:.1f},{top + plot_h * (1 - float(u) / 100):.1f}"
                          for t, u in samples)
        out.append(f"<polyline points=\"{coords}\" fill=\"none\" stroke=\"{PALETTE[i % len(PALETTE)]}\">"
                   f"<title>{esc(worker)}</title></polyline>")
    return _svg(width, height, out, "GPU utilisation over time")
