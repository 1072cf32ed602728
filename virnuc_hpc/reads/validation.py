"""Input checks: the rules a block of records must pass, and ``virnuc-hpc validate`` in parallel.

The same rules run inside every bag of a real run (``check_records``) and here, up front, over
whole samples: structural problems (binary junk, broken FASTQ) and record problems (empty ids or
sequences, non-nucleotide characters) per block, ids repeated within a sample by a sorted merge of
each block's ids. Blocks are checked by a local Dask cluster of one process per core, so a
sample of 100M reads is checked at the speed of the machine, with bounded client memory.
"""

from __future__ import annotations

import bisect
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnuc_hpc.reads.fasta import DUPLICATE_ID, STRUCTURAL_KINDS, Record

from virnuc_hpc.errors import FastaError, Problem
from virnuc_hpc.merge import merge_sorted
from virnuc_hpc.reads.reading import Block, iter_blocks, parse_block, sniff
from virnuc_hpc.reads.samples import Sample

VALIDATE_BLOCK_RECORDS = 50_000
SMALL_INPUT_BYTES = 32 << 20  # below this, validate in the calling process (no cluster start)


def checked_block(block: Block, skip_invalid: bool) -> tuple[list[Record], list[bool], list[tuple[int, Problem]]]:
    """A block's records, which of them are valid, and (position, problem) of the others.

    Structural problems always stop the run; record problems do unless ``skip_invalid`` (ids
    repeated across blocks are found where every block is seen)."""
    parsed = parse_block(block)
    structural = [p for p in parsed.problems if p.kind in STRUCTURAL_KINDS]
    if structural:
        raise FastaError(structural)
    valid, problems = check_records(parsed.records, parsed.problems, parsed.invalid)
    if problems and not skip_invalid:
        raise FastaError([p for _, p in problems])
    return parsed.records, valid, problems


def check_records(records: list[Record], problems: list[Problem],
                  invalid: set[int]) -> tuple[list[bool], list[tuple[int, Problem]]]:
    """Which records of a block are valid, and (record position, problem) of the others.

    ``problems`` and ``invalid`` come from the parser; an id repeated inside the block is a
    problem of its later occurrences (the first keeps the id, even when invalid otherwise).
    A block without repeated ids, the usual case, needs no per-record Python loop."""
    located: list[tuple[int, Problem]] = []
    if problems:
        lines = [r.line for r in records]
        located = [(max(0, bisect.bisect_right(lines, p.line or 0) - 1), p) for p in problems]
    valid = [True] * len(records)
    for i in invalid:
        valid[i] = False
    ids = [r.id for r in records]
    if len(set(ids)) < len(ids):  # some id repeated (or empty twice): look record by record
        first: dict[str, int] = {}
        for i, record in enumerate(records):
            if not record.id:
                continue
            seen = first.setdefault(record.id, i)
            if seen != i:
                valid[i] = False
                located.append((i, Problem(record.path, record.line, record.id, DUPLICATE_ID,
                                           f"duplicate id, first seen at {record.path}:{records[seen].line}")))
    located.sort(key=lambda item: item[0])  # stable: a record's own problems keep their order
    return valid, located


def id_line(read_id: str, block: int, position: int, line: int, valid: bool) -> str:
    """A line of a block's sorted id list. Ids hold no whitespace, and TAB sorts before any id
    character, so sorting whole lines sorts by id, then by block (fixed width): input order."""
    return f"{read_id}\t{block:08d}\t{position}\t{line}\t{int(valid)}\n"


def sorted_ids(block_number: int, records: list[Record], valid: list[bool]) -> str:
    """The first occurrence of each id of a block, as sorted ``id_line``s.

    Built with comprehensions (the id_line format inlined): this runs for every block of a run."""
    ids = [record.id for record in records]
    # Walking the block backwards, an id's first occurrence is stored last and wins.
    first = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1)))
    first.pop("", None)
    block = f"{block_number:08d}"
    lines = [f"{rid}\t{block}\t{p}\t{records[p].line}\t{int(valid[p])}\n" for rid, p in first.items()]
    lines.sort()
    return "".join(lines)


@dataclass(frozen=True)
class Repeat:
    """An id seen again in a later block of the same sample."""

    block: int
    position: int
    read_id: str
    line: int
    valid: bool
    first: tuple[int, int]  # (block, header line) of the first occurrence


def repeats(sorted_id_texts: list[Any], tmpdir: Path) -> Iterator[Repeat]:
    """Ids of a sample seen in more than one block; ``sorted_id_texts`` are callables returning
    each block's ``sorted_ids`` text, in input order."""
    previous, first = None, (0, 0)
    for line in merge_sorted(sorted_id_texts, tmpdir):
        read_id, block, position, header_line, valid = line.rstrip("\n").split("\t")
        if read_id == previous:
            yield Repeat(int(block), int(position), read_id, int(header_line), valid == "1", first)
        else:
            previous, first = read_id, (int(block), int(header_line))


def check_block(block: Block, number: int, spool: str) -> tuple[list[Problem], str]:
    """Problems of one block, and the file holding its sorted ids (a task: runs on a worker)."""
    parsed = parse_block(block)
    valid, located = check_records(parsed.records, parsed.problems, parsed.invalid)
    path = os.path.join(spool, f"ids-{number:08d}")
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(sorted_ids(number, parsed.records, valid))
    return [p for _, p in located], path


def validate_samples(samples: list[Sample], *, workers: int | None = None, parallel: bool | None = None,
                     block_records: int = VALIDATE_BLOCK_RECORDS) -> list[Problem]:
    """Every problem of every input, in input order, without raising. ``parallel``: a local Dask
    cluster of ``workers`` processes (None: when the inputs are not small)."""
    files = [f for s in samples for f in s.files]
    problems: list[Problem] = []
    readable = []
    for f in files:
        try:
            sniff(f.path)
            readable.append(f)
        except FastaError as err:
            problems.extend(err.problems)
    if parallel is None:
        parallel = sum(os.path.getsize(f.path) for f in readable) >= SMALL_INPUT_BYTES
    spool = Path(tempfile.mkdtemp(prefix="virnuc-validate-"))
    try:
        results = _check_all(readable, spool, workers=workers, parallel=parallel, block_records=block_records,
                             unreadable=problems)
        by_sample: dict[str, list[tuple[int, str]]] = {}
        where: dict[int, str] = {}
        for number, (path, block_problems, ids) in enumerate(results):
            problems.extend(block_problems)
            where[number] = path
            sample = next(f.sample for f in readable if f.path == path)
            by_sample.setdefault(sample, []).append((number, ids))
        for sample, parts in by_sample.items():
            sources = [lambda p=p: Path(p).read_text(encoding="utf-8") for _, p in parts]
            for r in repeats(sources, spool):
                problems.append(Problem(where[r.block], r.line, r.read_id, DUPLICATE_ID,
                                        f"duplicate id, first seen at {where[r.first[0]]}:{r.first[1]}"))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    order = {f.path: i for i, f in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.path, -1), p.line or 0))
    return problems


def _readable_blocks(files: list[Any], block_records: int, unreadable: list[Problem]) -> Iterator[Block]:
    """Every block of every file; a file that stops decompressing midway (or ends in bytes that are
    no whole stream) adds its problem to ``unreadable`` and ends there, and the next file is read."""
    for f in files:
        try:
            yield from iter_blocks(f, block_records)
        except FastaError as err:
            unreadable.extend(err.problems)


def _check_all(files: list[Any], spool: Path, *, workers: int | None, parallel: bool,
               block_records: int, unreadable: list[Problem]) -> list[tuple[str, list[Problem], str]]:
    """(path, problems, ids file) per block, in input order: in this process, or on a local Dask
    cluster of one process per core with a bounded number of blocks in flight."""
    blocks = _readable_blocks(files, block_records, unreadable)
    if not parallel:
        return [(block.file.path, *check_block(block, number, str(spool))) for number, block in enumerate(blocks)]
    from distributed import Client, LocalCluster, as_completed

    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster, Client(cluster, set_as_default=False) as client:
        results: dict[int, tuple[str, list[Problem], str]] = {}
        source = enumerate(blocks)
        futures = {}
        first = []
        for number, block in itertools.islice(source, 2 * n):
            fut = client.submit(check_block, block, number, str(spool), pure=False)
            futures[fut.key] = (number, block.file.path)
            first.append(fut)
        pending = as_completed(first, loop=client.loop)
        for fut in pending:
            number, path = futures.pop(fut.key)
            found, ids = fut.result()
            results[number] = (path, found, ids)
            for number2, block in itertools.islice(source, 1):
                nxt = client.submit(check_block, block, number2, str(spool), pure=False)
                futures[nxt.key] = (number2, block.file.path)
                pending.add(nxt)
        return [results[i] for i in sorted(results)]
