"""ESM-2 in the Hugging Face format, read into our ESM2 module without `transformers` and without pickle.

A directory as `EsmModel.save_pretrained` / `EsmForMaskedLM.save_pretrained` writes it (config.json,
model.safetensors or its shards; the hub's `facebook/esm2_*` repositories) holds fair-esm's weights
under other names. This module checks from config.json that the directory is an ESM-2 (rotary
positions, no embedding LayerNorm, the 33-token ESM-1b alphabet in fair-esm's order), maps the names
to ours and returns the same (config, state dict, inv_freq) triple a fair-esm file gives, so both
formats go through one validation and one forward. Modelling code in the directory or on the hub is
never imported; config.json is read as data.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError, ModelNotFoundError
from .esm2_config import ALPHABET, MASK, PAD, ESM2Config
from .files import HF_CONFIG, hf_safetensors_files

# Per-layer module names: transformers' EsmLayer -> fair-esm's TransformerLayer.
_LAYER_NAMES = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.LayerNorm": "self_attn_layer_norm",   # pre-LayerNorm of the attention block
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "LayerNorm": "final_layer_norm",                 # pre-LayerNorm of the feed-forward block
}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
# Older conversions (and transformers 5 on save) spell LayerNorm parameters gamma / beta.
_LEGACY_NORM_RE = re.compile(r"(.*(?:LayerNorm|layer_norm_after))\.(gamma|beta)")
_IGNORED_RE = re.compile(r"(lm_head|contact_head|pooler)\.|embeddings\.position_ids$")
_INV_FREQ_RE = re.compile(r"(^|\.)rotary_embeddings\.inv_freq$")
_TIED_EMBEDDING = "lm_head.decoder.weight"  # EsmForMaskedLM ties it to the token embedding


def our_name(hf_name: str) -> str | None:
    """Our parameter name for a transformers ESM parameter; None for what embeddings never use (the LM,
    contact and pooler heads). Unknown names come back unchanged, so validation reports them."""
    name = hf_name.removeprefix("esm.")
    if _IGNORED_RE.match(name):
        return None
    if legacy := _LEGACY_NORM_RE.fullmatch(name):
        name = f"{legacy[1]}.{'weight' if legacy[2] == 'gamma' else 'bias'}"
    if name == "embeddings.word_embeddings.weight":
        return "embed_tokens.weight"
    if name.startswith("encoder.emb_layer_norm_after."):
        return name.removeprefix("encoder.")
    if (layer := _LAYER_RE.fullmatch(name)) and layer[2] in _LAYER_NAMES:
        return f"layers.{layer[1]}.{_LAYER_NAMES[layer[2]]}.{layer[3]}"
    return hf_name


def _positive_int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, not {value!r}")
    return value


def _rope_theta(raw: dict[str, Any]) -> float:
    """Rotary base: rope_theta (transformers 5 writes it; ESM-2 uses 10000); no scaled variants."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling")
    kind = (params.get("rope_type") if isinstance(params, dict) else None) or "default"
    if scaling or kind != "default":
        raise ValueError(f"rotary scaling {scaling or kind!r} is not ESM-2's plain rotary embedding")
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0)) if isinstance(params, dict) else 10000.0
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not math.isfinite(theta) or theta <= 1:
        raise ValueError(f"rope_theta must be a number > 1, not {theta!r}")
    return float(theta)


def read_hf_config(directory: Path) -> ESM2Config:
    """ESM2Config from config.json, refusing what is not an ESM-2 with the reason.

    Missing keys take transformers' EsmConfig defaults (token_dropout False, layer_norm_eps 1e-12,
    absolute positions), so a directory gives the features transformers itself would give."""
    path = directory / HF_CONFIG
    if not path.is_file():
        raise ModelNotFoundError(f"ESM-2 model {directory}: a directory without {HF_CONFIG}; expected a "
                                 "Hugging Face ESM-2 directory (config.json and model.safetensors)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path}: not a model configuration (a JSON {type(raw).__name__})")
    model_type = raw.get("model_type")
    if model_type != "esm":
        raise ModelFileError(f"{path}: model_type is {model_type!r}, not 'esm': not an ESM-2 model")
    try:
        return _esm2_config(raw)
    except ValueError as exc:
        raise ModelFileError(f"{path}: not an ESM-2 model: {exc}") from exc


def _esm2_config(raw: dict[str, Any]) -> ESM2Config:
    if raw.get("is_folding_model") or raw.get("esmfold_config"):
        raise ValueError("it is an ESMFold configuration")
    positions = raw.get("position_embedding_type", "absolute")
    if positions != "rotary":
        raise ValueError(f"position_embedding_type is {positions!r} (ESM-1b / ESM-1v use absolute "
                         "position embeddings; ESM-2 uses 'rotary')")
    if raw.get("emb_layer_norm_before"):
        raise ValueError("emb_layer_norm_before is set (an ESM-1b layout); ESM-2 has none")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise ValueError("it is configured as a decoder / with cross-attention")
    if (act := raw.get("hidden_act", "gelu")) != "gelu":
        raise ValueError(f"hidden_act is {act!r}; ESM-2 uses the exact (erf) 'gelu'")
    if raw.get("vocab_size") != len(ALPHABET):
        raise ValueError(f"vocab_size is {raw.get('vocab_size')!r}; ESM-2's alphabet has {len(ALPHABET)} tokens")
    for key, want in (("pad_token_id", PAD), ("mask_token_id", MASK)):
        if raw.get(key) not in (None, want):
            raise ValueError(f"{key} is {raw.get(key)!r}; ESM-2's alphabet has {ALPHABET[want]} = {want}")
    if raw.get("vocab_list") not in (None, list(ALPHABET)):
        raise ValueError("vocab_list is not ESM-2's alphabet in fair-esm's order")
    layers, dim, heads = (_positive_int(raw, k) for k in ("num_hidden_layers", "hidden_size",
                                                          "num_attention_heads"))
    if dim % heads or (dim // heads) % 2:
        raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {heads} with an even "
                         "head size")
    if (ffn := _positive_int(raw, "intermediate_size")) != 4 * dim:
        raise ValueError(f"intermediate_size is {ffn}; ESM-2's feed-forward is 4 x hidden_size = {4 * dim}")
    eps = raw.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ValueError(f"layer_norm_eps must be a small positive number, not {eps!r}")
    dropout = raw.get("token_dropout", False)
    if not isinstance(dropout, bool):
        raise ValueError(f"token_dropout must be true or false, not {dropout!r}")
    return ESM2Config(layers, dim, heads, token_dropout=dropout, layer_norm_eps=float(eps),
                      rope_theta=_rope_theta(raw))


def check_vocab(directory: Path) -> None:
    """vocab.txt, where present, must list fair-esm's alphabet in its order (the token ids we feed)."""
    path = directory / "vocab.txt"
    if not path.is_file():
        return  # the ids are fixed by the config checks: 33 tokens, <pad> = 1, <mask> = 32
    try:
        tokens = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not readable ({type(exc).__name__}: {exc})") from exc
    if tokens != list(ALPHABET):
        first = next((i for i, (a, b) in enumerate(zip(tokens, ALPHABET)) if a != b), min(len(tokens), len(ALPHABET)))
        raise ModelFileError(f"{path}: not ESM-2's vocabulary in fair-esm's order ({len(tokens)} tokens; "
                             f"token {first} is {tokens[first] if first < len(tokens) else None!r}, expected "
                             f"{ALPHABET[first] if first < len(ALPHABET) else None!r})")


def check_hf_directory(directory: Path) -> ESM2Config:
    """The cheap checks (config.json, vocab.txt, the weight files exist), done before any worker starts."""
    cfg = read_hf_config(directory)
    check_vocab(directory)
    hf_safetensors_files(directory)
    return cfg


def read_hf_esm2(directory: Path) -> tuple[ESM2Config, dict[str, torch.Tensor], torch.Tensor | None]:
    """Config, state dict under our names (tensors mmapped from the safetensors files), and the stored
    rotary inv_freq (or None). Shapes are checked by the caller, as for a fair-esm file."""
    from safetensors import SafetensorError, safe_open

    cfg = check_hf_directory(directory)
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    inv_freq: dict[str, torch.Tensor] = {}
    tied: torch.Tensor | None = None
    for file in hf_safetensors_files(directory):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as fh:
                for key in sorted(fh.keys()):
                    if _INV_FREQ_RE.search(key):
                        inv_freq[key] = fh.get_tensor(key)
                    elif key.removeprefix("esm.") == _TIED_EMBEDDING:
                        tied = fh.get_tensor(key)
                    elif (name := our_name(key)) is not None:
                        if name in state:
                            raise ModelFileError(f"{directory}: both {sources[name]!r} and {key!r} hold {name}")
                        state[name], sources[name] = fh.get_tensor(key), key
        except ModelFileError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{file}: not a readable safetensors file (corrupt or truncated?): "
                                 f"{type(exc).__name__}: {exc}") from exc
    if "embed_tokens.weight" not in state and tied is not None:
        state["embed_tokens.weight"] = tied  # a save that kept the tied copy rather than the embedding
    return cfg, state, (inv_freq[min(inv_freq)] if inv_freq else None)
