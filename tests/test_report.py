"""report.html and virnuc_mqc.json of a finished demo run: well-formed, self-contained, the run's numbers.

The numbers expected here are counted from the run's tables with the csv module, not with the
report's own (pandas) readers.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.report import COLUMNS, HIST_BINS, MQC_JSON, REPORT, write_report

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "track", "wbr"}


class Page(HTMLParser):
    """Checks nesting (every opened tag closed, in order) and collects what the tests look at."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: dict[tuple[str, str], str] = {}  # (sample, key) -> text
        self.titles: list[str] = []
        self.text: list[str] = []
        self._sample: str | None = None
        self._cell: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in VOID:
            return
        self.stack.append(tag)
        if tag == "tr":
            self._sample = a.get("data-sample")
        elif tag == "td" and self._sample is not None and a.get("data-key"):
            self._cell = a["data-key"]
            self.cells[(self._sample, self._cell)] = ""
        elif tag == "title":
            self._in_title = True
            self.titles.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._sample = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None and self._sample is not None:
            self.cells[(self._sample, self._cell)] += data
        if self._in_title:
            self.titles[-1] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors, page.errors
    assert page.stack == [], f"never closed: {page.stack}"
    return page


def table_rows(path: Path) -> list[dict[str, str]]:
    """A TSV of ours as dicts, the '#' comment lines above its header skipped."""
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [line for line in fh]
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))


def expected_counts(folder: Path) -> dict[str, int]:
    """The per-sample numbers, counted here row by row."""
    reads = table_rows(folder / "reads.tsv")
    valid = [r for r in reads if not r["status"].startswith("skipped")]
    chunks = table_rows(folder / "prediction_results_highestscore.csv")
    return {
        "records": len(reads), "reads": len(valid), "skipped_records": len(reads) - len(valid),
        "reads_without_frames": sum(r["status"] == "no_open_frame" for r in valid),
        "virus_reads": sum(r["call"] == "virus" for r in valid),
        "other_reads": sum(r["call"] == "others" for r in valid),
        "chunks": sum(int(r["chunks"]) for r in valid), "frames": sum(int(r["frames"]) for r in valid),
        "virus_chunks": sum(r["Is_Virus"] == "True" for r in chunks), "chunks_called": len(chunks),
    }


def expected_histogram(folder: Path) -> list[int]:
    bins = [0] * HIST_BINS
    for row in table_rows(folder / "prediction_results.txt"):
        bins[min(int(float(row["score2"]) * HIST_BINS), HIST_BINS - 1)] += 1
    return bins


@pytest.fixture()
def finished(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference demo run (the session's reference stays as the run left it)."""
    outdir = tmp_path / "run"
    shutil.copytree(reference, outdir)
    return outdir


def test_report_is_well_formed_and_self_contained(finished: Path):
    path = write_report(finished)
    assert path == finished / REPORT and path.is_file()
    text = path.read_text(encoding="utf-8")
    for needle in ("http://", "https://", "src=", "<script", "<link", "@import", "url(", "//cdn"):
        assert needle not in text.lower(), needle
    page = parse(path)
    names = {tag for tag, _ in page.tags}
    assert {"html", "head", "body", "style", "svg", "table"} <= names
    assert not names & {"script", "img", "link", "iframe", "object", "embed", "image", "use"}
    assert not [a for _, attrs in page.tags for a in attrs if a in ("src", "href", "xlink:href", "srcset")]
    assert not list(finished.glob(".*.tmp-*"))  # written atomically: no temporaries left


def test_report_shows_the_counts_of_reads_tsv(finished: Path):
    page = parse(write_report(finished))
    want = expected_counts(finished)
    assert set(COLUMNS) == set(want)
    for key, value in want.items():
        assert page.cells[("demo", key)].replace(",", "") == str(value), key
    run = json.loads((finished / "run.json").read_text())["counts"]  # and they agree with the run's own
    assert (want["reads"], want["virus_reads"], want["frames"]) == (run["reads"], run["virus_reads"], run["frames"])


def test_report_shows_the_score_histogram(finished: Path):
    page = parse(write_report(finished))
    bars = [t for t in page.titles if t.endswith(" frames")]
    got = [int(t.rsplit(": ", 1)[1].split()[0]) for t in bars]
    assert got == expected_histogram(finished)
    assert sum(got) == len(table_rows(finished / "prediction_results.txt")) > 20


def test_random_weights_banner_follows_run_json(finished: Path):
    page = parse(write_report(finished))
    assert any(tag == "div" and a.get("id") == "random-weights" for tag, a in page.tags)
    assert "not a biological result" in "".join(page.text)
    run = json.loads((finished / "run.json").read_text())
    run["random_weights"] = False
    run.pop("warning", None)
    (finished / "run.json").write_text(json.dumps(run))
    page = parse(write_report(finished))
    assert not any(a.get("id") == "random-weights" for _, a in page.tags)
    assert "not a biological result" not in "".join(page.text)


def test_timeline_and_gpu_sections_draw_what_is_recorded(finished: Path):
    run = json.loads((finished / "run.json").read_text())
    page = parse(write_report(finished))
    assert len(run["bag_timeline"]) == run["bags"]["computed_now"] > 1  # the run recorded its bags
    assert sum(t.startswith("bag ") for t in page.titles) == len(run["bag_timeline"])
    assert "No GPU utilisation time series" in "".join(page.text)  # a CPU run: no NVML samples
    worker = next(iter(run["workers"]))
    run["gpu_utilization"] = {worker: [[100.0 + t / 5, (t * 7) % 100] for t in range(20)]}
    del run["bag_timeline"]  # as an older run.json
    (finished / "run.json").write_text(json.dumps(run))
    page = parse(write_report(finished))
    text = "".join(page.text)
    assert "records no start and end per bag" in text and "No GPU utilisation time series" not in text
    assert not any(t.startswith("bag ") for t in page.titles)
    assert any(tag == "polyline" for tag, _ in page.tags)


def test_multiqc_table_has_one_row_per_sample_with_the_counts(finished: Path):
    write_report(finished)
    doc = json.loads((finished / MQC_JSON).read_text())
    assert MQC_JSON.endswith("_mqc.json")  # MultiQC's file search picks it up by this suffix
    assert doc["plot_type"] == "table" and doc["id"] and doc["section_name"]
    assert doc["pconfig"]["id"] and set(doc["headers"]) == set(COLUMNS)
    assert doc["data"] == {"demo": expected_counts(finished)}
    assert "RANDOM WEIGHTS" in doc["description"]


def test_several_samples_each_get_their_row(finished: Path):
    """A run of two samples keeps each one's tables in samples/<name>/ (made here from the demo's)."""
    run = json.loads((finished / "run.json").read_text())
    run["samples"] = [{"name": n, "files": [], "paired": False} for n in ("alpha", "beta")]
    (finished / "run.json").write_text(json.dumps(run))
    for name, keep in (("alpha", None), ("beta", 25)):
        folder = finished / "samples" / name
        folder.mkdir(parents=True)
        for table in ("reads.tsv", "prediction_results.txt", "prediction_results_highestscore.csv"):
            lines = (finished / table).read_text().splitlines(keepends=True)
            (folder / table).write_text("".join(lines[: keep + 2] if keep else lines))
    page = parse(write_report(finished))
    doc = json.loads((finished / MQC_JSON).read_text())
    for name in ("alpha", "beta"):
        want = expected_counts(finished / "samples" / name)
        assert doc["data"][name] == want
        assert page.cells[(name, "reads")].replace(",", "") == str(want["reads"])
    assert doc["data"]["alpha"] != doc["data"]["beta"]


def test_report_files_are_ours(finished: Path):
    write_report(finished)
    owned = store.owned_files(finished)
    assert finished / REPORT in owned and finished / MQC_JSON in owned
    assert store.foreign_entries(finished) == []


def test_an_unfinished_directory_has_no_report(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="run.json"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT).exists()


def test_report_module_imports_no_torch():
    code = "import sys, virnuc_hpc.outputs.report; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_run_writes_the_report(reference: Path, tmp_path: Path):
    """The run itself writes both files, before run.json (which marks a finished run, so it comes last)."""
    page = parse(reference / REPORT)
    want = expected_counts(reference)
    assert all(page.cells[("demo", k)].replace(",", "") == str(v) for k, v in want.items())
    assert json.loads((reference / MQC_JSON).read_text())["data"] == {"demo": want}
    written = {name: (reference / name).stat().st_mtime_ns for name in (MQC_JSON, REPORT, "run.json")}
    assert written[MQC_JSON] <= written[REPORT] <= written["run.json"], written
    remade = tmp_path / "remade"
    shutil.copytree(reference, remade)
    assert write_report(remade).read_bytes() == (reference / REPORT).read_bytes()  # run.json remakes it


def test_a_real_browser_renders_the_counts(reference: Path, tmp_path: Path):
    """Chromium (installed by tests/run.sh from the distribution's packages) loads the page with the
    network off and its rendered DOM shows the counts of reads.tsv."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "no chromium: tests/run.sh installs it (apt-get install chromium)"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",
                           "--dump-dom", (reference / REPORT).as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    rendered = tmp_path / "rendered.html"
    rendered.write_text(proc.stdout)
    page = parse(rendered)
    want = expected_counts(reference)
    assert all(page.cells[("demo", k)].replace(",", "") == str(v) for k, v in want.items()), page.cells


HOSTILE = "<script>alert(1)</script> & </script><img src=x onerror=alert(2)> \"q\" 'a'"


def test_text_from_run_json_is_escaped_in_the_report_and_multiqc(finished: Path):
    """Issue 34 item 9: a version, sample name, command, path, setting, warning, worker or stage
    name holding markup shows as text: escaped in report.html, escaped in MultiQC's description."""
    import html
    run = json.loads((finished / "run.json").read_text())
    run.update(version=HOSTILE, started=HOSTILE, command="predict " + HOSTILE, warnings=[HOSTILE])
    run["samples"][0]["name"] = run["samples"][0]["files"][0] = HOSTILE
    run["inputs"][0]["path"] = run["command_line"] = run["models"]["classifier"]["spec"] = HOSTILE
    run["config"].update(device=HOSTILE, precision=HOSTILE, engine=HOSTILE, features=HOSTILE)
    run["seconds"] = {HOSTILE: 1.0, "plan": 2.0}
    run["milestones_s"] = {HOSTILE: 0.5}
    run["workers"] = {HOSTILE: {**next(iter(run["workers"].values()), {}), "seconds": {HOSTILE: 1.0}}}
    run["bag_timeline"] = [{"bag": 0, "worker": HOSTILE, "start": 1.0, "end": 2.0}]
    run["gpu_utilization"] = {HOSTILE: [[1.0, 50.0], [2.0, 60.0]]}
    (finished / "run.json").write_text(json.dumps(run))
    path = write_report(finished)
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "<img" not in text.lower() and "</script" not in text.lower()
    assert html.escape(HOSTILE, quote=True) in text
    page = parse(path)
    assert not {tag for tag, _ in page.tags} & {"script", "img"}
    shown = "".join(page.text)
    assert HOSTILE in shown and f"classifier: {HOSTILE}" in shown  # shown as the text it is
    assert page.cells[(HOSTILE, "reads")]  # the sample's row, named by its escaped attribute
    doc = json.loads((finished / MQC_JSON).read_text())
    assert "<" not in doc["description"] and html.escape(HOSTILE, quote=True) in doc["description"]
    assert "<" not in json.dumps({k: v for k, v in doc.items() if k != "data"})
    assert list(doc["data"]) == [HOSTILE]  # the sample's name as MultiQC matches it, not rewritten
