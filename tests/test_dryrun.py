"""--dry-run against what a run does: the bags it counts are the bags a real run cuts (the demo and a
10k-read FASTQ), its time is GPU time only where GPUs will be used and comes from the throughput
table, whose every entry is the number in the benchmark results file it names."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, cli, cli_here
from virnuc_hpc.config import RunConfig
from virnuc_hpc.reads.bags import plan_bags, planned_bag_count, planned_bag_counts
from virnuc_hpc.reads.samples import samples_from_paths
from virnuc_hpc.runtime import dryrun

ROOT = Path(__file__).resolve().parent.parent
STOP_IN_EVERY_FRAME = "TTAATTAATTAA"  # TAA at all three offsets, and its own reverse complement


def write_fastq(path: Path, n: int = 10_000, seed: int = 7, open_share: float = 0.05) -> Path:
    """Reads of 100-250 bp; most carry a stop in all six frames (no frame to embed: a fast run),
    ``open_share`` of them are random (frames kept)."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(n):
            length = rng.randint(100, 250)
            seq = "".join(rng.choice("ACGT") for _ in range(length))
            if rng.random() >= open_share:
                at = rng.randint(0, length - len(STOP_IN_EVERY_FRAME))
                seq = seq[:at] + STOP_IN_EVERY_FRAME + seq[at + len(STOP_IN_EVERY_FRAME):]
            out.write(f"@read{i} len={length}\n{seq}\n+\n{'I' * length}\n")
    return path


def dry_run_totals(*args: str) -> dict[str, int]:
    """The totals line of a dry run through the CLI (in this process), as numbers."""
    result, _ = cli_here("predict", *args, "--dry-run")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if re.match(r"reads [\d,]+ +chunks", x))
    words = line.split()
    return {words[i]: int(words[i + 1].replace(",", "")) for i in range(0, len(words), 2)}


def within_10_percent(estimate: float, real: float) -> bool:
    return abs(estimate - real) <= 0.1 * real


@pytest.fixture(scope="module")
def fastq_run(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> tuple[Path, Path, list[str]]:
    """One real run over a 10k-read FASTQ: its input, OUTDIR and the options it ran with."""
    where = tmp_path_factory.mktemp("dryrun-fastq")
    reads = write_fastq(where / "reads.fq")
    options = ["--preset", "demo", "--no-progress", "--bag-size", "40", "--workers", "1"]
    proc = cli("predict", str(reads), "-o", str(where / "out"), *options)
    assert proc.returncode == 0, proc.stderr
    return reads, where / "out", options


def test_dry_run_bags_are_the_demo_runs(reference: Path, tmp_path: Path):
    counts = json.loads((reference / "run.json").read_text())["counts"]
    totals = dry_run_totals(str(DEMO_FASTA), "-o", str(tmp_path / "never"), *DEMO)
    assert within_10_percent(totals["bags"], counts["bags"]), (totals, counts)
    assert (totals["reads"], totals["frames"]) == (counts["reads"], counts["frames"])  # the head is the file
    assert not (tmp_path / "never").exists()


def test_dry_run_bags_are_a_10k_fastq_runs(fastq_run: tuple[Path, Path, list[str]], tmp_path: Path):
    reads, outdir, options = fastq_run
    counts = json.loads((outdir / "run.json").read_text())["counts"]
    assert counts["reads"] == 10_000 and counts["bags"] >= 10  # full bags and the shrinking tail
    totals = dry_run_totals(str(reads), "-o", str(tmp_path / "never"), *options)
    assert within_10_percent(totals["bags"], counts["bags"]), (totals, counts)
    assert within_10_percent(totals["reads"], counts["reads"]), (totals, counts)  # extrapolated from 2,000


def test_bag_count_is_plan_bags_layout(tmp_path: Path):
    """The counted layout equals what plan_bags cuts, for one and several files, bags of one piece
    to many, files shorter than one bag and longer than the tail."""
    rng = random.Random(3)
    for trial in range(60):
        records = [rng.choice([1, 5, 16, 17, 64, 65, 81, rng.randint(1, 700)]) for _ in range(rng.randint(1, 3))]
        paths = []
        for number, n in enumerate(records):
            path = tmp_path / f"t{trial}-{number}.fa"
            path.write_text("".join(f">r{i}\nACGT\n" for i in range(n)))
            paths.append(str(path))
        files = [f for sample in samples_from_paths(paths) for f in sample.files]
        wanted = {f: rng.choice([1, 2, 15, 16, 17, 33, rng.randint(1, 200)]) for f in files}
        cut = list(plan_bags(files, lambda f: wanted[f], "key"))
        layout = list(zip(records, (wanted[f] for f in files)))
        assert planned_bag_count(layout) == len(cut), (records, list(wanted.values()))
        assert planned_bag_counts(layout) == [sum(b.ref.path == f.path for b in cut) for f in files]


def test_cpu_run_gets_cpu_time_and_no_gpu_figure():
    text = dryrun.dry_run([str(DEMO_FASTA)], RunConfig(expected_length=300, device="cpu"),
                          gpus=["NVIDIA H100 80GB HBM3"])
    assert "GPU time" not in text and "GPU hours" not in text
    line = next(x for x in text.splitlines() if x.startswith("CPU time"))
    assert "device: cpu" in line and "no GPU will be used" in line
    assert "matmul rate, measured now" in text
    auto = dryrun.dry_run([str(DEMO_FASTA)], RunConfig(expected_length=300), gpus=[])
    assert "CPU time (no GPU visible here" in auto and "GPU hours" not in auto


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gpu_time_is_the_cards_measured_rate(precision: str):
    config = RunConfig(expected_length=300, precision=precision, device="cuda", workers=1)
    text = dryrun.dry_run([str(DEMO_FASTA)], config, gpus=["NVIDIA H200"])
    assert "CPU time" not in text
    lines = [x for x in text.splitlines() if x.startswith("GPU time")]
    assert len(lines) == 1 and lines[0].startswith("GPU time on H200")
    rate = dryrun.GPU_THROUGHPUT["H200", precision]
    assert f"our measurement on H200, benchmark {rate.benchmark}: {rate.tokens_per_s:,.0f}" in lines[0]
    assert "int8" in lines[0] if precision == "int8" else "int8" not in lines[0]
    elsewhere = dryrun.dry_run([str(DEMO_FASTA)], config, gpus=[])  # a login node: both cards
    assert [x.split(":")[0] for x in elsewhere.splitlines() if x.startswith("GPU time on")] == \
        ["GPU time on H100", "GPU time on H200"]
    assert "int8 not measured on H100" in elsewhere if precision == "int8" else "not measured" not in elsewhere


def test_int8_is_faster_than_fp16_where_measured():
    assert dryrun.GPU_THROUGHPUT["H200", "int8"].tokens_per_s > dryrun.GPU_THROUGHPUT["H200", "fp16"].tokens_per_s
    rate, note = dryrun.gpu_rate("H100", "bf16")
    assert rate == dryrun.GPU_THROUGHPUT["H100", "fp16"] and "bf16" in note


def test_throughput_table_is_the_benchmark_results():
    """Every entry is the embed-stage tokens/s of one-GPU, ESM-2 3B runs in the results file it
    names, on that card, at that precision."""
    for (card, precision), rate in dryrun.GPU_THROUGHPUT.items():
        data = json.loads((ROOT / "benchmarks" / "results" / f"{rate.result}.json").read_text())
        assert card in data["card"] and rate.result.startswith(rate.benchmark)
        measured = [r["embed_stage_tokens_per_s"] for r in data["runs"]
                    if r["gpus"] == 1 and r.get("precision", data.get("precision")) == precision]
        assert any(abs(m - rate.tokens_per_s) < 1 for m in measured), (card, precision, measured)


def test_disk_is_given_per_features_mode():
    text = dryrun.dry_run([str(DEMO_FASTA)], RunConfig(expected_length=300, device="cpu",
                                                       features="float16", esm2_model="demo",
                                                       dnabert_model="demo"))
    rows = {x.split()[0]: x for x in text.splitlines() if x.startswith("  float") or x.startswith("  none")}
    assert list(rows) == ["float32", "float16", "none"]
    assert rows["float16"].endswith("<- this run") and "<- this run" not in rows["float32"] + rows["none"]
    assert "448-wide features" in text  # the demo encoders' widths, not the real ones
    width = 448
    assert dryrun.bag_bytes("float32", "none", 100, 1, width) > dryrun.bag_bytes("float16", "none", 100, 1, width) \
        > dryrun.bag_bytes("none", "none", 100, 1, width)


def test_dry_run_disk_is_near_the_demo_bag_files(reference: Path):
    """The bag files the demo run wrote, against the dry run's estimate for its features mode."""
    run = json.loads((reference / "run.json").read_text())
    written = sum(p.stat().st_size for p in (reference / "bags").glob("*.nc"))
    config = RunConfig(**run["config"])
    estimate = dryrun.bag_bytes(config.features, config.compression, run["counts"]["frames"],
                                run["counts"]["bags"], 448)
    assert abs(estimate - written) <= 0.25 * written, (estimate, written)
