"""Randomly initialised ESM-2 checkpoints in fair-esm's released file format.

Real weights cannot be fetched here, and compute cost does not depend on weight values, so tests,
demos and benchmarks use these files; a user's real file then goes through exactly the same loader.
The demo default is the 8M shape (esm2_t6_8M_UR50D: 6 layers, 320 dim, 20 heads); the VirNucPro
model is the 3B shape (layers=36, embed_dim=2560, heads=40).

Format, as fair-esm's `_load_model_and_alphabet_core_v2` reads it: a dict with
- "model": the state dict with the released names and in fair-esm's order: `encoder.sentence_encoder.*`
  for the encoder (per-layer rotary `rot_emb.inv_freq` included) and `encoder.lm_head.*` for the LM
  head. `contact_head.regression.*` is not in a released model file (fair-esm fetches it from a
  separate `-contact-regression.pt`), so it is not written here either;
- "cfg": {"model": argparse.Namespace(encoder_layers, encoder_embed_dim, encoder_ffn_embed_dim,
  encoder_attention_heads, token_dropout, virnuc_hpc_random_weights=True)}. The Namespace is what
  forces the `safe_globals([argparse.Namespace])` load path, so it is kept on purpose; the extra flag
  (ignored by fair-esm) lets `encoders.esm2.is_random_checkpoint` label demo runs.
The key set is checked against fair-esm's own ESM2 in tests/test_esm2.py; writing needs no fair-esm.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from virnuc_hpc.encoders.esm2 import ALPHABET, PAD, default_inv_freq
from virnuc_hpc.encoders.files import RANDOM_WEIGHTS_FLAG


def released_shapes(layers: int, embed_dim: int, heads: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a released ESM-2 model file, in fair-esm's state-dict order."""
    d, vocab, enc = embed_dim, len(ALPHABET), "encoder.sentence_encoder."
    shapes: dict[str, tuple[int, ...]] = {enc + "embed_tokens.weight": (vocab, d)}
    for i in range(layers):
        p = f"{enc}layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes |= {f"{p}self_attn.{proj}.weight": (d, d), f"{p}self_attn.{proj}.bias": (d,)}
        shapes[p + "self_attn.rot_emb.inv_freq"] = (d // heads // 2,)
        shapes |= {p + "self_attn_layer_norm.weight": (d,), p + "self_attn_layer_norm.bias": (d,),
                   p + "fc1.weight": (4 * d, d), p + "fc1.bias": (4 * d,),
                   p + "fc2.weight": (d, 4 * d), p + "fc2.bias": (d,),
                   p + "final_layer_norm.weight": (d,), p + "final_layer_norm.bias": (d,)}
    shapes |= {enc + "emb_layer_norm_after.weight": (d,), enc + "emb_layer_norm_after.bias": (d,),
               "encoder.lm_head.weight": (vocab, d), "encoder.lm_head.bias": (vocab,),
               "encoder.lm_head.dense.weight": (d, d), "encoder.lm_head.dense.bias": (d,),
               "encoder.lm_head.layer_norm.weight": (d,), "encoder.lm_head.layer_norm.bias": (d,)}
    return shapes


def write_random_esm2_checkpoint(path: str | Path, *, layers: int = 6, embed_dim: int = 320, heads: int = 20,
                                 seed: int = 0, token_dropout: bool = True,
                                 dtype: torch.dtype = torch.float32) -> Path:
    """Write a random ESM-2 checkpoint; the same arguments give the same tensors.

    Linear weights ~ U(+-1/sqrt(fan_in)) (torch's default scale), embeddings ~ N(0, 1) with a zero pad
    row, LayerNorm weights 1 + N(0, 0.1^2), biases N(0, 0.05^2): no parameter is left at a constant,
    so a loader that mixes two of them up cannot pass a comparison. `dtype` (e.g. torch.float16, as
    large released files may be stored) applies to every tensor, inv_freq included."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in released_shapes(layers, embed_dim, heads).items():
        if name.endswith("inv_freq"):
            value = default_inv_freq(embed_dim // heads)
        elif name == "encoder.lm_head.weight":  # tied to the token embedding in fair-esm
            value = state["encoder.sentence_encoder.embed_tokens.weight"].clone()
        elif name.endswith("embed_tokens.weight"):
            value = torch.randn(shape, generator=gen)
            value[PAD] = 0.0
        elif "layer_norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            value = 0.05 * torch.randn(shape, generator=gen)
        else:
            value = (2 * torch.rand(shape, generator=gen) - 1) / shape[1] ** 0.5
        state[name] = value.to(dtype)
    cfg = argparse.Namespace(encoder_layers=layers, encoder_embed_dim=embed_dim,
                             encoder_ffn_embed_dim=4 * embed_dim, encoder_attention_heads=heads,
                             token_dropout=token_dropout, **{RANDOM_WEIGHTS_FLAG: True})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return path
