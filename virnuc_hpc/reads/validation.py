"""Input checks: the rules a block of records must pass, and every problem of whole samples.

The same rules run inside every bag of a real run (``checked_block``) and up front, over whole
samples (``find_problems``, behind ``virnuc-hpc validate``): structural problems (binary junk,
broken FASTQ) and record problems (empty ids or sequences, non-nucleotide characters) per block,
ids repeated within a sample by a sorted merge of each block's ids. Which process checks the
blocks is the caller's choice (``BlockChecker``): here, one after the other; the runtime layer
spreads them over a local cluster (``virnuc_hpc.runtime.validate``).
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnuc_hpc.errors import FastaError, Problem
from virnuc_hpc.merge import merge_sorted
from virnuc_hpc.reads import fasta, fastq
from virnuc_hpc.reads.fasta import DUPLICATE_ID, STRUCTURAL_KINDS, Parsed, Record
from virnuc_hpc.reads.reading import FASTA, Block, iter_blocks, sniff
from virnuc_hpc.reads.samples import Sample

VALIDATE_BLOCK_RECORDS = 50_000

#: (path, problems, sorted ids file) of one checked block: what ``check_block`` finds, with its file.
BlockResult = tuple[str, list[Problem], str]
#: Checks the blocks, numbered in input order, into ``spool``: each block's BlockResult, in input order.
BlockChecker = Callable[[Iterable[Block], str], list[BlockResult]]


def parse_block(block: Block) -> Parsed:
    """Parse a block (or consecutive blocks joined) into records and their problems: the block's
    format's parser (``fasta`` or ``fastq``), which applies the per-record rules as it goes.

    Every record is returned, with `Parsed.invalid` naming those with record-level problems
    (empty id or sequence, non-IUPAC characters); structural problems (binary data, malformed
    FASTQ) end the parse. Ids get the file's mate suffix. Duplicate ids are not checked.
    """
    if block.fmt == FASTA:
        return fasta.parse_text(block.data, block.file.path, block.first_line, block.file.id_suffix)
    return fastq.parse_text(block.data, block.file.path, block.first_line, block.file.id_suffix,
                            expected=block.n_records)


def validated_block(block: Block) -> tuple[Parsed, list[bool], list[tuple[int, Problem]]]:
    """The one pass from a block of bytes to validated records: parse (``parse_block``), then the
    rules that need the whole block (``check_records``). The parsed block, which records are valid,
    and (position, problem) of the others."""
    parsed = parse_block(block)
    valid, located = check_records(parsed.records, parsed.problems, parsed.invalid)
    return parsed, valid, located


def checked_block(block: Block, skip_invalid: bool) -> tuple[list[Record], list[bool], list[tuple[int, Problem]]]:
    """A block's records, which of them are valid, and (position, problem) of the others.

    Structural problems always stop the run; record problems do unless ``skip_invalid`` (ids
    repeated across blocks are found where every block is seen)."""
    parsed, valid, problems = validated_block(block)
    structural = [p for p in parsed.problems if p.kind in STRUCTURAL_KINDS]
    if structural:
        raise FastaError(structural)
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
    parsed, valid, located = validated_block(block)
    path = os.path.join(spool, f"ids-{number:08d}")
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(sorted_ids(number, parsed.records, valid))
    return [p for _, p in located], path


def check_blocks(blocks: Iterable[Block], spool: str) -> list[BlockResult]:
    """The BlockChecker that checks every block in this process, one after the other."""
    return [(block.file.path, *check_block(block, number, spool)) for number, block in enumerate(blocks)]


def find_problems(samples: list[Sample], *, check: BlockChecker = check_blocks,
                  block_records: int = VALIDATE_BLOCK_RECORDS) -> list[Problem]:
    """Every problem of every input, in input order, without raising; ``check`` checks the blocks."""
    files = [f for s in samples for f in s.files]
    problems: list[Problem] = []
    readable = []
    for f in files:
        try:
            sniff(f.path)
            readable.append(f)
        except FastaError as err:
            problems.extend(err.problems)
    spool = Path(tempfile.mkdtemp(prefix="virnuc-validate-"))
    try:
        results = check(readable_blocks(readable, block_records, problems), str(spool))
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


def readable_blocks(files: list[Any], block_records: int, unreadable: list[Problem]) -> Iterator[Block]:
    """Every block of every file; a file that stops decompressing midway (or ends in bytes that are
    no whole stream) adds its problem to ``unreadable`` and ends there, and the next file is read."""
    for f in files:
        try:
            yield from iter_blocks(f, block_records)
        except FastaError as err:
            unreadable.extend(err.problems)
