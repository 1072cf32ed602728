"""Packed ESM-2 forward for GPUs: no padding, variable-length attention, compiled dense layers.

Why: padded fp32 batches leave the GPU far below its matmul ceiling (measured:
benchmarks/esm2_throughput.py). Here a bag's
proteins are length-sorted and packed end to end into token-budget batches (one (T, D) matrix, no
pad rows except a short tail), attention runs per sequence through a varlen kernel (memory-efficient
attention by default: its 64-row tiles suit 50-residue proteins better than flash's 128), and the
dense parts run as three torch.compile'd graphs (first layer's input half; one layer's output half
with the next layer's input half, so the residual add and the next LayerNorm are one kernel; the last
layer's output half). By default the graphs are compiled once for every T (dimension 0 dynamic);
`dynamic_shapes=False` compiles one graph per bucketed T instead (a bounded set of shapes).

The maths is the padded ESM2 module's (encoders/esm2.py), reading the same parameters:
- rotary positions restart at 0 on each sequence's BOS; cos/sin and the rotation are in fp32;
- q is not pre-scaled: the kernel's default scale head_dim^-0.5 is the same factor (rotary is linear);
- pooling is a segment mean on the GPU over residue positions 1..min(L, 1024);
- one deliberate difference in fp16/bf16 on a GPU: fc1's GELU runs in the GEMM epilogue in its tanh
  form (within 5e-4 of erf, below half precision's resolution; fp32 keeps erf).
With precision "int8" the same maths runs its linear layers as int8 GEMMs (encoders/int8.py): q, k
and v become one GEMM, each activation is quantised per token in the kernel that makes it (the
residual add + LayerNorm + quantisation is one kernel), and fc1's GELU runs in the int8 kernel's
epilogue (tanh form like fp16's unless exact_gelu, then erf). That forward is eager (``int8_layers``):
every step is already one kernel of ours, so there is nothing to compile at startup.
On CPU (tests, CI) the same packing runs with SDPA under a block-diagonal mask instead of a varlen
kernel, so packing, positions and pooling are checked against the padded path without a GPU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import activation_precision
from .batching import Harvest, InFlight, copy_to_host, pack_sizes, to_device
from .esm2 import (
    CLS, EOS, MASK, PAD, POOL_LIMIT, ESM2, ESM2Encoder, mean_residues, pad_batch, plan_batches,
    rotary_cos_sin, tokenize_many,
)
from .int8 import (SMOOTHINGS, Int8Weight, absmax_scale, concat, int8_linear, int8_linear_absmax,
                   layer_norm_quantize, layer_norm_range, quantize, quantize_weight, smoothing_scales, value_range)
from .layers import layer_norm_fp32

# (T, H, hd) packed q/k/v and the batch's segments -> (T, H, hd): the packed form of layers.Attend
AttentionBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "DeviceProteinBatch"], torch.Tensor]

MIN_BUCKET = 256          # smallest packed length compiled
BUDGET_QUANTUM = 512      # budgets are multiples of this, so the top bucket equals the budget
MAX_BUDGET = 65536        # tokens per batch past which the matmuls are no faster (measured:
                          # benchmarks/esm2_throughput.py)
MIN_BUDGET = 2048
FP32_RECOMPUTE_TOKENS = 16384  # padded fp32 sub-batches when a batch is recomputed
TAIL_CHUNK = 128          # the tail padding attends in chunks this long (cheap, never pooled)
DYNAMIC_ALIGN = 64        # with dynamic shapes, packed lengths are only rounded up to this


# ---------------------------------------------------------------------------------------------------
# Planning: length-sorted runs under a token budget, bucketed packed lengths
# ---------------------------------------------------------------------------------------------------


def packed_size(lengths: np.ndarray) -> np.ndarray:
    """Tokens a protein takes in a packed batch: residues plus BOS and EOS."""
    return np.asarray(lengths, dtype=np.int64) + 2


def plan_packs(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Index arrays, in ascending length order, each packing to at most `budget` tokens (BOS and
    EOS counted); a protein longer than the budget on its own gets a batch to itself."""
    return pack_sizes(packed_size(lengths), budget)


def split_to_budget(index: np.ndarray, lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Re-plan one batch under a (lowered) budget, keeping its order."""
    return [index[part] for part in plan_packs(lengths[index], budget)]


def bucket_step(budget: int) -> int:
    return max(MIN_BUCKET, -(-budget // 8 // 64) * 64)


def bucket_tokens(n: int, budget: int) -> int:
    """Packed length T >= n from a bounded set: multiples of budget/8, powers of two below that.

    At most 8 + log2(budget/8/256) shapes per budget (13 for 64k), so torch.compile compiles a few
    graphs once; padding is at most one step, and only the last batch of a bag is usually short."""
    step = bucket_step(budget)
    if n > step:
        return -(-n // step) * step
    size = MIN_BUCKET
    while size < n:
        size *= 2
    return min(size, step)


def bucket_sizes(budget: int) -> list[int]:
    """Every packed length ``bucket_tokens`` can return for batches within ``budget``."""
    step, sizes, size = bucket_step(budget), [], MIN_BUCKET
    while size < step:
        sizes.append(size)
        size *= 2
    return sizes + [step * i for i in range(1, -(-budget // step) + 1)]


def max_buckets(budget: int) -> int:
    step = bucket_step(budget)
    return 8 + max(1, int(np.log2(step / MIN_BUCKET)) + 1) + 4  # + a few oversize single proteins


# ---------------------------------------------------------------------------------------------------
# A packed batch on the host (numpy, built without a per-protein loop except the residue concat)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProteinBatch:
    """One packed batch: token stream of length T (the bucket), sequences back to back, tail of PAD.

    cu_seqlens delimits attention segments: each protein, then the tail in TAIL_CHUNK pieces.
    Pooled rows are `pool_index` tokens, summed into `pool_segment` and divided by `counts`."""

    index: np.ndarray          # (B,) rows of the caller's input, in packed order
    tokens: np.ndarray         # (T,) int64
    positions: np.ndarray      # (T,) int64, 0 at each BOS
    token_scale: np.ndarray    # (T,) float32: token-dropout rescale; 0 on <mask> tokens and the tail
    cu_seqlens: np.ndarray     # (S+1,) int32, S >= B
    max_seqlen: int
    pool_index: np.ndarray     # (P,) int64 token positions pooled
    pool_segment: np.ndarray   # (P,) int64 protein number in the batch
    counts: np.ndarray         # (B,) float32 residues pooled per protein

    @property
    def real_tokens(self) -> int:
        return int(self.cu_seqlens[len(self.index)])

    def to(self, device: torch.device) -> DeviceProteinBatch:
        """The arrays on ``device`` (batching.to_device: pinned, non-blocking on CUDA)."""
        return DeviceProteinBatch(
            tokens=to_device(self.tokens, device), positions=to_device(self.positions, device),
            token_scale=to_device(self.token_scale, device), cu_seqlens=to_device(self.cu_seqlens, device),
            max_seqlen=self.max_seqlen, pool_index=to_device(self.pool_index, device),
            pool_segment=to_device(self.pool_segment, device), counts=to_device(self.counts, device),
        )


def pack(ids: Sequence[np.ndarray], index: np.ndarray, total: int, *, token_dropout: bool = True,
         pool_limit: int = POOL_LIMIT) -> ProteinBatch:
    """Pack proteins `ids[i] for i in index` into `total` tokens (total >= their packed size)."""
    lens = np.fromiter((len(ids[i]) for i in index), dtype=np.int64, count=len(index))
    sizes = packed_size(lens)
    used = int(sizes.sum())
    if total < used:
        raise ValueError(f"packed length {total} < {used} tokens needed")
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    segment = np.repeat(np.arange(len(index)), sizes)
    positions = np.zeros(total, dtype=np.int64)
    positions[:used] = np.arange(used) - starts[segment]
    residue = (positions[:used] >= 1) & (positions[:used] <= lens[segment])
    tokens = np.full(total, PAD, dtype=np.int64)
    tokens[starts] = CLS
    tokens[starts + sizes - 1] = EOS
    tokens[:used][residue] = np.concatenate([ids[i] for i in index])
    is_mask = tokens[:used] == MASK
    scale = np.ones(len(index), dtype=np.float32)
    if token_dropout:  # fair-esm: x * (1 - 0.15*0.8) / (1 - mask fraction of the whole sequence)
        mask_ratio = np.add.reduceat(is_mask, starts).astype(np.float32) / sizes.astype(np.float32)
        scale = np.float32(1 - 0.15 * 0.8) / (1 - mask_ratio)
    token_scale = np.zeros(total, dtype=np.float32)
    token_scale[:used] = np.where(is_mask | (tokens[:used] == PAD), 0.0, scale[segment])
    tail = total - used
    tail_sizes = [TAIL_CHUNK] * (tail // TAIL_CHUNK) + ([tail % TAIL_CHUNK] if tail % TAIL_CHUNK else [])
    cu = np.concatenate(([0], np.cumsum(np.concatenate((sizes, tail_sizes)).astype(np.int64))))
    positions[used:] = np.arange(tail) % TAIL_CHUNK
    pooled = residue & (positions[:used] <= pool_limit)
    pool_index = np.flatnonzero(pooled)
    return ProteinBatch(
        index=np.asarray(index), tokens=tokens, positions=positions, token_scale=token_scale,
        cu_seqlens=cu.astype(np.int32), max_seqlen=int(max(sizes.max(), min(tail, TAIL_CHUNK))),
        pool_index=pool_index, pool_segment=segment[pool_index],
        counts=np.minimum(lens, pool_limit).astype(np.float32),
    )


@dataclass(frozen=True)
class DeviceProteinBatch:
    """A ProteinBatch's tensors on the compute device."""

    tokens: torch.Tensor
    positions: torch.Tensor
    token_scale: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    pool_index: torch.Tensor
    pool_segment: torch.Tensor
    counts: torch.Tensor


# ---------------------------------------------------------------------------------------------------
# Attention backends: (T, H, hd) packed q/k/v -> (T, H, hd), never across segments
# ---------------------------------------------------------------------------------------------------


def varlen_available(device: torch.device) -> bool:
    """varlen_attn is importable and the card runs flash attention (compute capability >= 8.0)."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: DeviceProteinBatch) -> torch.Tensor:
    """Flash varlen attention (fp16/bf16, CUDA); default scale head_dim^-0.5."""
    from torch.nn.attention.varlen import varlen_attn

    cu, n = batch.cu_seqlens, batch.max_seqlen
    return varlen_attn(q, k, v, cu, cu, n, n)


def attend_efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: DeviceProteinBatch) -> torch.Tensor:
    """Memory-efficient (cutlass) varlen attention, the GPU default: its 64-row tiles fit short
    proteins, where flash's 128-row tile per protein and head is mostly empty (faster on
    50-residue proteins, measured: benchmarks/probes/attention_varlen.py); default scale head_dim^-0.5."""
    cu, n = batch.cu_seqlens, batch.max_seqlen
    out = torch.ops.aten._efficient_attention_forward(q[None], k[None], v[None], None, cu, cu, n, n,
                                                      0.0, 0)[0]
    return out[0]


def segment_labels(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(T,) attention segment of each token, from cu_seqlens."""
    sizes = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(torch.arange(len(sizes), device=cu_seqlens.device), sizes.long(),
                                   output_size=total)


def attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: DeviceProteinBatch) -> torch.Tensor:
    """SDPA under a block-diagonal mask: the CPU stand-in for varlen_attn (O(T^2) memory: tests only)."""
    seg = segment_labels(batch.cu_seqlens, q.shape[0])
    mask = seg[:, None] == seg[None, :]
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask)
    return out.transpose(0, 1)


ATTENTION: dict[str, AttentionBackend] = {"efficient": attend_efficient, "varlen": attend_varlen,
                                "masked": attend_masked}


# ---------------------------------------------------------------------------------------------------
# Dense layer halves (compiled on GPU): functions of tensors only, so one graph serves all layers
# ---------------------------------------------------------------------------------------------------


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary in fp32 on (T, H, hd) with (T, hd) cos/sin; returns x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]).to(x.dtype)


def attention_inputs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ln_w: torch.Tensor,
                     ln_b: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor, wk: torch.Tensor,
                     bk: torch.Tensor, wv: torch.Tensor, bv: torch.Tensor, heads: int,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LN1, q/k/v projections, rotary on q and k: (T, D) -> three (T, H, hd)."""
    h = layer_norm_fp32(x, ln_w, ln_b, eps)
    shape = (x.shape[0], heads, x.shape[1] // heads)
    q = _rotate(F.linear(h, wq, bq).view(shape), cos, sin)
    k = _rotate(F.linear(h, wk, bk).view(shape), cos, sin)
    return q, k, F.linear(h, wv, bv).view(shape)


@torch.library.custom_op("virnuc_hpc::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ w.T + b) with the GELU in the GEMM's epilogue on CUDA (cuBLASLt GELU_BIAS).

    Saves the GELU kernel's round trip of the (T, 4D) activation through memory. cuBLASLt's epilogue
    is the tanh approximation (within 5e-4 of the erf form); the CPU path computes the same formula.
    A custom op, so that Inductor calls it as is instead of decomposing it into GEMM + GELU."""
    if x.is_cuda:
        return torch._addmm_activation(b, x, w.t(), use_gelu=True)
    return F.gelu(F.linear(x, w, b), approximate="tanh")


@linear_gelu_tanh.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], w.shape[0]))


def attention_output_and_ffn(x: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor,
                             ln_w: torch.Tensor, ln_b: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                             w2: torch.Tensor, b2: torch.Tensor, eps: float,
                             gelu_epilogue: bool = False) -> torch.Tensor:
    """x + out_proj(attn), then x + fc2(gelu(fc1(LN2(x)))): erf GELU, or with `gelu_epilogue` the
    tanh form fused into fc1's GEMM."""
    x = x + F.linear(attn.flatten(1), wo, bo)
    h = layer_norm_fp32(x, ln_w, ln_b, eps)
    g = linear_gelu_tanh(h, w1, b1) if gelu_epilogue else F.gelu(F.linear(h, w1, b1))
    return x + F.linear(g, w2, b2)


def ffn_then_next_inputs(x: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor,
                         ln2_w: torch.Tensor, ln2_b: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                         w2: torch.Tensor, b2: torch.Tensor, eps2: float, gelu_epilogue: bool,
                         cos: torch.Tensor, sin: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor,
                         wq: torch.Tensor, bq: torch.Tensor, wk: torch.Tensor, bk: torch.Tensor,
                         wv: torch.Tensor, bv: torch.Tensor, heads: int,
                         eps1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's second half and the next layer's first half in one graph, so that the residual
    add after fc2 and the next LayerNorm are one kernel (x is written once and not read back)."""
    x = attention_output_and_ffn(x, attn, wo, bo, ln2_w, ln2_b, w1, b1, w2, b2, eps2, gelu_epilogue)
    return (x, *attention_inputs(x, cos, sin, ln_w, ln_b, wq, bq, wk, bk, wv, bv, heads, eps1))


# --- int8 (precision "int8"): eager, every step one kernel of ours (encoders/int8.py) -----------------
# Nothing is left for TorchInductor to fuse (the residual add, LayerNorm and quantisation are one
# kernel, rotary another), so the int8 forward is not compiled: a cold start spends no time compiling
# graphs, only Triton's few kernels.


@dataclass(frozen=True)
class Int8Layer:
    """One transformer layer for the int8 forward: LayerNorms as (weight, bias, eps), linear layers
    quantised once (q, k and v stacked into one GEMM), with ``smoothing`` "weights" the outlier
    channels first migrated into the weights (int8.smoothing_scales; an exact rewrite in fp32)."""

    ln1: tuple[torch.Tensor, torch.Tensor, float]
    qkv: Int8Weight
    out: Int8Weight
    ln2: tuple[torch.Tensor, torch.Tensor, float]
    fc1: Int8Weight
    fc2: Int8Weight

    @classmethod
    def of(cls, layer: torch.nn.Module, dtype: torch.dtype, smoothing: str = "weights") -> Int8Layer:
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"int8 smoothing must be one of {SMOOTHINGS}, not {smoothing!r}")
        attn, norm1, norm2 = layer.self_attn, layer.self_attn_layer_norm, layer.final_layer_norm
        f32 = [p.detach().float() for p in (
            norm1.weight, norm1.bias, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
            attn.v_proj.bias, attn.out_proj.weight, norm2.weight, norm2.bias, layer.fc1.weight)]
        g1, b1, wq, wk, wv, bv, wo, g2, b2, w1 = f32
        if smoothing == "weights":
            s1 = smoothing_scales(layer_norm_range(g1, b1), torch.cat([wq, wk, wv]))
            sv = smoothing_scales(value_range(wv, bv, g1, b1), wo)
            s2 = smoothing_scales(layer_norm_range(g2, b2), w1)
            g1, b1, wq, wk = g1 / s1, b1 / s1, wq * s1, wk * s1
            wv, bv, wo = wv * s1 / sv[:, None], bv / sv, wo * sv
            g2, b2, w1 = g2 / s2, b2 / s2, w1 * s2

        def ln(weight: torch.Tensor, bias: torch.Tensor, like: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
            return weight.to(like.weight.dtype).contiguous(), bias.to(like.bias.dtype).contiguous(), like.eps

        return cls(ln(g1, b1, norm1),
                   concat([quantize_weight(wq, attn.q_proj.bias, dtype), quantize_weight(wk, attn.k_proj.bias, dtype),
                           quantize_weight(wv, bv, dtype)]),
                   quantize_weight(wo, attn.out_proj.bias, dtype), ln(g2, b2, norm2),
                   quantize_weight(w1, layer.fc1.bias, dtype), quantize_weight(layer.fc2.weight, layer.fc2.bias, dtype))


def rotary_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, 3D) q/k/v rows -> (T, H, hd) q and k rotated (fp32 maths), v a view of qkv."""
    T, D = qkv.shape[0], qkv.shape[1] // 3
    shape = (T, heads, D // heads)
    if qkv.is_cuda:
        from .int8_triton import rotary_qk as rotary_qk_cuda

        q, k = (part.view(shape) for part in rotary_qk_cuda(qkv, cos, sin))
    else:
        q, k = (_rotate(part.reshape(shape), cos, sin) for part in qkv[:, :2 * D].split(D, dim=1))
    return q, k, qkv[:, 2 * D:].view(shape)


def int8_layers(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: DeviceProteinBatch,
                layers: Sequence[Int8Layer], attend: AttentionBackend, heads: int, gelu: str) -> torch.Tensor:
    """Every layer of the int8 forward over the (T, D) residual stream, as the reference's layers:
    x += out_proj(attention(LN1(x))); x += fc2(gelu(fc1(LN2(x)))), each GEMM's input quantised per
    token where it is made (the next LayerNorm's kernel, or fc1's row maxima)."""
    x, *h = layer_norm_quantize(x, None, *layers[0].ln1)
    for i, layer in enumerate(layers):
        q, k, v = rotary_qk(int8_linear(*h, *layer.qkv.tensors()), cos, sin, heads)
        out = int8_linear(*quantize(attend(q, k, v, batch).flatten(1)), *layer.out.tensors())
        x, *h = layer_norm_quantize(x, out, *layer.ln2)
        g, g_max = int8_linear_absmax(*h, *layer.fc1.tensors(), gelu)
        ffn = int8_linear(*quantize(g, absmax_scale(g_max)), *layer.fc2.tensors())
        if i + 1 < len(layers):
            x, *h = layer_norm_quantize(x, ffn, *layers[i + 1].ln1)
        else:
            x = x + ffn
    return x


def _layer_weights(layer: torch.nn.Module) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(input half, output half) arguments of one layer for the fp16/bf16 graphs."""
    attn = layer.self_attn
    return (tuple(p.detach() for p in (
        layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias, attn.q_proj.weight,
        attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight, attn.v_proj.bias)),
        tuple(p.detach() for p in (
            attn.out_proj.weight, attn.out_proj.bias, layer.final_layer_norm.weight, layer.final_layer_norm.bias,
            layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)))


class PackedESM2:
    """Packed forward over an ESM2 module's parameters (shared, not copied; int8 copies when quantised).

    fp16/bf16/fp32: three layer graphs, compiled when `compile_layers`; int8: ``int8_layers``, eager."""

    def __init__(self, model: ESM2, attention: str, compile_layers: bool, max_shapes: int = 32, *,
                 gelu_epilogue: bool = False, dynamic: bool = False, quantized: bool = False,
                 int8_smoothing: str = "weights"):
        self.model, self.attend = model, ATTENTION[attention]
        self.gelu_epilogue, self.dynamic, self.quantized = gelu_epilogue, dynamic, quantized
        self.heads = model.attention_heads
        self._inv_freq = model.inv_freq.to(model.embed_tokens.weight.device)
        if quantized:
            self._int8 = [Int8Layer.of(layer, self.dtype, int8_smoothing) for layer in model.layers]
            if compile_layers:  # nothing to compile but Triton's kernels: into the same node-shared cache
                from .compile import configure_compile_cache

                configure_compile_cache()
            return
        halves = [_layer_weights(layer) for layer in model.layers]
        self._in_weights = [h[0] for h in halves]
        self._out_weights = [h[1] for h in halves]
        self._eps = [(layer.self_attn_layer_norm.eps, layer.final_layer_norm.eps) for layer in model.layers]
        graphs = (attention_inputs, ffn_then_next_inputs, attention_output_and_ffn)
        if compile_layers:
            from .compile import compile_dynamic, compile_static, configure_compile_cache

            configure_compile_cache()
            # dynamic: one graph for every packed length T (the GEMMs are cuBLAS calls anyway)
            graphs = tuple(compile_dynamic(g) if dynamic else compile_static(g, max_shapes) for g in graphs)
        self._first, self._middle, self._last = graphs

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def __call__(self, batch: DeviceProteinBatch) -> torch.Tensor:
        """(B, D) fp32 pooled vectors of one packed batch."""
        model = self.model
        x = model.embed_tokens(batch.tokens) * batch.token_scale[:, None].to(self.dtype)
        cos, sin = rotary_cos_sin(batch.positions, self._inv_freq)
        heads, gelu = self.heads, self.gelu_epilogue
        if self.quantized:
            x = int8_layers(x, cos, sin, batch, self._int8, self.attend, heads, "tanh" if gelu else "erf")
            return segment_mean(model.emb_layer_norm_after, x, batch)
        mark = _mark_tokens_dynamic if self.dynamic else lambda *tensors: None
        mark(x, cos, sin)
        eps = self._eps
        q, k, v = self._first(x, cos, sin, *self._in_weights[0], heads, eps[0][0])
        for i, w_out in enumerate(self._out_weights):
            attn = self.attend(q, k, v, batch)
            mark(x, attn)
            if i + 1 < len(self._out_weights):
                x, q, k, v = self._middle(x, attn, *w_out, eps[i][1], gelu, cos, sin,
                                          *self._in_weights[i + 1], heads, eps[i + 1][0])
            else:
                x = self._last(x, attn, *w_out, eps[i][1], gelu)
        return segment_mean(model.emb_layer_norm_after, x, batch)


def _mark_tokens_dynamic(*tensors: torch.Tensor) -> None:
    """Compile for any packed length T (dimension 0), not for this one."""
    for t in tensors:
        torch._dynamo.mark_dynamic(t, 0)


def segment_mean(final_norm: torch.nn.Module, x: torch.Tensor, batch: DeviceProteinBatch) -> torch.Tensor:
    """Final LayerNorm on the pooled tokens only, then per-protein means (one index_add, no loop)."""
    rep = final_norm(x.index_select(0, batch.pool_index).float())
    out = torch.zeros(len(batch.counts), rep.shape[1], device=rep.device, dtype=torch.float32)
    out.index_add_(0, batch.pool_segment, rep)
    return out / batch.counts[:, None]


# ---------------------------------------------------------------------------------------------------
# Token budget from free memory
# ---------------------------------------------------------------------------------------------------


def bytes_per_token(embed_dim: int, dtype: torch.dtype) -> int:
    """Peak activation bytes per packed token: residual, LN, q/k/v, attention and the 4D FFN
    intermediates in the activation dtype, plus fp32 rotary/pooling temporaries (rounded up)."""
    elem = torch.finfo(dtype).bits // 8
    return embed_dim * (16 * elem + 8) + 1024


def derive_token_budget(device: torch.device, embed_dim: int, dtype: torch.dtype, *,
                        fraction: float = 0.5, ceiling: int = MAX_BUDGET) -> int:
    """Tokens per batch from the card's free memory (after the weights are loaded), capped where
    bigger batches stop paying: `fraction` of free memory over `bytes_per_token`."""
    if device.type != "cuda":
        return min(ceiling, 16384)
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(free * fraction) // bytes_per_token(embed_dim, dtype)
    budget = min(fit, ceiling) // BUDGET_QUANTUM * BUDGET_QUANTUM
    return max(budget, MIN_BUDGET)


# ---------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, also when torch.compile wraps it (an OOM while compiling or autotuning a new shape)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass(frozen=True)
class PreparedProteins:
    """Proteins tokenised on the host, ready for ``PackedESM2Encoder.embed``."""

    ids: list[np.ndarray]
    lengths: np.ndarray


class PackedESM2Encoder(ESM2Encoder):
    """ESM2Encoder with packed batches: same API, stats and fp32 fallback, much less waste.

    Batches run asynchronously (batching.Harvest, one batch left in flight): while the GPU computes
    batch i the host packs batch i+1 and unloads batch i-1, whose pooled rows come back through
    pinned memory on a side stream. Guards:
    - a batch with any non-finite vector is recomputed in fp32 (padded reference path) and counted in
      stats["nonfinite_recomputed_batches"];
    - CUDA OOM splits the batch in two, lowers the token budget and retries; counted in
      stats["oom_split_batches"]. Neither loses or reorders a protein: rows land at their input index.
    """

    def __init__(self, model: ESM2, *, name: str, device: torch.device, precision: str,
                 max_tokens: int | None = None, path: Path | None = None,
                 pool_limit: int = POOL_LIMIT, attention: str | None = None,
                 compile_layers: bool | None = None, gelu_epilogue: bool | None = None,
                 dynamic_shapes: bool = True, int8_smoothing: str = "weights"):
        super().__init__(model, name=name, device=device, precision=precision, max_tokens=max_tokens,
                         path=path, pool_limit=pool_limit)
        self.attention = attention or ("efficient" if device.type == "cuda" else "masked")
        self.compile_layers = device.type == "cuda" if compile_layers is None else compile_layers
        self.token_budget = max_tokens or derive_token_budget(device, model.embed_dim, dtype=self.dtype)
        # fp16/bf16 on a GPU: fc1's GELU in the GEMM epilogue (tanh form, within half-precision noise
        # of erf, measured: benchmarks/esm2_variants.py); fp32 keeps the exact erf GELU of the reference
        if gelu_epilogue is None:
            gelu_epilogue = device.type == "cuda" and precision != "fp32"
        self.gelu_epilogue, self.dynamic_shapes = gelu_epilogue, dynamic_shapes
        self.forward = self._packed(quantized=precision == "int8", compile_layers=self.compile_layers,
                                    int8_smoothing=int8_smoothing)
        self.int8_smoothing = int8_smoothing if precision == "int8" else None
        self.runner: Callable[[DeviceProteinBatch], torch.Tensor] = self.forward
        self.stats["oom_split_batches"] = 0
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _packed(self, *, quantized: bool, compile_layers: bool, int8_smoothing: str = "weights") -> PackedESM2:
        return PackedESM2(self.model, self.attention, compile_layers, max_shapes=3 * max_buckets(self.token_budget),
                          gelu_epilogue=self.gelu_epilogue, dynamic=self.dynamic_shapes, quantized=quantized,
                          int8_smoothing=int8_smoothing)

    def embed_both(self, proteins: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(int8 rows, half-precision rows) of the same proteins: the int8 run's self-check.

        The half-precision forward runs eagerly (nothing is compiled for a check of a few hundred
        frames) over the same parameters; the counters are left as they were."""
        if not self.forward.quantized:
            raise ValueError(f"{self.name} runs in {self.precision}, not int8: nothing to compare")
        stats = dict(self.stats)
        try:
            quantized = self.embed(proteins)
            self.runner = self._packed(quantized=False, compile_layers=False)
            half = self.embed(proteins)
        finally:
            self.runner = self.forward
            self.stats.update(stats)
        return quantized, half

    def fall_back_from_int8(self) -> None:
        """Go on in the activation precision (fp16 on a GPU) and drop the int8 weights: the run's
        self-check found int8 drifting too far on these weights (runtime/int8_check.py)."""
        if not self.forward.quantized:
            return
        self.forward = self._packed(quantized=False, compile_layers=self.compile_layers)
        self.runner = self.forward
        self.precision = activation_precision(self.precision, self.device)
        self.int8_smoothing = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def max_tokens(self) -> int:
        """The token budget per packed batch (the padded base class's name for it)."""
        return self.token_budget

    @max_tokens.setter
    def max_tokens(self, value: int) -> None:
        self.token_budget = value

    def warm_up(self) -> None:
        """Compile every bucket shape now (worker startup), not inside the first bags.

        With the node-shared compile cache a second worker on the node mostly reads the cache."""
        stats = dict(self.stats)
        sizes = [MIN_BUCKET, self.token_budget] if self.dynamic_shapes else bucket_sizes(self.token_budget)
        for size in sizes:  # 48 aa + BOS/EOS = 50 tokens each
            self.embed(["A" * 48] * max(1, size // 50))
        self.stats.update(stats)  # warm-up is not work done for the run

    def prepare(self, proteins: Sequence[str]) -> PreparedProteins:
        """Tokenise now, without the device (a worker does it for its next bag while the GPU embeds
        the current one); ``embed`` accepts the result."""
        ids = tokenize_many(list(proteins))
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        if len(ids) and lengths.min() == 0:
            raise ValueError(f"protein #{int(np.argmin(lengths))} is empty; an empty protein has no embedding")
        return PreparedProteins(ids, lengths)

    def embed(self, proteins: Sequence[str] | PreparedProteins) -> np.ndarray:
        """(N, dim) float32, row i for proteins[i]."""
        prepared = proteins if isinstance(proteins, PreparedProteins) else self.prepare(proteins)
        ids, lengths = prepared.ids, prepared.lengths
        out = np.full((len(ids), self.dim), np.nan, dtype=np.float32)
        queue = deque(plan_packs(lengths, self.token_budget))
        harvest = Harvest(out, lambda index: self._recompute_fp32([ids[i] for i in index]), self.stats,
                          ahead=1)
        while queue:
            index = queue.popleft()
            if len(index) > 1 and packed_size(lengths[index]).sum() > self.token_budget:
                queue.extendleft(reversed(split_to_budget(index, lengths, self.token_budget)))
                continue
            try:
                submitted = self._submit(ids, lengths, index)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                queue.extendleft(reversed(self._after_oom(index, lengths)))
                continue
            harvest.add(submitted)
        harvest.drain()
        self.stats["sequences"] += len(ids)
        self.stats["tokens"] += int(packed_size(lengths).sum())
        return out

    @torch.inference_mode()
    def _submit(self, ids: list[np.ndarray], lengths: np.ndarray, index: np.ndarray) -> InFlight:
        """Pack, copy in, launch the forward and the copy out; returns without waiting for the GPU."""
        needed = int(packed_size(lengths[index]).sum())
        total = (-(-needed // DYNAMIC_ALIGN) * DYNAMIC_ALIGN if self.dynamic_shapes
                 else bucket_tokens(needed, self.token_budget))
        host = pack(ids, index, total, token_dropout=self.model.token_dropout, pool_limit=self.pool_limit)
        pooled = self.runner(host.to(self.device))
        finite = torch.isfinite(pooled).all(dim=1)
        self.stats["batches"] += 1
        self.stats["padded_tokens"] += total
        return copy_to_host(host.index, pooled, finite, self._copy_stream)

    @torch.inference_mode()
    def _recompute_fp32(self, ids: list[np.ndarray]) -> np.ndarray:
        """Padded fp32 reference path over the batch's proteins (varlen_attn has no fp32 kernel)."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        rows = np.empty((len(ids), self.dim), dtype=np.float32)
        model = self.fp32.get()
        for part in plan_batches(lengths, FP32_RECOMPUTE_TOKENS):
            tokens, lens = pad_batch([ids[i] for i in part])
            rows[part] = mean_residues(model(tokens.to(self.device)), lens, self.pool_limit).cpu().numpy()
        return rows

    def _after_oom(self, index: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Halve the failed batch, lower the budget to what that half needs; count it."""
        if len(index) == 1:
            raise torch.cuda.OutOfMemoryError(
                f"ESM-2: one protein of {int(lengths[index[0]])} residues does not fit in GPU memory")
        self.stats["oom_split_batches"] += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(index) // 2
        needed = int(packed_size(lengths[index]).sum())
        lowered = max(MIN_BUCKET, needed // 2 // MIN_BUCKET * MIN_BUCKET)
        self.token_budget = min(self.token_budget, lowered)
        return [index[:half], index[half:]]
