"""Whole inputs at once: the in-memory path (load_records, validate, read_fasta).

A run never holds every record (it streams bags, see `bags`); these read everything into memory.
They are the reference the streaming path is tested against, and what small scripts want.
FASTA or FASTQ, plain or compressed, through `reading`; the rules are `fasta`'s and `fastq`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from virnuc_hpc.reads import reading
from virnuc_hpc.reads.fasta import (
    DUPLICATE_ID,
    STRUCTURAL_KINDS,
    TEXT_BEFORE_HEADER,
    FastaError,
    Parsed,
    Problem,
    Record,
    record_id,
    scan_buffers,
)
from virnuc_hpc.reads.samples import InputFile
from virnuc_hpc.reads.validation import parse_block

DEFAULT_BLOCK_SIZE = 1 << 23  # 8 MiB of (decompressed) text per read call


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Valid records in input order, and the problems of records dropped by skip_invalid."""

    records: list[Record]
    skipped: list[Problem]


def read_fasta(path: str | os.PathLike[str], *, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[Record]:
    """Stream the records of one FASTA file, plain or compressed (told by content, not name).

    Only structure is checked (FastaError on an empty file, text before the first header,
    binary junk or unreadable data); record contents are returned as found. Being a stream,
    an error in the middle of a file is raised after the records before it were yielded.
    """
    path = os.fspath(path)
    for batch in scan_buffers(path, _reads(path, block_size)):
        if isinstance(batch, Problem):
            raise FastaError([batch])
        for title, seq, _body, line in batch:
            yield Record(record_id(title), seq.decode("ascii"), path, line)


def load_records(
    paths: Iterable[str | os.PathLike[str] | InputFile] | str | os.PathLike[str] | InputFile,
    *,
    skip_invalid: bool,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> LoadResult:
    """Read and validate all inputs (FASTA or FASTQ) before anything expensive runs.

    Structural problems always raise. Record problems (empty id, empty sequence, non-IUPAC
    characters, repeated id) raise all together unless skip_invalid, which drops those
    records and returns their problems in `skipped` (a record may have several).
    InputFiles of paired samples give their reads the mate suffix (see `samples`).
    """
    records, problems = _scan_inputs(_as_inputs(paths), block_size)
    structural = [p for p in problems if p.kind in STRUCTURAL_KINDS]
    if structural:
        raise FastaError(structural)
    if problems and not skip_invalid:
        raise FastaError(problems)
    return LoadResult(records=records, skipped=problems)


def validate(
    paths: Iterable[str | os.PathLike[str] | InputFile] | str | os.PathLike[str] | InputFile,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[Problem]:
    """Every problem in the inputs, in file order, without raising (for `virnuc-hpc validate`)."""
    return _scan_inputs(_as_inputs(paths), block_size)[1]


RECORDS_PER_BLOCK = 1 << 16  # records parsed at a time by load_records and validate


def _as_inputs(
    paths: Iterable[str | os.PathLike[str] | InputFile] | str | os.PathLike[str] | InputFile,
) -> list[InputFile]:
    """Accept one path or many (a bare str must not be iterated character by character)."""
    if isinstance(paths, (str, os.PathLike, InputFile)):
        paths = [paths]
    return [p if isinstance(p, InputFile) else InputFile(os.fspath(p), "", None) for p in paths]


def _scan_inputs(files: Sequence[InputFile], read_size: int) -> tuple[list[Record], list[Problem]]:
    """Parse all files; return the records without record-level problems, and all problems.

    Duplicates are judged on ids across all files in order: the first occurrence keeps the
    id (even if it is invalid for another reason), every later one is a problem.
    """
    records: list[Record] = []
    problems: list[Problem] = []
    first_seen: dict[str, tuple[str, int]] = {}
    for file in files:
        for parsed in _parsed_file(file, read_size):
            if isinstance(parsed, Problem):
                problems.append(parsed)
                continue
            duplicates: dict[int, Problem] = {}
            for position, record in enumerate(parsed.records):
                if record.id:
                    where = (record.path, record.line)
                    first = first_seen.setdefault(record.id, where)
                    if first is not where:  # identity: the same file may be given twice
                        message = f"duplicate id, first seen at {first[0]}:{first[1]}"
                        duplicates[position] = Problem(record.path, record.line, record.id, DUPLICATE_ID, message)
                        continue
                if position not in parsed.invalid:
                    records.append(record)
            problems.extend(_with_duplicates(parsed, duplicates) if duplicates else parsed.problems)
    return records, problems


def _parsed_file(file: InputFile, read_size: int) -> Iterator[Parsed | Problem]:
    """The parsed blocks of one file, or the Problem that stops it (the file is then left)."""
    try:
        fmt = reading.sniff(file.path)
    except FastaError as error:
        if error.problems[0].kind != TEXT_BEFORE_HEADER:
            yield from error.problems
            return
        fmt = reading.FASTA  # the scanner reports the stray text and goes on, so validate says more
    try:
        for block in reading.iter_blocks(file, RECORDS_PER_BLOCK, read_size=read_size, fmt=fmt):
            parsed = parse_block(block)
            yield parsed
            if any(p.kind in STRUCTURAL_KINDS and p.kind != TEXT_BEFORE_HEADER for p in parsed.problems):
                return
    except FastaError as error:  # unreadable data met while cutting blocks
        yield from error.problems


def _with_duplicates(parsed: Parsed, duplicates: dict[int, Problem]) -> list[Problem]:
    """The block's problems with each duplicate-id problem right after its record's own ones.

    A record's problems lie between its header line and the next record's; structural
    problems met after the records (binary junk, malformed FASTQ) stay last.
    """
    infinity = float("inf")
    records = parsed.records
    keyed: list[tuple[float, int, int, Problem]] = []
    for i, problem in enumerate(parsed.problems):
        trailing = problem.kind in STRUCTURAL_KINDS and problem.kind != TEXT_BEFORE_HEADER
        line = infinity if trailing or problem.line is None else problem.line
        keyed.append((line, int(trailing), i, problem))
    for position, problem in duplicates.items():
        after = records[position + 1].line - 0.5 if position + 1 < len(records) else infinity
        keyed.append((after, 0, -1, problem))
    return [problem for *_key, problem in sorted(keyed, key=lambda item: item[:3])]


def _reads(path: str, block_size: int) -> Iterator[bytes]:
    """The decompressed bytes of a file, block_size at a time."""
    with reading.open_binary(path) as stream:
        while block := stream.read(block_size):
            yield block
