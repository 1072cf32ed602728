"""Real sequencing inputs end to end: FASTQ in every compression, samples, samplesheets with R1/R2,
a bad record found mid-run, --dry-run and the parallel `validate`, through the CLI on real Dask
clusters with the random-weight demo models."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, assert_nothing_finished, cli, finished_outputs, shared_scheduler
from virnuc_hpc.outputs import store
from virnuc_hpc.reads.fasta import DUPLICATE_ID, INVALID_CHAR
from virnuc_hpc.testing.loading import load_records
from virnuc_hpc.reads.samples import samples_from_paths
from virnuc_hpc.runtime.validate import validate_samples

COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def fastq(records, suffix: str = "") -> bytes:
    return "".join(f"@{r.id}{suffix} some description\n{r.seq}\n+\n{'I' * len(r.seq)}\n" for r in records).encode()


def compress(data: bytes, how: str) -> bytes:
    if how == "zstd":
        from backports import zstd
        return zstd.compress(data)
    return {"plain": lambda d: d, "gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[how](data)


@pytest.mark.parametrize("how", ["gzip", "bzip2", "xz", "zstd"])
def test_fastq_in_every_compression_gives_the_fasta_tables(how: str, reference: Path, tmp_path: Path,
                                                           client):
    """The same reads as FASTQ (compressed, with a misleading name) give the very same tables:
    same bags, same frames, same probabilities; only reads.tsv's file column differs."""
    records = load_records([DEMO_FASTA], skip_invalid=False).records
    path = tmp_path / "demo.txt"  # no extension says what it is
    path.write_bytes(compress(fastq(records), how))
    outdir = tmp_path / "out"
    proc = cli("predict", str(path), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    got, want = finished_outputs(outdir), finished_outputs(reference)
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert got[name] == want[name], name
    assert got["reads.tsv"].decode().replace(str(path), "F") == want["reads.tsv"].decode().replace(str(DEMO_FASTA), "F")


def test_samples_with_clashing_ids_get_their_own_tables(tmp_path: Path, client):
    """Two files holding the same read ids are two samples (ids only need to be unique within a
    sample); each gets VirNucPro's tables in OUTDIR/samples/<name>/, and samples.tsv sums them up."""
    text = DEMO_FASTA.read_text()
    a, b = tmp_path / "gut.fa", tmp_path / "soil.fastq.gz"
    a.write_text(text)
    b.write_bytes(gzip.compress(fastq(load_records([DEMO_FASTA], skip_invalid=False).records[:30])))
    outdir = tmp_path / "out"
    proc = cli("predict", str(a), str(b), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert not (outdir / store.PREDICTIONS).exists()
    records = load_records([DEMO_FASTA], skip_invalid=False).records
    for name, n in (("gut", 60), ("soil", 30)):
        folder = outdir / "samples" / name
        rows = (folder / store.READS).read_text().splitlines()[2:]
        assert [r.split("\t")[0] for r in rows] == [r.id for r in records[:n]]
        frames = [line.split("\t")[0] for line in (folder / store.PREDICTIONS).read_text().splitlines()[2:]]
        assert frames and all(f.split("_chunk_")[0] in {r.id for r in records[:n]} for f in frames)
    summary = (outdir / store.SAMPLES_TSV).read_text().splitlines()
    header = summary[1].split("\t")
    by_sample = {row.split("\t")[0]: dict(zip(header, row.split("\t"))) for row in summary[2:]}
    assert by_sample["gut"]["reads"] == "60" and by_sample["soil"]["reads"] == "30"
    run = json.loads((outdir / "run.json").read_text())
    assert run["counts"]["reads"] == 90 and [s["name"] for s in run["samples"]] == ["gut", "soil"]
    with store.open_features(outdir) as ds:  # one dataset: the sample coordinate tells them apart
        assert set(ds["sample"].values) == {"gut", "soil"}


def test_samplesheet_with_r1_and_r2(tmp_path: Path, client):
    """R1/R2 of one sample: each mate is classified as its own read (ids get /1 and /2), and
    pairs.tsv gives one call per pair: virus when either mate is."""
    records = load_records([DEMO_FASTA], skip_invalid=False).records
    mates = [type(r)(r.id, r.seq[::-1].translate(COMPLEMENT), r.path, r.line) for r in records]
    (tmp_path / "s_R1.fq.gz").write_bytes(gzip.compress(fastq(records, "/1")))
    (tmp_path / "s_R2.fq.gz").write_bytes(gzip.compress(fastq(mates, "/2")))
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("sample,fastq_1,fastq_2\npairs,s_R1.fq.gz,s_R2.fq.gz\n")
    outdir = tmp_path / "out"
    proc = cli("predict", "--samplesheet", str(sheet), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    reads = [r.split("\t") for r in (outdir / store.READS).read_text().splitlines()[2:]]
    assert [r[0] for r in reads] == [f"{r.id}/1" for r in records] + [f"{r.id}/2" for r in records]
    call = {r[0]: r[8] for r in reads}
    pairs = [p.split("\t") for p in (outdir / store.PAIRS).read_text().splitlines()]
    assert pairs[0] == ["# " + store.RANDOM_WEIGHTS_WARNING]
    assert pairs[1] == ["pair_id", "call_1", "call_2", "call"]
    assert [p[0] for p in pairs[2:]] == [r.id for r in records]
    for pair_id, one, two, both in pairs[2:]:
        assert (one, two) == (call[f"{pair_id}/1"], call[f"{pair_id}/2"])
        assert both == ("virus" if "virus" in (one, two) else "others" if "others" in (one, two) else "-")
    assert {p[3] for p in pairs[2:]} >= {"virus", "others"}


def test_bad_record_mid_run_stops_the_run_with_its_line(tmp_path: Path, client):
    """A bad record far into the input is found by the worker that takes its bag: exit 2 with
    file:line, the other bags are cancelled, nothing looks finished; --skip-invalid then goes on."""
    lines = DEMO_FASTA.read_text().splitlines()
    last_header = max(i for i, line in enumerate(lines) if line.startswith(">"))
    lines[last_header:last_header] = [">broken_read", "ACGTXACGT"]
    bad_line = last_header + 2
    path = tmp_path / "late.fa"
    path.write_text("\n".join(lines) + "\n")
    outdir = tmp_path / "out"
    proc = cli("predict", str(path), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 2, proc.stderr
    assert f"late.fa:{bad_line}: record 'broken_read': invalid character 'X'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_finished(outdir)
    proc = cli("predict", str(path), "-o", str(outdir), *DEMO, "--skip-invalid", "--overwrite",
               *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    rows = (outdir / store.READS).read_text().splitlines()
    assert rows[-1].startswith("broken_read\t") and "skipped:invalid-char" in rows[-1]


def test_dry_run_counts_without_models_or_outputs(reference: Path, tmp_path: Path):
    outdir = tmp_path / "never"
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--dry-run",
               "--esm2-model", "/nonexistent/esm2.pt")  # no model is looked at
    assert proc.returncode == 0, proc.stderr
    counts = json.loads((reference / "run.json").read_text())["counts"]
    assert f"reads {counts['reads']:,}" in proc.stdout and f"frames {counts['frames']:,}" in proc.stdout
    assert "CPU time (device: cpu" in proc.stdout and "GPU time" not in proc.stdout  # the demo runs on CPU
    assert "bytes per frame" in proc.stdout
    assert not outdir.exists()


def test_validate_in_parallel_finds_every_problem(tmp_path: Path):
    """The Dask path of `validate` (forced on a small input): problems of every block, and ids
    repeated across blocks, in input order with their lines."""
    lines = []
    for i in range(300):
        lines += [f">r{i}", "ACGT" * 10 if i != 120 else "ACGTNNZZ"]
    lines += [">r7", "ACGT"]
    path = tmp_path / "in.fa"
    path.write_text("\n".join(lines) + "\n")
    samples = samples_from_paths([str(path)])
    problems = validate_samples(samples, workers=2, parallel=True, block_records=50)
    assert [(p.kind, p.record, p.line) for p in problems] == [(INVALID_CHAR, "r120", 242), (DUPLICATE_ID, "r7", 601)]
    assert "first seen at" in problems[1].message and problems[1].message.endswith(":15")
    assert validate_samples(samples, parallel=False, block_records=50) == problems
    proc = cli("validate", str(path))
    assert proc.returncode == 2 and "in.fa:242" in proc.stderr and "in.fa:601" in proc.stderr
