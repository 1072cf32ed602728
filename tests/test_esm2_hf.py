"""ESM-2 in the Hugging Face format (config.json + model.safetensors, as transformers writes it): the
same features as transformers' own EsmModel, identical features from the same weights in fair-esm's
.pt format, a run of `embed`, hub ids through the Hugging Face cache, and one clear refusal for a
directory that is not an ESM-2."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import esm
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import BertConfig, EsmConfig, EsmForMaskedLM, EsmModel, EsmTokenizer

from conftest import DEMO, DEMO_FASTA, assert_nothing_finished, cli, cosine, proteins
from virnuc_hpc.encoders import load_esm2
from virnuc_hpc.encoders.esm2 import load_esm2_model, resolve_esm2_checkpoint
from virnuc_hpc.encoders.files import weights_sha256
from virnuc_hpc.errors import ModelFileError, ModelNotFoundError
from virnuc_hpc.outputs import store

transformers.logging.set_verbosity_error()  # load reports about the LM head we drop on purpose

SHAPE = dict(num_hidden_layers=6, hidden_size=320, num_attention_heads=20)  # esm2_t6_8M_UR50D
# vocab.txt of the hub's facebook/esm2_* repositories, spelled out here, not taken from our code.
HUB_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
             "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
# transformers' per-layer module names -> fair-esm's (esm/model/esm2.py), written out independently
# of the loader's own table so that a mistake there cannot cancel out here.
TO_FAIR = {"attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
           "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
           "attention.LayerNorm": "self_attn_layer_norm", "intermediate.dense": "fc1",
           "output.dense": "fc2", "LayerNorm": "final_layer_norm"}
FAIR = "encoder.sentence_encoder."


def esm_config(**overrides) -> EsmConfig:
    """The released esm2_* config.json's settings (rotary, token dropout, eps 1e-5), small shape."""
    values = dict(vocab_size=33, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
                  token_dropout=True, emb_layer_norm_before=False, layer_norm_eps=1e-5,
                  max_position_embeddings=1026, hidden_act="gelu", intermediate_size=4 * SHAPE["hidden_size"],
                  architectures=["EsmForMaskedLM"], **SHAPE)
    return EsmConfig(**{**values, **overrides})


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """No parameter left at a constant (LayerNorms away from 1 / 0), so swapped names cannot pass."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "LayerNorm" in name or "layer_norm" in name:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
        elif name.endswith("bias"):
            p.copy_(0.05 * noise)
        elif "word_embeddings" in name:
            p.copy_(noise)
            p[1] = 0.0  # <pad>
        else:
            p.copy_((2 * torch.rand(p.shape, generator=gen) - 1) / p.shape[1] ** 0.5)


def write_vocab(directory: Path) -> None:
    (directory / "vocab.txt").write_text("\n".join(HUB_VOCAB) + "\n")
    EsmTokenizer(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)


def hf_to_fair(state: dict[str, torch.Tensor], layers: int, head_dim: int) -> dict[str, torch.Tensor]:
    """A transformers EsmForMaskedLM state dict under fair-esm's released names (LM head included)."""
    out = {FAIR + "embed_tokens.weight": state["esm.embeddings.word_embeddings.weight"]}
    for i in range(layers):
        for hf, fair in TO_FAIR.items():
            for kind in ("weight", "bias"):
                out[f"{FAIR}layers.{i}.{fair}.{kind}"] = state[f"esm.encoder.layer.{i}.{hf}.{kind}"]
        out[f"{FAIR}layers.{i}.self_attn.rot_emb.inv_freq"] = \
            1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for kind in ("weight", "bias"):
        out[f"{FAIR}emb_layer_norm_after.{kind}"] = state[f"esm.encoder.emb_layer_norm_after.{kind}"]
        out[f"encoder.lm_head.dense.{kind}"] = state[f"lm_head.dense.{kind}"]
        out[f"encoder.lm_head.layer_norm.{kind}"] = state[f"lm_head.layer_norm.{kind}"]
    out["encoder.lm_head.weight"] = state["esm.embeddings.word_embeddings.weight"]
    out["encoder.lm_head.bias"] = state["lm_head.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def fair_to_hf(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The inverse: a fair-esm file's state dict under transformers' EsmForMaskedLM names."""
    out = {"esm.embeddings.word_embeddings.weight": state[FAIR + "embed_tokens.weight"]}
    for i in range(layers):
        for hf, fair in TO_FAIR.items():
            for kind in ("weight", "bias"):
                out[f"esm.encoder.layer.{i}.{hf}.{kind}"] = state[f"{FAIR}layers.{i}.{fair}.{kind}"]
    for kind in ("weight", "bias"):
        out[f"esm.encoder.emb_layer_norm_after.{kind}"] = state[f"{FAIR}emb_layer_norm_after.{kind}"]
        out[f"lm_head.dense.{kind}"] = state[f"encoder.lm_head.dense.{kind}"]
        out[f"lm_head.layer_norm.{kind}"] = state[f"encoder.lm_head.layer_norm.{kind}"]
    out["lm_head.bias"] = state["encoder.lm_head.bias"]
    return out


def save_fair_esm(path: Path, state: dict[str, torch.Tensor], *, layers: int, dim: int, heads: int) -> Path:
    """A checkpoint shaped as fair-esm's released files (cfg['model'] an argparse.Namespace)."""
    cfg = argparse.Namespace(encoder_layers=layers, encoder_embed_dim=dim, encoder_ffn_embed_dim=4 * dim,
                             encoder_attention_heads=heads, token_dropout=True)
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return path


def pooled_like_virnucpro(hidden: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """Mean of the last hidden state over residues 1..L: BOS, EOS and padding left out."""
    lengths = attention_mask.sum(1) - 2
    return torch.stack([hidden[i, 1:1 + int(n)].mean(0) for i, n in enumerate(lengths)]).numpy()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """Random esm2_t6_8M-shaped weights saved by EsmForMaskedLM.save_pretrained, with the tokenizer files."""
    directory = tmp_path_factory.mktemp("hf") / "esm2_t6_8M_UR50D"
    torch.manual_seed(0)
    model = EsmForMaskedLM(esm_config()).eval()
    randomise(model, seed=5)
    model.save_pretrained(directory)
    write_vocab(directory)
    assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.bin"))
    return directory


SEQS = proteins([1, 7, 40, 166], seed=11) + ["MKV<mask>LLAGT"]  # 166 aa: a 500-bp chunk's frame


@pytest.fixture(scope="module")
def hf_features(hf_dir: Path) -> np.ndarray:
    """Our fp32 features of SEQS from the Hugging Face directory."""
    return load_esm2(str(hf_dir), device="cpu", precision="fp32").embed(SEQS)


def test_features_equal_transformers_esm_model(hf_dir: Path, hf_features: np.ndarray, tmp_path: Path):
    """(a) fp32 features equal transformers' EsmModel pooled as VirNucPro pools, with the hub's tokenizer
    giving our token ids; an EsmModel save (no `esm.` prefix, a pooler) gives the same features."""
    ours = hf_features

    reference = EsmModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    batch = EsmTokenizer.from_pretrained(hf_dir)(SEQS, padding=True, return_tensors="pt")
    from virnuc_hpc.encoders.esm2 import pad_batch, tokenize_many
    np.testing.assert_array_equal(batch["input_ids"].numpy(), pad_batch(tokenize_many(SEQS))[0].numpy())
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    theirs = pooled_like_virnucpro(hidden, batch["attention_mask"])
    assert cosine(ours.astype(np.float64), theirs.astype(np.float64)).min() >= 0.999999
    assert np.abs(ours - theirs).max() <= 1e-4

    plain = tmp_path / "esm_model"
    reference.save_pretrained(plain)  # EsmModel: names without `esm.`, pooler weights included
    np.testing.assert_array_equal(load_esm2(str(plain), device="cpu", precision="fp32").embed(SEQS), ours)


def test_fair_esm_file_of_the_same_weights_gives_identical_features(hf_dir: Path, hf_features: np.ndarray,
                                                                    tmp_path: Path):
    """(b) The same weights under fair-esm's names, saved as fair-esm does: identical features, and
    fair-esm's own model on that file agrees with transformers' (so the two name tables match)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    state = EsmForMaskedLM.from_pretrained(hf_dir).state_dict()
    pt = save_fair_esm(tmp_path / "same.pt", hf_to_fair(state, 6, 16), layers=6, dim=320, heads=20)
    from_dir = hf_features
    np.testing.assert_array_equal(load_esm2(str(pt), device="cpu", precision="fp32").embed(SEQS), from_dir)

    with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Regression weights not found")
        data = torch.load(pt, map_location="cpu", weights_only=True)
        model, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_hf_same", data, None)
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(SEQS)])
    with torch.no_grad():
        rep = model.eval()(tokens, repr_layers=[6])["representations"][6]
    fair = pooled_like_virnucpro(rep, (tokens != alphabet.padding_idx).long())
    assert cosine(fair.astype(np.float64), from_dir.astype(np.float64)).min() >= 0.999999
    assert cfg["num_hidden_layers"] == 6  # the shape the conversion above assumed


def test_model_identity_hashes_config_and_weights(hf_dir: Path, tmp_path: Path):
    """sha256 of the `sha256sum config.json model.safetensors` listing; a changed config changes it."""
    listing = "".join(f"{hashlib.sha256((hf_dir / n).read_bytes()).hexdigest()}  {n}\n"
                      for n in ("config.json", "model.safetensors"))
    assert weights_sha256(hf_dir) == hashlib.sha256(listing.encode()).hexdigest()
    enc = load_esm2(str(hf_dir), device="cpu", precision="fp32")
    assert (enc.dim, enc.num_layers, enc.name) == (320, 6, "esm2_t6_8M_UR50D")
    assert enc.sha256 == weights_sha256(hf_dir)
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "token_dropout": False}))
    assert weights_sha256(other) != weights_sha256(hf_dir)


def test_sharded_safetensors_load(hf_dir: Path, hf_features: np.ndarray, tmp_path: Path):
    """Large models come in shards named by model.safetensors.index.json: the same weights, the same features."""
    sharded = tmp_path / "sharded"
    EsmForMaskedLM.from_pretrained(hf_dir).save_pretrained(sharded, max_shard_size="2MB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    np.testing.assert_array_equal(load_esm2(str(sharded), device="cpu", precision="fp32").embed(SEQS), hf_features)


def test_hub_id_resolves_through_the_hugging_face_cache(hf_dir: Path, tmp_path: Path, monkeypatch):
    """`facebook/esm2_*` is found in the HF cache (offline: no download tried) and named by its id."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ModelNotFoundError, match="facebook/esm2_t6_8M_UR50D.*offline mode"):
        resolve_esm2_checkpoint("facebook/esm2_t6_8M_UR50D", offline=True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--facebook--esm2_t6_8M_UR50D"
    shutil.copytree(hf_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_esm2_checkpoint("facebook/esm2_t6_8M_UR50D", offline=True) == repo / "snapshots" / commit
    enc = load_esm2("facebook/esm2_t6_8M_UR50D", device="cpu", precision="fp32", offline=True)
    assert enc.name == "facebook/esm2_t6_8M_UR50D"


def _broken(directory: Path, hf_dir: Path, case: str) -> None:
    shutil.copytree(hf_dir, directory)
    if case == "esm1b":
        cfg = json.loads((directory / "config.json").read_text())
        cfg.update(position_embedding_type="absolute", emb_layer_norm_before=True)
        (directory / "config.json").write_text(json.dumps(cfg))
    elif case == "pickle only":
        (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    elif case == "truncated":
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "vocab order":
        vocab = HUB_VOCAB.copy()
        vocab[4], vocab[5] = vocab[5], vocab[4]
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    elif case == "missing weight":
        state = load_file(directory / "model.safetensors")
        drop = next(k for k in state if k.endswith("layer.3.intermediate.dense.weight"))
        save_file({k: v for k, v in state.items() if k != drop}, directory / "model.safetensors")
    elif case == "no config":
        (directory / "config.json").unlink()


@pytest.mark.parametrize("case, error, match", [
    ("esm1b", ModelFileError, "position_embedding_type is 'absolute'"),
    ("pickle only", ModelFileError, "only pytorch_model.bin.*save_pretrained"),
    ("truncated", ModelFileError, "not a readable safetensors file"),
    ("vocab order", ModelFileError, "vocab.txt: not ESM-2's vocabulary.*token 4 is 'A', expected 'L'"),
    ("missing weight", ModelFileError, r"missing 1 weight.*layers\.3\.fc1\.weight"),
    ("no config", ModelNotFoundError, "without config.json"),
])
def test_refuses_what_is_not_a_whole_esm2_directory(hf_dir: Path, tmp_path: Path, case, error, match):
    directory = tmp_path / "bad"
    _broken(directory, hf_dir, case)
    with pytest.raises(error, match=match):
        load_esm2_model(resolve_esm2_checkpoint(str(directory)))


def test_hf_directory_runs_through_embed(reference: Path, demo_cache: Path, tmp_path: Path):
    """(c) The demo's ESM-2 weights, loaded into transformers' EsmForMaskedLM and saved with
    save_pretrained, give `embed` the very features the demo's fair-esm file gives; run.json names
    the directory's identity. (d) A BERT directory in its place: exit 2, one message, nothing written."""
    from virnuc_hpc.models.demo import ensure_demo_models
    with torch.serialization.safe_globals([argparse.Namespace]):
        fair = torch.load(ensure_demo_models().esm2, map_location="cpu", weights_only=True)["model"]
    model = EsmForMaskedLM(esm_config()).eval()
    missing, unexpected = model.load_state_dict(fair_to_hf(fair, 6), strict=False)
    assert not unexpected and all("inv_freq" in k or "contact_head" in k or "decoder" in k for k in missing)
    hf = tmp_path / "esm2_demo_hf"
    model.save_pretrained(hf)

    fasta = tmp_path / "first12.fa"  # a part of the demo input keeps this run short
    fasta.write_text(">" + ">".join(DEMO_FASTA.read_text().split(">")[1:13]))
    outdir = tmp_path / "embed"
    proc = cli("embed", str(fasta), "-o", str(outdir), *DEMO, "--esm2-model", str(hf), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with store.open_features(outdir) as got, store.open_features(reference) as want:
        want_by_frame = dict(zip(map(str, want.frame.values), want.features.values))
        frames = list(map(str, got.frame.values))
        assert len(frames) > 10 and set(frames) <= set(want_by_frame)
        np.testing.assert_allclose(got.features.values, np.stack([want_by_frame[f] for f in frames]),
                                   rtol=0, atol=1e-5)  # other batches than the reference's: rounding only
    assert weights_sha256(hf) in (outdir / "run.json").read_text()

    bert = tmp_path / "bert"
    BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128).save_pretrained(bert)
    bad_out = tmp_path / "bad"
    proc = cli("embed", str(DEMO_FASTA), "-o", str(bad_out), *DEMO, "--esm2-model", str(bert))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("virnuc-hpc: error:")]
    assert len(errors) == 1 and "model_type is 'bert', not 'esm'" in errors[0], proc.stderr
    assert_nothing_finished(bad_out)
