"""Output formats: byte-compatible VirNucPro tables for given probabilities, atomic bag files."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import small_tmpfs
from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.calls import labels_from_proba


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


def _bags(tmp_path: Path, n_reads: int, records_per_bag: int, run_key: str = "key") -> list:
    from virnuc_hpc.reads.bags import plan_bags
    from virnuc_hpc.reads.samples import samples_from_paths
    path = tmp_path / "in.fa"
    if not path.exists():
        path.write_text("".join(f">r{i}\nATGAAACCC\n" for i in range(n_reads)))
    (sample,) = samples_from_paths([str(path)])
    return list(plan_bags(list(sample.files), lambda f: records_per_bag, run_key))


def _frames(bag) -> SimpleNamespace:
    n = bag.n_records
    first = bag.ref.first_record
    return SimpleNamespace(frame_id=[f"r{first + i}_chunk_1F1" for i in range(n)],
                           chunk_id=[f"r{first + i}_chunk_1" for i in range(n)],
                           read_id=[f"r{first + i}" for i in range(n)], record=list(range(first, first + n)))


def test_bag_roundtrip_and_completeness(tmp_path: Path):
    bags = _bags(tmp_path, 10, 4)
    assert sum(b.n_records for b in bags) == 10 and bags[0].ref.first_record == 0
    assert all(b.ref.first_record + b.n_records == nxt.ref.first_record for b, nxt in zip(bags, bags[1:]))
    rng = np.random.default_rng(1)
    out = tmp_path / "out"
    store.check_writable(out)
    for bag in bags:
        n = bag.n_records
        dna, prot = rng.random((n, 8), np.float32), rng.random((n, 12), np.float32)
        proba = rng.random((n, 2), np.float32)
        parts = {"predictions": store.format_prediction_rows(_frames(bag).frame_id, proba), "ids": "x\n"}
        store.write_bag(out, bag.ref, _frames(bag), [("dnabert", dna), ("esm2", prot)], proba, {"x": 1}, tables=parts,
                        counts={"frames": n})
        assert store.bag_is_complete(out, bag.ref, with_probability=True)
        back = store.read_bag_tables(store.bag_path(out, bag.ref))
        assert back["predictions"] == parts["predictions"] and back["ids"] == "x\n" and back["reads"] == ""
        assert back.counts == {"frames": n}
    store.write_text_atomic(out / store.RUN_JSON, "{}")
    with store.open_features(out) as ds:
        assert list(ds.frame.values) == [f"r{i}_chunk_1F1" for i in range(10)]
        assert ds.features.shape == (10, 20) and list(ds.record.values) == list(range(10))
        assert set(ds.source.values[:8]) == {"dnabert_s"} and set(ds.source.values[8:]) == {"esm2"}
    # the same records under another run key: not complete
    other = _bags(tmp_path, 10, 4, run_key="other-key")[0]
    assert not store.bag_is_complete(out, other.ref, with_probability=True)
    # truncated file: not complete
    path = store.bag_path(out, bags[1].ref)
    path.write_bytes(path.read_bytes()[:200])
    assert not store.bag_is_complete(out, bags[1].ref, with_probability=True)
    assert not list(out.rglob(".*.tmp-*"))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_features_mode_reads_lazily_with_plain_xarray(tmp_path: Path, compression: str):
    import xarray as xr
    bag = _bags(tmp_path, 3000, 3000)[0]  # a realistic bag: the fixed per-file bytes do not dominate
    n = bag.n_records
    assert n >= 900
    rng = np.random.default_rng(2)
    dna, prot = rng.standard_normal((n, 768), np.float32), rng.standard_normal((n, 2560), np.float32)
    proba = rng.random((n, 2), np.float32)
    sizes = {}
    for mode in store.FEATURE_MODES:
        out = tmp_path / mode
        store.check_writable(out)
        store.write_bag(out, bag.ref, _frames(bag), [("dnabert", dna), ("esm2", prot)], proba, {}, features=mode,
                        compression=compression, tables={})
        path = store.bag_path(out, bag.ref)
        sizes[mode] = path.stat().st_size
        with xr.open_dataset(path, engine="h5netcdf", chunks={}) as ds:  # plain xarray, lazily
            assert ds.probability.chunks is not None
            np.testing.assert_array_equal(ds.probability.values, proba)
            assert list(ds.frame.values) == _frames(bag).frame_id and set(ds["sample"].values) == {"in"}
            if mode == "none":
                assert "features" not in ds
            else:
                assert ds.features.chunks is not None and ds.features.dtype == np.dtype(mode)
                want = np.concatenate([dna, prot], axis=1)
                got = ds.features.values.astype(np.float32)
                cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
                assert cos.min() >= (0.9999 if mode == "float16" else 1 - 1e-7)
    assert sizes["float16"] <= 0.52 * sizes["float32"]
    assert sizes["none"] < 0.05 * sizes["float32"]


def test_full_disk_leaves_no_partial_bag(tmp_path: Path):
    bag = _bags(tmp_path, 1000, 1000)[0]
    with small_tmpfs(tmp_path, "96k") as mnt:
        store.check_writable(mnt)
        big = np.ones((bag.n_records, 1000), np.float32)
        with pytest.raises(store.OutputError, match="No space left"):
            store.write_bag(mnt, bag.ref, _frames(bag), [("dnabert", big), ("esm2", big)], None, {}, tables={})
        assert not store.bag_path(mnt, bag.ref).exists()
        assert not list(mnt.rglob(".*.tmp-*"))


@pytest.mark.parametrize("n,size", [(0, 5), (1, 5), (10, 4), (1000, 64), (100_003, 2000)])
def test_bag_sizes_cover_everything_and_shrink_at_the_tail(n, size):
    from virnuc_hpc.reads.bags import bag_sizes
    sizes = bag_sizes(n, size)
    assert sum(sizes) == n and all(0 < s <= size for s in sizes)
    tail = [s for s in sizes if s < size]  # pieces per bag at the run's end
    assert tail == sorted(tail, reverse=True)           # never a big bag after small ones
    if n > 8 * size:
        assert sizes[-1] <= max(1, size // 8)            # the last bags are small
