"""The run's tables (VirNucPro's two, reads.tsv, pairs.tsv), made per bag and merged at the end.

Why this shape: a sample of 100M reads has 100M rows; the client must not hold them. Each worker
formats its bag's rows (``bag_tables``) and stores them in the bag's file, already in the order the
final file needs: prediction rows in frame order, read rows in record order, chunk calls and read
ids sorted. At the end the client concatenates the first two and k-way merges the sorted ones
(through temporary run files when there are many bags), holding a bounded number of bags at once.
Duplicate ids across bags are found in the same merge; with ``skip_invalid`` their later
occurrences are dropped from the tables, as the in-memory reader would have dropped them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.atomic import AtomicStream
from virnuc_hpc.reads.fasta import DUPLICATE_ID, Record
from virnuc_hpc.errors import FastaError, Problem
from virnuc_hpc.merge import merge_sorted
from virnuc_hpc.outputs.read_rows import READS_HEADER, ReadRow, read_rows
from virnuc_hpc.outputs.sequences import frame_parts, kept_records
from virnuc_hpc.reads.validation import Repeat, repeats, sorted_ids

log = logging.getLogger("virnuc_hpc")

PAIRS_HEADER = ("pair_id", "call_1", "call_2", "call")
COUNT_KEYS = ("reads", "chunks", "chunks_without_frames", "reads_without_frames", "virus_reads",
              "virus_chunks", "chunks_called", "frames")


# --- per bag (in the worker) -------------------------------------------------------------------

@dataclass(frozen=True)
class ReadColumns:
    """reads.tsv's columns that need no chunk call, column-wise with numpy."""

    n_reads: int
    read_of_chunk: np.ndarray      # (chunks,) record number of each chunk
    chunk_ids: list[str]
    missing: np.ndarray            # (chunks,) bool: the chunk has no open frame
    with_frames: np.ndarray        # (reads,) chunks with at least one frame
    columns: dict[str, Any]        # by READS_HEADER's names; "virus_chunks", "call", "virus_score" until with_calls

    @classmethod
    def of(cls, table: Any, records: Sequence[Record]) -> ReadColumns:
        n = len(records)
        n_chunks = np.asarray(table.read_n_chunks, dtype=np.int64)
        read_of_chunk = np.repeat(np.arange(n), n_chunks)
        chunk_no = np.arange(len(read_of_chunk)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks) + 1
        ids = list(table.read_ids)
        chunk_ids = [f"{ids[r]}_chunk_{c}" for r, c in zip(read_of_chunk.tolist(), chunk_no.tolist())]
        no_frame = set(table.chunks_without_frames)
        missing = np.fromiter((c in no_frame for c in chunk_ids), dtype=bool, count=len(chunk_ids))
        with_frames = n_chunks - np.bincount(read_of_chunk, weights=missing, minlength=n).astype(np.int64)
        missing_names: dict[int, list[str]] = {}
        for i in np.flatnonzero(missing).tolist():
            missing_names.setdefault(int(read_of_chunk[i]), []).append(chunk_ids[i])
        frames_per_read = Counter(table.read_id)
        columns: dict[str, Any] = dict(
            read_id=ids, file=[r.path for r in records], length=[len(r.seq) for r in records],
            status=np.where(with_frames > 0, "ok", "no_open_frame").tolist(), chunks=n_chunks.tolist(),
            chunks_with_frames=with_frames.tolist(), frames=[frames_per_read[i] for i in ids],
            chunks_without_frames=[",".join(missing_names[i]) if i in missing_names else "-" for i in range(n)])
        return cls(n, read_of_chunk, chunk_ids, missing, with_frames, columns)

    def with_calls(self, calls: dict[str, bool], classify: bool,
                   virus_score: list[str] | None = None) -> tuple[list[Any], dict[str, int]]:
        """All of reads.tsv's columns (in READS_HEADER's order), and the counts; ``virus_score``: each
        read's best P(virus)."""
        n = self.n_reads
        virus_chunk = np.fromiter((calls.get(c, False) for c in self.chunk_ids), dtype=bool,
                                  count=len(self.chunk_ids))
        virus = np.bincount(self.read_of_chunk, weights=virus_chunk, minlength=n).astype(np.int64)
        call = (np.where(self.with_frames == 0, "-", np.where(virus > 0, "virus", "others")) if classify
                else np.full(n, "-"))
        columns = {**self.columns, "virus_chunks": virus.tolist() if classify else ["-"] * n,
                   "call": call.tolist(),
                   "virus_score": virus_score if classify and virus_score is not None else ["-"] * n}
        counts = {"reads": n, "chunks": len(self.chunk_ids), "chunks_without_frames": int(self.missing.sum()),
                  "reads_without_frames": int((self.with_frames == 0).sum()),
                  "virus_reads": int((call == "virus").sum()),
                  "virus_chunks": sum(calls.values()), "chunks_called": len(calls)}
        return [columns[name] for name in READS_HEADER], counts


def best_virus_scores(read_ids: Sequence[str], frame_reads: Sequence[str], probability: np.ndarray) -> list[str]:
    """Each read's highest P(virus) over its frames, as prediction_results.txt prints a float32
    (``-`` for a read without frames)."""
    if not len(frame_reads):
        return ["-"] * len(read_ids)
    row = {rid: i for i, rid in enumerate(read_ids)}
    best = np.full(len(read_ids), -1.0, dtype=np.float32)
    np.maximum.at(best, np.fromiter((row[r] for r in frame_reads), dtype=np.int64, count=len(frame_reads)),
                  np.asarray(probability, dtype=np.float32).reshape(-1, 2)[:, 1])
    return [str(v) if v >= 0 else "-" for v in best]


def bag_tables(bag_index: int, records: Sequence[Record], valid: Sequence[bool], problems: Iterable[tuple[int, Problem]],
               table: Any, probability: np.ndarray | None, classify: bool, *, block: Any = None,
               write_frames: bool = False) -> tuple[dict[str, str], dict[str, int]]:
    """One bag's table parts (text) and counts.

    ``records`` are all records of the bag, ``valid`` says which went into ``table`` (the frames
    of the valid ones), ``problems`` are (record position, problem) of the skipped ones. With the
    bag's ``block`` (its input text), the records viral.fna needs are kept too (sequences.py).
    """
    kept = [r for r, ok in zip(records, valid) if ok]
    calls: dict[str, bool] = {}
    parts = {"predictions": "", "chunk_calls": "", "viral": ""}
    scores = None
    if classify:
        assert probability is not None
        parts["predictions"] = store.format_prediction_rows(table.frame_id, probability)
        calls = store.chunk_calls(table.frame_id, probability)
        parts["chunk_calls"] = "".join(f"{chunk}\t{calls[chunk]}\n" for chunk in sorted(calls))
        scores = best_virus_scores([r.id for r in kept], table.read_id, probability)
    columns, counts = ReadColumns.of(table, kept).with_calls(calls, classify, scores)
    if classify and block is not None:  # a mate's pair call comes at the end: keep all its reads
        calls_of_reads = columns[READS_HEADER.index("call")]
        chosen = kept if block.file.mate is not None else [r for r, c in zip(kept, calls_of_reads) if c == "virus"]
        parts["viral"] = kept_records(block, chosen)
    if write_frames:
        parts.update(frame_parts(table.frame_id, table.nucleotide, table.protein))
    parts["reads"] = store.format_rows(columns)
    parts["ids"] = sorted_ids(bag_index, list(records), list(valid))
    parts["problems"] = "".join(json.dumps({"pos": pos, "path": p.path, "line": p.line, "record": p.record,
                                            "kind": p.kind, "message": p.message}) + "\n"
                                for pos, p in problems)
    counts["frames"] = len(table.frame_id)
    return parts, counts


# --- at the end (on the client) ----------------------------------------------------------------

AtomicText = AtomicStream  # a table: plain UTF-8 text, never compressed


_CHUNK_ROW = re.compile(r"^(.*)_chunk_\d+\t")


class SampleTables:
    """Writes one sample's tables from its bag files (``refs`` in input order) into ``folder``."""

    def __init__(self, outdir: Path, folder: Path, refs: list[Any], *, classify: bool, skip_invalid: bool,
                 comment: str | None, tmpdir: Path) -> None:
        self.outdir, self.folder, self.refs = outdir, folder, refs
        self.classify, self.skip_invalid, self.comment, self.tmpdir = classify, skip_invalid, comment, tmpdir
        self.by_index = {ref.index: ref for ref in refs}
        self.dropped: dict[int, set[str]] = {}  # filled by write()

    def _part(self, ref: Any, name: str) -> str:
        return store.read_bag_tables(store.bag_path(self.outdir, ref), (name,))[name]

    def duplicates(self) -> list[Repeat]:
        """Later occurrences of ids seen earlier in another bag of this sample (the worker already
        handled repeats inside a bag)."""
        sources = [lambda ref=ref: self._part(ref, "ids") for ref in self.refs]
        return list(repeats(sources, self.tmpdir))

    def write(self) -> tuple[dict[str, int], list[str]]:
        """Write the tables; returns the counts and the file names (relative to ``folder``)."""
        duplicates = self.duplicates()
        problems = [(d.block, d.position, 1, Problem(
            self.by_index[d.block].path, d.line, d.read_id, DUPLICATE_ID,
            f"duplicate id, first seen at {self.by_index[d.first[0]].path}:{d.first[1]}")) for d in duplicates]
        if duplicates and not self.skip_invalid:
            raise FastaError([p for *_, p in problems])
        dropped: dict[int, set[str]] = {}
        for d in duplicates:
            if d.valid:
                dropped.setdefault(d.block, set()).add(d.read_id)
        for ref in self.refs:
            for row in self._part(ref, "problems").splitlines():
                p = json.loads(row)
                problems.append((ref.index, p.pop("pos"), 0, Problem(**p)))
        problems.sort(key=lambda item: item[:3])
        skipped = _skipped_rows([p for *_, p in problems])
        self.dropped = dropped  # read ids per bag left out as repeats (sequences.py leaves them out too)

        self.folder.mkdir(parents=True, exist_ok=True)
        prefix = f"# {self.comment}\n" if self.comment else ""
        counts = dict.fromkeys(COUNT_KEYS, 0)
        files: list[str] = []
        outputs: list[AtomicText] = []
        try:
            reads = AtomicText(self.folder / store.READS)
            outputs.append(reads)
            reads.write(store.format_columns(READS_HEADER, [], self.comment))
            predictions = None
            if self.classify:
                predictions = AtomicText(self.folder / store.PREDICTIONS)
                outputs.append(predictions)
                predictions.write(prefix + store.PREDICTION_HEADER)
            for ref in self.refs:
                tables = store.read_bag_tables(store.bag_path(self.outdir, ref), ("predictions", "reads"))
                parts, bag_counts = dict(tables.parts), tables.counts
                if ref.index in dropped:
                    parts, bag_counts = self._drop(ref, parts, dropped[ref.index])
                reads.write(parts["reads"])
                if predictions is not None:
                    predictions.write(parts["predictions"])
                for key in COUNT_KEYS:
                    counts[key] += int(bag_counts.get(key, 0))
            reads.write(store.format_rows(list(zip(*skipped))))
            if self.classify:
                highest = AtomicText(self.folder / store.HIGHEST)
                outputs.append(highest)
                highest.write(prefix + "Modified_ID\tIs_Virus\n")
                sources = [lambda ref=ref: self._chunk_calls(ref, dropped.get(ref.index)) for ref in self.refs]
                for line in merge_sorted(sources, self.tmpdir):
                    highest.write(line)
            for output in outputs:
                output.commit()
                files.append(output.path.name)
        except BaseException:
            for output in outputs:
                output.discard()
            raise
        counts["skipped_records"] = len(skipped)
        if not self.classify:
            counts.pop("virus_chunks"), counts.pop("chunks_called")
        return counts, files

    def _chunk_calls(self, ref: Any, dropped: set[str] | None) -> str:
        text = self._part(ref, "chunk_calls")
        if not dropped:
            return text
        return "".join(line + "\n" for line in text.split("\n")[:-1]
                       if (m := _CHUNK_ROW.match(line + "\t")) is None or m.group(1) not in dropped)

    def _drop(self, ref: Any, parts: dict[str, str], dropped: set[str]) -> tuple[dict[str, str], dict[str, int]]:
        """A bag's parts without the rows of reads found to repeat an earlier bag's id."""
        _frame_ids, read_ids = store.read_bag_frames(store.bag_path(self.outdir, ref))
        rows = parts["predictions"].split("\n")[:-1]
        parts["predictions"] = "".join(row + "\n" for row, rid in zip(rows, read_ids) if rid not in dropped)
        kept = [row for row in read_rows(parts["reads"]) if row.read_id not in dropped]
        parts["reads"] = "".join(row.line() for row in kept)
        calls = self._chunk_calls(ref, dropped)
        counts = {"reads": len(kept), "chunks": sum(int(r.chunks) for r in kept),
                  "chunks_without_frames": sum(int(r.chunks) - int(r.chunks_with_frames) for r in kept),
                  "reads_without_frames": sum(r.chunks_with_frames == "0" for r in kept),
                  "virus_reads": sum(r.call == "virus" for r in kept),
                  "virus_chunks": sum(int(r.virus_chunks) for r in kept if r.virus_chunks != "-"),
                  "chunks_called": calls.count("\n"), "frames": sum(int(r.frames) for r in kept)}
        return parts, counts

    def pairs(self, mate_refs: dict[int, list[Any]]) -> str | None:
        """pairs.tsv of a paired sample: mates zipped in file order; a pair is ``virus`` when either
        mate is, ``others`` when a mate has frames and none is virus, ``-`` otherwise. Returns the
        file name, or None (with a warning) when the two files do not list the same pairs in order."""
        def rows(refs: list[Any]) -> Iterator[ReadRow]:
            for ref in refs:
                yield from read_rows(self._part(ref, "reads"))
        out = AtomicText(self.folder / store.PAIRS)
        try:
            out.write(store.format_columns(PAIRS_HEADER, [], self.comment))
            ones, twos = rows(mate_refs.get(1, [])), rows(mate_refs.get(2, []))
            for one, two in _zip_exact(ones, twos):
                pair = one.read_id[:-2]
                if one.read_id[-2:] != "/1" or two.read_id != pair + "/2":
                    log.warning("warning: sample %s: mate files disagree at %s / %s; pairs.tsv not written",
                                self.folder.name, one.read_id, two.read_id)
                    out.discard()
                    return None
                calls = (one.call, two.call)
                call = "virus" if "virus" in calls else ("others" if "others" in calls else "-")
                out.write(f"{pair}\t{one.call}\t{two.call}\t{call}\n")
        except _Unequal:
            log.warning("warning: sample %s: mate files hold different numbers of valid reads; "
                        "pairs.tsv not written", self.folder.name)
            out.discard()
            return None
        except BaseException:
            out.discard()
            raise
        out.commit()
        return store.PAIRS


class _Unequal(Exception):
    pass


def _zip_exact(a: Iterator[ReadRow], b: Iterator[ReadRow]) -> Iterator[tuple[ReadRow, ReadRow]]:
    sentinel: Any = object()
    while True:
        x, y = next(a, sentinel), next(b, sentinel)
        if x is sentinel and y is sentinel:
            return
        if x is sentinel or y is sentinel:
            raise _Unequal
        yield x, y


def _skipped_rows(problems: list[Problem]) -> list[ReadRow]:
    """One reads.tsv row per skipped record id (per file), all its problems named, in input order."""
    skipped: dict[tuple[str, str], list[str]] = {}
    for problem in problems:
        kinds = skipped.setdefault((problem.path, problem.record or f"line {problem.line}"), [])
        if problem.kind not in kinds:
            kinds.append(problem.kind)
    return [ReadRow(read_id=record_id, file=path, length="-", status="skipped:" + "+".join(kinds), chunks="0",
                    chunks_with_frames="0", frames="0", virus_chunks="-", call="-", chunks_without_frames="-",
                    virus_score="-")
            for (path, record_id), kinds in skipped.items()]


def new_tmpdir(outdir: Path) -> Path:
    """A private folder for merge runs, inside OUTDIR (same filesystem, cleaned by the caller)."""
    return Path(tempfile.mkdtemp(prefix=".merge-", dir=outdir))


def remove_tmpdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
