"""The encoder roster: one more entry is all another encoder needs. A tiny third encoder (3-mer
counts through a fixed projection, virnuc_hpc/testing/kmer_encoder.py) is added to the standard
roster and passed to a run; its columns follow DNABERT-S's and ESM-2's, which stay the standard
run's, and every bag labels them with the entry's source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_FASTA
from virnuc_hpc.config import RunConfig, load_config
from virnuc_hpc.encoders.roster import DNABERT, ESM2, STANDARD_ROSTER, checked, identity
from virnuc_hpc.models.resolve import ModelFile
from virnuc_hpc.outputs import store
from virnuc_hpc.runtime.encoding import model_spec
from virnuc_hpc.testing.kmer_encoder import KMER, KMER_ROSTER, WIDTH, KmerEncoder


def _located() -> dict[str, ModelFile]:
    return {role: ModelFile(role, "demo", f"/m/{role}", f"/m/{role}", "", True) for role in ("esm2", "dnabert")}


def test_standard_roster_is_virnucpro_layout() -> None:
    assert [e.role for e in STANDARD_ROSTER] == ["dnabert", "esm2"]
    assert [e.label for e in STANDARD_ROSTER] == ["dnabert_s", "esm2"]
    assert [e.role for e in STANDARD_ROSTER if e.int8] == ["esm2"]
    assert identity(STANDARD_ROSTER) is None  # standard run keys stay as they are
    assert identity(KMER_ROSTER) is not None and identity(KMER_ROSTER) != identity((DNABERT, KMER, ESM2))
    with pytest.raises(ValueError, match="distinct roles"):
        checked((DNABERT, DNABERT))


def test_model_spec_carries_each_encoders_settings() -> None:
    config = RunConfig(esm2_max_tokens=4096, dnabert_max_tokens=2048, dnabert_layout="padded",
                       exact_gelu=True, int8_smoothing="none")
    spec = model_spec(config, _located(), KMER_ROSTER)
    assert [e.role for e in spec.encoders] == ["dnabert", "esm2", "kmer"]
    dna, esm, kmer = spec.encoders
    assert (dna.path, dna.max_tokens, dna.option("layout"), dna.source) == ("/m/dnabert", 2048, "padded", "dnabert_s")
    assert (esm.path, esm.max_tokens, esm.option("exact_gelu"), esm.option("int8_smoothing"), esm.int8) == \
        ("/m/esm2", 4096, True, "none", True)
    assert (kmer.path, kmer.max_tokens, kmer.options, kmer.source, kmer.int8) == (None, None, (), "kmer3", False)
    assert spec.classifier_path is None and model_spec(config, _located()).encoders == spec.encoders[:2]


def test_kmer_encoder_is_deterministic() -> None:
    rows = KmerEncoder().embed(["ACGTACGTTT", "GGGCCCAAAT"])
    assert rows.shape == (2, WIDTH) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, KmerEncoder().embed(["ACGTACGTTT", "GGGCCCAAAT"]))


def _features(outdir: Path) -> tuple[np.ndarray, list[str], list[str]]:
    with store.open_features(outdir) as ds:
        return ds.features.values, [str(s) for s in ds.source.values], [str(f) for f in ds.frame.values]


@pytest.mark.e2e
def test_a_third_encoder_adds_its_columns_after_the_standard_ones(demo_cache: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    import virnuc_hpc

    config = load_config(preset="demo").model_copy(update={"bag_size": 8, "progress": False, "device": "cpu"})
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster, set_as_default=False) as client:
        virnuc_hpc.embed([str(DEMO_FASTA)], tmp_path / "standard", client=client, config=config)
        result = virnuc_hpc.embed([str(DEMO_FASTA)], tmp_path / "kmer", client=client, config=config,
                                  roster=KMER_ROSTER)
    standard, standard_sources, standard_frames = _features(tmp_path / "standard")
    features, sources, frames = _features(tmp_path / "kmer")
    width = standard.shape[1]
    assert frames == standard_frames and len(frames) == result.counts["frames"] > 0
    assert features.shape == (len(frames), width + WIDTH)
    assert sources == standard_sources + ["kmer3"] * WIDTH
    assert sources[0] == "dnabert_s" and "esm2" in sources
    np.testing.assert_array_equal(features[:, :width], standard)  # DNABERT-S | ESM-2, unchanged
    run = json.loads((tmp_path / "kmer" / store.RUN_JSON).read_text())
    counters = next(iter(run["workers"].values()))["counters"]
    assert 0 < counters["kmer_sequences"] <= len(frames) and counters["esm2_sequences"] > 0
    assert run["run_key"] != json.loads((tmp_path / "standard" / store.RUN_JSON).read_text())["run_key"]
