"""The tables made per bag and merged at the end equal tables made in memory from every record.

The expectation is built without the code under test: VirNucPro's two tables by a re-implementation
of the original tool's few lines (its ``prediction.py``: the text rows, then pandas for the
highest-score table), reads.tsv by its rules written out per read, and a small hand-written case
whose expected text is spelled out literally. The probabilities are a fixed function of the frame
id, so both sides see the same numbers. Only the frames (reads/, tested on their own) are shared.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from virnuc_hpc import merge

from virnuc_hpc.outputs import store, tables
from virnuc_hpc.reads.bags import plan_bags
from virnuc_hpc.errors import FastaError
from virnuc_hpc.testing.loading import load_records
from virnuc_hpc.reads.frames import frames_for_records
from virnuc_hpc.reads.samples import samples_from_paths
from virnuc_hpc.runtime.worker import BagRules, parse_bag

READS_COLUMNS = "read_id\tfile\tlength\tstatus\tchunks\tchunks_with_frames\tframes\tvirus_chunks\tcall\tchunks_without_frames\tvirus_score\n"


def proba_of(frame_id: str) -> np.ndarray:
    """A fixed, frame-specific probability pair (what the classifier would give)."""
    seed = int(hashlib.sha256(frame_id.encode()).hexdigest()[:8], 16)
    p = np.float32(np.random.default_rng(seed).random())
    return np.array([p, np.float32(1) - p], dtype=np.float32)


def virnucpro_predictions(frame_ids: list[str], probabilities: list[np.ndarray]) -> str:
    """prediction_results.txt as the original writes it: torch.max's label (the first index wins a
    tie, as numpy's argmax), then each float32 probability through ``str``."""
    label_map = {1: "virus", 0: "others"}
    lines = ["Sequence_ID\tPrediction\tscore1\tscore2\n"]
    for seqid, probability in zip(frame_ids, probabilities):
        prob_str = "\t".join(map(str, probability))
        lines.append(f"{seqid}\t{label_map[int(np.argmax(probability))]}\t{prob_str}\n")
    return "".join(lines)


def virnucpro_highest(predictions: str) -> str:
    """prediction_results_highestscore.csv as the original makes it from prediction_results.txt:
    read back with pandas, chunk = frame id minus 2 characters, virus iff max score2 >= max score1."""
    df = pd.read_csv(io.StringIO(predictions), sep="\t")
    df["Modified_ID"] = df["Sequence_ID"].str[:-2]
    best = df.groupby("Modified_ID")[["score1", "score2"]].max()
    out = pd.DataFrame({"Is_Virus": best["score2"] >= best["score1"]}).reset_index()
    return out.to_csv(sep="\t", index=False, lineterminator="\n")


def slow_tables(path: Path, chunk_size: int, comment: str) -> dict[str, str]:
    """VirNucPro's tables and reads.tsv from all records at once, rule by rule."""
    loaded = load_records([path], skip_invalid=True)
    table = frames_for_records(loaded.records, chunk_size)
    frame_ids = list(table.frame_id)
    predictions = virnucpro_predictions(frame_ids, [proba_of(fid) for fid in frame_ids])
    highest = virnucpro_highest(predictions)
    calls = {row.split("\t")[0]: row.split("\t")[1] == "True" for row in highest.splitlines()[1:]}
    per_read_frames: dict[str, int] = {}
    best_virus: dict[str, np.float32] = {}  # a read's highest P(virus), as prediction_results prints it
    for rid, fid in zip(table.read_id, frame_ids):
        per_read_frames[rid] = per_read_frames.get(rid, 0) + 1
        best_virus[rid] = max(best_virus.get(rid, np.float32(-1)), proba_of(fid)[1])
    head = f"# {comment}\n"
    no_frame = set(table.chunks_without_frames)
    reads = [head, READS_COLUMNS]
    for record, n_chunks in zip(loaded.records, table.read_n_chunks):
        chunk_ids = [f"{record.id}_chunk_{i + 1}" for i in range(n_chunks)]
        missing = [c for c in chunk_ids if c in no_frame]
        with_frames = n_chunks - len(missing)
        virus = sum(calls.get(c, False) for c in chunk_ids)
        call = "-" if not with_frames else ("virus" if virus else "others")
        reads.append("\t".join(map(str, (record.id, record.path, len(record.seq),
                                         "ok" if with_frames else "no_open_frame", n_chunks, with_frames,
                                         per_read_frames.get(record.id, 0), virus, call,
                                         ",".join(missing) or "-",
                                         str(best_virus[record.id]) if record.id in best_virus else "-"))) + "\n")
    skipped: dict[tuple[str, str], list[str]] = {}
    for p in loaded.skipped:
        kinds = skipped.setdefault((p.path, p.record or f"line {p.line}"), [])
        if p.kind not in kinds:
            kinds.append(p.kind)
    for (path_, rid), kinds in skipped.items():
        reads.append(f"{rid}\t{path_}\t-\tskipped:{'+'.join(kinds)}\t0\t0\t0\t-\t-\t-\t-\n")
    return {"prediction_results.txt": head + predictions,
            "prediction_results_highestscore.csv": head + highest, "reads.tsv": "".join(reads)}


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
        store.write_bag(outdir, bag.ref, frames, None, proba, {}, features="none", tables=parts, counts=counts)
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
    rows = [r.split("\t") for r in want["reads.tsv"].splitlines()[2:]]
    ok = [r for r in rows if not r[3].startswith("skipped")]
    assert counts["reads"] == len(ok) and counts["skipped_records"] == len(rows) - len(ok) >= 6
    assert counts["frames"] == len(want["prediction_results.txt"].splitlines()) - 2
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


def test_virnucpro_tables_of_a_hand_written_case():
    """The two VirNucPro tables of four frames, spelled out: a frame's label is ``virus`` only when
    score2 > score1 (a tie is ``others``); a chunk is ``True`` when its best score2 >= its best
    score1 over its frames (a tie is ``True``); chunks are sorted by id, as pandas' groupby does."""
    ids = ["b_chunk_1F1", "a_chunk_1F1", "a_chunk_1R1", "c_chunk_2R3"]
    proba = np.array([[0.875, 0.125], [0.25, 0.75], [0.5, 0.5], [0.5, 0.5]], dtype=np.float32)
    assert store.format_prediction_results(ids, proba) == (
        "Sequence_ID\tPrediction\tscore1\tscore2\n"
        "b_chunk_1F1\tothers\t0.875\t0.125\n"
        "a_chunk_1F1\tvirus\t0.25\t0.75\n"
        "a_chunk_1R1\tothers\t0.5\t0.5\n"
        "c_chunk_2R3\tothers\t0.5\t0.5\n")
    assert store.format_highest_scores(store.chunk_calls(ids, proba)) == (
        "Modified_ID\tIs_Virus\n"
        "a_chunk_1\tTrue\n"
        "b_chunk_1\tFalse\n"
        "c_chunk_2\tTrue\n")
    # the same four frames through the re-implementation of the original agree
    predictions = virnucpro_predictions(ids, list(proba))
    assert predictions == store.format_prediction_results(ids, proba)
    assert virnucpro_highest(predictions) == store.format_highest_scores(store.chunk_calls(ids, proba))


def test_reads_header_is_the_documented_one():
    assert "\t".join(tables.READS_HEADER) + "\n" == READS_COLUMNS
