"""report.html and a MultiQC table: a finished run to look at, without the network.

Why a file of its own: a run's numbers sit in several tables and in run.json; a person wants one
page. The page is self-contained (inline CSS, inline SVG drawn here, a few lines of inline script
that sort the sample table; no font, image or link to fetch, and a Content-Security-Policy that
lets nothing else load or run), so it opens on a cluster's login node, from an e-mail or in an
archive. It reads from the top: what was run, the samples, the distributions; timing and device
use come last, folded. Everything shown is read back from OUTDIR (run.json and the sample
tables), so ``write_report`` remakes it for any finished run. The tables are streamed in chunks:
a sample of 100M reads is not held (its read lengths are kept as counts per length).

Beside it go the MultiQC custom-content files (``multiqc.py``), made from the same counts.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.multiqc import MQC_FILES, multiqc_files, write_multiqc
from virnuc_hpc.outputs.run_record import RunRecord

REPORT = store.REPORT
MQC_JSON = store.MQC_JSON
REPORT_FILES = (REPORT, *MQC_FILES)
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
    #: valid reads per read length (from reads.tsv's length column): exact, binned when drawn
    lengths: dict[int, int] = field(default_factory=dict)


# --- reading the run back ---------------------------------------------------------------------

def read_run(outdir: Path) -> RunRecord:
    """run.json of a finished run (the report describes finished runs only); a value of the wrong
    type is left out of the report, a run.json that is no JSON object is refused (ValueError)."""
    run, problems = RunRecord.read(outdir)
    if run is None and not problems:
        raise FileNotFoundError(f"{outdir} holds no finished run ({store.RUN_JSON} is missing)")
    if run is None:
        raise ValueError(problems[0])
    return run


def sample_folder(outdir: Path, run: RunRecord, name: str) -> Path:
    """Where a sample's tables are: OUTDIR itself for a single sample, else samples/<name>/."""
    return outdir if len(run.samples) <= 1 else outdir / store.SAMPLES_DIR / name


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


def scan_reads(path: Path, classify: bool) -> tuple[dict[str, int | None], dict[int, int]]:
    """The read counts of one reads.tsv and its valid reads per length, in one pass over it."""
    c = dict.fromkeys(("records", "reads", "skipped_records", "reads_without_frames", "virus_reads",
                       "other_reads", "chunks", "frames"), 0)
    lengths: dict[int, int] = {}
    for chunk in read_table(path, ("length", "status", "call", "chunks", "frames")):
        skipped = chunk["status"].str.startswith("skipped")
        valid = chunk[~skipped]
        values, n = np.unique(valid["length"].astype(np.int64).to_numpy(), return_counts=True)
        for length, count in zip(values.tolist(), n.tolist()):
            lengths[length] = lengths.get(length, 0) + count
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
    return counts, lengths


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
    counts, lengths = scan_reads(folder / store.READS, classify)
    highest, predictions = folder / store.HIGHEST, folder / store.PREDICTIONS
    if classify and highest.is_file():
        counts.update(count_chunk_calls(highest))
    else:
        counts.update({"chunks_called": None, "virus_chunks": None})
    histogram = score_histogram(predictions) if classify and predictions.is_file() else None
    return SampleSummary(name, counts, histogram, lengths)


# --- the files --------------------------------------------------------------------------------

def write_report(outdir: str | Path, run: RunRecord | None = None) -> Path:
    """Write report.html and the MultiQC files into OUTDIR (atomically, like every output); returns
    the report's path.

    ``run`` is run.json's record: a run passes the one it is about to write (run.json comes
    last, marking the run finished), ``write_report(OUTDIR)`` reads it back from a finished run."""
    outdir = Path(outdir)
    run = read_run(outdir) if run is None else run
    classify = run.command != "embed"
    names = [s["name"] for s in run.samples]
    samples = [summarise_sample(sample_folder(outdir, run, name), name, classify) for name in names]
    tables, page = multiqc_files(run, samples), render(run, samples)
    path = outdir / REPORT  # both made before either is written: a drawing error writes neither
    write_multiqc(outdir, tables)
    store.write_text_atomic(path, page)
    return path


# --- HTML -------------------------------------------------------------------------------------

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; overflow-wrap: anywhere; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.3em; }
.banner { background: #b00020; color: #fff; padding: 0.8em 1em; font-weight: bold; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
.facts th { background: #f6f6f6; white-space: nowrap; }
.facts td, .wrap td { overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
tfoot td { font-weight: bold; background: #f6f6f6; }
.scroll { overflow: auto; max-width: 100%; }
.tall { max-height: 32em; }
.short { max-height: 14em; }
.cmd { max-height: 7.5em; }
table.sortable thead th { position: sticky; top: 0; background: #eef1f5; cursor: pointer; user-select: none; }
table.sortable thead th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable thead th[aria-sort=descending]::after { content: " \\25BC"; }
table.sortable tbody tr:nth-child(even) { background: #fafafa; }
code { overflow-wrap: anywhere; font-size: 0.95em; }
.note { color: #555; font-style: italic; }
.legend { display: flex; flex-wrap: wrap; gap: 0.2em 1.2em; list-style: none; padding: 0; margin: 0.3em 0; }
.legend li { overflow-wrap: anywhere; }
svg { max-width: 100%; height: auto; }
svg text { font-size: 11px; fill: #333; }
details { margin-top: 1.8em; }
summary { font-size: 1.25em; font-weight: bold; cursor: pointer; border-bottom: 1px solid #ccc; }
"""

#: Sorts a table.sortable by the clicked column (data-v, else the text; missing values last).
SORT_JS = """document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th"), body = table.tBodies[0];
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      function key(row) {
        var c = row.cells[col];
        return c.hasAttribute("data-v") ? c.getAttribute("data-v") : c.textContent;
      }
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        if (isNaN(nx) !== isNaN(ny)) { return isNaN(nx) ? 1 : -1; }
        var d = isNaN(nx) ? x.localeCompare(y, undefined, {numeric: true}) : nx - ny;
        return up ? d : -d;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: Nothing loads and nothing runs but this page's own style and script.
CSP = f"default-src 'none'; style-src {_csp_hash(CSS)}; script-src {_csp_hash(SORT_JS)}"

#: Up to this many samples, their distributions are overlaid lines; above, one heat-strip row each.
OVERLAY_MAX = 8

#: The sample table: (key, title, what it counts); % virus is derived, the rest are COLUMNS.
PERCENT = "virus_percent"
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("reads", "reads", COLUMNS["reads"]),
    (PERCENT, "% virus", "reads called virus, in percent of the valid reads"),
    ("virus_reads", "virus reads", COLUMNS["virus_reads"]),
    ("other_reads", "other reads", COLUMNS["other_reads"]),
    ("reads_without_frames", "no ORF", COLUMNS["reads_without_frames"]),
    ("skipped_records", "skipped", COLUMNS["skipped_records"]),
    ("records", "records", COLUMNS["records"]),
    ("chunks", "chunks", COLUMNS["chunks"]),
    ("frames", "frames", COLUMNS["frames"]),
    ("chunks_called", "chunks called", COLUMNS["chunks_called"]),
    ("virus_chunks", "virus chunks", COLUMNS["virus_chunks"]),
)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def virus_percent(counts: dict[str, int | None]) -> float | None:
    """Reads called virus in percent of the valid reads (None without calls or without reads)."""
    reads, virus = counts.get("reads"), counts.get("virus_reads")
    return None if not reads or virus is None else 100 * virus / reads


def _size(value: Any) -> str:
    """Bytes as a person reads them (1.5 MB); anything else as it is."""
    if not isinstance(value, int):
        return str(value)
    size, unit = float(value), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def wall_seconds(run: RunRecord) -> float | None:
    """From run.json's start to its end, or None where they are missing or unreadable."""
    if run.started is None or run.finished is None:
        return None
    try:
        start = datetime.fromisoformat(run.started)
        end = datetime.fromisoformat(run.finished)
    except ValueError:
        return None
    return (end - start).total_seconds()


def render(run: RunRecord, samples: list[SampleSummary]) -> str:
    """The whole page."""
    names = [s.name for s in samples]
    shown = ", ".join(names) if len(names) <= 3 else f"{len(names)} samples"
    title = f"virnuc-hpc {run.command or 'run'}: {shown}"
    colours = worker_colours(run)
    body = [
        _banner(run),
        f"<h1>{esc(title)}</h1>",
        _run_facts(run, samples),
        _samples_section(samples),
        _scores_section(samples, run.random_weights),
        _lengths_section(samples),
        _folded("timing", "Timing", _timeline_section(run, colours)),
        _folded("devices", "Device utilisation", _gpu_section(run, colours)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(CSP)}\"/>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(part for part in body if part) + f"\n<script>{SORT_JS}</script>\n</body></html>\n")


def _folded(ident: str, heading: str, content: str) -> str:
    return f"<details id=\"{ident}\"><summary>{esc(heading)}</summary>{content}</details>"


def _banner(run: RunRecord) -> str:
    if not run.random_weights:
        return ""
    warning = run.warning or store.RANDOM_WEIGHTS_WARNING
    return (f"<div class=\"banner\" id=\"random-weights\"><strong>Random weights: not a biological "
            f"result.</strong> {esc(warning)}</div>")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], row_attrs: Sequence[str] | None = None,
           cls: str = "") -> str:
    """An HTML table; cells are given as finished HTML (escaped by the caller)."""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    attrs = row_attrs or [""] * len(rows)
    body = "".join(f"<tr{a}>" + "".join(cells) + "</tr>" for a, cells in zip(attrs, rows))
    klass = f" class=\"{cls}\"" if cls else ""
    return f"<table{klass}>{head}<tbody>{body}</tbody></table>"


def _short_sha(value: Any) -> str:
    """The first 12 hex digits, the whole checksum on hover."""
    text = str(value or "")
    return f"<code title=\"{esc(text)}\">{esc(text[:12])}</code>" if text else "-"


def _run_facts(run: RunRecord, samples: list[SampleSummary]) -> str:
    config, bags, env = run.config, run.bags, run.environment
    inputs = run.inputs
    sizes = [f["size"] for f in inputs if isinstance(f.get("size"), int)]
    wall = wall_seconds(run)
    facts: list[tuple[str, str]] = [
        ("command line", f"<div class=\"scroll cmd\"><code>{esc(run.command_line or '-')}</code></div>"),
        ("started", esc(run.started or "-")), ("finished", esc(run.finished or "-")),
        ("wall time", esc(_duration(wall)) if wall is not None else "-"),
        ("samples", esc(f"{len(samples)} ({len(inputs)} input files, {_size(sum(sizes))})")),
        ("device", esc(" / ".join(f"{k} {config.get(k, '-')}" for k in ("device", "precision", "engine")))),
        ("chunk size, features", esc(f"{config.get('expected_length', '-')} bp, {config.get('features', '-')}")),
        ("bags (total / computed now / reused)",
         esc(f"{bags.get('total', '-')} / {bags.get('computed_now', '-')} / {bags.get('reused', '-')}")),
        ("workers", esc(f"{len(run.workers)} on {env.get('host', '-')}")),
    ]
    packages = env.get("packages", {}) if isinstance(env.get("packages"), dict) else {}
    versions = [f"virnuc-hpc {run.version or '-'}", f"Python {env.get('python', '-')}",
                *(f"{name} {version}" for name, version in packages.items())]
    facts.append(("versions", esc(" · ".join(versions))))
    rows = [[f"<th scope=\"row\">{esc(k)}</th>", f"<td>{v}</td>"] for k, v in facts]
    warnings = "".join(f"<p class=\"note\">warning: {esc(w)}</p>" for w in run.warnings)
    return ("<h2 id=\"run\">What was run</h2>" + _table([], rows, cls="facts") + warnings
            + _models_table(run) + _inputs_table(inputs))


def _models_table(run: RunRecord) -> str:
    models = run.models
    if not models:
        return ""
    rows = [[f"<td>{esc(role)}</td>", f"<td>{esc(m.get('spec', '-'))}</td>", f"<td>{_short_sha(m.get('sha256'))}</td>",
             "<td><strong>random</strong></td>" if m.get("random_weights") else "<td>trained</td>",
             f"<td>{esc(m.get('weights') or m.get('path') or '-')}</td>"] for role, m in models.items()]
    return ("<h3>Models</h3><div class=\"scroll\">"
            + _table(["role", "model", "sha256", "weights", "file"], rows, cls="wrap") + "</div>")


def _inputs_table(inputs: list[dict[str, Any]]) -> str:
    if not inputs:
        return ""
    paired = any(f.get("mate") for f in inputs)
    rows = [[f"<td>{esc(f.get('sample', '-'))}</td>", f"<td>{esc(f.get('path', '-'))}</td>"]
            + ([f"<td>{esc(f.get('mate') or '-')}</td>"] if paired else [])
            + [f"<td class=\"num\" title=\"{esc(f.get('size', ''))} bytes\">{esc(_size(f.get('size', '-')))}</td>",
               f"<td>{_short_sha(f.get('sha256'))}</td>"] for f in inputs]
    header = ["sample", "file", *(["mate"] if paired else []), "size", "sha256"]
    return (f"<h3>Inputs ({len(inputs)} file{'s' if len(inputs) != 1 else ''})</h3><div class=\"scroll short\">"
            + _table(header, rows, cls="wrap") + "</div>")


def _sample_cells(counts: dict[str, int | None], attr: str = "data-key") -> list[str]:
    cells = []
    for key, _, _ in TABLE_COLUMNS:
        if key == PERCENT:
            pct = virus_percent(counts)
            shown, value = ("-", "") if pct is None else (f"{pct:.1f}", f"{pct:.6g}")
        else:
            count = counts.get(key)
            shown, value = _number(count), ("" if count is None else str(count))
        cells.append(f"<td class=\"num\" {attr}=\"{key}\" data-v=\"{value}\">{shown}</td>")
    return cells


def _samples_section(samples: list[SampleSummary]) -> str:
    head = "<th scope=\"col\" title=\"click to sort\">sample</th>" + "".join(
        f"<th scope=\"col\" class=\"num\" title=\"{esc(what)} (click to sort)\">{esc(title)}</th>"
        for _, title, what in TABLE_COLUMNS)
    body = "".join(f"<tr data-sample=\"{esc(s.name)}\"><td>{esc(s.name)}</td>" + "".join(_sample_cells(s.counts))
                   + "</tr>" for s in samples)
    foot = ""
    if len(samples) > 1:
        total: dict[str, int | None] = {}
        for key in COLUMNS:
            values = [s.counts.get(key) for s in samples]
            total[key] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
        foot = ("<tfoot><tr><td>all samples</td>" + "".join(_sample_cells(total, "data-total"))
                + "</tr></tfoot>")
    legend = "".join(f"<li><b>{esc(title)}</b>: {esc(what)}</li>" for _, title, what in TABLE_COLUMNS)
    return ("<h2 id=\"samples\">Samples</h2><p>Counted from each sample's reads.tsv and "
            "prediction_results_highestscore.csv; click a column's title to sort by it.</p>"
            f"<div class=\"scroll tall\"><table class=\"sortable\" id=\"samples-table\"><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody>{foot}</table></div>"
            f"<details><summary>What each column counts</summary><ul>{legend}</ul></details>")


# --- distributions ----------------------------------------------------------------------------

@dataclass
class Distribution:
    """Counts per bin for each sample, over the same bins."""

    edges: list[float]  # len(bins) + 1
    rows: list[tuple[str, list[int]]]  # sample name, its counts per bin
    unit: str  # what is counted: frames, reads
    axis: str  # the x axis's label
    bin_label: Callable[[float, float], str]  # a bin's range as text
    tick_label: Callable[[float], str]  # an edge as text


def distribution_svg(d: Distribution) -> str:
    """One figure whatever the number of samples: bars for one, overlaid lines for a few, a heat
    strip (one row per sample) for more, so that 100 samples stay one readable picture."""
    if len(d.rows) == 1:
        return histogram_svg(d)
    if len(d.rows) <= OVERLAY_MAX:
        return lines_svg(d)
    return heat_strip_svg(d)


def _x_ticks(d: Distribution, left: float, plot_w: float, y: float) -> list[str]:
    n = len(d.edges) - 1
    picks = sorted({round(i) for i in np.linspace(0, n, min(n, 4) + 1)})
    return [_text(left + plot_w * i / n, y, d.tick_label(d.edges[i]), "middle") for i in picks]


def _bin_title(d: Distribution, name: str | None, i: int, n: int) -> str:
    where = d.bin_label(d.edges[i], d.edges[i + 1])
    return f"{name} · {where}: {n} {d.unit}" if name is not None else f"{where}: {n} {d.unit}"


def histogram_svg(d: Distribution, width: int = 680, height: int = 220) -> str:
    """Vertical bars, the count above each bar (one sample)."""
    name, counts = d.rows[0]
    left, bottom, top = 40, 32, 15
    plot_w, plot_h = width - left - 20, height - bottom - top
    peak = max(counts, default=0) or 1
    bar_w = plot_w / max(len(counts), 1)
    out = [f"<line x1=\"{left}\" y1=\"{top + plot_h}\" x2=\"{left + plot_w}\" y2=\"{top + plot_h}\" stroke=\"#333\"/>"]
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + i * bar_w
        out.append(_rect(x + 1, top + plot_h - h, bar_w - 2, h, PALETTE[0], _bin_title(d, None, i, n)))
        if n:
            out.append(_text(x + bar_w / 2, top + plot_h - h - 3, f"{n:,}", "middle"))
    out += _x_ticks(d, left, plot_w, height - 16)
    out.append(_text(left + plot_w / 2, height - 2, d.axis, "middle"))
    return _svg(width, height, out, f"{d.unit} per bin of {name}")


def _legend(names: Sequence[str], colours: Sequence[str]) -> str:
    """Swatches and names in HTML, so that long names wrap instead of widening the figure."""
    items = "".join(f"<li><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" height=\"12\" "
                    f"fill=\"{c}\"/></svg> {esc(n)}</li>" for n, c in zip(names, colours))
    return f"<ul class=\"legend\">{items}</ul>"


def lines_svg(d: Distribution, width: int = 680, height: int = 240) -> str:
    """One line per sample, each sample's share of its own total per bin (samples of any size compare)."""
    left, bottom, top = 48, 32, 12
    plot_w, plot_h = width - left - 20, height - bottom - top
    n_bins = len(d.edges) - 1
    shares = [[c / (sum(counts) or 1) for c in counts] for _, counts in d.rows]
    peak = max((v for row in shares for v in row), default=0) or 1
    out = [f"<line x1=\"{left}\" y1=\"{top + plot_h}\" x2=\"{left + plot_w}\" y2=\"{top + plot_h}\" stroke=\"#333\"/>",
           _text(left - 4, top + 8, f"{100 * peak:.0f}%", "end"), _text(left - 4, top + plot_h, "0%", "end")]
    for k, ((name, counts), row) in enumerate(zip(d.rows, shares)):
        colour = PALETTE[k % len(PALETTE)]
        xy = [(left + plot_w * (i + 0.5) / n_bins, top + plot_h * (1 - v / peak)) for i, v in enumerate(row)]
        out.append(f"<polyline points=\"{' '.join(f'{x:.1f},{y:.1f}' for x, y in xy)}\" fill=\"none\" "
                   f"stroke=\"{colour}\" stroke-width=\"2\"/>")
        out += [f"<circle cx=\"{x:.1f}\" cy=\"{y:.1f}\" r=\"3\" fill=\"{colour}\"><title>"
                f"{esc(_bin_title(d, name, i, counts[i]))}</title></circle>" for i, (x, y) in enumerate(xy)]
    out += _x_ticks(d, left, plot_w, height - 16)
    out.append(_text(left + plot_w / 2, height - 2, f"{d.axis} (share of each sample's {d.unit})", "middle"))
    return (_svg(width, height, out, f"{d.unit} per bin, one line per sample")
            + _legend([name for name, _ in d.rows], [PALETTE[k % len(PALETTE)] for k in range(len(d.rows))]))


_HEAT = ((247, 251, 255), (8, 48, 107))  # an empty bin, the fullest bin


def _heat(share: float) -> str:
    return "#" + "".join(f"{round(a + (b - a) * share):02x}" for a, b in zip(*_HEAT))


def heat_strip_svg(d: Distribution, width: int = 760) -> str:
    """One row per sample, one cell per bin, darker for a larger share of the sample's own total.

    Rows thin out for many samples (the figure stays under about 700 px high); then every k-th
    row is labelled, and every cell names its sample on hover."""
    row, top = max(5.0, min(14.0, 700 / len(d.rows))), 16
    every = int(np.ceil(11 / row))  # label every k-th row: labels 11 px apart at the least
    label_chars = min(max(len(name) for name, _ in d.rows), 22)
    left, right = 12 + 6.5 * label_chars, 70
    plot_w = width - left - right
    n_bins = len(d.edges) - 1
    shares = [[c / (sum(counts) or 1) for c in counts] for _, counts in d.rows]
    peak = max((v for r in shares for v in r), default=0) or 1
    out: list[str] = []
    for k, ((name, counts), share) in enumerate(zip(d.rows, shares)):
        y = top + k * row
        baseline = y + row / 2 + 4
        if k % every == 0:
            out.append(f"<text x=\"{left - 6:.1f}\" y=\"{baseline:.1f}\" text-anchor=\"end\"><title>{esc(name)}"
                       f"</title>{esc(_label(name, label_chars))}</text>")
            out.append(_text(left + plot_w + 6, baseline, f"{sum(counts):,}"))
        for i, (n, v) in enumerate(zip(counts, share)):
            out.append(_rect(left + plot_w * i / n_bins, y, plot_w / n_bins + 0.3, row - (1 if row > 8 else 0.3),
                             _heat(v / peak), _bin_title(d, name, i, n)))
    axis_y = top + len(d.rows) * row
    out += _x_ticks(d, left, plot_w, axis_y + 14)
    out.append(_text(left + plot_w / 2, axis_y + 28, d.axis, "middle"))
    out.append(_text(left + plot_w + 6, top - 5, d.unit))  # above the column of totals
    legend_y = axis_y + 38
    for j, q in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        x = left + j * 70
        out += [_rect(x, legend_y, 14, 10, _heat(q)), _text(x + 18, legend_y + 9, f"{100 * peak * q:.0f}%")]
    out.append(_text(left + 5 * 70 + 10, legend_y + 9, f"of the sample's {d.unit}"))
    return _svg(width, legend_y + 16, out, f"{d.unit} per bin, one row per sample")


def _scores_section(samples: list[SampleSummary], random_weights: bool) -> str:
    parts = ["<h2 id=\"scores\">Score distribution</h2>"]
    shown = [s for s in samples if s.histogram is not None]
    if not shown:
        return parts[0] + "<p class=\"note\">No prediction_results.txt (an embed run): no scores.</p>"
    parts.append("<p>P(virus) of each kept frame (score2 of prediction_results.txt), in bins of "
                 f"{1 / HIST_BINS:g}.</p>")
    if random_weights:
        parts.append("<p class=\"note\">Random weights: these scores say nothing about the reads.</p>")
    d = Distribution(edges=np.linspace(0.0, 1.0, HIST_BINS + 1).tolist(),
                     rows=[(s.name, s.histogram or []) for s in shown], unit="frames", axis="P(virus)",
                     bin_label=lambda lo, hi: f"{lo:.2f}-{hi:.2f}", tick_label=lambda x: f"{x:g}")
    return "".join(parts) + distribution_svg(d)


def _bp(value: float) -> str:
    v = int(value)
    return f"{v}" if v < 1000 else (f"{v / 1000:.3g}k" if v < 1_000_000 else f"{v / 1e6:.3g}M")


def length_edges(lo: int, hi: int, bins: int = 20) -> list[int]:
    """Integer bin edges over [lo, hi], a bin holding [edge, next edge): one per length for a narrow
    range, round linear steps for a range within 10x, log-spaced beyond (short and long reads)."""
    if hi - lo < bins:
        return list(range(lo, hi + 2))
    if hi <= 10 * max(lo, 1):
        raw = (hi + 1 - lo) / bins
        magnitude = 10 ** int(np.floor(np.log10(raw)))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        start = lo // step * step
        return [start + i * step for i in range(-(-(hi + 1 - start) // step) + 1)]
    edges = np.unique(np.round(np.geomspace(max(lo, 1), hi + 1, bins + 1)).astype(np.int64)).tolist()
    edges[-1] = max(edges[-1], hi + 1)
    return edges


def length_distribution(samples: Sequence[SampleSummary]) -> Distribution | None:
    """Valid reads per length bin, the same bins for every sample; None without reads."""
    everything = [length for s in samples for length in s.lengths]
    if not everything:
        return None
    edges = length_edges(min(everything), max(everything))
    rows = []
    for s in samples:
        values = np.fromiter(s.lengths.keys(), dtype=np.int64, count=len(s.lengths))
        weights = np.fromiter(s.lengths.values(), dtype=np.int64, count=len(s.lengths))
        index = np.searchsorted(edges, values, side="right") - 1
        rows.append((s.name, np.bincount(index, weights=weights, minlength=len(edges) - 1).astype(np.int64).tolist()))

    def label(lo: float, hi: float) -> str:
        return f"{int(lo)} bp" if hi - lo == 1 else f"{int(lo)}-{int(hi) - 1} bp"
    return Distribution(edges=[float(e) for e in edges], rows=rows, unit="reads", axis="read length (bp)",
                        bin_label=label, tick_label=_bp)


def _lengths_section(samples: list[SampleSummary]) -> str:
    d = length_distribution(samples)
    head = "<h2 id=\"lengths\">Read lengths</h2>"
    if d is None:
        return head + "<p class=\"note\">No valid reads: no lengths.</p>"
    widths = set(np.diff(d.edges).tolist())
    bins = ("one length each" if widths == {1.0} else "equal widths" if len(widths) == 1
            else "widths growing with length (a log scale)")
    return (head + f"<p>Valid reads per length (the length column of reads.tsv), in bins of {bins}.</p>"
            + distribution_svg(d))


# --- timing and devices -----------------------------------------------------------------------

def worker_colours(run: RunRecord) -> dict[str, str]:
    """A colour per worker, the same in the bag timeline and the GPU chart."""
    names = list(dict.fromkeys([*map(str, run.workers),
                                *(str(t.get("worker")) for t in run.bag_timeline or []),
                                *map(str, run.gpu_utilization or {})]))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _timeline_section(run: RunRecord, colours: dict[str, str]) -> str:
    parts = []
    seconds = run.seconds
    if seconds:
        parts.append("<h3>Client stages (seconds)</h3>" + bar_chart_svg(seconds, unit="s"))
    milestones = run.milestones_s
    if milestones:
        rows = [[f"<td>{esc(k)}</td>", f"<td class=\"num\">{v:.2f}</td>"] for k, v in milestones.items()]
        parts.append("<h3>Milestones (seconds from the start)</h3>" + _table(["milestone", "s"], rows))
    parts.append(_chart_or_note(run.bag_timeline, "Bags on workers",
                                lambda timeline: gantt_svg(timeline, colours),
                                "This run.json records no start and end per bag: the stage seconds of "
                                "the bags are shown summed per worker."))
    workers = {w: v.get("seconds", {}) for w, v in run.workers.items()}
    if workers:
        parts.append("<h3>Bag stages per worker (seconds, summed over its bags)</h3>" + stacked_bars_svg(workers))
    return "".join(parts)


def _gpu_section(run: RunRecord, colours: dict[str, str]) -> str:
    parts = []
    rows = []
    for worker, w in run.workers.items():
        rows.append([f"<td>{esc(worker)}</td>", f"<td class=\"num\">{_number(w.get('bags'))}</td>"]
                    + [f"<td class=\"num\">{_percent(w.get(k))}</td>" for k in
                       ("device_busy_fraction", "device_busy_fraction_steady", "gpu_utilization_steady")])
    if rows:
        header = ["worker", "bags", "device lock held", "held, after the first bag",
                  "GPU busy (NVML), after the first bag"]
        parts.append("<div class=\"scroll\">" + _table(header, rows, cls="wrap") + "</div>")
        parts.append("<p class=\"note\">The device lock's hold time is an upper bound on device busy; "
                     "NVML's figure is absent without a GPU.</p>")
    parts.append(_chart_or_note(run.gpu_utilization, "GPU utilisation over time (NVML)",
                                lambda series: line_chart_svg(series, colours),
                                "No GPU utilisation time series is recorded in this run.json; the means "
                                "above are what the run keeps."))
    return "".join(parts)


def _chart_or_note(data: Any, heading: str, draw: Callable[[Any], str], note: str) -> str:
    """A chart under its heading when run.json has the data (older run.json files lack it), else the note."""
    return f"<h3>{heading}</h3>" + draw(data) if data else f"<p class=\"note\">{note}</p>"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


# --- inline SVG -------------------------------------------------------------------------------

def _svg(width: int | float, height: int | float, content: list[str], label: str) -> str:
    return (f"<svg width=\"{width:.0f}\" height=\"{height:.0f}\" viewBox=\"0 0 {width:.0f} {height:.0f}\" "
            f"role=\"img\" aria-label=\"{esc(label)}\">" + "".join(content) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start") -> str:
    return f"<text x=\"{x:.1f}\" y=\"{y:.1f}\" text-anchor=\"{anchor}\">{esc(text)}</text>"


def _rect(x: float, y: float, w: float, h: float, color: str, title: str = "") -> str:
    tip = f"<title>{esc(title)}</title>" if title else ""
    return (f"<rect x=\"{x:.1f}\" y=\"{y:.1f}\" width=\"{max(w, 0):.1f}\" height=\"{h:.1f}\" "
            f"fill=\"{color}\">{tip}</rect>")


def _label(text: str, chars: int = 28) -> str:
    """A name cut to fit a chart's label column."""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def bar_chart_svg(values: dict[str, float], unit: str, width: int = 680) -> str:
    """One horizontal bar per key, its value written beside it."""
    row, left = 20, 170
    height = row * len(values) + 10
    peak = max(values.values(), default=0) or 1
    out = []
    for i, (name, v) in enumerate(values.items()):
        y = 5 + i * row
        w = (width - left - 80) * v / peak
        out += [_text(left - 6, y + 13, _label(name), "end"), _rect(left, y + 2, w, row - 6, PALETTE[i % len(PALETTE)],
                                                                    f"{name}: {v:.3f} {unit}"),
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
        out.append(_text(left - 6, y + 14, _label(name), "end"))
        for k, v in parts.items():
            w = (width - left - 80) * v / peak
            out.append(_rect(x, y + 3, w, row - 6, colour[k], f"{k}: {v:.3f} s"))
            x += w
        out.append(_text(x + 4, y + 14, f"{sum(parts.values()):.2f} s"))
    legend_y = 10 + len(rows) * row
    for j, k in enumerate(keys):
        x, y = 10 + (j % 5) * 150, legend_y + (j // 5) * 18
        out += [_rect(x, y, 10, 10, colour[k]), _text(x + 14, y + 9, _label(k, 22))]
    height = legend_y + 18 * (-(-len(keys) // 5)) + 5
    return _svg(width, height, out, "stage seconds per worker")


def gantt_svg(timeline: list[dict[str, Any]], colours: dict[str, str], width: int = 760) -> str:
    """Bags as bars on their worker's row, coloured by worker, along the run's time (entries: bag,
    worker, start, end in seconds from the run's start), a legend of the workers below."""
    workers = list(dict.fromkeys(str(t["worker"]) for t in timeline))
    t0 = min(float(t["start"]) for t in timeline)
    t0 = 0.0 if t0 >= 0 and t0 < 1e6 else t0  # seconds from the run's start: the axis starts there
    span = max(float(t["end"]) for t in timeline) - t0 or 1.0
    row, left = 22, 190
    plot_w = width - left - 20
    scale = plot_w / span
    out: list[str] = []
    for i, w in enumerate(workers):
        out.append(f"<text x=\"{left - 6}\" y=\"{5 + i * row + 14}\" text-anchor=\"end\"><title>{esc(w)}</title>"
                   f"{esc(_label(w))}</text>")
    for t in timeline:
        worker = str(t["worker"])
        i = workers.index(worker)
        start, end = float(t["start"]), float(t["end"])
        out.append(_rect(left + (start - t0) * scale, 5 + i * row + 3, max((end - start) * scale, 1.0), row - 6,
                         colours.get(worker, PALETTE[i % len(PALETTE)]),
                         f"bag {t.get('bag')} on {worker}: {start - t0:.2f}-{end - t0:.2f} s ({end - start:.2f} s)"))
    axis_y = 10 + len(workers) * row
    out += [_text(left + plot_w * q, axis_y + 10, f"{span * q:.1f} s", "middle" if 0 < q < 1 else
                  ("start" if q == 0 else "end")) for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    out.append(_text(left + plot_w / 2, axis_y + 24, "seconds from the run's start" if t0 == 0.0 else
                     "seconds from the first bag", "middle"))
    return (_svg(width, axis_y + 30, out, "bags on workers over time")
            + _legend(workers, [colours.get(w, PALETTE[i % len(PALETTE)]) for i, w in enumerate(workers)]))


def line_chart_svg(series: dict[str, list[Sequence[float]]], colours: dict[str, str], width: int = 760,
                   height: int = 220) -> str:
    """Percent busy over time, one line per worker (samples: [unix time, percent]), a legend below."""
    points = [(float(t), float(u)) for s in series.values() for t, u in s]
    if not points:
        return "<p class=\"note\">No samples.</p>"
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    span = (t1 - t0) or 1.0
    left, bottom, top = 40, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    out = [_text(left - 4, top + 8, "100%", "end"), _text(left - 4, top + plot_h, "0%", "end"),
           _text(left, height - 8, "0 s"), _text(left + plot_w, height - 8, f"{span:.0f} s", "end")]
    names = list(series)
    for i, (worker, samples) in enumerate(series.items()):
        coords = " ".join(f"{left + (float(t) - t0) / span * plot_w:.1f},{top + plot_h * (1 - float(u) / 100):.1f}"
                          for t, u in samples)
        colour = colours.get(worker, PALETTE[i % len(PALETTE)])
        out.append(f"<polyline points=\"{coords}\" fill=\"none\" stroke=\"{colour}\">"
                   f"<title>{esc(worker)}</title></polyline>")
    return (_svg(width, height, out, "GPU utilisation over time")
            + _legend(names, [colours.get(w, PALETTE[i % len(PALETTE)]) for i, w in enumerate(names)]))
