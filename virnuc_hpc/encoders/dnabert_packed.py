"""Packed DNABERT-2 encoder: no padding, no (B, H, L, L) bias, one compiled layer for all layers.

Why: padded SDPA with a materialised ALiBi bias wastes the GPU on pad tokens and on writing and
reading the bias. Here nucleotides are tokenised ahead on a host thread, sorted by token length and
packed back to back into fixed-size token batches (a fixed shape compiles once). Attention is
FlexAttention with a block mask that skips blocks of other sequences and a score modifier that adds
-slope_h * |i - j| inside a sequence and -inf across sequences; ALiBi needs no per-sequence positions
because packed sequences are contiguous, so |i - j| of packed indices is the in-sequence distance.

The same packing, segment ids, block-mask parts and score modifier drive a dense reference path
(SDPA with the score modifier evaluated into a block-diagonal bias), so CPU tests check the GPU logic.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..devices import resolve_device, resolve_precision
from .batching import Harvest, InFlight, Prefetch, copy_to_host, pack_sizes, pin, to_device
from .contract import EngineHook
from .dnabert import (
    DEFAULT_MAX_TOKENS, DNABERT2, DNABERTLayer, fp32_weights, pad_ids, plan_padded_batches, pool_padded,
    run_model, weights_sha256,
)

BLOCK = 128                 # FlexAttention's default block; batches are a multiple of it
GPU_BUDGET = 65536          # tokens per packed batch on a GPU (measured: benchmarks/dnabert_throughput.py)
CPU_BUDGET = 1024           # dense reference path: the bias is (H, T, T)
Attention = Literal["flex", "dense"]
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- packing (host, numpy)

def batch_size(tokens: int, budget: int) -> int:
    """Packed batch length: the budget (one compiled shape), more only for an over-long sequence."""
    return max(budget, -(-tokens // BLOCK) * BLOCK)


def segment_ids(lengths: Sequence[int], total: int) -> np.ndarray:
    """(total,) int32: sequence number of each packed token; the tail padding is segment len(lengths)."""
    seg = np.full(total, len(lengths), dtype=np.int32)
    seg[: int(np.sum(lengths))] = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    return seg


def block_mask_parts(segments: np.ndarray, n_real: int) -> tuple[np.ndarray, ...]:
    """FlexAttention block tables from contiguous segments: (kv_num, kv_idx, full_num, full_idx).

    Query block i needs key block j iff their segment ranges overlap; the pair is *full* (no
    per-element mask needed) iff both blocks lie in one and the same sequence. Blocks holding only
    padding attend nothing (their output is zero and discarded). Shapes (1, 1, n) / (1, 1, n, n)."""
    blocks = segments.reshape(-1, BLOCK)
    lo, hi = blocks[:, 0], np.minimum(blocks[:, -1], n_real - 1)  # padding only in its own block
    overlap = (lo[None, :] <= hi[:, None]) & (lo[:, None] <= hi[None, :])
    single = lo == blocks[:, -1]  # one sequence, no padding
    full = overlap & (single[:, None] & single[None, :])
    partial = overlap & ~full
    return (*_ordered(partial), *_ordered(full))


def _ordered(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (n, n) -> (counts (1,1,n), indices (1,1,n,n)) with each row's True columns first."""
    counts = dense.sum(1).astype(np.int32)
    indices = np.argsort(~dense, axis=1, kind="stable").astype(np.int32)
    return counts[None, None], indices[None, None]


@dataclass
class NucleotideBatch:
    """One packed batch, built on the host; ``to`` moves the tensors (non-blocking from pinned)."""
    index: np.ndarray     # (n,) positions of these sequences in the caller's list
    ids: Tensor           # (T,) int32 token ids, tail padded
    segments: Tensor      # (T,) int32, see segment_ids
    lengths: Tensor       # (n,) float32 token counts ([CLS] and [SEP] included)
    kv_num: Tensor
    kv_idx: Tensor
    full_num: Tensor
    full_idx: Tensor

    @property
    def n(self) -> int:
        return len(self.index)

    def to(self, device: torch.device) -> "NucleotideBatch":
        """The tensors on ``device`` (batching.to_device: pinned, non-blocking on CUDA)."""
        return NucleotideBatch(index=self.index, **{k: to_device(getattr(self, k), device) for k in _TENSORS})

    def pin(self) -> "NucleotideBatch":
        """The tensors in pinned memory (done ahead, on the host thread, for a GPU run)."""
        return NucleotideBatch(index=self.index, **{k: pin(getattr(self, k)) for k in _TENSORS})


_TENSORS = ("ids", "segments", "lengths", "kv_num", "kv_idx", "full_num", "full_idx")


def make_batch(index: Sequence[int], ids: Sequence[Sequence[int]], budget: int, pad_id: int) -> NucleotideBatch:
    """Concatenate tokenised sequences into one fixed-length packed batch with its block tables."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = batch_size(int(lengths.sum()), budget)
    flat = np.full(total, pad_id, dtype=np.int32)
    flat[: lengths.sum()] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                                        count=int(lengths.sum()))
    seg = segment_ids(lengths, total)
    parts = [torch.from_numpy(p) for p in block_mask_parts(seg, len(ids))]
    return NucleotideBatch(np.asarray(index, dtype=np.int64), torch.from_numpy(flat), torch.from_numpy(seg),
                           torch.from_numpy(lengths.astype(np.float32)), *parts)


def stream_batches(token_chunks: Iterator[tuple[np.ndarray, list[list[int]]]], budget: int,
                   pad_id: int) -> Iterator[NucleotideBatch]:
    """Tokenised chunks in -> packed batches out. Each chunk's last, partly filled batch is carried
    into the next chunk, so only the very last batch of a call is padded much."""
    carry_index: list[int] = []
    carry_ids: list[list[int]] = []
    chunks = list(itertools.islice(token_chunks, 1))
    while chunks:
        index, ids = chunks.pop()
        nxt = list(itertools.islice(token_chunks, 1))
        index_all, ids_all = carry_index + list(index), carry_ids + ids
        batches = pack_sizes([len(x) for x in ids_all], budget)
        if nxt:  # more to come: keep the partial last batch for the next round
            last = batches.pop()
            carry_index, carry_ids = [index_all[i] for i in last], [ids_all[i] for i in last]
        for b in batches:
            yield make_batch([index_all[i] for i in b], [ids_all[i] for i in b], budget, pad_id)
        chunks = nxt


# --------------------------------------------------------------------------- attention

def alibi_segment_score_mod(segments: Tensor, slopes: Tensor) -> ScoreMod:
    """score - slope_h * |q - kv| within a sequence, -inf across sequences (packed indices).

    Written with broadcasting ops only, so that it is both a FlexAttention score_mod and, on index
    grids, the dense reference bias."""
    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        same = segments[q_idx] == segments[kv_idx]
        return torch.where(same, score - slopes[h] * (q_idx - kv_idx).abs(), -float("inf"))
    return score_mod


def dense_bias(segments: Tensor, slopes: Tensor) -> Tensor:
    """(H, T, T) fp32: the score modifier evaluated on a zero score (reference / CPU path only)."""
    T, H = segments.shape[0], slopes.shape[0]
    idx = torch.arange(T, device=segments.device)
    h = torch.arange(H, device=segments.device)[:, None, None]
    zero = torch.zeros((), device=segments.device)
    return alibi_segment_score_mod(segments, slopes)(zero, zero, h, idx[None, :, None], idx[None, None, :])


_KV_KWARGS = ({"compute_q_blocks": False}
              if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters else {})


def to_block_mask(batch: NucleotideBatch) -> BlockMask:
    """Block tables -> BlockMask (inference only: the transposed tables for backward are skipped)."""
    T = batch.ids.shape[0]
    return BlockMask.from_kv_blocks(batch.kv_num, batch.kv_idx, batch.full_num, batch.full_idx,
                                    BLOCK_SIZE=BLOCK, seq_lengths=(T, T), **_KV_KWARGS)


def flex_layer(layer: DNABERTLayer, x: Tensor, segments: Tensor, slopes: Tensor,
               block_mask: BlockMask) -> Tensor:
    """One post-LN layer on a packed (T, D) batch through FlexAttention (compiled by the caller)."""
    score_mod = alibi_segment_score_mod(segments, slopes)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (T, H, d) -> (T, H, d)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)[0].transpose(0, 1)
    return layer(x, attend)


def dense_layer(layer: DNABERTLayer, x: Tensor, bias: Tensor) -> Tensor:
    """The same layer through SDPA with a block-diagonal ALiBi bias (H, T, T): the CPU reference."""
    return layer(x, lambda q, k, v: DNABERT2.attend_sdpa(q[None], k[None], v[None], bias[None])[0])


class PackedDNABERT2:
    """Packed ids -> (T, D) last hidden states. With ``compile`` one compiled region serves all
    layers (regional compilation: 12 identical layers compile once, much faster than a
    whole-model compile)."""

    def __init__(self, model: DNABERT2, attention: Attention = "flex", compile: bool = True) -> None:
        if attention not in ("flex", "dense"):
            raise ValueError(f"attention must be 'flex' or 'dense', not {attention!r}")
        self.model, self.attention = model, attention
        device = model.word_embeddings.weight.device
        self.slopes = torch.tensor(model.slopes, dtype=torch.float32, device=device)
        self.layer = flex_layer
        if compile and attention == "flex":
            from .compile import configure_compile_cache
            configure_compile_cache()  # the node-shared cache, also when ESM-2 has not set it up
            self.layer = torch.compile(flex_layer, dynamic=False)

    def __call__(self, batch: NucleotideBatch) -> Tensor:
        x = self.model.embed_tokens(batch.ids)
        if self.attention == "dense":
            bias = dense_bias(batch.segments, self.slopes).to(x.dtype)
            for layer in self.model.layers:
                x = dense_layer(layer, x, bias)
            return x
        block_mask = to_block_mask(batch)
        for layer in self.model.layers:
            x = self.layer(layer, x, batch.segments, self.slopes, block_mask)
        return x


def pool(hidden: Tensor, batch: NucleotideBatch) -> Tensor:
    """(n, D) fp32 means over each sequence's tokens ([CLS], [SEP] included), on the device."""
    sums = torch.zeros(batch.n + 1, hidden.shape[1], device=hidden.device, dtype=torch.float32)
    sums.index_add_(0, batch.segments.long(), hidden.float())
    return sums[: batch.n] / batch.lengths[:, None]


# --------------------------------------------------------------------------- the encoder

@dataclass(frozen=True)
class PreparedNucleotides:
    """Sequences tokenised and packed on the host (pinned on a GPU), ready for ``embed``."""

    sequences: list[str]
    batches: list[NucleotideBatch]


class PackedDNABERTEncoder(EngineHook):
    """Nucleotide strings -> (N, D) float32, packed: same contract as DNABERTEncoder.

    ``attention='flex'`` (compiled on CUDA) is the fast path; ``'dense'`` evaluates the same packing
    through SDPA with the block-diagonal ALiBi bias (CPU tests). Batches run asynchronously
    (batching.Harvest, two batches left in flight). In fp16/bf16 a batch with NaN/Inf is recomputed
    in fp32 on the padded path (``stats['nonfinite_recomputed_batches']``)."""

    def __init__(self, model: DNABERT2, tokenizer, *, name: str, weights: Path | None = None,
                 device: str = "auto", precision: str = "auto", max_tokens: int | None = None,
                 attention: Attention | None = None, compile: bool | None = None,
                 chunk_sequences: int = 8192, prefetch: int = 3) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        on_gpu = self.device.type == "cuda"
        self.max_tokens = max_tokens or (GPU_BUDGET if on_gpu else CPU_BUDGET)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {self.max_tokens}")
        self.max_tokens = batch_size(self.max_tokens, BLOCK)  # a whole number of blocks
        self.name, self.weights, self.tokenizer = name, weights, tokenizer
        self.dim = model.cfg.hidden_size
        pad = tokenizer.token_to_id("[PAD]")
        self.pad_id = model.cfg.pad_token_id if pad is None else pad
        self.chunk_sequences, self.prefetch = chunk_sequences, prefetch
        self.model = run_model(model, self.device, self.precision)
        self.fp32 = fp32_weights(self.model, self.precision, self.device, weights)
        attention = attention or ("flex" if on_gpu else "dense")
        self.forward = PackedDNABERT2(self.model, attention, on_gpu if compile is None else compile)
        self.runner: Callable[[NucleotideBatch], Tensor] = self.forward
        self.stats: dict[str, int] = {"sequences": 0, "tokens": 0, "padded_tokens": 0, "batches": 0,
                                      "nonfinite_recomputed_batches": 0}

    sha256 = cached_property(weights_sha256)

    # host side ---------------------------------------------------------------
    def _token_chunks(self, seqs: list[str]) -> Iterator[tuple[np.ndarray, list[list[int]]]]:
        """Tokenise in chunks (a small first one, so the GPU starts early)."""
        start, size = 0, min(1024, self.chunk_sequences)
        while start < len(seqs):
            part = seqs[start: start + size]
            encoded = self.tokenizer.encode_batch(part, add_special_tokens=True)
            yield np.arange(start, start + len(part)), [e.ids for e in encoded]
            start, size = start + len(part), self.chunk_sequences

    def _host_batches(self, seqs: list[str]) -> Iterator[NucleotideBatch]:
        pinned = self.device.type == "cuda"
        for batch in stream_batches(self._token_chunks(seqs), self.max_tokens, self.pad_id):
            yield batch.pin() if pinned else batch

    def prepare(self, nucleotides: Sequence[str]) -> PreparedNucleotides:
        """Tokenise and pack now, without the device: a worker prepares its next bag while the GPU
        embeds the current one, so the GPU never waits for the tokenizer (embed accepts the result)."""
        seqs = list(nucleotides)
        return PreparedNucleotides(seqs, list(self._host_batches(seqs)))

    # device side -------------------------------------------------------------
    def _launch(self, host: NucleotideBatch) -> InFlight:
        """Queue one batch on the device and the copy of its rows back; returns without waiting."""
        batch = host.to(self.device)
        vec = pool(self.runner(batch), batch)
        self.stats["batches"] += 1
        self.stats["tokens"] += int(host.lengths.sum())
        self.stats["padded_tokens"] += host.ids.shape[0]
        return copy_to_host(host.index, vec, torch.isfinite(vec).all())

    def _recompute_fp32(self, seqs: list[str]) -> np.ndarray:
        """Padded fp32 reference path over one batch's sequences, with the padded encoder's budgets."""
        if self.precision == "fp32":
            raise RuntimeError(f"DNABERT {self.name}: non-finite embeddings in fp32")
        model = self.fp32.get()
        ids = [e.ids for e in self.tokenizer.encode_batch(seqs, add_special_tokens=True)]
        rows = np.empty((len(ids), self.dim), dtype=np.float32)
        budget = DEFAULT_MAX_TOKENS["cpu" if self.device.type == "cpu" else "cuda"]
        for part in plan_padded_batches([len(x) for x in ids], model.cfg.num_attention_heads, budget):
            ids_t, mask = pad_ids([ids[i] for i in part], self.pad_id)
            vec = pool_padded(model, ids_t.to(self.device), mask.to(self.device))
            if not torch.isfinite(vec).all():
                raise RuntimeError(f"DNABERT {self.name}: non-finite embeddings in fp32")
            rows[part] = vec.cpu().numpy()
        return rows

    def warm_up(self) -> None:
        """Compile the one packed shape now (worker startup), not inside the first bag."""
        stats = dict(self.stats)
        self.embed(["ACGTTGCA" * 19] * 8)
        self.stats.update(stats)  # warm-up is not work done for the run

    @torch.inference_mode()
    def embed(self, nucleotides: Sequence[str] | PreparedNucleotides) -> np.ndarray:
        """(N, D) float32, row i for nucleotides[i]. Strings are tokenised on a host thread a few
        batches ahead of the GPU; a ``prepare``d input was tokenised before."""
        if isinstance(nucleotides, PreparedNucleotides):
            seqs, host_batches = nucleotides.sequences, iter(nucleotides.batches)
        else:
            seqs = list(nucleotides)
            host_batches = Prefetch(self._host_batches(seqs), self.prefetch, name="dnabert-tokenise")
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        harvest = Harvest(out, lambda index: self._recompute_fp32([seqs[i] for i in index]), self.stats,
                          ahead=2)
        for host in host_batches:
            harvest.add(self._launch(host))
        harvest.drain()
        self.stats["sequences"] += len(seqs)
        return out
