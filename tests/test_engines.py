"""The deepspeed engine on CPU (DeepSpeed's CPU accelerator, fp32): same features as native, inside
the Dask pipeline, with and without ZeRO-3 parameter offload; no op is ever compiled. The engine
options are validated by the configuration, without DeepSpeed; only the tests that run it need it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import DEMO, DEMO_FASTA, cli
from virnuc_hpc.outputs import store
from virnuc_hpc.config import load_config

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="needs the deepspeed package")


def _features(outdir: Path) -> tuple[list[str], np.ndarray]:
    with store.open_features(outdir) as ds:
        return list(ds.frame.values), ds.features.values.astype(np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_engine_options_are_validated(monkeypatch):
    """Checked by RunConfig alone: runs (and must pass) whether DeepSpeed is installed or not; here
    it is made unimportable, so the check cannot lean on it."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    assert load_config(overrides={"engine": "deepspeed"}).zero_offload == "none"
    with pytest.raises(ValidationError, match="needs engine: deepspeed"):
        load_config(overrides={"zero_offload": "cpu"})
    with pytest.raises(ValidationError, match="nvme_path"):
        load_config(overrides={"engine": "deepspeed", "zero_offload": "nvme"})
    with pytest.raises(ValidationError):
        load_config(overrides={"engine": "tensorrt"})


@needs_deepspeed
@pytest.mark.parametrize("offload", ["none", "cpu"])
def test_deepspeed_pipeline_matches_native(reference: Path, demo_cache: Path, tmp_path: Path, offload: str):
    """Two Dask workers, each loading DeepSpeed (and, with offload, its own one-rank process group
    on a free port); every frame's vector equals native's."""
    outdir, ext = tmp_path / "ds", tmp_path / "torch_extensions"
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--engine", "deepspeed",
               "--zero-offload", offload, env_extra={"TORCH_EXTENSIONS_DIR": str(ext)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ids, got = _features(outdir)
    ref_ids, ref = _features(reference)
    assert ids == ref_ids
    assert _cosine(got, ref).min() >= 0.999999
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not ext.exists() or not any(ext.iterdir()), "DeepSpeed compiled an op"


@needs_deepspeed
@pytest.mark.parametrize("change", [["--engine", "deepspeed"], ["--exact-gelu"]])
def test_resume_refuses_other_engine_or_gelu(reference: Path, demo_cache: Path, tmp_path: Path, change):
    """engine and exact_gelu are result fields: a finished run is not silently mixed with bags made
    another way, and its files are left as they were."""
    import shutil

    outdir = tmp_path / "done"
    shutil.copytree(reference, outdir)
    before = {p.relative_to(outdir): p.read_bytes() for p in outdir.rglob("*") if p.is_file()}
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *change)
    assert proc.returncode != 0
    assert "other inputs or settings" in proc.stderr and "--overwrite" in proc.stderr
    after = {p.relative_to(outdir): p.read_bytes() for p in outdir.rglob("*") if p.is_file()}
    assert after == before


@needs_deepspeed
def test_packed_encoders_run_through_the_engine(demo_cache: Path):
    """The packed paths (CPU stand-ins of varlen / FlexAttention) keep their packing under DeepSpeed,
    and every batch goes through InferenceEngine.forward."""
    import torch
    from deepspeed.inference.engine import InferenceEngine

    from virnuc_hpc.models.demo import ensure_demo_models
    from virnuc_hpc.encoders.dnabert import load_dnabert_parts
    from virnuc_hpc.encoders.dnabert_packed import PackedDNABERTEncoder
    from virnuc_hpc.encoders.esm2 import load_esm2_model
    from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder
    from virnuc_hpc.engines.deepspeed import import_deepspeed, wrap_encoder

    models = ensure_demo_models()
    cpu = torch.device("cpu")
    deepspeed = import_deepspeed(cpu)
    proteins = ["MKVLAAGW" * k for k in (1, 3, 7)] + ["ACDEFGHIKLMNPQRSTVWY"]
    nucleotides = ["ACGTTGCA" * k for k in (2, 9, 19)]

    def esm() -> PackedESM2Encoder:
        return PackedESM2Encoder(load_esm2_model(models.esm2), name="demo", device=cpu, precision="fp32")

    def dna() -> PackedDNABERTEncoder:
        model, tok, weights = load_dnabert_parts(str(models.dnabert))
        return PackedDNABERTEncoder(model, tok, name="demo", weights=weights, device="cpu", precision="fp32")

    for make, inputs in ((esm, proteins), (dna, nucleotides)):
        native, wrapped = make(), wrap_encoder(deepspeed, make())
        assert isinstance(wrapped.runner, InferenceEngine) and wrapped.engine == "deepspeed"
        assert native.engine == "native" and wrapped.runner.module.model is wrapped.model
        calls = []
        wrapped.runner.register_forward_hook(lambda *args: calls.append(1))
        np.testing.assert_array_equal(wrapped.embed(inputs), native.embed(inputs))
        assert calls and wrapped.stats["batches"] == len(calls)


@needs_deepspeed
def test_nvme_offload_problems_are_named(demo_cache: Path, tmp_path: Path):
    """NVMe offload needs libaio (DeepSpeed's async_io op) and a writable nvme_path: whichever is
    missing is said plainly, before any bag, and nothing looks finished."""
    from deepspeed.ops.op_builder import AsyncIOBuilder

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    outdir = tmp_path / "out"
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--engine", "deepspeed",
               "--zero-offload", "nvme", "--nvme-path", str(not_a_dir / "sub"))
    assert proc.returncode != 0
    expected = "not a writable directory" if AsyncIOBuilder().is_compatible(verbose=False) else "libaio"
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert not (outdir / store.RUN_JSON).exists()
    assert not list(outdir.glob("bags/*.nc"))
