"""Random-weight DNABERT-S (DNABERT-2 / MosaicBERT) model directories.

Real weights are not reachable from our machines. These directories have the real layout
(config.json, weights under the real parameter names, a BPE tokenizer.json with the
[CLS] ... [SEP] template), so the same loader reads them and a user's real files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from virnuc_hpc.encoders.files import RANDOM_WEIGHTS_FLAG

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0..4, as in DNABERT-2


def _config(layers: int, hidden: int, heads: int, intermediate: int, vocab_size: int) -> dict:
    """Shaped like the hub's DNABERT-S config.json; auto_map is recorded, never executed."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-S",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": vocab_size,
        RANDOM_WEIGHTS_FLAG: True,
    }


def _weights(layers: int, hidden: int, intermediate: int, vocab_size: int, seed: int,
             mlm_prefix: bool) -> dict[str, torch.Tensor]:
    """Weights with std 1/sqrt(fan_in), so attention scores are O(1) and every term matters."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def linear(name: str, out_f: int, in_f: int, bias: bool = True) -> None:
        sd[f"{name}.weight"] = normal(out_f, in_f, std=1 / math.sqrt(in_f))
        if bias:
            sd[f"{name}.bias"] = normal(out_f, std=0.1)

    def layer_norm(name: str) -> None:
        sd[f"{name}.weight"] = 1 + normal(hidden, std=0.1)
        sd[f"{name}.bias"] = normal(hidden, std=0.1)

    sd: dict[str, torch.Tensor] = {}
    sd["embeddings.word_embeddings.weight"] = normal(vocab_size, hidden, std=0.5)
    sd["embeddings.token_type_embeddings.weight"] = normal(2, hidden, std=0.5)
    layer_norm("embeddings.LayerNorm")
    for i in range(layers):
        p = f"encoder.layer.{i}"
        linear(f"{p}.attention.self.Wqkv", 3 * hidden, hidden)
        linear(f"{p}.attention.output.dense", hidden, hidden)
        layer_norm(f"{p}.attention.output.LayerNorm")
        linear(f"{p}.mlp.gated_layers", 2 * intermediate, hidden, bias=False)
        linear(f"{p}.mlp.wo", hidden, intermediate)
        layer_norm(f"{p}.mlp.layernorm")
    if not mlm_prefix:
        return sd
    sd = {f"bert.{k}": v for k, v in sd.items()}
    # The MLM head of a BertForMaskedLM checkpoint: present in the file, ignored by the loader.
    linear("cls.predictions.transform.dense", hidden, hidden)
    layer_norm("cls.predictions.transform.LayerNorm")
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    sd["cls.predictions.bias"] = torch.zeros(vocab_size)
    return sd


def _random_dna(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    return [bases[rng.integers(0, 4, int(k))].tobytes().decode() for k in rng.integers(low, high, n)]


def write_tokenizer(path: Path, vocab_size: int, seed: int) -> None:
    """A DNABERT-2-style BPE tokenizer trained on seeded random DNA (deterministic per seed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    # DNA has no whitespace: each sequence is one pre-token, BPE alone decides the pieces.
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=list("ACGTN"), show_progress=False)
    corpus = _random_dna(np.random.default_rng(seed), 400, 200, 1200)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1000000000,
        "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "mask_token": "[MASK]"}, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps({
        "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "mask_token": "[MASK]"}, indent=2))


def write_random_dnabert_dir(path: str | Path, *, layers: int = 12, hidden: int = 768, heads: int = 12,
                             intermediate: int = 3072, vocab_size: int = 4096, seed: int = 0,
                             mlm_prefix: bool = False,
                             fmt: Literal["safetensors", "bin"] = "safetensors") -> Path:
    """Write a loadable DNABERT-S-shaped directory with random weights; returns its path.

    Defaults are the real DNABERT-S shapes; tests and the demo use e.g. layers=2, hidden=128,
    heads=4, intermediate=512, vocab_size=512. ``mlm_prefix`` writes an MLM checkpoint
    (``bert.`` prefixed names plus ``cls.*``); ``fmt`` picks model.safetensors or pytorch_model.bin.
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    if vocab_size < len(SPECIAL_TOKENS) + 5:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 5}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(_config(layers, hidden, heads, intermediate, vocab_size), indent=2) + "\n")
    sd = _weights(layers, hidden, intermediate, vocab_size, seed, mlm_prefix)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        # Tied MLM decoder weights must not share storage in a safetensors file.
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path / "model.safetensors"),
                  metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    write_tokenizer(path, vocab_size, seed)
    return path
