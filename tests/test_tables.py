"""reads.tsv and the chunk calls are built column-wise; check them against per-read loops."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import numpy as np
import pytest

from virnuc_hpc import store, tables
from virnuc_hpc.bags import make_bags
from virnuc_hpc.fasta import load_records
from virnuc_hpc.frames import frames_for_records


def slow_read_rows(table, loaded, calls, classify):
    """The rules of reads.tsv written out per read (the reference)."""
    frames_per_read = Counter(table.read_id)
    no_frame = set(table.chunks_without_frames)
    rows = []
    for record, n_chunks in zip(loaded.records, table.read_n_chunks):
        chunk_ids = [f"{record.id}_chunk_{i + 1}" for i in range(n_chunks)]
        missing = [c for c in chunk_ids if c in no_frame]
        with_frames = n_chunks - len(missing)
        virus = sum(calls.get(c, False) for c in chunk_ids)
        call = "-" if not classify or not with_frames else ("virus" if virus else "others")
        rows.append((record.id, record.path, len(record.seq), "ok" if with_frames else "no_open_frame",
                     n_chunks, with_frames, frames_per_read[record.id], virus if classify else "-", call,
                     ",".join(missing) or "-"))
    return rows


def slow_chunk_calls(frame_ids, proba):
    best = {}
    for fid, (p0, p1) in zip(frame_ids, proba):
        cur = best.setdefault(fid[:-2], [-1.0, -1.0])
        cur[0], cur[1] = max(cur[0], p0), max(cur[1], p1)
    return {chunk: bool(v[1] >= v[0]) for chunk, v in best.items()}


def test_reads_table_matches_per_read_rules(tmp_path):
    rng = random.Random(3)
    lines = []
    for i in range(400):  # lengths 40..1700: one chunk, several chunks, short tails
        seq = "".join(rng.choices("ACGT", k=rng.choice([40, 150, 300, 520, 1700])))
        lines += [f">r{i} description", seq]
    lines += [">bad", "ACGT!!"]
    fasta = tmp_path / "in.fa"
    fasta.write_text("\n".join(lines) + "\n")
    loaded = load_records([fasta], skip_invalid=True)
    table = frames_for_records(loaded.records, 300)
    proba = np.random.default_rng(0).random((len(table.frame_id), 2)).astype(np.float32)
    calls, expected_calls = store.chunk_calls(table.frame_id, proba), slow_chunk_calls(table.frame_id, proba)
    assert calls == expected_calls
    assert list(calls) == list(expected_calls)  # first-seen order
    for classify in (True, False):
        columns, counts = tables.read_rows(table, loaded, calls if classify else {}, classify)
        rows = list(zip(*columns))
        expected = slow_read_rows(table, loaded, calls if classify else {}, classify)
        assert rows[:len(expected)] == expected
        (skipped,) = rows[len(expected):]
        assert skipped[:3] == ("bad", str(fasta), "-") and skipped[3].startswith("skipped:")
        assert skipped[4:] == (0, 0, 0, "-", "-", "-")
        assert counts["reads"] == len(expected) and counts["skipped_records"] == 1
        assert counts["reads_without_frames"] == sum(r[3] == "no_open_frame" for r in expected) > 0
        assert counts["virus_reads"] == sum(r[8] == "virus" for r in expected)
        assert any(r[4] > 1 for r in expected) and any(r[9] != "-" for r in expected)
    text = store.format_columns(tables.READS_HEADER, columns, "a comment")
    row_wise = ["# a comment", "\t".join(tables.READS_HEADER)] + ["\t".join(map(str, r)) for r in rows]
    assert text == "\n".join(row_wise) + "\n"


def test_tables_built_as_bags_finish_equal_the_tables_of_all_bags(tmp_path):
    """Tables reads bags back as they are added, in any order; a bag never added is read at the end.
    The files equal the tables made from all bags at once, and a bag file holding other frames
    stops the run with a clear error instead of mixing up sequences."""
    rng = random.Random(5)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">r{i}\n{''.join(rng.choices('ACGT', k=rng.choice([150, 320])))}\n"
                             for i in range(120)))
    loaded = load_records([fasta], skip_invalid=False)
    table = frames_for_records(loaded.records, 300)
    bags = make_bags(table, 16, "k" * 64)
    proba = np.random.default_rng(1).random((len(table.frame_id), 2)).astype(np.float32)
    outdir = tmp_path / "out"
    (outdir / store.BAGS_DIR).mkdir(parents=True)
    for bag in bags:
        rows = slice(bag.start, bag.start + len(bag))
        store.write_bag(outdir, bag, np.zeros((len(bag), 3), np.float32), np.zeros((len(bag), 2), np.float32),
                        proba[rows], {})
    assert len(bags) > 4
    with tables.Tables(outdir, bags, table, loaded, classify=True) as built:
        for bag in rng.sample(bags, len(bags) - 2):  # out of order, two left for write()
            built.add(bag)
        counts, files = built.write(random_weights=True)
    assert files == [store.PREDICTIONS, store.HIGHEST, store.READS]
    comment = f"# {store.RANDOM_WEIGHTS_WARNING}\n"
    calls = store.chunk_calls(table.frame_id, proba)
    assert (outdir / store.PREDICTIONS).read_text() == comment + store.format_prediction_results(table.frame_id, proba)
    assert (outdir / store.HIGHEST).read_text() == comment + store.format_highest_scores(calls)
    columns, want = tables.read_rows(table, loaded, calls, True)
    assert (outdir / store.READS).read_text() == store.format_columns(tables.READS_HEADER, columns,
                                                                      store.RANDOM_WEIGHTS_WARNING)
    assert counts == {**want, "frames": len(table.frame_id), "bags": len(bags)}

    other = dataclasses.replace(bags[0], frame_ids=bags[1].frame_ids)  # bag 0's file, other frames
    with tables.Tables(outdir, [other, *bags[1:]], table, loaded, classify=True) as built:
        with pytest.raises(store.OutputError, match="does not hold the frames of this bag"):
            built.write(random_weights=False)
