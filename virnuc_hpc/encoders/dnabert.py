"""DNABERT-S (DNABERT-2 / MosaicBERT architecture) as our own module: nucleotide string -> 768-d vector.

The hub copy ships remote modelling code (and a Triton kernel that breaks on current Triton); we never
execute it. The maths below is the plain DNABERT-2 layer maths (MosaicBERT: post-LN blocks, fused
QKV, ALiBi attention, GeGLU MLP), read from the real file formats, so fp32 results equal the
reference and a user's real directory loads through this code.

The factory that picks this padded encoder or the packed one, ``load_dnabert``, lives in the
encoders package (encoders/factory.py), so that this module never imports dnabert_packed.py.
"""

from __future__ import annotations

import copy
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
from .files import DNABERT_HUB_FILES as HUB_FILES  # noqa: F401  (re-exported: old name)
from .files import RANDOM_WEIGHTS_FLAG  # noqa: F401  (re-exported: random_models.dnabert)
from .files import dnabert_weights_file as weights_file
from .files import file_sha256
from .files import hf_cache_dir as _hf_cache_dir  # noqa: F401  (re-exported: old name)
from .files import resolve_dnabert_dir

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # q, k, v (..., H, d) -> context (..., H, d)


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
    """LN(x + residual) accumulated in fp32 (LN params are kept fp32), returned in x's dtype.

    Explicit upcasts: CUDA layer_norm refuses half input with fp32 params; torch.compile fuses them."""
    y = F.layer_norm(x.float() + residual.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return y.to(x.dtype)


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
    path = weights_file(directory)
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
    (models.hash_models), so workers never need it at start-up."""
    if encoder.weights is None:
        raise ValueError("sha256 unknown: the encoder was not built from a file")
    return file_sha256(Path(encoder.weights))


class DNABERTEncoder:
    """Nucleotide strings -> (N, D) float32: mean of the last hidden states over [CLS], tokens, [SEP].

    Length-sorted, token-budget batches; results come back in input order. In fp16/bf16 a batch
    with NaN/Inf is recomputed in fp32 (``stats['nonfinite_recomputed_batches']``)."""

    def __init__(self, model: DNABERT2, tokenizer, *, name: str, weights: Path | None = None,
                 device: str = "auto", precision: str = "auto", max_tokens: int | None = None,
                 max_bias_elements: int = 2 ** 27) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if max_tokens is None:
            max_tokens = 16384 if self.device.type == "cpu" else 65536
        self.max_tokens = max_tokens
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {self.max_tokens}")
        self.max_bias_elements = max_bias_elements  # caps B*H*L*L of the materialised bias
        self.name, self.weights, self.tokenizer = name, weights, tokenizer
        self.dim = model.cfg.hidden_size
        pad = tokenizer.token_to_id("[PAD]")  # any id works (padded keys are masked); keep the model's
        self.pad_id = model.cfg.pad_token_id if pad is None else pad
        # Kept on CPU until a non-finite batch needs it: the exact weights, not upcast half ones.
        self._fp32_model: DNABERT2 | None = copy.deepcopy(model) if self.precision != "fp32" else None
        self._fp32_on_device = False
        self.model = model.to(self.device, dtype_of(self.precision))
        for m in self.model.modules():
            if isinstance(m, nn.LayerNorm):
                m.float()
        self.stats: dict[str, int] = {"sequences": 0, "tokens": 0, "batches": 0,
                                      "nonfinite_recomputed_batches": 0}

    sha256 = cached_property(weights_sha256)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length, cut so that each padded batch fits the token and bias budgets
        (a sequence over budget on its own forms its own batch)."""
        heads = self.model.cfg.num_attention_heads
        out: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            n, L = (len(out[-1]) + 1 if out else 0), lengths[i]
            if out and n * L <= self.max_tokens and n * heads * L * L <= self.max_bias_elements:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def _pool(self, model: DNABERT2, ids: Tensor, mask: Tensor) -> Tensor:
        h = model(ids, mask).float()
        return torch.where(mask[..., None], h, 0.0).sum(1) / mask.sum(1, keepdim=True)

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        padded = np.full((len(ids), max(map(len, ids))), self.pad_id, dtype=np.int64)
        for row, seq in zip(padded, ids):
            row[: len(seq)] = seq
        ids_t = torch.from_numpy(padded).to(self.device)
        mask = (torch.arange(padded.shape[1]) < torch.tensor([len(s) for s in ids])[:, None]).to(self.device)
        vec = self._pool(self.model, ids_t, mask)
        if not torch.isfinite(vec).all():
            if self._fp32_model is None:
                raise RuntimeError(f"DNABERT {self.name}: non-finite embeddings in fp32")
            if not self._fp32_on_device:
                self._fp32_model, self._fp32_on_device = self._fp32_model.to(self.device), True
            vec = self._pool(self._fp32_model, ids_t, mask)
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


def load_dnabert_parts(spec: str) -> tuple[DNABERT2, object, Path]:
    """Directory or hub id -> (fp32 CPU model, tokenizer, weights file). Reads only data files."""
    directory = resolve_dnabert_dir(spec)
    cfg = read_config(directory)
    tokenizer = read_tokenizer(directory, cfg)
    checkpoint, weights = read_weights(directory)
    return build_model(cfg, checkpoint, weights), tokenizer, weights
