"""DNABERT-S (DNABERT-2 / MosaicBERT architecture) as our own module: nucleotide string -> 768-d vector.

The hub copy ships remote modelling code (and a Triton kernel that breaks on current Triton); we never
execute it. The maths below is the plain DNABERT-2 layer maths (MosaicBERT: post-LN blocks, fused
QKV, ALiBi attention, GeGLU MLP), read from the real file formats, so fp32 results equal the
reference and a user's real directory loads through this code.

The factory that picks this padded encoder or the packed one, ``load_dnabert``, lives in the
encoders package (encoders/factory.py), so that this module never imports dnabert_packed.py.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import dtype_of, resolve_device, resolve_precision
from ..errors import ModelFileError
from .batching import Fp32Weights, plan_padded
from .contract import EngineHook
from .files import dnabert_weights_file, file_sha256, resolve_dnabert_dir
from .layers import Attend, cast_keeping_fp32_layer_norms, layer_norm_fp32

DEFAULT_MAX_TOKENS = {"cpu": 16384, "cuda": 65536}  # padded batches: rows * longest
MAX_BIAS_ELEMENTS = 2 ** 27                         # padded batches: B*H*L*L of the materialised bias


@dataclass(frozen=True)
class DNABERTConfig:
    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def alibi_slopes(n_heads: int) -> list[float]:
    """MosaicBERT's slopes: geometric for a power of two, else the 2x-heads set's odd terms appended."""
    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def _add_ln(ln: nn.LayerNorm, x: Tensor, residual: Tensor) -> Tensor:
    """LN(x + residual) in fp32 (the LN parameters are kept fp32), returned in x's dtype."""
    return layer_norm_fp32(x, ln.weight, ln.bias, ln.eps, residual)


class DNABERTLayer(nn.Module):
    """Post-LN block: fused-QKV ALiBi attention, then a GeGLU MLP. Layout-agnostic: x is (..., D)."""

    def __init__(self, cfg: DNABERTConfig) -> None:
        super().__init__()
        d, i = cfg.hidden_size, cfg.intermediate_size
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.Wqkv = nn.Linear(d, 3 * d)                      # rows: q, k, v; heads contiguous in each
        self.attn_out = nn.Linear(d, d)
        self.attn_ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.gated_layers = nn.Linear(d, 2 * i, bias=False)  # [a | b]: gelu(a) * b
        self.wo = nn.Linear(i, d)
        self.mlp_ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, attend: Attend) -> Tensor:
        q, k, v = self.Wqkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        x = _add_ln(self.attn_ln, self.attn_out(attend(q, k, v).flatten(-2)), x)
        a, b = self.gated_layers(x).chunk(2, dim=-1)
        return _add_ln(self.mlp_ln, self.wo(F.gelu(a) * b), x)


class DNABERT2(nn.Module):
    """DNABERT-2 encoder: LN(word + token_type[0]) -> N post-LN layers. No final LN, no pooler."""

    def __init__(self, cfg: DNABERTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.slopes = tuple(alibi_slopes(cfg.num_attention_heads))
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(DNABERTLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def encode(self, ids: Tensor, attend: Attend) -> Tensor:
        """Token ids of any layout (padded (B, L) or packed (T,)) -> hidden states (..., D).

        ``attend`` alone knows which tokens see which (ALiBi, padding, packing)."""
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, attend)
        return x

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """LN(word + token_type[0]) for ids of any layout; the packed path runs layers itself."""
        return _add_ln(self.emb_ln, self.word_embeddings(ids), self.token_type_embeddings.weight[0])

    def alibi_bias(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, H, L, L) float bias: -slope_h * |i - j| (symmetric), -inf on padded keys."""
        pos = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
        slopes = torch.tensor(self.slopes, device=mask.device, dtype=torch.float32)
        bias = -slopes[:, None, None] * (pos[None, :, None] - pos[None, None, :]).abs()
        bias = bias.unsqueeze(0).masked_fill(~mask[:, None, None, :], float("-inf"))
        return bias.to(dtype)

    @staticmethod
    def attend_sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """CPU / fallback attention on a padded batch (B, L, H, d); softmax accumulates in fp32."""
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias, scale=q.shape[-1] ** -0.5)
        return out.transpose(1, 2)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Padded batch: ids (B, L), mask (B, L) True on real tokens -> last hidden states (B, L, D)."""
        bias = self.alibi_bias(mask, self.word_embeddings.weight.dtype)
        return self.encode(ids, lambda q, k, v: self.attend_sdpa(q, k, v, bias))


# --------------------------------------------------------------------------- files -> model

_RENAMES = [  # checkpoint name (after an optional "bert." prefix) -> our parameter name
    (r"embeddings\.word_embeddings\.", "word_embeddings."),
    (r"embeddings\.token_type_embeddings\.", "token_type_embeddings."),
    (r"embeddings\.LayerNorm\.", "emb_ln."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.Wqkv\.", r"layers.\1.Wqkv."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_ln."),
    (r"encoder\.layer\.(\d+)\.mlp\.gated_layers\.", r"layers.\1.gated_layers."),
    (r"encoder\.layer\.(\d+)\.mlp\.wo\.", r"layers.\1.wo."),
    (r"encoder\.layer\.(\d+)\.mlp\.layernorm\.", r"layers.\1.mlp_ln."),
]


def read_config(directory: Path) -> DNABERTConfig:
    path = directory / "config.json"
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    try:
        raw = json.loads(path.read_text())
        cfg = DNABERTConfig(**{k: int(raw[k]) for k in sizes},
                            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                            type_vocab_size=int(raw.get("type_vocab_size", 2)),
                            pad_token_id=int(raw.get("pad_token_id") or 0))
    except KeyError as exc:
        raise ModelFileError(f"DNABERT config {path} has no {exc.args[0]!r}") from exc
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"cannot read DNABERT config {path}: {exc}") from exc
    if min(getattr(cfg, k) for k in sizes) < 1 or cfg.hidden_size % cfg.num_attention_heads:
        raise ModelFileError(f"{path}: inconsistent sizes {cfg}")
    return cfg


def read_weights(directory: Path) -> tuple[dict[str, Tensor], Path]:
    """model.safetensors (preferred) or pytorch_model.bin (weights_only), as fp32 CPU tensors."""
    path = dnabert_weights_file(directory)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated / not a weights file
        raise ModelFileError(f"cannot read DNABERT weights {path}: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelFileError(f"{path} is not a flat state dict of tensors")
    return sd, path


def read_tokenizer(directory: Path, cfg: DNABERTConfig):
    """The model's fast tokenizer with its [CLS] $A [SEP] template; no truncation, no padding."""
    from tokenizers import Tokenizer
    path = directory / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelFileError(f"cannot read DNABERT tokenizer {path}: {exc}") from exc
    tok.no_truncation()
    tok.no_padding()
    ids = tok.encode("ACGT").ids
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None or ids[0] != cls or ids[-1] != sep:
        raise ModelFileError(f"{path}: the tokenizer does not add [CLS] ... [SEP] (post_processor missing?)")
    if tok.get_vocab_size(with_added_tokens=True) > cfg.vocab_size:
        raise ModelFileError(f"{path}: {tok.get_vocab_size()} tokens but the model has vocab_size "
                             f"{cfg.vocab_size}")
    return tok


def build_model(cfg: DNABERTConfig, checkpoint: dict[str, Tensor], source: Path) -> DNABERT2:
    """Map checkpoint names to ours and check every name and shape; fp32 CPU model in eval mode."""
    with torch.device("meta"):
        model = DNABERT2(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd, origin, ignored = {}, {}, []
    for key, value in checkpoint.items():
        name = key.removeprefix("bert.")
        if name.startswith(("cls.", "pooler.")):
            continue
        for pattern, repl in _RENAMES:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name, count=1)
                break
        if name not in expected:
            ignored.append(key)
            continue
        if tuple(value.shape) != expected[name]:
            raise ModelFileError(f"{source}: {key} has shape {tuple(value.shape)}, the config "
                                 f"(config.json) implies {expected[name]}")
        sd[name], origin[name] = value.float(), key
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise ModelFileError(f"{source}: {len(missing)} DNABERT parameters missing, e.g. "
                             f"{', '.join(missing[:4])} (our names); is this a DNABERT-2 checkpoint?")
    if ignored:
        warnings.warn(f"{source}: ignoring {len(ignored)} unknown tensors, e.g. {', '.join(ignored[:4])}")
    bad = [origin[k] for k, v in sd.items() if not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{source}: non-finite values in {', '.join(bad[:4])}")
    model.load_state_dict(sd, assign=True)
    return model.eval()


# --------------------------------------------------------------------------- the encoder

def weights_sha256(encoder: Any) -> str:
    """sha256 of an encoder's (DNABERTEncoder or PackedDNABERTEncoder) weights file. Both encoders
    cache it as a cached_property read on first use: the client already checksums every model file
    (models/resolve.py), so workers never need it at start-up."""
    if encoder.weights is None:
        raise ValueError("sha256 unknown: the encoder was not built from a file")
    return file_sha256(Path(encoder.weights))


def plan_padded_batches(lengths: Sequence[int] | np.ndarray, heads: int, max_tokens: int,
                        max_bias_elements: int = MAX_BIAS_ELEMENTS) -> list[np.ndarray]:
    """Indices sorted by length, cut so that each padded batch fits the token and bias budgets
    (a sequence over budget on its own forms its own batch)."""
    return plan_padded(lengths, lambda rows, longest: rows * longest <= max_tokens
                       and rows * heads * longest * longest <= max_bias_elements)


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(B, L) int64 token ids padded with ``pad_id`` and the (B, L) mask, True on real tokens."""
    padded = np.full((len(ids), max(map(len, ids))), pad_id, dtype=np.int64)
    for row, seq in zip(padded, ids):
        row[: len(seq)] = seq
    mask = torch.arange(padded.shape[1]) < torch.tensor([len(s) for s in ids])[:, None]
    return torch.from_numpy(padded), mask


def pool_padded(model: Callable[[Tensor, Tensor], Tensor], ids: Tensor, mask: Tensor) -> Tensor:
    """(B, D) fp32 means of the last hidden states over each row's real tokens ([CLS], [SEP] included)."""
    h = model(ids, mask).float()
    return torch.where(mask[..., None], h, 0.0).sum(1) / mask.sum(1, keepdim=True)


def run_model(model: DNABERT2, device: torch.device, precision: str) -> DNABERT2:
    """The fp32 CPU model as it runs: on ``device``, in the run's dtype, LayerNorms back in fp32."""
    return cast_keeping_fp32_layer_norms(model, device, dtype_of(precision))


def fp32_weights(model: DNABERT2, precision: str, device: torch.device,
                 weights: Path | None) -> Fp32Weights[DNABERT2]:
    """The fallback's fp32 weights, reread from the model's directory (the weights file's) on first
    need."""
    read = None if weights is None else lambda: read_dnabert_model(Path(weights).parent).to(device)
    return Fp32Weights(model, precision, device, read)


class DNABERTEncoder(EngineHook):
    """Nucleotide strings -> (N, D) float32: mean of the last hidden states over [CLS], tokens, [SEP].

    Length-sorted, token-budget batches; results come back in input order. In fp16/bf16 a batch
    with NaN/Inf is recomputed in fp32 (``stats['nonfinite_recomputed_batches']``; ``Fp32Weights``:
    reread from the weights file on first need). Each batch runs through ``runner``: the model
    itself, or what an engine made of it (``with_engine``)."""

    def __init__(self, model: DNABERT2, tokenizer, *, name: str, weights: Path | None = None,
                 device: str = "auto", precision: str = "auto", max_tokens: int | None = None,
                 max_bias_elements: int = MAX_BIAS_ELEMENTS) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS["cpu" if self.device.type == "cpu" else "cuda"]
        self.max_tokens = max_tokens
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {self.max_tokens}")
        self.max_bias_elements = max_bias_elements  # caps B*H*L*L of the materialised bias
        self.name, self.weights, self.tokenizer = name, weights, tokenizer
        self.dim = model.cfg.hidden_size
        pad = tokenizer.token_to_id("[PAD]")  # any id works (padded keys are masked); keep the model's
        self.pad_id = model.cfg.pad_token_id if pad is None else pad
        self.model = run_model(model, self.device, self.precision)
        self.fp32 = fp32_weights(self.model, self.precision, self.device, weights)
        self.runner: Callable[[Tensor, Tensor], Tensor] = self.model
        self.stats: dict[str, int] = {"sequences": 0, "tokens": 0, "batches": 0,
                                      "nonfinite_recomputed_batches": 0}

    sha256 = cached_property(weights_sha256)

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """``plan_padded_batches`` under this encoder's budgets."""
        return plan_padded_batches(lengths, self.model.cfg.num_attention_heads, self.max_tokens,
                                   self.max_bias_elements)

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        ids_t, mask = pad_ids(ids, self.pad_id)
        ids_t, mask = ids_t.to(self.device), mask.to(self.device)
        vec = pool_padded(self.runner, ids_t, mask)
        if not torch.isfinite(vec).all():
            if self.precision == "fp32":
                raise RuntimeError(f"DNABERT {self.name}: non-finite embeddings in fp32")
            vec = pool_padded(self.fp32.get(), ids_t, mask)
            self.stats["nonfinite_recomputed_batches"] += 1
        self.stats["batches"] += 1
        return vec.cpu().numpy()

    def prepare(self, nucleotides: Sequence[str]) -> list[str]:
        """The padded path tokenises inside ``embed``: nothing to do ahead, the strings are the input."""
        return list(nucleotides)

    def warm_up(self) -> None:
        """Nothing to compile on the padded path."""

    @torch.inference_mode()
    def embed(self, nucleotides: Sequence[str]) -> np.ndarray:
        seqs = list(nucleotides)
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        if not seqs:
            return out
        ids = [e.ids for e in self.tokenizer.encode_batch(seqs, add_special_tokens=True)]
        for batch in self.batches([len(x) for x in ids]):
            out[batch] = self._embed_batch([ids[i] for i in batch])
        self.stats["sequences"] += len(seqs)
        self.stats["tokens"] += sum(map(len, ids))
        return out


def read_dnabert_model(directory: Path) -> DNABERT2:
    """The fp32 CPU model of a DNABERT directory (config.json and weights; no tokenizer)."""
    cfg = read_config(directory)
    checkpoint, weights = read_weights(directory)
    return build_model(cfg, checkpoint, weights)


def load_dnabert_parts(spec: str, *, offline: bool = False) -> tuple[DNABERT2, object, Path]:
    """Directory or hub id -> (fp32 CPU model, tokenizer, weights file). Reads only data files."""
    directory = resolve_dnabert_dir(spec, offline=offline)
    cfg = read_config(directory)
    tokenizer = read_tokenizer(directory, cfg)
    checkpoint, weights = read_weights(directory)
    return build_model(cfg, checkpoint, weights), tokenizer, weights
