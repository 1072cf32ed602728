"""DNABERT-S encoder against a plain reference written from encoder-facts.md, on random small models."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from virnuc_hpc.encoders import load_dnabert
from virnuc_hpc.encoders.dnabert import alibi_slopes, resolve_dnabert_dir
from virnuc_hpc.errors import ModelFileError, ModelNotFoundError
from virnuc_hpc.models.random_weights.dnabert import write_random_dnabert_dir

SMALL = dict(layers=2, hidden=128, heads=4, intermediate=512, vocab_size=512)
TWELVE = dict(layers=3, hidden=192, heads=12, intermediate=384, vocab_size=512)
MODELS_MD_SLOPES_12 = [2 ** -1, 2 ** -2, 2 ** -3, 2 ** -4, 2 ** -5, 2 ** -6, 2 ** -7, 2 ** -8,
                       2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]


def random_dna(n: int, seed: int, low: int = 1, high: int = 601) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), int(k))) for k in rng.integers(low, high, n)]


SEQS = random_dna(22, seed=1) + ["A", "ACGTN" * 120, "acgtacgt"]  # 1..600 bp, N, lower case ([UNK])


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_random_dnabert_dir(tmp_path_factory.mktemp("small"), seed=3, **SMALL)


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    return write_random_dnabert_dir(tmp_path_factory.mktemp("twelve"), seed=4, **TWELVE)


# --------------------------------------------------------------------------- the plain reference

@functools.lru_cache(maxsize=4)
def _reference_files(directory: Path):
    """The directory's config, float64 weights and tokenizer, read once per directory."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    cfg = json.loads((directory / "config.json").read_text())
    w = {k: v.double() for k, v in load_file(str(directory / "model.safetensors")).items()}
    return cfg, w, Tokenizer.from_file(str(directory / "tokenizer.json"))


def reference_embed(directory: Path, seq: str) -> np.ndarray:
    """encoder-facts.md, literally: one sequence, float64, explicit layers, heads, bias matrix, softmax, GeGLU."""
    cfg, w, tokenizer = _reference_files(directory)
    ids = tokenizer.encode(seq).ids  # [CLS] ... [SEP]
    D, H, I, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"], cfg["layer_norm_eps"]
    d, L = D // H, len(ids)
    slopes = MODELS_MD_SLOPES_12 if H == 12 else [2 ** (-8 * (h + 1) / H) for h in range(H)]

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def gelu(a):
        return 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))

    pos = torch.arange(L, dtype=torch.float64)
    distance = (pos[:, None] - pos[None, :]).abs()  # |i - j|
    bias = torch.stack([-slopes[h] * distance for h in range(H)])  # symmetric, non-causal
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        qkv = x @ w[f"{p}.attention.self.Wqkv.weight"].T + w[f"{p}.attention.self.Wqkv.bias"]
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
        ctx = torch.zeros(L, D, dtype=torch.float64)
        for h in range(H):
            s = slice(h * d, (h + 1) * d)
            scores = q[:, s] @ k[:, s].T / math.sqrt(d) + bias[h]
            e = torch.exp(scores - scores.max(-1, keepdim=True).values)
            ctx[:, s] = (e / e.sum(-1, keepdim=True)) @ v[:, s]
        attn = ctx @ w[f"{p}.attention.output.dense.weight"].T + w[f"{p}.attention.output.dense.bias"]
        x = ln(attn + x, f"{p}.attention.output.LayerNorm")
        g = x @ w[f"{p}.mlp.gated_layers.weight"].T
        mlp = (gelu(g[:, :I]) * g[:, I:]) @ w[f"{p}.mlp.wo.weight"].T + w[f"{p}.mlp.wo.bias"]
        x = ln(mlp + x, f"{p}.mlp.layernorm")
    return x.mean(0).numpy()  # all real tokens, [CLS] and [SEP] included


def fidelity(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    ref = ref.astype(np.float64)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return float(cos.min()), float(np.abs(ours - ref).max())


# --------------------------------------------------------------------------- maths

def test_alibi_slopes_follow_mosaicbert() -> None:
    assert alibi_slopes(12) == pytest.approx(MODELS_MD_SLOPES_12, rel=1e-15)
    assert alibi_slopes(8) == pytest.approx([2 ** -i for i in range(1, 9)])
    assert alibi_slopes(4) == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8])
    assert alibi_slopes(16)[:2] == pytest.approx([2 ** -0.5, 2 ** -1])


@pytest.mark.parametrize("which", ["small", "twelve"])
def test_fp32_matches_plain_reference(which: str, request) -> None:
    directory = request.getfixturevalue(which)
    enc = load_dnabert(str(directory), device="cpu", precision="fp32")
    ref = np.stack([reference_embed(directory, s) for s in SEQS])
    batched = enc.embed(SEQS)
    assert batched.shape == (len(SEQS), enc.dim) and batched.dtype == np.float32
    assert enc.stats["batches"] == 1
    single = np.stack([enc.embed([s])[0] for s in SEQS])
    for ours in (batched, single):
        cos, diff = fidelity(ours, ref)
        print(f"{which}: min cosine {cos:.9f}, max abs diff {diff:.2e}")
        assert cos >= 0.999999 and diff <= 1e-4
    assert enc.stats["sequences"] == 2 * len(SEQS)


def test_order_preserved_and_budget_independent(small: Path) -> None:
    enc = load_dnabert(str(small), device="cpu", max_tokens=1_000_000)
    big = enc.embed(SEQS)
    perm = np.random.default_rng(0).permutation(len(SEQS))
    np.testing.assert_allclose(enc.embed([SEQS[i] for i in perm]), big[perm], rtol=0, atol=1e-5)
    tiny = load_dnabert(str(small), device="cpu", max_tokens=1)  # every sequence in its own batch
    np.testing.assert_allclose(tiny.embed(SEQS), big, rtol=0, atol=1e-5)
    assert tiny.stats["batches"] == len(SEQS)
    mid = load_dnabert(str(small), device="cpu", max_tokens=400)
    np.testing.assert_allclose(mid.embed(SEQS), big, rtol=0, atol=1e-5)
    assert 1 < mid.stats["batches"] < len(SEQS)
    assert enc.embed([]).shape == (0, enc.dim)


def test_padding_is_never_attended(small: Path) -> None:
    enc = load_dnabert(str(small), device="cpu")
    ids = [e.ids for e in enc.tokenizer.encode_batch(SEQS[:4] + ["ACGT" * 150])]
    L = max(map(len, ids))
    mask = torch.tensor([[j < len(s) for j in range(L)] for s in ids])
    outs = []
    for fill_seed in (0, 1):  # different garbage in the pad positions
        g = torch.Generator().manual_seed(fill_seed)
        t = torch.randint(0, enc.model.cfg.vocab_size, (len(ids), L), generator=g)
        for row, s in zip(t, ids):
            row[: len(s)] = torch.tensor(s)
        with torch.inference_mode():
            outs.append(enc.model(t, mask))
    assert torch.equal(outs[0][mask], outs[1][mask])
    alone = enc.embed(["ACG"])
    with_long = enc.embed(["ACG", "ACGT" * 150])[:1]
    np.testing.assert_allclose(with_long, alone, rtol=0, atol=1e-5)


def test_reduced_precision_and_nonfinite_recompute(small: Path) -> None:
    fp32 = load_dnabert(str(small), device="cpu", precision="fp32").embed(SEQS)
    enc = load_dnabert(str(small), device="cpu", precision="bf16", max_tokens=2000)
    cos, _ = fidelity(enc.embed(SEQS), fp32)
    print(f"bf16 vs fp32 on CPU: min cosine {cos:.6f}")
    assert cos >= 0.999 and enc.stats["nonfinite_recomputed_batches"] == 0
    with torch.no_grad():  # poison the bf16 weights: every batch must be redone in fp32
        enc.model.layers[0].wo.bias[0] = float("inf")
    batches = enc.stats["batches"]
    again = enc.embed(SEQS)
    assert enc.stats["nonfinite_recomputed_batches"] == enc.stats["batches"] - batches > 1
    np.testing.assert_allclose(again, fp32, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- files

def test_mlm_prefixed_bin_loads_identically(small: Path, tmp_path: Path) -> None:
    mlm = write_random_dnabert_dir(tmp_path / "mlm", seed=3, mlm_prefix=True, fmt="bin", **SMALL)
    assert (mlm / "pytorch_model.bin").is_file() and not (mlm / "model.safetensors").exists()
    assert any(k.startswith("cls.") for k in torch.load(mlm / "pytorch_model.bin", weights_only=True))
    a = load_dnabert(str(small), device="cpu")
    b = load_dnabert(str(mlm), device="cpu")
    np.testing.assert_array_equal(a.embed(SEQS[:6]), b.embed(SEQS[:6]))
    assert a.sha256 != b.sha256 and len(a.sha256) == 64 and b.name == str(mlm) and b.dim == 128


def test_random_dir_is_deterministic(tmp_path: Path) -> None:
    a = write_random_dnabert_dir(tmp_path / "a", seed=7, **SMALL)
    b = write_random_dnabert_dir(tmp_path / "b", seed=7, **SMALL)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["virnuc_hpc_random_weights"] and cfg["architectures"] == ["BertModel"] and "auto_map" in cfg


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupt_weights(small: Path, tmp_path: Path) -> None:
    d = _copy(small, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_dnabert(str(d), device="cpu")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="pytorch_model.bin"):
        load_dnabert(str(d), device="cpu")
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(ModelFileError, match="no model.safetensors or pytorch_model.bin"):
        load_dnabert(str(d), device="cpu")


def test_missing_or_bad_tokenizer_and_config(small: Path, tmp_path: Path) -> None:
    d = _copy(small, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match="tokenizer.json"):
        load_dnabert(str(d), device="cpu")
    tok = json.loads((small / "tokenizer.json").read_text())
    tok["post_processor"] = None
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ModelFileError, match=r"\[CLS\]"):
        load_dnabert(str(d), device="cpu")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json"):
        load_dnabert(str(d), device="cpu")


def test_wrong_shapes_and_missing_keys(small: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    sd = load_file(str(small / "model.safetensors"))
    d = _copy(small, tmp_path / "m")
    bad = dict(sd, **{"encoder.layer.1.mlp.wo.weight": torch.zeros(128, 500)})
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ModelFileError, match=r"encoder\.layer\.1\.mlp\.wo\.weight.*shape"):
        load_dnabert(str(d), device="cpu")
    save_file({k: v for k, v in sd.items() if "layer.1.mlp.gated" not in k}, str(d / "model.safetensors"))
    with pytest.raises(ModelFileError, match="missing"):
        load_dnabert(str(d), device="cpu")
    cfg = json.loads((small / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=3)))
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ModelFileError, match="missing"):
        load_dnabert(str(d), device="cpu")


# --------------------------------------------------------------------------- names

def _isolated_hub(monkeypatch, tmp_path: Path) -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "VIRNUC_HPC_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_missing_hub_model_offline(monkeypatch, tmp_path: Path) -> None:
    cache = _isolated_hub(monkeypatch, tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        load_dnabert("zhihan1996/DNABERT-S", device="cpu", offline=True)
    text = str(info.value)
    assert str(cache) in text and "models--zhihan1996--DNABERT-S" in text
    assert "virnuc-hpc models fetch --dnabert zhihan1996/DNABERT-S" in text and "offline" in text
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        resolve_dnabert_dir(str(tmp_path / "no" / "such" / "dir"))


def test_hub_id_found_in_cache_offline(small: Path, monkeypatch, tmp_path: Path) -> None:
    cache = _isolated_hub(monkeypatch, tmp_path)
    repo = cache / "models--zhihan1996--DNABERT-S"
    commit = "0" * 40
    _copy(small, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_dnabert_dir("zhihan1996/DNABERT-S") == repo / "snapshots" / commit
    enc = load_dnabert("zhihan1996/DNABERT-S", device="cpu")
    assert enc.name == "zhihan1996/DNABERT-S"
    np.testing.assert_array_equal(enc.embed(SEQS[:3]), load_dnabert(str(small), device="cpu").embed(SEQS[:3]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_exact_and_fp16_close(twelve: Path) -> None:
    ref = np.stack([reference_embed(twelve, s) for s in SEQS])
    cos, diff = fidelity(load_dnabert(str(twelve), device="cuda", precision="fp32").embed(SEQS), ref)
    print(f"cuda fp32 vs reference: min cosine {cos:.9f}, max abs diff {diff:.2e}")
    assert cos >= 0.999999 and diff <= 1e-4
    for precision in ("fp16", "bf16"):
        cos, _ = fidelity(load_dnabert(str(twelve), device="cuda", precision=precision).embed(SEQS), ref)
        print(f"cuda {precision} vs reference: min cosine {cos:.6f}")
        assert cos >= 0.999
