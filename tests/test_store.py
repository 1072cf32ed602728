"""Output formats: byte-compatible VirNucPro tables for given probabilities, atomic bag files."""

from pathlib import Path

import numpy as np
import pytest

from conftest import small_tmpfs
from virnuc_hpc import store
from virnuc_hpc.classifier import labels_from_proba
from virnuc_hpc.bags import make_bags


def test_prediction_results_bytes():
    ids = ["r1_chunk_1F1", "r1_chunk_1R2", "r2_chunk_1F3"]
    proba = np.array([[0.12100612, 0.87899387], [0.9988406, 0.0011594], [1.0, 0.0]], np.float32)
    text = store.format_prediction_results(ids, proba)
    assert text == ("Sequence_ID\tPrediction\tscore1\tscore2\n"
                    "r1_chunk_1F1\tvirus\t0.12100612\t0.87899387\n"
                    "r1_chunk_1R2\tothers\t0.9988406\t0.0011594\n"
                    "r2_chunk_1F3\tothers\t1.0\t0.0\n")


def test_probabilities_are_shortest_float32_text():
    rng = np.random.default_rng(0)
    p1 = rng.random(2000, dtype=np.float32)
    proba = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    rows = store.format_prediction_results([f"x{i}F1" for i in range(len(p1))], proba).splitlines()[1:]
    for row, p in zip(rows, proba):
        s0, s1 = row.split("\t")[2:]
        assert np.float32(s0) == p[0] and np.float32(s1) == p[1]
        assert len(s1) <= len(repr(float(p[1])))       # never the longer float64 text


def test_tie_goes_to_others_for_frames_and_to_virus_for_chunks():
    ids = ["a_chunk_1F1", "a_chunk_1F2", "b_chunk_1R1"]
    proba = np.array([[0.5, 0.5], [0.7, 0.3], [0.5, 0.5]], np.float32)
    assert list(labels_from_proba(proba)) == ["others", "others", "others"]
    calls = store.chunk_calls(ids, proba)
    # chunk a: max P(virus)=0.5 < max P(others)=0.7 -> False; chunk b: tie -> True
    assert calls == {"a_chunk_1": False, "b_chunk_1": True}


def test_highest_scores_sorted_lexicographically():
    calls = {"r2_chunk_1": True, "r10_chunk_1": False, "r1_chunk_2": True, "r1_chunk_10": False}
    text = store.format_highest_scores(calls)
    assert text.splitlines() == ["Modified_ID\tIs_Virus", "r10_chunk_1\tFalse", "r1_chunk_10\tFalse",
                                 "r1_chunk_2\tTrue", "r2_chunk_1\tTrue"]


class _Table:
    def __init__(self, n):
        self.frame_id = [f"r{i}_chunk_1F1" for i in range(n)]
        self.chunk_id = [f"r{i}_chunk_1" for i in range(n)]
        self.read_id = [f"r{i}" for i in range(n)]
        self.protein = ["M" * (i % 7 + 1) for i in range(n)]
        self.nucleotide = ["ATG" * (i % 7 + 1) + "A" for i in range(n)]


def test_bag_roundtrip_and_completeness(tmp_path: Path):
    bags = make_bags(_Table(10), 4, "key")
    assert sum(len(b) for b in bags) == 10 and bags[0].start == 0
    assert all(b.start + len(b) == nxt.start for b, nxt in zip(bags, bags[1:]))
    rng = np.random.default_rng(1)
    for bag in bags:
        dna, prot = rng.random((len(bag), 8), np.float32), rng.random((len(bag), 12), np.float32)
        proba = rng.random((len(bag), 2), np.float32)
        store.check_writable(tmp_path)
        store.write_bag(tmp_path, bag, dna, prot, proba, {"x": 1})
        assert store.bag_is_complete(tmp_path, bag, with_probability=True)
        ids, back = store.read_bag_predictions(store.bag_path(tmp_path, bag))
        assert ids == bag.frame_ids and np.array_equal(back, proba)
    store.write_text_atomic(tmp_path / store.RUN_JSON, "{}")
    ds = store.open_features(tmp_path)
    assert list(ds.frame.values) == _Table(10).frame_id
    assert ds.features.shape == (10, 20) and list(ds.frame_index.values) == list(range(10))
    assert set(ds.source.values[:8]) == {"dnabert_s"} and set(ds.source.values[8:]) == {"esm2"}
    ds.close()
    # same frames under another run key: not complete
    other = make_bags(_Table(10), 4, "other-key")[0]
    assert not store.bag_is_complete(tmp_path, other, with_probability=True)
    # truncated file: not complete
    path = store.bag_path(tmp_path, bags[1])
    path.write_bytes(path.read_bytes()[:200])
    assert not store.bag_is_complete(tmp_path, bags[1], with_probability=True)
    assert not list(tmp_path.rglob(".*.tmp-*"))


def test_full_disk_leaves_no_partial_bag(tmp_path: Path):
    with small_tmpfs(tmp_path, "96k") as mnt:
        store.check_writable(mnt)
        bag = make_bags(_Table(300), 300, "k")[0]
        big = np.ones((len(bag), 1000), np.float32)
        with pytest.raises(store.OutputError, match="No space left"):
            store.write_bag(mnt, bag, big, big, None, {})
        assert not store.bag_path(mnt, bag).exists()
        assert not list(mnt.rglob(".*.tmp-*"))


@pytest.mark.parametrize("n,size", [(0, 5), (1, 5), (10, 4), (1000, 64), (100_003, 2000)])
def test_bag_sizes_cover_everything_and_shrink_at_the_tail(n, size):
    from virnuc_hpc.bags import bag_sizes
    sizes = bag_sizes(n, size)
    assert sum(sizes) == n and all(0 < s <= size for s in sizes)
    tail = [s for s in sizes if s < size]
    assert tail == sorted(tail, reverse=True)           # never a big bag after small ones
    if n > 8 * size:
        assert sizes[-1] <= max(1, size // 8)            # the last bags are small
