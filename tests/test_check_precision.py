"""``virnuc-hpc check-precision``: the demo run prints a parsable table (fp32 exact, a refused
precision as a row), and the pure parts (cosine statistics, label agreement, the recommendation
rule, the precision list) do what docs/precision.md says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_FASTA, cli
from virnuc_hpc.config import load_config
from virnuc_hpc.errors import ConfigError
from virnuc_hpc.runtime.precision_check import (
    CosineStats,
    PrecisionReport,
    PrecisionRow,
    check_precision,
    confident_mask,
    cosine_stats,
    format_report,
    label_agreement,
    label_agreements,
    labels_basis,
    parse_precisions,
    recommend,
    row_cosines,
)

NUMBER = r"(\d+\.\d+)"
COSINES = rf"\s+{NUMBER}" * 4
TABLE_ROW = re.compile(rf"^(fp32|fp16|bf16|int8){COSINES}\s+(\S+)\s+(\S+)\s+([\d,.]+)\s+([\d.]+)x$")


def parse_table(stdout: str) -> dict[str, dict[str, float | str]]:
    """Rows of the printed table by precision: four cosines, labels (all frames, confident ones),
    frames/s, ratio; or 'not run'."""
    rows: dict[str, dict[str, float | str]] = {}
    for line in stdout.splitlines():
        if match := TABLE_ROW.match(line):
            name, dmin, dmed, emin, emed, labels, confident, speed, ratio = match.groups()
            rows[name] = {"dna_min": float(dmin), "dna_median": float(dmed), "esm_min": float(emin),
                          "esm_median": float(emed), "labels": labels, "confident": confident,
                          "speed": float(speed.replace(",", "")), "ratio": float(ratio)}
        elif match := re.match(r"^(fp16|bf16|int8)\s+not run: (.+)$", line):
            rows[match[1]] = {"refused": match[2]}
    return rows


# --- the command on the demo models (CPU) ------------------------------------------------------

def test_demo_check_prints_the_table(demo_cache: Path) -> None:
    """The issue's bar: the default precisions (fp16, bf16, int8) on the demo preset, on CPU."""
    proc = cli("check-precision", str(DEMO_FASTA), "--preset", "demo")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stdout and "tell nothing about real activations" in proc.stdout
    rows = parse_table(proc.stdout)
    assert set(rows) == {"fp32", "fp16", "bf16", "int8"}, proc.stdout
    fp32 = rows["fp32"]
    assert [fp32[k] for k in ("dna_min", "dna_median", "esm_min", "esm_median")] == [1.0] * 4
    assert fp32["labels"] == fp32["confident"] == "100.00%" and fp32["ratio"] == 1.0
    assert float(fp32["speed"]) > 0
    for name in ("bf16", "int8"):
        row = rows[name]
        for encoder in ("dna", "esm"):
            assert 0 < float(row[f"{encoder}_min"]) <= float(row[f"{encoder}_median"]) <= 1.0
        assert 0 <= float(str(row["labels"]).rstrip("%")) <= 100
        assert 0 <= float(str(row["confident"]).rstrip("%")) <= 100
    # the demo classifier is confident on most frames: they decide, and the output says so
    confident = re.search(r"^equal labels: on all frames, and on the (\d+) confident frames", proc.stdout, re.M)
    frames = re.search(r"^\d+ reads, ([\d,]+) frames", proc.stdout, re.M)
    assert confident and frames and int(confident[1]) >= 0.8 * int(frames[1].replace(",", "")), proc.stdout
    assert "labels decided on the confident frames" in proc.stdout, proc.stdout
    assert re.search(r"equal labels on the confident frames; configured", proc.stdout), proc.stdout
    # int8 quantises ESM-2 only: on CPU DNABERT-S runs its fp32 self, ESM-2 moves but stays close
    assert rows["int8"]["dna_min"] == 1.0 and 0.999 < float(rows["int8"]["esm_min"]) < 1.0
    assert "not supported on CPU" in str(rows["fp16"]["refused"])  # refused by devices.py: a row
    recommended = re.search(r"^recommended: (\w+)", proc.stdout, re.M)
    assert recommended and recommended[1] in ("fp32", "bf16", "int8"), proc.stdout


def test_check_without_classifier_leaves_labels_out(demo_cache: Path) -> None:
    """The Python function on a few reads: no classifier, so no label column, and the pick rests
    on the cosines alone."""
    # load_config reads None as "not given": the preset's classifier is taken out afterwards
    config = load_config(preset="demo").model_copy(update={"classifier": None})
    report = check_precision([str(DEMO_FASTA)], config, sample=4, precisions=["bf16"])
    assert report.reads == 4 and report.frames > 0 and not report.classifier and report.random_weights
    assert [r.precision for r in report.rows] == ["fp32", "bf16"]
    assert all(r.equal_labels is None for r in report.rows)
    assert report.rows[0].cosine["esm2"].min == pytest.approx(1.0)
    printed = format_report(report)
    assert "no classifier" in printed
    assert re.search(r"^bf16 .* - +- +[\d,.]+ +[\d.]+x$", printed, re.M), printed
    assert "confident frames" not in printed and report.confident_frames is None


def test_invalid_precisions_exit_2(tmp_path: Path) -> None:
    proc = cli("check-precision", str(DEMO_FASTA), "--preset", "demo", "--precisions", "fp16,int4")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("virnuc-hpc: error: "), proc.stderr
    assert "unknown precision 'int4'" in proc.stderr and "fp16, bf16, int8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_input_exits_2(tmp_path: Path) -> None:
    proc = cli("check-precision", str(tmp_path / "absent.fasta"), "--preset", "demo", "--precisions", "bf16")
    assert proc.returncode == 2, proc.stderr
    assert "absent.fasta" in proc.stderr and "Traceback" not in proc.stderr


# --- the pure parts ---------------------------------------------------------------------------------

def test_parse_precisions() -> None:
    assert parse_precisions("fp16,bf16") == ("fp16", "bf16")
    assert parse_precisions(" BF16 , fp16,bf16") == ("bf16", "fp16")
    assert parse_precisions("fp32,bf16") == ("bf16",)  # fp32 is the reference anyway
    for bad in ("", ",", "fp8", "auto", "fp16;bf16"):
        with pytest.raises(ConfigError, match="comma-separated list of fp16, bf16, int8"):
            parse_precisions(bad)


def test_cosine_stats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 16)).astype(np.float32)
    b = a + rng.normal(scale=0.05, size=a.shape).astype(np.float32)
    expected = np.array([x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
                         for x, y in zip(a.astype(np.float64), b.astype(np.float64))])
    np.testing.assert_allclose(row_cosines(a, b), expected, rtol=1e-12)
    stats = cosine_stats(a, b)
    assert stats.min == pytest.approx(expected.min(), rel=1e-12)
    assert stats.median == pytest.approx(np.median(expected), rel=1e-12)
    assert cosine_stats(a, a) == CosineStats(min=pytest.approx(1.0), median=pytest.approx(1.0))
    assert row_cosines(a, -a).max() == pytest.approx(-1.0)


def test_cosine_edge_rows() -> None:
    """Zero rows agree only with zero rows; a non-finite row is NaN and fails any threshold."""
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    other = np.array([[0.0, 0.0], [0.0, 0.0], [np.inf, 1.0]])
    cos = row_cosines(ref, other)
    assert cos[0] == 1.0 and cos[1] == 0.0 and np.isnan(cos[2])
    stats = cosine_stats(ref, other)
    assert np.isnan(stats.min) and stats.median == pytest.approx(0.5)
    with pytest.raises(ValueError):
        row_cosines(ref, other[:2])


def test_label_agreement() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    other = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])
    assert label_agreement(ref, other) == 75.0
    assert label_agreement(ref, ref) == 100.0


def test_confident_frames_and_the_basis_rule() -> None:
    """Confident: fp32 virus score strictly below 0.1 or above 0.9. They decide with >= 100 of
    them or >= half the sample."""
    proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.01, 0.99], [0.3, 0.7]])
    assert confident_mask(proba).tolist() == [True, False, False, False, True, False]
    assert labels_basis(100, 1000) == "confident" and labels_basis(99, 1000) == "all"
    assert labels_basis(50, 100) == "confident" and labels_basis(49, 100) == "all"
    assert labels_basis(0, 0) == "all" and labels_basis(0, 1) == "all" and labels_basis(1, 1) == "confident"
    with pytest.raises(ValueError):
        labels_basis(5, 3)


def test_label_agreements_count_near_half_flips_only_on_all_frames() -> None:
    """Drift that flips only frames near 0.5: all frames lose labels, the confident ones keep them."""
    ref = np.array([[0.02, 0.98]] * 6 + [[0.97, 0.03]] * 4 + [[0.49, 0.51], [0.52, 0.48]])
    other = ref.copy()
    other[10:] = [[0.51, 0.49], [0.48, 0.52]]  # the two frames near 0.5 flip
    every, confident, basis = label_agreements(ref, other)
    assert every == pytest.approx(1000 / 12) and confident == 100.0 and basis == "confident"
    other[0] = [0.6, 0.4]  # a confident frame flips too
    assert label_agreements(ref, other)[1] == pytest.approx(900 / 10)
    near = np.array([[0.45, 0.55], [0.55, 0.45], [0.02, 0.98]])
    flipped = np.array([[0.45, 0.55], [0.55, 0.45], [0.6, 0.4]])  # the one confident frame flips
    assert label_agreements(near, flipped) == (pytest.approx(200 / 3), 0.0, "all")  # 1 of 3: too few
    assert label_agreements(near[:2], near[:2]) == (100.0, None, "all")  # none confident


def test_the_deciding_basis_sets_the_recommendation_and_the_text() -> None:
    fp32 = row("fp32", 10.0, cos=1.0)
    drifted = PrecisionRow("int8", cosine=fp32.cosine, equal_labels=98.0, equal_labels_confident=100.0,
                           labels_basis="confident", frames_per_s=30.0)
    assert recommend([fp32, drifted]) == "int8"
    assert recommend([fp32, PrecisionRow(**{**drifted.__dict__, "labels_basis": "all"})]) == "fp32"
    assert recommend([fp32, PrecisionRow(**{**drifted.__dict__, "equal_labels_confident": 99.0})]) == "fp32"
    report = PrecisionReport(rows=[fp32, drifted], reads=500, frames=600, device="cpu", configured="fp32",
                             classifier=True, random_weights=False, recommended="int8",
                             confident_frames=420, labels_basis="confident")
    printed = format_report(report)
    assert parse_table(printed)["int8"]["labels"] == "98.00%"
    assert parse_table(printed)["int8"]["confident"] == "100.00%"
    assert "on the 420 confident frames (fp32 virus score below 0.1 or above 0.9)" in printed
    assert "labels decided on the confident frames: the confident frames decide when there are at least " \
           "100 of them or at least 50% of the sample, else all frames do" in printed
    fewer = format_report(PrecisionReport(**{**report.__dict__, "labels_basis": "all", "confident_frames": 7}))
    assert "labels decided on all frames" in fewer and "equal labels on all frames;" in fewer


def row(name: str, speed: float, cos: float = 0.9999, labels: float | None = 100.0) -> PrecisionRow:
    stats = CosineStats(min=cos, median=min(1.0, cos + 1e-5))
    return PrecisionRow(name, cosine={"dnabert": stats, "esm2": CosineStats(0.99999, 1.0)},
                        equal_labels=labels, frames_per_s=speed)


def test_recommend_picks_the_fastest_passing_precision() -> None:
    fp32 = row("fp32", 10.0, cos=1.0)
    assert recommend([fp32, row("fp16", 30.0), row("bf16", 35.0)]) == "bf16"
    assert recommend([fp32, row("fp16", 30.0), row("bf16", 35.0, cos=0.998)]) == "fp16"
    assert recommend([fp32, row("fp16", 30.0, cos=float("nan")), row("bf16", 35.0)]) == "bf16"
    assert recommend([fp32, row("fp16", 8.0)]) == "fp32"  # passing, but slower than fp32


def test_recommend_falls_back_to_fp32() -> None:
    fp32 = row("fp32", 10.0, cos=1.0)
    assert recommend([fp32, row("fp16", 30.0, cos=0.99), row("bf16", 35.0, cos=0.9)]) == "fp32"
    assert recommend([fp32, PrecisionRow("fp16", refused="fp16 is not supported on CPU")]) == "fp32"
    assert recommend([]) == "fp32"


def test_recommend_label_threshold_matters() -> None:
    fp32 = row("fp32", 10.0, cos=1.0)
    assert recommend([fp32, row("fp16", 30.0, labels=99.9), row("bf16", 35.0, labels=99.89)]) == "fp16"
    assert recommend([fp32, row("bf16", 35.0, labels=98.7)]) == "fp32"
    assert recommend([fp32, row("bf16", 35.0, labels=None)]) == "bf16"  # no classifier: cosines decide
    assert recommend([fp32, row("bf16", 35.0, labels=98.7)], min_labels=98.0) == "bf16"


def test_table_shows_refused_rows_and_random_weights() -> None:
    rows = [row("fp32", 10.0, cos=1.0), PrecisionRow("fp16", refused="fp16 is not supported on CPU"),
            row("bf16", 5.0)]
    report = PrecisionReport(rows=rows, reads=60, frames=74, device="cpu", configured="fp32",
                             classifier=True, random_weights=True, recommended=recommend(rows))
    printed = format_report(report)
    assert "RANDOM WEIGHTS" in printed
    assert "fp16       not run: fp16 is not supported on CPU" in printed
    table = parse_table(printed)
    assert table["bf16"]["ratio"] == 0.5 and table["fp32"]["ratio"] == 1.0
    assert "recommended: fp32" in printed
    quiet = format_report(PrecisionReport(**{**report.__dict__, "random_weights": False}))
    assert "RANDOM WEIGHTS" not in quiet


def test_check_warns_about_a_classifier_named_for_another_chunk_size(demo_cache: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 34 item 9: a 500_model classifier on 300-bp chunks gets predict's warning here too."""
    from virnuc_hpc.models.demo import ensure_demo_models
    from virnuc_hpc.models.resolve import locate_models
    from virnuc_hpc.runtime.encoding import chunk_size_warnings

    named = tmp_path / "500_model.pth"
    named.write_bytes(ensure_demo_models().classifier.read_bytes())
    config = load_config(preset="demo").model_copy(update={"classifier": str(named), "expected_length": 300})
    report = check_precision([str(DEMO_FASTA)], config, sample=4, precisions=["bf16"])
    predicted = chunk_size_warnings(config, locate_models(config, classify=True))
    assert report.warnings == tuple(predicted) and len(predicted) == 1
    assert "500_model.pth" in predicted[0] and "chunk size is 300" in predicted[0]
    assert f"warning: {predicted[0]}" in format_report(report).splitlines()
    assert report.classifier and report.rows[0].equal_labels == 100.0  # the renamed file is still used
