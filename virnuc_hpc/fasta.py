"""Streaming FASTA input that sees exactly what VirNucPro's Biopython reader saw.

Why this shape: the classifiers only make sense on the sequences the original parsed
(compat spec, section 1), so parsing follows Bio.SeqIO's "fasta" reader on a file opened
in text mode: CR and CRLF end lines (universal newlines), id = header up to the first
whitespace, each sequence line right-stripped, then spaces removed. Unlike the original we
refuse inputs it would silently mangle, and report every problem with file and line.

Reading is done in large binary blocks (plain or gzip, detected by magic bytes) with the
per-byte work left to C (bytes.split / translate / count), so 1M short reads load in seconds.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

DEFAULT_BLOCK_SIZE = 1 << 23  # 8 MiB of (decompressed) text per read call
MAX_LISTED = 50  # problems spelled out in a FastaError message

IUPAC_NUCLEOTIDES = "ACGTUNRYKMSWBDHV"
_VALID = (IUPAC_NUCLEOTIDES + IUPAC_NUCLEOTIDES.lower()).encode("ascii")
# Printable ASCII plus the whitespace text files legitimately hold; anything else is junk.
# (ASCII \x1c-\x1f count as whitespace for str.rstrip but not bytes.rstrip: calling them junk
# keeps our byte-level stripping identical to Biopython's str-level stripping.)
_TEXT = bytes(range(0x20, 0x7F)) + b"\t\n\x0b\x0c\r"
_JUNK_RE = re.compile(rb"[^\x20-\x7e\t\n\x0b\x0c\r]")
_BAD_IN_LINE_RE = re.compile(rb"[^ACGTUNRYKMSWBDHVacgtunrykmswbdhv ]")
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}

# Problem kinds. Structural ones make a file unusable and always raise.
EMPTY_FILE = "empty-file"
TEXT_BEFORE_HEADER = "text-before-header"
BINARY = "binary"
UNREADABLE = "unreadable"
EMPTY_ID = "empty-id"
EMPTY_SEQUENCE = "empty-sequence"
INVALID_CHAR = "invalid-char"
DUPLICATE_ID = "duplicate-id"
STRUCTURAL_KINDS = frozenset({EMPTY_FILE, TEXT_BEFORE_HEADER, BINARY, UNREADABLE})


@dataclass(frozen=True, slots=True)
class Record:
    """One FASTA record; `line` is the 1-based line of its header, for error messages."""

    id: str
    seq: str
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with an input, located precisely enough for a user to fix it."""

    path: str
    line: int | None
    record: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = "" if self.record is None else f"record {self.record!r}: "
        return f"{where}: {what}{self.message}"


class FastaError(ValueError):
    """Input refused; `problems` lists every reason found (the message shows the first 50)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(_summarise(self.problems))


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Valid records in input order, and the problems of records dropped by skip_invalid."""

    records: list[Record]
    skipped: list[Problem]


def read_fasta(path: str | os.PathLike[str], *, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[Record]:
    """Stream the records of one plain or gzip FASTA file.

    Only structure is checked (FastaError on an empty file, text before the first header,
    binary junk or unreadable data); record contents are returned as found. Being a stream,
    an error in the middle of a file is raised after the records before it were yielded.
    """
    path = os.fspath(path)
    for batch in _scan_file(path, block_size):
        if isinstance(batch, Problem):
            raise FastaError([batch])
        for title, seq, _body, line in batch:
            yield Record(_record_id(title), seq.decode("ascii"), path, line)


def load_records(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    skip_invalid: bool,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> LoadResult:
    """Read and validate all inputs before anything expensive runs.

    Structural problems always raise. Record problems (empty id, empty sequence, non-IUPAC
    characters, repeated id) raise all together unless skip_invalid, which drops those
    records and returns their problems in `skipped` (a record may have several).
    """
    records, problems = _scan_inputs(_as_paths(paths), block_size)
    structural = [p for p in problems if p.kind in STRUCTURAL_KINDS]
    if structural:
        raise FastaError(structural)
    if problems and not skip_invalid:
        raise FastaError(problems)
    return LoadResult(records=records, skipped=problems)


def validate(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[Problem]:
    """Every problem in the inputs, in file order, without raising (for `virnuc-hpc validate`)."""
    return _scan_inputs(_as_paths(paths), block_size)[1]


# --------------------------------------------------------------------------- internals

# A parsed record before validation: (title, sequence, raw body lines, header line).
# The raw lines are kept only to locate a bad character. A plain tuple: millions are made.
_Raw = tuple[str, bytes, bytes, int]


def _as_paths(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[str]:
    """Accept one path or many (a bare str must not be iterated character by character)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [os.fspath(p) for p in paths]


def _summarise(problems: list[Problem]) -> str:
    if len(problems) == 1:
        return str(problems[0])
    lines = [f"{len(problems)} problems in FASTA input:"]
    lines += [f"  {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _record_id(title: str) -> str:
    """Biopython's id: the title's first whitespace-separated word ('' for an empty title)."""
    words = title.split(None, 1)
    return words[0] if words else ""


def _scan_inputs(paths: list[str], block_size: int) -> tuple[list[Record], list[Problem]]:
    """Parse all files; return the records without record-level problems, and all problems.

    Duplicates are judged on ids across all files in order: the first occurrence keeps the
    id (even if it is invalid for another reason), every later one is a problem.
    """
    records: list[Record] = []
    problems: list[Problem] = []
    first_seen: dict[str, tuple[str, int]] = {}
    for path in paths:
        for batch in _scan_file(path, block_size):
            if isinstance(batch, Problem):
                problems.append(batch)
                continue
            for raw in batch:
                title, seq, _body, line = raw
                record = Record(_record_id(title), seq.decode("ascii"), path, line)
                where = (path, line)
                # Fast path: a valid record whose id is new (setdefault inserts and returns `where`).
                if record.id and seq and not seq.translate(None, _VALID):
                    if first_seen.setdefault(record.id, where) is where:
                        records.append(record)
                        continue
                problems.extend(_record_problems(raw, record, first_seen))
    return records, problems


def _record_problems(raw: _Raw, record: Record, first_seen: dict[str, tuple[str, int]]) -> list[Problem]:
    """Everything wrong with one record; records its id in first_seen when it is new."""
    found: list[Problem] = []
    path, rid, seq, line = record.path, record.id, raw[1], record.line
    if not rid:
        found.append(Problem(path, line, None, EMPTY_ID, "header has no id (nothing after '>')"))
    if not seq:
        found.append(Problem(path, line, rid, EMPTY_SEQUENCE, "empty sequence"))
    elif bad := seq.translate(None, _VALID):
        bad_line, column, char = _locate_bad_char(raw)
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        message = (
            f"invalid character {char!r} at line {bad_line}, column {column}{more}; "
            f"only IUPAC nucleotide codes ({IUPAC_NUCLEOTIDES}, either case) are allowed"
        )
        found.append(Problem(path, bad_line, rid, INVALID_CHAR, message))
    if rid:
        where = (path, line)
        first = first_seen.setdefault(rid, where)
        if first is not where:  # identity: the same file may be given twice
            message = f"duplicate id, first seen at {first[0]}:{first[1]}"
            found.append(Problem(path, line, rid, DUPLICATE_ID, message))
    return found


def _locate_bad_char(raw: _Raw) -> tuple[int, int, str]:
    """(line, 1-based column, char) of the first invalid sequence character in the raw lines."""
    _title, _seq, body, header_line = raw
    for i, text in enumerate(body.split(b"\n")):
        match = _BAD_IN_LINE_RE.search(text.rstrip())
        if match:
            return header_line + 1 + i, match.start() + 1, chr(text[match.start()])
    raise AssertionError("invalid character not found in the record's lines")  # pragma: no cover


def _scan_file(path: str, block_size: int) -> Iterator[list[_Raw] | Problem]:
    """Parse one file into batches of raw records, yielding structural Problems where found.

    After binary junk or unreadable data the file is abandoned; text before the first
    header is reported once and parsing goes on, so validate() can report more.
    """
    title: str | None = None  # of the record being read; None before the first header
    body_parts: list[bytes] = []
    record_line = 0
    line = 1  # line number of the first line of the current run
    preamble_reported = False
    try:
        for run in _line_runs(_newlines_normalised(_blocks(path, block_size))):
            junk = _junk_problem(path, run, line)
            if junk is not None:
                yield junk
                return
            # Every part after the first starts with a header line (its '>' eaten by split).
            parts = run.split(b"\n>")
            part_line = line
            if run.startswith(b">"):
                parts[0] = parts[0][1:]
                headers = parts
            else:
                headers = islice(parts, 1, None)
                if title is not None:
                    body_parts.append(parts[0])
                elif not preamble_reported and parts[0].strip():
                    preamble_reported = True
                    yield _preamble_problem(path, parts[0], line)
                part_line += parts[0].count(b"\n") + 1
            batch: list[_Raw] = []
            for part in headers:
                if title is not None:
                    batch.append(_finish(title, body_parts, record_line))
                header, _, body = part.partition(b"\n")
                title = header.decode("ascii").rstrip()
                body_parts = [body]
                record_line = part_line
                part_line += part.count(b"\n") + 1
            if batch:
                yield batch
            line += run.count(b"\n")
    except (OSError, EOFError, zlib.error) as error:
        yield Problem(path, None, None, UNREADABLE, f"cannot read file: {error}")
        return
    if title is not None:
        yield [_finish(title, body_parts, record_line)]
    elif not preamble_reported:  # nothing but blank lines, or nothing at all
        yield Problem(path, None, None, EMPTY_FILE, "empty file: no FASTA records")


def _finish(title: str, body_parts: list[bytes], line: int) -> _Raw:
    """Join a record's lines the way Biopython does: right-strip each line, drop spaces."""
    body = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
    seq = body.translate(None, b" \n")
    # Rare: tab, VT or FF in the sequence. Trailing ones are stripped per line, inner ones stay.
    if not seq.isalpha() and (b"\t" in seq or b"\x0b" in seq or b"\x0c" in seq):
        seq = b"".join(text.rstrip() for text in body.split(b"\n")).replace(b" ", b"")
    return title, seq, body, line


def _preamble_problem(path: str, part: bytes, first_line: int) -> Problem:
    lines = part.split(b"\n")
    offset = next(i for i, text in enumerate(lines) if text.strip())
    return Problem(
        path, first_line + offset, None, TEXT_BEFORE_HEADER,
        "text before the first '>' header (is this a FASTA file?)",
    )


def _junk_problem(path: str, run: bytes, first_line: int) -> Problem | None:
    """A Problem for the first byte that cannot be in a FASTA text file, or None."""
    if run.isascii() and not run.translate(None, _TEXT):
        return None
    match = _JUNK_RE.search(run)
    assert match is not None
    start = match.start()
    line = first_line + run.count(b"\n", 0, start)
    column = start - (run.rfind(b"\n", 0, start) + 1) + 1
    message = f"binary or non-ASCII byte 0x{run[start]:02x} at column {column}: not a FASTA text file"
    if first_line == 1:
        for magic, name in _OTHER_COMPRESSION.items():
            if run.startswith(magic):
                message += f" (looks {name}-compressed; only gzip is supported)"
    return Problem(path, line, None, BINARY, message)


def _blocks(path: str, block_size: int) -> Iterator[bytes]:
    """Raw (decompressed) byte blocks; gzip is recognised by its magic bytes, not the name."""
    with open(path, "rb") as raw:
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
            while block := stream.read(block_size):
                yield block
        else:
            while block := raw.read(block_size):
                yield block


def _newlines_normalised(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """CRLF and lone CR -> LF, as Python text mode (which the original used) does.

    A CR at the end of a block is held back, in case the next block starts with its LF.
    """
    carry = b""
    for block in blocks:
        if carry:
            block, carry = carry + block, b""
        if b"\r" in block:
            if block.endswith(b"\r"):
                block, carry = block[:-1], b"\r"
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if block:
            yield block
    if carry:
        yield b"\n"


def _line_runs(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Re-cut blocks into runs of whole lines, each ending in LF (one is added at EOF)."""
    partial: list[bytes] = []
    for block in blocks:
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # a line longer than the block: keep collecting, join once
            partial.append(block)
            continue
        head = block if cut == len(block) else block[:cut]
        if partial:
            partial.append(head)
            head, partial = b"".join(partial), []
        yield head
        if cut < len(block):
            partial.append(block[cut:])
    if partial:
        yield b"".join(partial) + b"\n"
