"""Packed DNABERT-S path: packing, segment ids, block tables, ALiBi score modifier, packed == unpacked.

The CPU runs the packed encoder through the dense reference attention (SDPA with the score modifier
evaluated into a block-diagonal bias) and through uncompiled FlexAttention; both use the same packing,
segment ids, block tables and score modifier that the compiled GPU path uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from virnuc_hpc.encoders import load_dnabert
from virnuc_hpc.encoders.dnabert import DNABERTEncoder, load_dnabert_parts
from virnuc_hpc.encoders.batching import pack_sizes
from virnuc_hpc.encoders.dnabert_packed import (BLOCK, PackedDNABERT2, PackedDNABERTEncoder,
                                                alibi_segment_score_mod, batch_size, block_mask_parts,
                                                dense_bias, make_batch, segment_ids,
                                                stream_batches, to_block_mask)
from virnuc_hpc.models.random_weights.dnabert import write_random_dnabert_dir

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
SMALL = dict(layers=2, hidden=128, heads=4, intermediate=512, vocab_size=512)


def random_dna(n: int, seed: int, low: int = 1, high: int = 601) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), int(k))) for k in rng.integers(low, high, n)]


SEQS = random_dna(30, seed=2) + ["A", "ACGTN" * 120, "acgtacgt"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_random_dnabert_dir(tmp_path_factory.mktemp("small"), seed=3, **SMALL)


def packed(directory: Path, **kwargs) -> PackedDNABERTEncoder:
    model, tok, weights = load_dnabert_parts(str(directory))
    kwargs.setdefault("device", "cpu")
    return PackedDNABERTEncoder(model, tok, name=str(directory), weights=weights, **kwargs)


# --------------------------------------------------------------------------- packing logic

def test_pack_sizes_budget_edges() -> None:
    """The greedy packer both packed encoders use (ESM-2 passes lengths + BOS/EOS)."""
    def pack(sizes, budget):
        return [b.tolist() for b in pack_sizes(sizes, budget)]

    assert pack([], 10) == []
    assert pack([5, 5], 10) == [[0, 1]]                 # exactly the budget: one batch
    assert pack([5, 6], 10) == [[0], [1]]               # one token over: two
    assert pack([3, 12, 2], 10) == [[2, 0], [1]]        # sorted; over-long alone
    assert pack([12, 11, 1], 10) == [[2], [1], [0]]     # two over-long ones: each alone
    assert pack([4, 2, 4, 2], 6) == [[1, 3], [0], [2]]  # stable among equal sizes
    lengths = list(np.random.default_rng(0).integers(1, 200, 500))
    batches = pack(lengths, 1000)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1000 for b in batches)
    assert all(sum(lengths[i] for i in b) > 1000 - 200 for b in batches[:-1])  # only the last part-filled
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    assert batch_size(1000, 1024) == 1024 and batch_size(1025, 1024) == 1152
    assert batch_size(1, 1) == BLOCK


def test_segment_ids_and_block_tables_match_dense_mask() -> None:
    lengths = [1, 127, 128, 5, 300, 2, 129]           # block-aligned, straddling and tiny sequences
    T = batch_size(sum(lengths) + 200, 0)             # some tail padding
    seg = segment_ids(lengths, T)
    assert seg.shape == (T,) and seg[0] == 0 and seg[1] == 1 and seg[-1] == len(lengths)
    assert np.all(np.diff(seg) >= 0) and np.bincount(seg)[:-1].tolist() == lengths
    kv_num, kv_idx, full_num, full_idx = block_mask_parts(seg, len(lengths))
    nb = T // BLOCK
    same = (seg[:, None] == seg[None, :]) & (seg < len(lengths))[:, None]
    blocks = same.reshape(nb, BLOCK, nb, BLOCK)
    want_any, want_all = blocks.any((1, 3)), blocks.all((1, 3))

    def dense(num, idx):
        out = np.zeros((nb, nb), dtype=bool)
        for i in range(nb):
            out[i, idx[0, 0, i, : num[0, 0, i]]] = True
        return out
    full, part = dense(full_num, full_idx), dense(kv_num, kv_idx)
    assert not (full & part).any()
    np.testing.assert_array_equal(full | part, want_any)   # every needed block, no other
    np.testing.assert_array_equal(full, want_all)          # full blocks need no element mask


def test_score_mod_is_alibi_within_and_minus_inf_across() -> None:
    lengths = [3, 4]
    seg = torch.from_numpy(segment_ids(lengths, 8))
    slopes = torch.tensor([0.5, 0.25])
    bias = dense_bias(seg, slopes)
    assert bias.shape == (2, 8, 8)
    assert bias[1, 3, 6].item() == -0.25 * 3 and bias[0, 2, 0].item() == -1.0 and bias[0, 4, 4] == 0
    assert torch.isneginf(bias[:, :3, 3:]).all() and torch.isneginf(bias[:, 3:7, :3]).all()
    # the same function, called the way FlexAttention calls it
    mod = alibi_segment_score_mod(seg, slopes)
    one = mod(torch.tensor(1.0), torch.tensor(0), torch.tensor(1), torch.tensor(6), torch.tensor(3))
    assert one.item() == pytest.approx(1 - 0.25 * 3)


def test_block_mask_agrees_with_flex_own_construction() -> None:
    """Our host-built tables give the same BlockMask as FlexAttention's create_block_mask."""
    lengths = [200, 3, 60, 1, 130]
    T = batch_size(sum(lengths), 512)
    seg_np = segment_ids(lengths, T)
    seg = torch.from_numpy(seg_np)
    batch = make_batch(range(len(lengths)), [[7] * n for n in lengths], 512, pad_id=3)
    ours = to_block_mask(batch).to_dense()

    def same(b, h, q, kv):
        return (seg[q] == seg[kv]) & (seg[q] < len(lengths))
    theirs = create_block_mask(same, None, None, T, T, device="cpu").to_dense()
    assert torch.equal(ours, theirs)


def test_stream_batches_carry_partial_batches() -> None:
    rng = np.random.default_rng(1)
    ids = [[1] * int(n) for n in rng.integers(2, 60, 300)]
    chunks = ((np.arange(s, s + 50), ids[s: s + 50]) for s in range(0, 300, 50))
    batches = list(stream_batches(chunks, 512, pad_id=0))
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(300))
    assert all(b.ids.shape[0] == 512 for b in batches)
    fill = [float(b.lengths.sum()) / 512 for b in batches]
    assert min(fill[:-1]) > 0.85            # only the last batch may be mostly padding
    for b in batches:
        assert int(b.lengths.sum()) == int((b.segments < b.n).sum())


# --------------------------------------------------------------------------- packed == unpacked

@pytest.mark.parametrize("attention", ["dense", "flex"])
def test_packed_equals_unpadded_single_and_padded(small: Path, attention: str) -> None:
    padded = load_dnabert(str(small), device="cpu", precision="fp32")
    assert isinstance(padded, DNABERTEncoder)              # CPU keeps the padded CI path
    ref = padded.embed(SEQS)
    enc = packed(small, precision="fp32", attention=attention, compile=False, max_tokens=1024)
    out = enc.embed(SEQS)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
    assert 1 < enc.stats["batches"] < len(SEQS) and enc.stats["sequences"] == len(SEQS)
    ids = padded.tokenizer.encode_batch(SEQS)
    assert enc.stats["tokens"] == sum(len(e.ids) for e in ids)
    single = np.stack([padded.embed([s])[0] for s in SEQS[:5]])
    np.testing.assert_allclose(out[:5], single, rtol=0, atol=2e-5)


def test_budget_edges_and_order(small: Path) -> None:
    one = packed(small, precision="fp32", max_tokens=1)          # one block: about one sequence
    lengths = [len(e.ids) for e in one.tokenizer.encode_batch(SEQS)]
    whole = packed(small, precision="fp32", max_tokens=sum(lengths))
    base = whole.embed(SEQS)                                     # all in one batch, to the token
    assert whole.stats["batches"] == 1
    np.testing.assert_allclose(one.embed(SEQS[:8]), base[:8], rtol=0, atol=2e-5)
    assert one.max_tokens == BLOCK and one.stats["batches"] >= sum(lengths[:8]) / BLOCK
    exact = packed(small, precision="fp32", max_tokens=128, chunk_sequences=7)
    np.testing.assert_allclose(exact.embed(SEQS), base, rtol=0, atol=2e-5)  # over-budget ones alone
    assert exact.stats["batches"] >= sum(n > 128 for n in lengths)
    perm = np.random.default_rng(0).permutation(len(SEQS))
    np.testing.assert_allclose(exact.embed([SEQS[i] for i in perm]), base[perm], rtol=0, atol=2e-5)
    assert exact.embed([]).shape == (0, exact.dim)


def test_no_cross_sequence_attention(small: Path) -> None:
    """Changing every other sequence of a batch (and the padding) leaves a sequence's states exact."""
    enc = packed(small, precision="fp32", max_tokens=1024)
    tok = enc.tokenizer
    target = tok.encode("ACGTTGCA" * 20).ids
    outs = []
    for seed in (0, 1):
        others = [tok.encode(s).ids for s in random_dna(6, seed=10 + seed, low=50, high=200)]
        ids = others[:3] + [target] + others[3:]
        batch = make_batch(range(len(ids)), ids, 1024, pad_id=seed + 5)
        start = sum(map(len, ids[:3]))
        with torch.inference_mode():
            h = enc.forward(batch)
        outs.append(h[start: start + len(target)])
        lone = make_batch([0], [target], 1024, pad_id=0)
        with torch.inference_mode():
            alone = enc.forward(lone)[: len(target)]
        torch.testing.assert_close(outs[-1], alone, rtol=0, atol=2e-5)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=2e-5)


def test_dense_and_flex_forward_agree(small: Path) -> None:
    model, tok, _ = load_dnabert_parts(str(small))
    ids = [e.ids for e in tok.encode_batch(SEQS[:12])]
    batch = make_batch(range(12), ids, 1024, pad_id=3)
    with torch.inference_mode():
        dense = PackedDNABERT2(model, "dense", compile=False)(batch)
        flex = PackedDNABERT2(model, "flex", compile=False)(batch)
    real = batch.segments < batch.n
    torch.testing.assert_close(flex[real], dense[real], rtol=0, atol=2e-5)


def test_bf16_close_and_nonfinite_recomputed(small: Path) -> None:
    seqs = SEQS[::2]
    fp32 = load_dnabert(str(small), device="cpu", precision="fp32").embed(seqs)
    enc = packed(small, precision="bf16", max_tokens=512)
    out = enc.embed(seqs)
    cos = (out * fp32).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(fp32, axis=1)
    print(f"packed bf16 vs fp32 on CPU: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.999 and enc.stats["nonfinite_recomputed_batches"] == 0
    with torch.no_grad():
        enc.model.layers[0].wo.bias[0] = float("inf")
    before = enc.stats["batches"]
    again = enc.embed(seqs)
    assert enc.stats["nonfinite_recomputed_batches"] == enc.stats["batches"] - before > 1
    np.testing.assert_allclose(again, fp32, rtol=0, atol=1e-5)


def test_tokeniser_errors_reach_the_caller(small: Path) -> None:
    enc = packed(small, precision="fp32")
    with pytest.raises(TypeError):
        enc.embed(["ACGT", 5])  # type: ignore[list-item]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_packed_compiled_matches_fp32(small: Path) -> None:
    from torch._dynamo.utils import counters
    enc = load_dnabert(str(small), device="cuda", precision="fp16", max_tokens=2048)
    assert isinstance(enc, PackedDNABERTEncoder) and enc.forward.attention == "flex"
    ref = load_dnabert(str(small), device="cuda", precision="fp32").embed(SEQS * 20)
    graphs = counters["stats"]["unique_graphs"]
    for precision in ("fp16", "bf16"):
        enc = load_dnabert(str(small), device="cuda", precision=precision, max_tokens=2048)
        out = enc.embed(SEQS * 20)
        cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"cuda packed {precision}: min cosine {cos.min():.6f}, batches {enc.stats['batches']}")
        assert cos.min() >= 0.999 and enc.stats["batches"] > 2
    assert counters["stats"]["unique_graphs"] - graphs <= 2  # one compiled layer per dtype


def test_warm_up_runs_the_packed_shape_and_does_not_count_as_work(small: Path) -> None:
    """warm_up runs the one packed shape every batch has (so that a GPU compiles it then, not in the
    first bag: a warm-up that runs nothing fails here), and leaves the stats and later vectors alone."""
    enc = packed(small, precision="fp32", max_tokens=256)
    seen = []
    enc.with_engine("recorder", lambda model, run: lambda batch: seen.append(batch.ids.shape[0]) or run(batch))
    before = dict(enc.stats)
    enc.warm_up()
    assert seen and set(seen) == {enc.max_tokens}
    assert enc.stats == before
    np.testing.assert_allclose(enc.embed(SEQS[:3]), packed(small, precision="fp32").embed(SEQS[:3]),
                               rtol=0, atol=2e-5)


def test_prepared_input_embeds_like_strings(small: Path) -> None:
    """A worker tokenises and packs its next bag before taking the device (``prepare``): the same
    vectors, batches and counts as embedding the strings, which tokenises on the prefetch thread."""
    from virnuc_hpc.runtime.worker import embed_prepared, prepare_distinct

    seqs = SEQS + [SEQS[3], SEQS[0].lower(), SEQS[0]]          # repeats, one in lower case
    direct = packed(small, precision="fp32", max_tokens=256, chunk_sequences=7)
    prepared = packed(small, precision="fp32", max_tokens=256, chunk_sequences=7)
    want = direct.embed(seqs)
    ready = prepared.prepare(seqs)
    assert len(ready.batches) > 1 and prepared.stats["batches"] == 0  # nothing ran on the device yet
    np.testing.assert_array_equal(prepared.embed(ready), want)
    assert prepared.stats == direct.stats
    inputs, rows = prepare_distinct(prepared, seqs)             # the worker's path: distinct only
    assert len(inputs.sequences) == len(seqs) - 2 and rows is not None
    got = embed_prepared(prepared, (inputs, rows))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(got[-1], got[0])             # a repeat gets the original's vector
    assert not np.array_equal(got[-2], got[0])                  # lower case is another sequence here
