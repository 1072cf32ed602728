"""ESM-2 encoder: fidelity to fair-esm 2.0.0 on random checkpoints of the released format, batching,
precision fallbacks, and safe, explicit failures on bad model files (docs/encoder-facts.md;
docs/precision.md)."""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

esm = pytest.importorskip("esm")

from conftest import proteins  # noqa: E402
from virnuc_hpc.encoders import load_esm2  # noqa: E402
from virnuc_hpc.encoders.esm2 import (  # noqa: E402
    ALPHABET, UNK, ESM2Encoder, is_random_checkpoint, load_esm2_model, resolve_esm2_checkpoint,
    tokenize, tokenize_many,
)
from virnuc_hpc.errors import ModelFileError, ModelNotFoundError  # noqa: E402
from virnuc_hpc.models.random_weights.esm2 import write_random_esm2_checkpoint  # noqa: E402

TINY = dict(layers=2, embed_dim=64, heads=4)



def fair_esm(path: Path):
    """fair-esm's own model for our file. Its load_model_and_alphabet_local uses torch.load's default
    (weights_only=True since torch 2.6) without allowing Namespace, so it cannot read the file: load
    the dict the safe way and hand it to load_model_and_alphabet_core."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Regression weights not found")
        model, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_random", data, None)
    return model.eval(), alphabet


@torch.no_grad()
def fair_embed(model, alphabet, seqs: list[str], batch_size: int = 1, limit: int = 1024) -> np.ndarray:
    """Reference vectors exactly as the original VirNucPro extract_esm pools them."""
    convert = alphabet.get_batch_converter()
    out, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # fair-esm's many small ops crawl when OpenMP threads contend for cores
    try:
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            _, _, toks = convert([(str(i), s) for i, s in enumerate(chunk)])
            rep = model(toks, repr_layers=[model.num_layers])["representations"][model.num_layers]
            for i, s in enumerate(chunk):
                n = min(limit, len(alphabet.encode(s)))
                out.append(rep[i, 1:n + 1].mean(0).numpy())
    finally:
        torch.set_num_threads(threads)
    return np.stack(out)


def cos_and_maxdiff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)
    return float(cos.min()), float(np.abs(a64 - b64).max())


@pytest.fixture(scope="module")
def ckpt_8m(tmp_path_factory) -> Path:
    return write_random_esm2_checkpoint(tmp_path_factory.mktemp("esm") / "esm2_t6_8M_UR50D.pt", seed=1)


@pytest.fixture(scope="module")
def ckpt_tiny(tmp_path_factory) -> Path:
    return write_random_esm2_checkpoint(tmp_path_factory.mktemp("esm") / "tiny.pt", **TINY, seed=2)


@pytest.fixture(scope="module")
def enc_tiny(ckpt_tiny) -> ESM2Encoder:
    return load_esm2(str(ckpt_tiny), device="cpu", precision="fp32")


# --- tokenisation -------------------------------------------------------------------------------------

def test_alphabet_and_tokenisation_match_fair_esm():
    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    assert ALPHABET == tuple(alphabet.all_toks) and len(ALPHABET) == 33
    for s in ["MKV", "LAGVSERTIDPKQNFYMHWCXBUZO.-", "MK V\tL\n", "MK<mask>LV<mask>", "<mask>A", "A<unk>C"]:
        assert tokenize(s).tolist() == alphabet.encode(s), s
    assert tokenize("Mk*J").tolist() == [alphabet.get_idx("M"), UNK, UNK, UNK]  # fair-esm: KeyError
    assert tokenize("MÄ€").tolist() == [alphabet.get_idx("M"), UNK, UNK]
    seqs = ["MKV", "", "A C", "LL<mask>", "QQ"]
    assert [t.tolist() for t in tokenize_many(seqs)] == [tokenize(s).tolist() for s in seqs]
    assert [t.tolist() for t in tokenize_many(["MKV", "QQ"])] == [tokenize("MKV").tolist(), [16, 16]]


# --- fidelity ------------------------------------------------------------------------------------------

def test_fp32_matches_fair_esm_8m(ckpt_8m):
    lengths = sorted({1, 2, 3, 1021, 1022, *np.unique(np.geomspace(4, 1020, 12).astype(int))})
    seqs = proteins(lengths, seed=3)
    seqs += ["MKTAYIAKQRXBUZOQISFVKSHFSRQ", "MK<mask>LVAAG<mask>WTR", "<mask>" * 3 + "ACDEFGHIK"]
    ref_model, alphabet = fair_esm(ckpt_8m)
    ref_single = fair_embed(ref_model, alphabet, seqs)
    # fair-esm's own padded batches of mixed lengths agree with its singles (kept short: it is slow)
    short = [i for i, s in enumerate(seqs) if len(s) <= 300]
    perm = np.random.default_rng(4).permutation(short)
    ref_batched = fair_embed(ref_model, alphabet, [seqs[i] for i in perm], batch_size=6)
    cos, diff = cos_and_maxdiff(ref_batched, ref_single[perm])
    assert cos >= 0.999999 and diff <= 1e-4

    enc = load_esm2(str(ckpt_8m), device="cpu", precision="fp32")
    assert (enc.dim, enc.num_layers, enc.precision) == (320, 6, "fp32")
    ours_batched = enc.embed(seqs)
    assert enc.stats["batches"] < len(seqs)
    ours_single = np.concatenate([enc.embed([s]) for s in seqs])
    assert ours_batched.dtype == np.float32 and ours_batched.shape == (len(seqs), 320)

    for label, ours, ref in [("batched", ours_batched, ref_single), ("single", ours_single, ref_single),
                             ("batched vs fair-esm batched", ours_batched[perm], ref_batched)]:
        cos, diff = cos_and_maxdiff(ours, ref)
        print(f"fp32 {label}: min cosine {cos:.9f}, max abs diff {diff:.2e}")
        assert cos >= 0.999999 and diff <= 1e-4
    # The tolerance is meaningful: different proteins are far apart compared with it.
    assert np.abs(ours_batched[10] - ours_batched[11]).max() > 1e-2


def test_bf16_cpu_close_to_fp32(ckpt_8m):
    seqs = proteins([1, 7, 45, 50, 166, 300, 700], seed=5)
    ref = load_esm2(str(ckpt_8m), device="cpu", precision="fp32").embed(seqs)
    enc = load_esm2(str(ckpt_8m), device="cpu", precision="bf16")
    assert enc.model.layers[0].fc1.weight.dtype == torch.bfloat16
    assert enc.model.layers[0].final_layer_norm.weight.dtype == torch.float32
    got = enc.embed(seqs)
    cos, diff = cos_and_maxdiff(got, ref)
    print(f"bf16 vs fp32: min cosine {cos:.6f}, max abs diff {diff:.2e}")
    assert cos >= 0.99 and np.isfinite(got).all()
    assert enc.stats["nonfinite_recomputed_batches"] == 0


def test_long_protein_pools_first_1024_residues_like_original(ckpt_tiny, enc_tiny):
    seqs = proteins([1100, 30], seed=6)
    ref_model, alphabet = fair_esm(ckpt_tiny)
    ref = fair_embed(ref_model, alphabet, seqs, batch_size=2)  # untruncated input, pooled 1..1024
    got = enc_tiny.embed(seqs)
    cos, diff = cos_and_maxdiff(got, ref)
    assert cos >= 0.999999 and diff <= 1e-4
    everything = fair_embed(ref_model, alphabet, seqs[:1], limit=10**9)
    assert np.abs(everything[0] - got[0]).max() > 1e-4


def test_fp16_checkpoint_and_no_token_dropout_match_fair_esm(tmp_path):
    seqs = proteins([3, 60, 400], seed=7) + ["MK<mask>LV"]
    for kwargs in (dict(dtype=torch.float16), dict(token_dropout=False)):
        path = write_random_esm2_checkpoint(tmp_path / "x.pt", **TINY, seed=8, **kwargs)
        ref = fair_embed(*fair_esm(path), seqs)
        model = load_esm2_model(path)
        assert model.layers[0].fc1.weight.dtype == torch.float32
        half = load_esm2_model(path, dtype=torch.float16)  # the eager half-precision graphs need fp32 norms
        assert {n.weight.dtype for n in half.modules() if isinstance(n, torch.nn.LayerNorm)} == {torch.float32}
        got = load_esm2(str(path), device="cpu", precision="fp32").embed(seqs)
        cos, diff = cos_and_maxdiff(got, ref)
        assert cos >= 0.999999 and diff <= 1e-4, kwargs


# --- batching ------------------------------------------------------------------------------------------

def test_order_preserved_and_batching_invariant(ckpt_tiny):
    rng = np.random.default_rng(9)
    seqs = proteins(rng.integers(1, 200, size=40), seed=10)
    big = load_esm2(str(ckpt_tiny), device="cpu", max_tokens=100_000)
    small = load_esm2(str(ckpt_tiny), device="cpu", max_tokens=256)
    a = big.embed(seqs)
    b = small.embed(seqs)
    c = small.embed(seqs[::-1])[::-1]
    assert big.stats["batches"] == 1 and small.stats["batches"] > 10
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a, c, atol=1e-5, rtol=0)
    single = np.concatenate([big.embed([s]) for s in seqs[:5]])
    np.testing.assert_allclose(a[:5], single, atol=1e-5, rtol=0)
    assert small.stats["sequences"] == 80
    assert small.stats["tokens"] == 2 * sum(len(s) + 2 for s in seqs)
    assert big.embed([]).shape == (0, 64)
    with pytest.raises(ValueError, match="empty"):
        big.embed(["MKV", " "])


def test_nonfinite_low_precision_batch_is_recomputed_in_fp32(ckpt_tiny, enc_tiny):
    seqs = proteins([5, 80, 120, 9], seed=11)
    enc = load_esm2(str(ckpt_tiny), device="cpu", precision="bf16", max_tokens=300)
    # Force every bf16 batch non-finite; the fp32 copy (reread from the file) has no hook.
    enc.model.layers[1].register_forward_hook(lambda mod, inp, out: torch.full_like(out, float("inf")))
    got = enc.embed(seqs)
    assert enc.stats["nonfinite_recomputed_batches"] == enc.stats["batches"] >= 2
    np.testing.assert_allclose(got, enc_tiny.embed(seqs), atol=1e-6, rtol=0)


# --- files and names -----------------------------------------------------------------------------------

def test_random_checkpoint_is_deterministic_released_format(tmp_path):
    a = write_random_esm2_checkpoint(tmp_path / "a.pt", **TINY, seed=5)
    b = write_random_esm2_checkpoint(tmp_path / "b.pt", **TINY, seed=5)
    c = write_random_esm2_checkpoint(tmp_path / "c.pt", **TINY, seed=6)
    with torch.serialization.safe_globals([argparse.Namespace]):
        da, db, dc = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert set(da) == {"model", "cfg"} and isinstance(da["cfg"]["model"], argparse.Namespace)
    assert vars(da["cfg"]["model"])["encoder_layers"] == 2 and da["cfg"]["model"].token_dropout is True
    assert is_random_checkpoint(a)
    real_like = {"model": da["model"], "cfg": {"model": argparse.Namespace(encoder_layers=2, encoder_embed_dim=64,
                                                                             encoder_attention_heads=4)}}
    torch.save(real_like, tmp_path / "real_like.pt")
    assert not is_random_checkpoint(tmp_path / "real_like.pt")
    load_esm2(str(tmp_path / "real_like.pt"), device="cpu")  # token_dropout absent: defaults to True
    # Exactly fair-esm's ESM2 state dict under the released names, minus the contact head (which
    # ships in the separate -contact-regression.pt file).
    fair = esm.model.esm2.ESM2(num_layers=2, embed_dim=64, attention_heads=4).state_dict()
    released = {("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: v.shape
                for k, v in fair.items() if not k.startswith("contact_head.")}
    assert list(da["model"]) == list(released)
    assert all(da["model"][k].shape == shape for k, shape in released.items())
    keys = set(da["model"])
    assert all(torch.equal(da["model"][k], db["model"][k]) for k in keys)
    assert not torch.equal(da["model"]["encoder.sentence_encoder.layers.0.fc1.weight"],
                           dc["model"]["encoder.sentence_encoder.layers.0.fc1.weight"])


def test_name_resolution(tmp_path, monkeypatch, ckpt_tiny):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert resolve_esm2_checkpoint(str(ckpt_tiny)) == ckpt_tiny
    with pytest.raises(ModelNotFoundError, match="esm2_t36_3B_UR50D.*offline mode") as err:
        resolve_esm2_checkpoint("esm2_t36_3B_UR50D", offline=True)
    assert str(hub) in str(err.value)
    assert "dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="nosuch.pt"):
        load_esm2(str(tmp_path / "nosuch.pt"))
    with pytest.raises(ModelNotFoundError, match="not a released model name"):
        resolve_esm2_checkpoint("esm3_huge")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(url, dst, *args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ModelNotFoundError, match="downloading https://dl.fbaipublicfiles.com.*name resolution"):
        resolve_esm2_checkpoint("esm2_t6_8M_UR50D")

    write_random_esm2_checkpoint(hub / "esm2_t12_35M_UR50D.pt", **TINY)  # a (tiny) file under that name
    enc = load_esm2("esm2_t12_35M_UR50D", device="cpu")
    assert enc.name == "esm2_t12_35M_UR50D" and enc.path == hub / "esm2_t12_35M_UR50D.pt"
    assert enc.sha256 == hashlib.sha256(enc.path.read_bytes()).hexdigest()


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_files_raise_model_file_error(tmp_path, ckpt_tiny):
    def check(name: str, payload, match: str):
        path = tmp_path / name
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            torch.save(payload, path)
        with pytest.raises(ModelFileError, match=match) as err:
            load_esm2(str(path), device="cpu")
        assert str(path) in str(err.value)

    good = ckpt_tiny.read_bytes()
    check("truncated.pt", good[: len(good) // 2], "corrupt or truncated")
    check("garbage.pt", b"not a checkpoint" * 20, "corrupt or truncated")
    check("empty.pt", b"", "corrupt or truncated")
    check("tensor.pt", torch.zeros(3), "expected a dict with 'model'")
    check("nocfg.pt", {"model": {}}, "expected a dict with 'model'")
    ns = argparse.Namespace(encoder_layers=2, encoder_embed_dim=64, encoder_attention_heads=4, token_dropout=True)
    check("badcfg.pt", {"model": {}, "cfg": {"model": argparse.Namespace(encoder_layers=2)}}, "encoder_embed_dim")
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(ckpt_tiny, weights_only=True)["model"]
    missing = {k: v for k, v in state.items() if "layers.1.fc2" not in k}
    check("missing.pt", {"model": missing, "cfg": {"model": ns}}, r"missing 2 weight\(s\).*layers.1.fc2")
    wrong = dict(state, **{"encoder.sentence_encoder.layers.0.fc1.weight": torch.zeros(8, 64)})
    check("shape.pt", {"model": wrong, "cfg": {"model": ns}}, r"layers.0.fc1.weight is torch.float32 \(8, 64\)")
    extra = {"model": state, "cfg": {"model": argparse.Namespace(**{**vars(ns), "encoder_layers": 1})}}
    check("extra.pt", extra, r"unexpected 16 weight\(s\)")

    marker = tmp_path / "PWNED"
    check("evil.pt", {"model": state, "cfg": {"model": ns}, "x": _RunsShell(marker)}, "refused to load.*system")
    assert not marker.exists()
