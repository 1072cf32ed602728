"""The run's tables (VirNucPro's two, and reads.tsv), built while the GPUs work.

Why: at a million reads, reading every bag back and formatting its rows took seconds after the last
bag, with every GPU already idle. Here each finished bag is read back (which also checks that its
file holds this bag's frames) and formatted on a client thread as soon as it lands, and the per-read
columns that need no call are computed up front; after the last bag only the chunk calls and the
joins are left.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from . import store
from .bags import Bag
from .fasta import LoadResult

READS_HEADER = ("read_id", "file", "length", "status", "chunks", "chunks_with_frames", "frames",
                "virus_chunks", "call", "chunks_without_frames")


@dataclass(frozen=True)
class BagRows:
    """One bag's predictions, read back from its file, and its prediction_results.txt rows."""

    frame_ids: list[str]
    probability: np.ndarray
    text: str


def bag_rows(outdir: Path, bag: Bag) -> BagRows:
    path = store.bag_path(outdir, bag)
    ids, proba = store.read_bag_predictions(path)
    if ids != bag.frame_ids:  # never mix up sequences, whatever happened to the files
        raise store.OutputError(f"{path} does not hold the frames of this bag; rerun with --overwrite")
    return BagRows(ids, proba, store.format_prediction_rows(ids, proba))


@dataclass(frozen=True)
class ReadColumns:
    """reads.tsv's columns that need no chunk call, column-wise with numpy (a million reads)."""

    n_reads: int
    read_of_chunk: np.ndarray      # (chunks,) record number of each chunk
    chunk_ids: list[str]
    missing: np.ndarray            # (chunks,) bool: the chunk has no open frame
    with_frames: np.ndarray        # (reads,) chunks with at least one frame
    columns: list[list[Any]]       # READS_HEADER's, skipped records' rows included; the two that
    n_skipped: int                 # need calls ("virus_chunks", "call") are None until with_calls

    @classmethod
    def of(cls, table: Any, loaded: LoadResult) -> ReadColumns:
        records = loaded.records
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
        columns: list[Any] = [
            ids, [r.path for r in records], [len(r.seq) for r in records],
            np.where(with_frames > 0, "ok", "no_open_frame").tolist(), n_chunks.tolist(),
            with_frames.tolist(), [frames_per_read[i] for i in ids], None, None,
            [",".join(missing_names[i]) if i in missing_names else "-" for i in range(n)],
        ]
        skipped: dict[tuple[str, str], list[str]] = {}
        for problem in loaded.skipped:  # one row per skipped record id, all its problems named
            kinds = skipped.setdefault((problem.path, problem.record or f"line {problem.line}"), [])
            if problem.kind not in kinds:
                kinds.append(problem.kind)
        for (path, record_id), kinds in skipped.items():
            row = (record_id, path, "-", "skipped:" + "+".join(kinds), 0, 0, 0, None, None, "-")
            for column, value in zip(columns, row):
                if column is not None:
                    column.append(value)
        return cls(n, read_of_chunk, chunk_ids, missing, with_frames, columns, len(skipped))

    def with_calls(self, calls: dict[str, bool], classify: bool) -> tuple[list[list[Any]], dict[str, int]]:
        """All of reads.tsv's columns (one row per input record, then one per skipped record), and
        the run's counts."""
        n = self.n_reads
        virus_chunk = np.fromiter((calls.get(c, False) for c in self.chunk_ids), dtype=bool,
                                  count=len(self.chunk_ids))
        virus = np.bincount(self.read_of_chunk, weights=virus_chunk, minlength=n).astype(np.int64)
        call = (np.where(self.with_frames == 0, "-", np.where(virus > 0, "virus", "others")) if classify
                else np.full(n, "-"))
        skipped = ["-"] * self.n_skipped  # neither column applies to a skipped record
        columns = list(self.columns)  # the other columns are shared, never changed
        columns[7] = (virus.tolist() if classify else ["-"] * n) + skipped
        columns[8] = call.tolist() + skipped
        counts = {"reads": n, "chunks": len(self.chunk_ids), "chunks_without_frames": int(self.missing.sum()),
                  "reads_without_frames": int((self.with_frames == 0).sum()),
                  "virus_reads": int((call == "virus").sum()), "skipped_records": self.n_skipped,
                  "virus_chunks": sum(calls.values()), "chunks_called": len(calls)}
        return columns, counts


def read_rows(table: Any, loaded: LoadResult, calls: dict[str, bool],
              classify: bool) -> tuple[list[list[Any]], dict[str, int]]:
    """reads.tsv as columns, and the counts, in one call."""
    return ReadColumns.of(table, loaded).with_calls(calls, classify)


class Tables:
    """Builds the tables on one client thread while bags finish; ``write`` after the last one.

    ``add(bag)`` for each bag as it is finished (computed now or kept from an earlier run); a bag
    never added is read in ``write``. Use as a context manager: the thread stops on any exit."""

    def __init__(self, outdir: Path, bags: list[Bag], table: Any, loaded: LoadResult, classify: bool):
        self.outdir, self.bags, self.table, self.classify = outdir, bags, table, classify
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="virnuc-tables")
        self._reads: Future[ReadColumns] = self._pool.submit(ReadColumns.of, table, loaded)
        self._rows: dict[int, Future[BagRows]] = {}

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, bag: Bag) -> None:
        if self.classify and bag.index not in self._rows:
            self._rows[bag.index] = self._pool.submit(bag_rows, self.outdir, bag)

    def write(self, random_weights: bool) -> tuple[dict[str, int], list[str]]:
        """Write prediction_results.txt, prediction_results_highestscore.csv (classify only) and
        reads.tsv; returns the counts and the file names."""
        comment = store.RANDOM_WEIGHTS_WARNING if random_weights else None
        prefix = f"# {comment}\n" if comment else ""
        calls: dict[str, bool] = {}
        files = []
        if self.classify:
            for bag in self.bags:
                self.add(bag)
            parts = [self._rows[bag.index].result() for bag in self.bags]
            frame_ids = [fid for part in parts for fid in part.frame_ids]
            proba = (np.concatenate([part.probability for part in parts]) if parts
                     else np.zeros((0, 2), np.float32))
            store.write_text_atomic(self.outdir / store.PREDICTIONS, prefix + store.PREDICTION_HEADER
                                    + "".join(part.text for part in parts))
            calls = store.chunk_calls(frame_ids, proba)
            store.write_text_atomic(self.outdir / store.HIGHEST, prefix + store.format_highest_scores(calls))
            files += [store.PREDICTIONS, store.HIGHEST]
        columns, counts = self._reads.result().with_calls(calls, self.classify)
        store.write_text_atomic(self.outdir / store.READS, store.format_columns(READS_HEADER, columns, comment))
        files.append(store.READS)
        counts["frames"] = len(self.table.frame_id)
        counts["bags"] = len(self.bags)
        return counts, files
