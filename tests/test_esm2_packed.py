"""Packed ESM-2 path on CPU: planning, packing, positions, isolation between packed proteins, pooling,
and the NaN and OOM guards. The GPU runs the same code with varlen_attn in place of the block-diagonal
SDPA used here (benchmarks/esm2_throughput.py checks that one against fair-esm)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import proteins
from virnuc_hpc.encoders import load_esm2
from virnuc_hpc.encoders.esm2 import (
    CLS, EOS, PAD, ESM2Encoder, pad_batch, tokenize, tokenize_many,
)
from virnuc_hpc.encoders.esm2_packed import (
    MIN_BUCKET, TAIL_CHUNK, PackedESM2Encoder, attend_masked, bucket_sizes, bucket_tokens, max_buckets, pack, packed_size,
    plan_packs, segment_labels, split_to_budget,
)
from virnuc_hpc.encoders.compile import configure_compile_cache
from virnuc_hpc.models.random_weights.esm2 import write_random_esm2_checkpoint

TINY = dict(layers=2, embed_dim=64, heads=4)



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_esm2_checkpoint(tmp_path_factory.mktemp("esm") / "tiny.pt", **TINY, seed=2)


@pytest.fixture(scope="module")
def padded(ckpt) -> ESM2Encoder:
    return load_esm2(str(ckpt), device="cpu", precision="fp32")


def packed_encoder(ckpt, precision="fp32", budget=512) -> PackedESM2Encoder:
    ref = load_esm2(str(ckpt), device="cpu", precision=precision)
    return PackedESM2Encoder(ref.model, name="tiny", device=torch.device("cpu"), precision=precision,
                             max_tokens=budget, path=ref.path)


# --- planning -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_plan_covers_every_protein_once_within_budget(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 400, size=rng.integers(1, 300))
    for budget in (3, 50, 402, 1000, int(packed_size(lengths).sum()), 10**9):
        batches = plan_packs(lengths, budget)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(len(lengths)))           # none lost, none twice
        assert np.all(np.diff(lengths[flat]) >= 0)                           # length-sorted
        for b in batches:
            size = packed_size(lengths[b]).sum()
            assert size <= budget or len(b) == 1                            # only lone giants exceed
        for a, b in zip(batches, batches[1:]):                              # greedy: next one didn't fit
            assert packed_size(lengths[a]).sum() + lengths[b[0]] + 2 > budget


def test_plan_budget_edges():
    lengths = np.array([8, 8, 8, 8])                                        # 10 tokens each
    assert [len(b) for b in plan_packs(lengths, 40)] == [4]
    assert [len(b) for b in plan_packs(lengths, 39)] == [3, 1]
    assert [len(b) for b in plan_packs(lengths, 10)] == [1, 1, 1, 1]
    assert [len(b) for b in plan_packs(lengths, 9)] == [1, 1, 1, 1]         # each alone, over budget
    assert plan_packs(np.array([], dtype=np.int64), 100) == []
    index = np.array([3, 0, 2, 1])
    parts = split_to_budget(index, lengths, 20)
    assert [p.tolist() for p in parts] == [[3, 0], [2, 1]]                  # order kept


def test_buckets_are_few_and_fit():
    budget = 65536
    sizes = {bucket_tokens(n, budget) for n in range(1, budget + 1)}
    assert len(sizes) <= max_buckets(budget) and max(sizes) == budget
    for n in (1, 255, 256, 257, 8191, 8192, 8193, 65535, 65536, 70000):
        t = bucket_tokens(n, budget)
        assert t >= n and (n <= 8192 or t - n < 8192)


def test_bucket_sizes_list_every_shape():
    for budget in (1024, 16384, 65536):
        assert {bucket_tokens(n, budget) for n in range(1, budget + 1)} == set(bucket_sizes(budget))


@pytest.mark.parametrize("dynamic", [False, True])
def test_warm_up_runs_every_shape_and_leaves_stats_alone(ckpt, dynamic):
    """A warm-up that ran nothing, or not every shape the bags will use, fails here."""
    enc = packed_encoder(ckpt, budget=1024)
    enc.dynamic_shapes = dynamic
    seen = []
    enc.with_engine("recorder", lambda model, run: lambda batch: seen.append(batch.tokens.shape[0]) or run(batch))
    before = dict(enc.stats)
    enc.warm_up()
    # static: every bucket; dynamic: one graph, run at the smallest and the largest packed length
    assert sorted(set(seen)) == ([MIN_BUCKET, 1024] if dynamic else bucket_sizes(1024))
    assert enc.stats == before
    assert enc.engine == "recorder"


# --- packing ---------------------------------------------------------------------------------------------

def test_pack_layout_matches_padded_rows():
    seqs = ["MKV", "A", "LL<mask>QW", "ACDEFGHIKLMNPQRSTVWY" * 3]
    ids = tokenize_many(seqs)
    index = np.array([1, 0, 2, 3])
    total = bucket_tokens(int(packed_size([len(x) for x in ids]).sum()), 512)
    batch = pack(ids, index, total, pool_limit=20)
    assert len(batch.tokens) == total == 256 and batch.real_tokens == 3 + 5 + 7 + 62
    rows, _ = pad_batch([ids[i] for i in index])
    cu = batch.cu_seqlens
    for b in range(len(index)):
        seg = batch.tokens[cu[b]:cu[b + 1]]
        row = rows[b].numpy()
        assert seg.tolist() == row[row != PAD].tolist()                     # <cls> residues <eos>
        assert batch.positions[cu[b]:cu[b + 1]].tolist() == list(range(cu[b + 1] - cu[b]))  # 0 at BOS
    assert np.all(batch.tokens[batch.real_tokens:] == PAD)
    assert np.all(batch.token_scale[batch.real_tokens:] == 0)               # tail zeroed, like pad rows
    assert np.diff(cu[len(index):]).max() <= TAIL_CHUNK and cu[-1] == total
    # token dropout: x0.88 normally; the <mask> token is zeroed and its sequence rescaled by 1/(1-1/7)
    s2 = batch.token_scale[cu[2]:cu[3]]
    assert s2[3] == 0 and np.allclose(s2[np.arange(7) != 3], 0.88 / (1 - 1 / 7))
    assert np.allclose(batch.token_scale[cu[0]:cu[2]], 0.88)
    # pooled tokens: residues 1..min(L, 20), never BOS/EOS
    assert batch.counts.tolist() == [1, 3, 5, 20]
    assert np.bincount(batch.pool_segment).tolist() == [1, 3, 5, 20]
    assert not np.isin(batch.tokens[batch.pool_index], [CLS, EOS, PAD]).any()
    assert batch.pool_index[batch.pool_segment == 3].tolist() == list(range(cu[3] + 1, cu[3] + 21))
    with pytest.raises(ValueError):
        pack(ids, index, 10)


def test_masked_attention_never_crosses_segments():
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 6, 19, 32], dtype=torch.int32)
    q, k, v = (torch.randn(32, 3, 8) for _ in range(3))
    batch = pack(tokenize_many(["AAA"]), np.array([0]), 5).to(torch.device("cpu"))
    batch = type(batch)(**{**batch.__dict__, "cu_seqlens": cu})
    out = attend_masked(q, k, v, batch)
    assert segment_labels(cu, 32).tolist() == [0] * 5 + [1] + [2] * 13 + [3] * 13
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        torch.testing.assert_close(out[a:b], ref, atol=1e-6, rtol=1e-5)


# --- packed forward vs the padded reference ---------------------------------------------------------------

def test_packed_equals_padded_fp32(ckpt, padded):
    rng = np.random.default_rng(3)
    lengths = [1, 2, 3, 1100, 510, 509, 508, *rng.integers(1, 200, size=40)]
    seqs = proteins(lengths, seed=4) + ["MK<mask>LVAAG<mask>WTR", "<mask>" * 3 + "ACDEFGHIK"]
    enc = packed_encoder(ckpt, budget=512)                                  # 512 = 510 + 2: exact fit
    got = enc.embed(seqs)
    ref = padded.embed(seqs)
    assert enc.stats["batches"] > 10 and enc.stats["sequences"] == len(seqs)
    assert enc.stats["tokens"] == sum(len(tokenize(s)) + 2 for s in seqs)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(enc.embed(seqs[::-1])[::-1], got, atol=2e-5, rtol=0)  # order-independent
    big = packed_encoder(ckpt, budget=1 << 14)
    np.testing.assert_allclose(big.embed(seqs), ref, atol=2e-5, rtol=0)
    assert big.stats["batches"] < enc.stats["batches"]
    assert big.embed([]).shape == (0, 64)
    with pytest.raises(ValueError, match="empty"):
        big.embed(["MKV", ""])


@pytest.mark.parametrize("gelu_epilogue", [False, True])
def test_compiled_dynamic_graphs_equal_padded(ckpt, padded, gelu_epilogue, tmp_path, monkeypatch):
    """The GPU layout on CPU: three compiled graphs serve every packed length; the tanh GELU of the
    epilogue stays within 1e-3 of erf on a tiny random model (the real 3B check: esm2_variants.py)."""
    monkeypatch.setenv("VIRNUC_HPC_COMPILE_CACHE", str(tmp_path / "cc"))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    ref = load_esm2(str(ckpt), device="cpu", precision="fp32")
    enc = PackedESM2Encoder(ref.model, name="tiny", device=torch.device("cpu"), precision="fp32",
                            max_tokens=1024, compile_layers=True, gelu_epilogue=gelu_epilogue)
    seqs = proteins([5, 300, 47, 48, 120, 9, 700, 33], seed=8)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    got = np.concatenate([enc.embed(seqs[:2]), enc.embed(seqs[2:5]), enc.embed(seqs[5:])])
    assert enc.stats["batches"] == 3                                        # three packed lengths
    assert counters["stats"]["unique_graphs"] == 3                          # first, middle, last
    np.testing.assert_allclose(got, padded.embed(seqs), atol=1e-3 if gelu_epilogue else 2e-5, rtol=0)


def test_prepared_input_embeds_like_strings(ckpt):
    """``prepare`` (tokenising, done by a worker before its bag takes the device) then ``embed``
    gives the same rows and stats as embedding the strings; empty proteins are refused up front."""
    from virnuc_hpc.runtime.worker import embed_prepared, prepare_distinct

    seqs = proteins([5, 300, 47, 48, 120, 9, 700, 33], seed=9)
    seqs += [seqs[2], seqs[6]]
    direct, prepared = packed_encoder(ckpt, budget=1024), packed_encoder(ckpt, budget=1024)
    want = direct.embed(seqs)
    ready = prepared.prepare(seqs)
    assert prepared.stats["batches"] == 0 and len(ready.ids) == len(seqs)
    np.testing.assert_array_equal(prepared.embed(ready), want)
    assert prepared.stats == direct.stats
    inputs, rows = prepare_distinct(prepared, seqs)
    assert len(inputs.ids) == len(seqs) - 2
    got = embed_prepared(prepared, (inputs, rows))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(got[-2], got[2])
    with pytest.raises(ValueError, match="empty"):
        prepared.prepare(["MKV", ""])


def test_packed_neighbours_do_not_leak(ckpt):
    enc = packed_encoder(ckpt, budget=4096)
    base = proteins([30, 40, 50, 60], seed=5)
    changed = [base[0], base[1], "W" * 50, base[3]]                        # same lengths: same packing
    a, b = enc.embed(base), enc.embed(changed)
    assert enc.stats["batches"] == 2
    np.testing.assert_allclose(a[[0, 1, 3]], b[[0, 1, 3]], atol=1e-6, rtol=0)
    assert np.abs(a[2] - b[2]).max() > 1e-2


def test_nonfinite_batches_recomputed_in_fp32(ckpt, padded):
    seqs = proteins([5, 80, 120, 9, 300], seed=6)
    enc = packed_encoder(ckpt, precision="bf16", budget=512)
    with torch.no_grad():
        enc.model.layers[1].fc2.bias[0] = float("inf")                      # the fp32 copy is reread
    got = enc.embed(seqs)
    assert enc.stats["nonfinite_recomputed_batches"] == enc.stats["batches"] >= 2
    np.testing.assert_allclose(got, padded.embed(seqs), atol=1e-6, rtol=0)


def test_oom_splits_batch_lowers_budget_and_keeps_order(ckpt, padded):
    seqs = proteins(np.random.default_rng(7).integers(20, 120, size=60), seed=8)
    enc = packed_encoder(ckpt, budget=4096)
    limit, fail_otherwise = 1024, False

    def tight_memory(model, forward):
        def run(batch):
            if fail_otherwise:                                              # other errors are not retried
                raise ZeroDivisionError
            if len(batch.tokens) > limit:
                try:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
                except torch.cuda.OutOfMemoryError as exc:  # as torch.compile wraps it
                    raise RuntimeError("backend compiler failed") from exc
            return forward(batch)
        return run

    enc.with_engine("tight", tight_memory)
    got = enc.embed(seqs)
    assert enc.stats["oom_split_batches"] >= 2 and enc.token_budget <= limit
    assert enc.stats["sequences"] == 60
    np.testing.assert_allclose(got, padded.embed(seqs), atol=2e-5, rtol=0)
    limit = 0                                                               # nothing fits: no silent loss
    with pytest.raises(torch.cuda.OutOfMemoryError, match="one protein"):
        enc.embed(seqs[:3])
    splits = enc.stats["oom_split_batches"]
    fail_otherwise = True
    with pytest.raises(ZeroDivisionError):
        enc.embed(seqs[:3])
    assert enc.stats["oom_split_batches"] == splits


def test_cpu_load_keeps_padded_path(ckpt):
    enc = load_esm2(str(ckpt), device="cpu", precision="bf16")
    assert type(enc) is ESM2Encoder


def test_compile_cache_root(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert configure_compile_cache(tmp_path / "cc") == tmp_path / "cc" / "inductor"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cc" / "triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))        # an operator's choice wins
    configure_compile_cache(tmp_path / "other")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")
