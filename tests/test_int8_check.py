"""The int8 run's self-check: every worker compares int8 with fp16 on the first bag's frames before
any bag is written; a run whose drift exceeds the bar goes on in fp16 (fp32 on a CPU) for every bag,
says so once, records it and keeps the decision on resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import virnuc_hpc
from virnuc_hpc.config import load_config
from virnuc_hpc.outputs import store
from virnuc_hpc.runtime.int8_check import WorkerCheck, compare, decide, sample_proteins

from conftest import DEMO_FASTA


def test_sample_is_distinct_and_spread_over_the_bag() -> None:
    frames = [f"P{i % 700}" for i in range(2000)]
    picked = sample_proteins(frames, limit=100)
    assert len(picked) == len(set(picked)) == 100
    assert picked[0] == "P0" and picked[-1] == "P699"  # both ends of the bag
    assert sample_proteins(["A", "A", "B"]) == ["A", "B"]


def test_one_bad_frame_on_one_worker_decides_for_the_run() -> None:
    rng = np.random.default_rng(0)
    half = rng.normal(size=(10, 8)).astype(np.float32)
    good = compare("w1", "cpu", half + 1e-4, half, fallback="fp32")
    bad_rows = half.copy()
    bad_rows[3] = -bad_rows[3]
    bad = compare("w2", "cpu", bad_rows, half, fallback="fp32")
    nonfinite = half.copy()
    nonfinite[0, 0] = np.nan
    assert good.cosine_min > 0.999 and bad.cosine_min < 0 and compare("w", "c", nonfinite, half).cosine_min == -1.0
    assert decide([good], 0.999).precision == "int8"
    both = decide([good, bad], 0.999)
    assert both.fell_back and both.precision == "fp32" and "goes on in fp32" in both.message()
    assert decide([WorkerCheck("w", "c", 5, 0.9985, 0.9999)], 0.999).fell_back


def _bag_precisions(outdir: Path) -> list[str]:
    precisions = []
    for path in store.bag_files(outdir):
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            precisions.append(json.loads(ds.attrs["numerics"])["precision"])
    return precisions


# ``client``: the session's shared cluster (tests/conftest.py)


def _run(client, outdir: Path, bar: float):
    return virnuc_hpc.predict([DEMO_FASTA], outdir, client=client, config=load_config(preset="demo"),
                              progress=False, bag_size=8, precision="int8", int8_check_cosine=bar)


def test_int8_that_holds_stays_int8(client, tmp_path: Path, demo_cache: Path) -> None:
    result = _run(client, tmp_path / "holds", 0.99)
    run = json.loads((result.outdir / "run.json").read_text())
    check = run["int8_check"]
    assert check["precision"] == "int8" and not check["fell_back"] and check["bar"] == 0.99
    assert check["checks"][0]["frames"] >= 3 and check["checks"][0]["cosine_min"] >= 0.99
    assert set(_bag_precisions(result.outdir)) == {"int8"} and len(_bag_precisions(result.outdir)) > 2


def test_drifting_int8_falls_back_for_every_bag_and_resume_keeps_it(client, tmp_path: Path, demo_cache: Path,
                                                                    reference: Path, caplog) -> None:
    outdir = tmp_path / "drifts"
    with caplog.at_level(logging.INFO, logger="virnuc_hpc"):
        result = _run(client, outdir, 1.0)  # no int8 frame equals fp16 to the last bit: the bar fails
    said = [r.getMessage() for r in caplog.records if "drifts too far" in r.getMessage()]
    assert len(said) == 1 and "goes on in fp32" in said[0]
    run = json.loads((outdir / "run.json").read_text())
    assert run["int8_check"]["fell_back"] and run["int8_check"]["precision"] == "fp32"
    bags = _bag_precisions(outdir)
    assert set(bags) == {"fp32"} and len(bags) > 2
    # the features are the fp32 model's, not int8's
    with store.open_features(outdir) as got, store.open_features(reference) as ref:
        a, b = got.features.values.astype(np.float64), ref.features.values.astype(np.float64)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.99999
    # a resume after losing bags: the kept decision, no second check, still fp32 everywhere
    (outdir / "run.json").unlink()
    for path in store.bag_files(outdir)[1:3]:
        path.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="virnuc_hpc"):
        _run(client, outdir, 1.0)
    assert any("earlier attempt of this run found int8 drifting" in r.getMessage() for r in caplog.records)
    assert not any("drifts too far" in r.getMessage() for r in caplog.records)
    assert set(_bag_precisions(outdir)) == {"fp32"} and len(_bag_precisions(outdir)) == len(bags)
    assert json.loads((outdir / "run.json").read_text())["int8_check"]["fell_back"]


@pytest.fixture(scope="module")
def stressed(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> Path:
    """The demo ESM-2 with outlier channels 100x the rest (an exact rewrite: fp32 is unchanged)."""
    from virnuc_hpc.models.demo import ensure_demo_models
    from virnuc_hpc.models.random_weights.outliers import write_outlier_checkpoint

    path = tmp_path_factory.mktemp("stressed") / "esm2_t6_8M_outliers100.pt"
    write_outlier_checkpoint(ensure_demo_models().esm2, path, factor=100, channels=4, seed=0)
    return path


def _int8_against_fp32(path: Path, device: str, *smoothings: str) -> tuple[float, ...]:
    """Min cosine of int8 (each smoothing) against one fp32 reference; CPU int8 is slow, so the
    proteins are few but span the demo's lengths (1-300)."""
    from conftest import cosine, proteins
    from virnuc_hpc.encoders import load_esm2

    seqs = proteins([48, 50, 45, 166, 60, 1, 300, 49] * (1 if device == "cpu" else 4), seed=5)
    ref = load_esm2(str(path), device="cpu", precision="fp32").embed(seqs)
    return tuple(float(cosine(load_esm2(str(path), device=device, precision="int8",
                                        int8_smoothing=smoothing).embed(seqs), ref).min())
                 for smoothing in smoothings)


def test_smoothing_keeps_int8_close_on_outlier_channels(stressed: Path) -> None:
    """Outlier channels 100x: plain per-token int8 drifts, smoothed int8 stays within the bar."""
    plain, smoothed = _int8_against_fp32(stressed, "cpu", "none", "weights")
    assert smoothed >= 0.9999 and plain < 0.995, (plain, smoothed)


@pytest.mark.gpu
def test_gpu_stressed_model_falls_back_without_smoothing_and_holds_with_it(stressed: Path, tmp_path: Path) -> None:
    """On a GPU, the small stressed model: int8 without smoothing fails the self-check and every bag
    is fp16 (said once); with smoothing it holds and every bag is int8."""
    from distributed import Client, LocalCluster

    plain, smoothed = _int8_against_fp32(stressed, "cuda", "none", "weights")
    assert smoothed >= 0.999 and plain < 0.999, (plain, smoothed)
    with LocalCluster(n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address=":0",
                      processes=True) as cluster, Client(cluster) as client:
        for smoothing, expected in (("none", "fp16"), ("weights", "int8")):
            outdir = tmp_path / smoothing
            virnuc_hpc.predict([DEMO_FASTA], outdir, client=client, config=load_config(preset="demo"),
                               progress=False, bag_size=8, precision="int8", device="cuda",
                               esm2_model=str(stressed), int8_smoothing=smoothing)
            check = json.loads((outdir / "run.json").read_text())["int8_check"]
            assert check["precision"] == expected and check["fell_back"] == (expected != "int8"), check
            assert set(_bag_precisions(outdir)) == {expected}
