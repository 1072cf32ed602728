"""report.html and virnuc_mqc.json of a finished demo run: well-formed, self-contained, the run's numbers.

The numbers expected here are counted from the run's tables with the csv module, not with the
report's own (pandas) readers.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conftest import DEMO, DEMO_FASTA, cli, shared_scheduler
from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.report import (COLUMNS, CSP, HIST_BINS, MQC_JSON, OVERLAY_MAX, REPORT, SORT_JS,
                                       Distribution, distribution_svg, length_edges, write_report)

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
        self.scripts: list[str] = []  # the text of each <script>
        self._in_script = False
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
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

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
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_script:
            self.scripts[-1] += data
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


def with_percent(counts: dict[str, int]) -> dict[str, float]:
    """The counts and % virus, as the MultiQC table gives them."""
    return {**counts, "virus_percent": round(100 * counts["virus_reads"] / counts["reads"], 2)}


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
    for needle in ("http://", "https://", "src=", "<link", "@import", "url(", "//cdn"):
        assert needle not in text.lower(), needle
    page = parse(path)
    names = {tag for tag, _ in page.tags}
    assert {"html", "head", "body", "style", "svg", "table", "details"} <= names
    assert not names & {"img", "link", "iframe", "object", "embed", "image", "use"}
    assert not [a for _, attrs in page.tags for a in attrs if a in ("src", "href", "xlink:href", "srcset")]
    # one script, inline and ours (it sorts the sample table), and a policy that runs nothing else
    assert page.scripts == [SORT_JS] and [a for tag, a in page.tags if tag == "script"] == [{}]
    policy = [a["content"] for tag, a in page.tags
              if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert policy == [CSP] and CSP.startswith("default-src 'none';") and "unsafe" not in CSP
    digest = base64.b64encode(hashlib.sha256(SORT_JS.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in CSP
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
    # the bars are coloured by worker (one colour each, told apart in a legend), not by bag
    html_text = (finished / REPORT).read_text(encoding="utf-8")
    bars = re.findall(r'fill="(#[0-9a-f]{6})"><title>bag (\d+) on (.+?): [\d.]+-', html_text)
    assert sorted((int(b), w) for _, b, w in bars) == sorted((t["bag"], t["worker"]) for t in run["bag_timeline"])
    colour = {w: {c for c, _, w2 in bars if w2 == w} for w in run["workers"]}
    assert all(len(c) == 1 for c in colour.values()) and len(set.union(*colour.values())) == len(run["workers"]) > 1
    legend = dict((w, c) for c, w in re.findall(r'<li><svg[^>]*><rect[^>]*fill="(#[0-9a-f]{6})"/></svg> ([^<]+)</li>',
                                                html_text))
    assert all(legend[w] == next(iter(c)) for w, c in colour.items())
    # timing and devices come last, folded; what was run and the samples open the page
    folded = [a for tag, a in page.tags if tag == "details" and a.get("id")]
    assert [a["id"] for a in folded] == ["timing", "devices"] and not any("open" in a for a in folded)
    order = [html_text.index(f'id="{i}"') for i in ("run", "samples", "scores", "lengths", "timing", "devices")]
    assert order == sorted(order) and html_text.index("Bags on workers") > order[4]
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
    assert doc["pconfig"]["id"] and set(doc["headers"]) == set(COLUMNS) | {"virus_percent"}
    assert doc["data"] == {"demo": with_percent(expected_counts(finished))}
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
        assert doc["data"][name] == with_percent(want)
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
    assert json.loads((reference / MQC_JSON).read_text())["data"] == {"demo": with_percent(want)}
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
    run["inputs"][0]["size"] = run["inputs"][0]["sha256"] = run["models"]["esm2"]["sha256"] = HOSTILE
    run["environment"]["packages"] = {HOSTILE: HOSTILE}
    run["environment"]["host"] = HOSTILE
    (finished / "run.json").write_text(json.dumps(run))
    path = write_report(finished)
    text = path.read_text(encoding="utf-8")
    assert text.count(f"<script>{SORT_JS}</script>") == 1  # the page's own script, and no other
    rest = text.replace(f"<script>{SORT_JS}</script>", "").lower()
    assert "<script" not in rest and "<img" not in rest and "</script" not in rest
    assert html.escape(HOSTILE, quote=True) in text
    page = parse(path)
    assert "img" not in {tag for tag, _ in page.tags} and page.scripts == [SORT_JS]
    shown = "".join(page.text)
    assert HOSTILE in shown and f"classifier{HOSTILE}" in shown  # the models table: role, then model
    assert f"{HOSTILE} {HOSTILE}" in shown  # the versions line
    assert page.cells[(HOSTILE, "reads")]  # the sample's row, named by its escaped attribute
    doc = json.loads((finished / MQC_JSON).read_text())
    assert "<" not in doc["description"] and html.escape(HOSTILE, quote=True) in doc["description"]
    assert "<" not in json.dumps({k: v for k, v in doc.items() if k != "data"})
    assert list(doc["data"]) == [HOSTILE]  # the sample's name as MultiQC matches it, not rewritten


# --- read lengths and the figures' forms ------------------------------------------------------

def bins_from_titles(titles: list[str], unit: str) -> list[tuple[str, str, int]]:
    """(sample or '', bin, count) of every bar, point or cell whose title counts ``unit``."""
    out = []
    for t in titles:
        if not t.endswith(f" {unit}"):
            continue
        head, count = t[: -len(unit) - 1].rsplit(": ", 1)
        name, _, where = head.rpartition(" · ")
        out.append((name, where, int(count)))
    return out


def in_bin(length: int, where: str) -> bool:
    """Whether a read length falls in a bin titled 'lo-hi bp' or 'n bp' (both ends included)."""
    lo, _, hi = where.removesuffix(" bp").partition("-")
    return int(lo) <= length <= int(hi or lo)


def test_read_length_distribution_counts_reads_tsv(finished: Path):
    page = parse(write_report(finished))
    lengths = [int(r["length"]) for r in table_rows(finished / "reads.tsv") if not r["status"].startswith("skipped")]
    bars = bins_from_titles(page.titles, "reads")
    assert len(bars) > 5 and sum(n for _, _, n in bars) == len(lengths) == 60
    for _, where, n in bars:
        assert n == sum(in_bin(length, where) for length in lengths), where


@pytest.mark.parametrize("lo, hi", [(150, 150), (100, 151), (150, 1000), (100, 50_000), (1, 2_000_000)])
def test_length_bins_cover_every_length_in_about_twenty_bins(lo: int, hi: int):
    edges = length_edges(lo, hi)
    assert edges == sorted(set(edges)) and all(isinstance(e, int) for e in edges)
    assert edges[0] <= lo and edges[-1] > hi and 1 <= len(edges) - 1 <= 22
    if hi > 10 * lo:  # short and long reads: widths grow (a log scale), else equal widths
        widths = [b - a for a, b in zip(edges, edges[1:])]
        assert widths[-1] > 10 * widths[0]


def test_one_figure_whatever_the_number_of_samples():
    """One sample: bars; a few: one line each over the same axes; many: one heat-strip row each."""
    def drawn(n: int) -> Page:
        d = Distribution(edges=[i / 4 for i in range(5)], rows=[(f"s{i}", [i, 1, 0, 2]) for i in range(n)],
                         unit="frames", axis="P(virus)", bin_label=lambda a, b: f"{a:g}-{b:g}",
                         tick_label=lambda x: f"{x:g}")
        page = Page()
        page.feed(distribution_svg(d))
        return page

    one, few, many = drawn(1), drawn(OVERLAY_MAX), drawn(100)
    for page in (one, few, many):
        assert sum(tag == "svg" and a.get("role") == "img" for tag, a in page.tags) == 1
    assert sum(tag == "polyline" for tag, _ in few.tags) == OVERLAY_MAX and not any(
        tag == "polyline" for tag, _ in one.tags + many.tags)
    assert len(bins_from_titles(one.titles, "frames")) == 4
    cells = bins_from_titles(many.titles, "frames")
    assert len(cells) == 100 * 4 and {name for name, _, _ in cells} == {f"s{i}" for i in range(100)}
    assert ("s7", "0-0.25", 7) in cells
    height = int(next(a["height"] for tag, a in many.tags if tag == "svg" and a.get("role") == "img"))
    assert height < 800  # 100 samples stay one screen-sized picture


# --- 50 samples in a real browser ----------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: the
    browser reads commands on fd 3 and answers on fd 4), so a test can size the window, evaluate
    JavaScript in the page and click, with no package beyond the standard library."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        assert browser, "no chromium: tests/run.sh installs it (apt-get install chromium)"
        self._out_r, self._out_w = (self._high(fd) for fd in os.pipe())
        self._in_r, self._in_w = (self._high(fd) for fd in os.pipe())
        ours, theirs = (self._out_r, self._in_w), (self._out_w, self._in_r)

        def child_fds() -> None:  # dup2 leaves 3 and 4 inheritable; every other descriptor is close-on-exec
            os.dup2(self._out_r, 3)
            os.dup2(self._in_w, 4)
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             "--proxy-server=127.0.0.1:9", "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)  # subprocess would close 3 and 4 after preexec_fn
        for fd in ours:
            os.close(fd)
        self._send, self._recv = theirs
        self._buffer, self._id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    @staticmethod
    def _high(fd: int) -> int:
        """The descriptor moved above 3 and 4, where the browser's ends are placed."""
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return moved

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                ready = select.select([self._recv], [], [], max(deadline - time.monotonic(), 0))[0]
                assert ready, f"{method}: no answer in {timeout} s"
                chunk = os.read(self._recv, 1 << 16)
                assert chunk, f"{method}: the browser closed the pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                assert "error" not in answer, answer["error"]
                return answer["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, path: Path) -> None:
        self.call("Page.navigate", session=self.session, url=path.as_uri())
        deadline = time.monotonic() + 60
        while self.evaluate("document.readyState") != "complete" or self.evaluate("location.href") != path.as_uri():
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.proc.wait(timeout=30)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._send)
            os.close(self._recv)


FIFTY = 50


@pytest.fixture(scope="module")
def fifty(client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo run of 50 tiny samples (FASTA files of two or three demo reads each)."""
    records = [r for r in DEMO_FASTA.read_text().split(">") if r]
    inputs = tmp_path_factory.mktemp("fifty-in")
    for i in range(FIFTY):
        picked = [records[(3 * i + j) % len(records)] for j in range(2 + i % 2)]
        (inputs / f"s{i:02d}.fasta").write_text("".join(">" + r for r in picked))
    outdir = tmp_path_factory.mktemp("fifty") / "out"
    proc = cli("predict", *sorted(str(p) for p in inputs.iterdir()), "-o", str(outdir), *DEMO,
               *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return outdir


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


SHOWN = """Array.from(document.querySelectorAll("#samples-table tbody tr")).map(function (tr) {
  var row = {sample: tr.getAttribute("data-sample")};
  tr.querySelectorAll("td[data-key]").forEach(function (td) { row[td.getAttribute("data-key")] = td.textContent; });
  return row; })"""


def test_fifty_samples_fit_a_laptop_screen(fifty: Path, browser: Chromium):
    """At 1280 px nothing is wider than the window, with the folded sections opened too: the sample
    table scrolls inside its own box."""
    browser.open(fifty / REPORT)
    width = "[document.documentElement.scrollWidth, window.innerWidth]"
    assert browser.evaluate("window.innerWidth") == 1280
    scroll, inner = browser.evaluate(width)
    assert scroll <= inner, (scroll, inner)
    browser.evaluate("document.querySelectorAll('details').forEach(function (d) { d.open = true; })")
    scroll, inner = browser.evaluate(width)
    assert scroll <= inner, (scroll, inner)
    assert browser.evaluate("document.querySelectorAll('#samples-table tbody tr').length") == FIFTY
    box = browser.evaluate("(function (b) { return [getComputedStyle(b).overflowX, b.clientWidth]; })"
                           "(document.querySelector('#samples-table').parentElement)")
    assert box[0] == "auto" and box[1] <= 1280
    figure = browser.evaluate("document.querySelector('#scores ~ svg').getBoundingClientRect().height")
    assert 300 < figure < 900  # one heat strip for the 50 samples, not 50 histograms
    assert browser.evaluate("document.querySelectorAll('svg[role=img]').length") < 10


def test_fifty_samples_show_the_numbers_of_samples_tsv(fifty: Path, browser: Chromium):
    browser.open(fifty / REPORT)
    shown = {row["sample"]: row for row in browser.evaluate(SHOWN)}
    want = {row["sample"]: row for row in table_rows(fifty / store.SAMPLES_TSV)}
    assert list(shown) == list(want) and len(want) == FIFTY
    keys = (set(next(iter(want.values()))) - {"sample"}) & set(COLUMNS)
    assert {"reads", "virus_reads", "frames", "virus_chunks"} <= keys
    for name, row in want.items():
        for key in keys:
            assert shown[name][key].replace(",", "") == row[key], (name, key)
        assert shown[name]["virus_percent"] == f"{100 * int(row['virus_reads']) / int(row['reads']):.1f}", name
        assert {k: shown[name][k].replace(",", "") for k in COLUMNS} == {
            k: str(v) for k, v in expected_counts(fifty / "samples" / name).items()}
    totals = browser.evaluate("Object.fromEntries(Array.from(document.querySelectorAll("
                              "'#samples-table tfoot td[data-total]')).map(function (td) {"
                              " return [td.getAttribute('data-total'), td.textContent]; }))")
    run = json.loads((fifty / "run.json").read_text())["counts"]
    assert all(totals[k].replace(",", "") == str(run[k]) for k in ("reads", "virus_reads", "frames"))
    assert sum(int(r["virus_reads"]) for r in want.values()) == run["virus_reads"] > 0
    assert json.loads((fifty / "run.json").read_text())["random_weights"]
    assert browser.evaluate("document.getElementById('random-weights') !== null")


def test_fifty_samples_sort_by_a_click(fifty: Path, browser: Chromium):
    browser.open(fifty / REPORT)
    header = "document.querySelectorAll('#samples-table thead th')[{}].click()"
    percent = 2  # sample, reads, % virus

    def column(key: str) -> list[float]:
        return [float(row[key]) for row in browser.evaluate(SHOWN)]
    browser.evaluate(header.format(percent))
    up = column("virus_percent")
    assert up == sorted(up) and up[0] < up[-1]
    browser.evaluate(header.format(percent))
    assert column("virus_percent") == sorted(up, reverse=True)
    browser.evaluate(header.format(0))
    names = [row["sample"] for row in browser.evaluate(SHOWN)]
    assert names == sorted(names) and len(set(names)) == FIFTY
    browser.evaluate(header.format(1))
    reads = column("reads")
    assert reads == sorted(reads) and reads[0] < reads[-1]


def test_fifty_samples_share_one_score_and_one_length_figure(fifty: Path):
    page = parse(fifty / REPORT)
    want = {row["sample"]: row for row in table_rows(fifty / store.SAMPLES_TSV)}
    frames = bins_from_titles(page.titles, "frames")
    reads = bins_from_titles(page.titles, "reads")
    for name, row in want.items():
        assert sum(n for s, _, n in frames if s == name) == int(row["frames"]), name
        assert sum(n for s, _, n in reads if s == name) == int(row["reads"]), name
    assert len({where for _, where, _ in frames}) == HIST_BINS
    assert not any(tag == "polyline" for tag, _ in page.tags)  # heat strips, not 50 lines
