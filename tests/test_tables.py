"""The tables made per bag and merged at the end equal tables made in memory from every record.

The in-memory reference here is written out per read and per frame (slow loops over the records
of ``load_records``), not with the code under test; the probabilities are a fixed function of the
frame id, so both sides see the same numbers.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from virnuc_hpc import merge, store, tables
from virnuc_hpc.bags import plan_bags
from virnuc_hpc.fasta import FastaError
from virnuc_hpc.loading import load_records
from virnuc_hpc.frames import frames_for_records
from virnuc_hpc.samples import samples_from_paths
from virnuc_hpc.worker import BagRules, parse_bag


def proba_of(frame_id: str) -> np.ndarray:
    """A fixed, frame-specific probability pair (what the classifier would give)."""
    seed = int(hashlib.sha256(frame_id.encode()).hexdigest()[:8], 16)
    p = np.float32(np.random.default_rng(seed).random())
    return np.array([p, np.float32(1) - p], dtype=np.float32)


def slow_tables(path: Path, chunk_size: int, comment: str) -> dict[str, str]:
    """VirNucPro's tables and reads.tsv from all records at once, rule by rule."""
    loaded = load_records([path], skip_invalid=True)
    table = frames_for_records(loaded.records, chunk_size)
    rows, best, per_read_frames = [], {}, {}
    for fid, rid in zip(table.frame_id, table.read_id):
        p = proba_of(fid)
        label = "virus" if p[1] > p[0] else "others"
        rows.append(f"{fid}\t{label}\t{str(p[0])}\t{str(p[1])}\n")
        cur = best.setdefault(fid[:-2], [-1.0, -1.0])
        cur[0], cur[1] = max(cur[0], float(p[0])), max(cur[1], float(p[1]))
        per_read_frames[rid] = per_read_frames.get(rid, 0) + 1
    calls = {chunk: v[1] >= v[0] for chunk, v in best.items()}
    head = f"# {comment}\n"
    predictions = head + "Sequence_ID\tPrediction\tscore1\tscore2\n" + "".join(rows)
    highest = head + "Modified_ID\tIs_Virus\n" + "".join(f"{c}\t{calls[c]}\n" for c in sorted(calls))
    no_frame = set(table.chunks_without_frames)
    reads = [head, "\t".join(tables.READS_HEADER) + "\n"]
    for record, n_chunks in zip(loaded.records, table.read_n_chunks):
        chunk_ids = [f"{record.id}_chunk_{i + 1}" for i in range(n_chunks)]
        missing = [c for c in chunk_ids if c in no_frame]
        with_frames = n_chunks - len(missing)
        virus = sum(calls.get(c, False) for c in chunk_ids)
        call = "-" if not with_frames else ("virus" if virus else "others")
        reads.append("\t".join(map(str, (record.id, record.path, len(record.seq),
                                         "ok" if with_frames else "no_open_frame", n_chunks, with_frames,
                                         per_read_frames.get(record.id, 0), virus, call,
                                         ",".join(missing) or "-"))) + "\n")
    skipped: dict[tuple[str, str], list[str]] = {}
    for p in loaded.skipped:
        kinds = skipped.setdefault((p.path, p.record or f"line {p.line}"), [])
        if p.kind not in kinds:
            kinds.append(p.kind)
    for (path_, rid), kinds in skipped.items():
        reads.append(f"{rid}\t{path_}\t-\tskipped:{'+'.join(kinds)}\t0\t0\t0\t-\t-\t-\n")
    return {store.PREDICTIONS: predictions, store.HIGHEST: highest, store.READS: "".join(reads)}


def run_bags(path: Path, outdir: Path, records_per_bag: int, chunk_size: int, skip_invalid: bool) -> list:
    """Every bag of a file through the worker's own steps, with proba_of as the classifier."""
    (sample,) = samples_from_paths([str(path)])
    rules = BagRules(chunk_size=chunk_size, skip_invalid=skip_invalid, classify=True, features="none")
    refs = []
    (outdir / store.BAGS_DIR).mkdir(parents=True, exist_ok=True)
    for bag in plan_bags(list(sample.files), lambda f: records_per_bag, "key"):
        records, valid, problems = parse_bag(bag, rules)
        kept = [r for r, ok in zip(records, valid) if ok]
        table = frames_for_records(kept, chunk_size)
        proba = np.array([proba_of(f) for f in table.frame_id], dtype=np.float32).reshape(-1, 2)
        parts, counts = tables.bag_tables(bag.index, records, valid, problems, table, proba, True)
        position = {r.id: i for i, r in enumerate(records) if valid[i]}
        frames = SimpleNamespace(frame_id=table.frame_id, chunk_id=table.chunk_id, read_id=table.read_id,
                                 record=[bag.ref.first_record + position[r] for r in table.read_id])
        store.write_bag(outdir, bag.ref, frames, None, None, proba, {}, features="none", tables=parts, counts=counts)
        refs.append(bag.ref)
    return refs


def messy_input(path: Path, n: int = 300) -> None:
    """Reads of 40-1700 bp, a few invalid records, ids repeated within and across bags."""
    rng = random.Random(7)
    lines = []
    for i in range(n):
        lines += [f">r{i} description", "".join(rng.choices("ACGT", k=rng.choice([40, 150, 300, 520, 1700])))]
    lines += [">bad", "ACGT!!", ">r3", "ACGTACGT", ">empty", ">r150", "ACGTTT", ">r151", "AC9T", ">r152", "ACGA"]
    lines += [">r299 again", "".join(rng.choices("ACGT", k=150))]  # repeats an id of the same bag
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("records_per_bag", [7, 40, 1000])
def test_streaming_tables_equal_in_memory_tables(tmp_path: Path, records_per_bag: int, monkeypatch):
    monkeypatch.setattr(merge, "MERGE_FAN_IN", 3)  # many bags: the merge goes through run files
    path = tmp_path / "in.fa"
    messy_input(path)
    outdir = tmp_path / "out"
    refs = run_bags(path, outdir, records_per_bag, 300, skip_invalid=True)
    assert len(refs) > 3 or records_per_bag == 1000
    tmpdir = tables.new_tmpdir(outdir)
    counts, files = tables.SampleTables(outdir, outdir, refs, classify=True, skip_invalid=True,
                                        comment="c", tmpdir=tmpdir).write()
    tables.remove_tmpdir(tmpdir)
    want = slow_tables(path, 300, "c")
    for name, text in want.items():
        assert (outdir / name).read_text() == text, name
    assert sorted(files) == sorted(want)
    rows = [r.split("\t") for r in want[store.READS].splitlines()[2:]]
    ok = [r for r in rows if not r[3].startswith("skipped")]
    assert counts["reads"] == len(ok) and counts["skipped_records"] == len(rows) - len(ok) >= 6
    assert counts["frames"] == len(want[store.PREDICTIONS].splitlines()) - 2
    assert counts["virus_reads"] == sum(r[8] == "virus" for r in ok)
    assert not list(outdir.rglob(".*.tmp-*")) and not list(outdir.glob(".merge-*"))


def test_repeated_ids_across_bags_stop_the_tables_without_skip_invalid(tmp_path: Path):
    path = tmp_path / "in.fa"
    path.write_text("".join(f">r{i}\nACGTACGTAAATTT\n" for i in range(20)) + ">r2\nACGT\n")
    outdir = tmp_path / "out"
    refs = run_bags(path, outdir, 4, 300, skip_invalid=False)
    tmpdir = tables.new_tmpdir(outdir)
    with pytest.raises(FastaError, match=r"in.fa:41: record 'r2': duplicate id, first seen at .*in.fa:5"):
        tables.SampleTables(outdir, outdir, refs, classify=True, skip_invalid=False, comment=None,
                            tmpdir=tmpdir).write()
    assert not (outdir / store.PREDICTIONS).exists() and not (outdir / store.READS).exists()


def test_merge_sorted_through_run_files(tmp_path: Path):
    rng = random.Random(1)
    texts = [sorted(f"{rng.random():.6f}\t{i}\n" for _ in range(rng.randrange(0, 30))) for i in range(50)]
    got = list(merge.merge_sorted([lambda t=t: "".join(t) for t in texts], tmp_path, fan_in=4))
    assert got == sorted(line for t in texts for line in t)
    assert len(list(tmp_path.iterdir())) > 4  # it did spill


def test_reads_columns_of_a_bag_match_per_read_rules(tmp_path: Path):
    path = tmp_path / "in.fa"
    messy_input(path, 60)
    records = load_records([path], skip_invalid=True).records
    table = frames_for_records(records, 300)
    columns, counts = tables.ReadColumns.of(table, records).with_calls({}, classify=False)
    rows = list(zip(*columns))
    assert [r[0] for r in rows] == [r.id for r in records]
    assert all(r[7] == "-" and r[8] == "-" for r in rows)
    assert counts["reads"] == len(records) and counts["chunks"] == int(table.read_n_chunks.sum())
