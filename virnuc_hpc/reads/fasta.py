"""FASTA parsing that sees exactly what VirNucPro's Biopython reader saw, and the input's types.

Why this shape: the classifiers only make sense on the sequences the original parsed
(compat spec, section 1), so parsing follows Bio.SeqIO's "fasta" reader on a file opened
in text mode: CR and CRLF end lines (universal newlines), id = header up to the first
whitespace, each sequence line right-stripped, then spaces removed. Unlike the original we
refuse inputs it would silently mangle, and report every problem with file and line.

Parsing works on large binary runs of whole lines with the per-byte work left to C
(bytes.split / translate / count), so 1M short reads load in seconds. The same scanner reads
a whole file (scan_buffers, for `virnuc_hpc.testing.loading.read_fasta`) and one block of a file cut
by `reading.iter_blocks` (parse_text). Text after a header's id may be UTF-8, as Biopython decodes
it; anything else non-ASCII is refused as binary. Opening files is `reading`'s job; the whole-file
entry points are test helpers (`virnuc_hpc.testing.loading`); both build on this module's types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from virnuc_hpc.errors import FastaError, Problem
from virnuc_hpc.reads.samples import mate_read_id


IUPAC_NUCLEOTIDES = "ACGTUNRYKMSWBDHV"
_VALID = (IUPAC_NUCLEOTIDES + IUPAC_NUCLEOTIDES.lower()).encode("ascii")
# Printable ASCII plus the whitespace text files legitimately hold; anything else is junk.
# (ASCII \x1c-\x1f count as whitespace for str.rstrip but not bytes.rstrip: calling them junk
# keeps our byte-level stripping identical to Biopython's str-level stripping.)
_TEXT = bytes(range(0x20, 0x7F)) + b"\t\n\x0b\x0c\r"
_JUNK_RE = re.compile(rb"[^\x20-\x7e\t\n\x0b\x0c\r]")
_ASCII_JUNK_RE = re.compile(rb"[^\x20-\x7e\t\n\x0b\x0c\r\x80-\xff]")
_BAD_IN_LINE_RE = re.compile(rb"[^ACGTUNRYKMSWBDHVacgtunrykmswbdhv ]")
# First bytes of formats people feed us by mistake, for a helpful "binary" message.
LOOKS_LIKE = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
              b"PK\x03\x04": "zip", b"BAM\x01": "BAM"}

# Problem kinds. Structural ones make a file unusable and always raise.
EMPTY_FILE = "empty-file"
TEXT_BEFORE_HEADER = "text-before-header"
BINARY = "binary"
UNREADABLE = "unreadable"
EMPTY_ID = "empty-id"
EMPTY_SEQUENCE = "empty-sequence"
INVALID_CHAR = "invalid-char"
DUPLICATE_ID = "duplicate-id"
MALFORMED = "malformed-record"  # FASTQ records that are not 4 well-formed lines
STRUCTURAL_KINDS = frozenset({EMPTY_FILE, TEXT_BEFORE_HEADER, BINARY, UNREADABLE, MALFORMED})


class Record(NamedTuple):
    """One FASTA or FASTQ record; `line` is the 1-based line of its header, for error messages.

    A NamedTuple rather than a frozen dataclass: one is built per read, and a frozen
    dataclass's __init__ (object.__setattr__ per field) made that half of FASTQ parsing.
    """

    id: str
    seq: str
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class Parsed:
    """The records of one block, all of them, and what is wrong with them.

    `invalid` holds the positions (in `records`) of records with a record-level problem, so
    the caller decides to skip or refuse them. Duplicate ids are not judged here: they need
    every file. After a structural problem the rest of the block is not parsed.
    """

    records: list[Record]
    problems: list[Problem]
    invalid: frozenset[int]


def parse_text(data: bytes, path: str, first_line: int, id_suffix: str = "") -> Parsed:
    """Parse whole FASTA lines cut from a file (`first_line` is the file line of the first).

    `id_suffix` is a mate file's "/1" or "/2" (see the paired rule in `samples`).
    """
    records: list[Record] = []
    problems: list[Problem] = []
    invalid: list[int] = []
    for batch in _scan_text(path, _line_runs(_newlines_normalised([data])), first_line):
        if isinstance(batch, Problem):
            problems.append(batch)
            continue
        for raw in batch:
            title, seq, _body, line = raw
            record = Record(mate_read_id(record_id(title), id_suffix), seq.decode("ascii"), path, line)
            if not (record.id and seq and not seq.translate(None, _VALID)):
                problems.extend(_record_problems(raw, record))
                invalid.append(len(records))
            records.append(record)
    return Parsed(records, problems, frozenset(invalid))


def record_id(title: str) -> str:
    """Biopython's id: the title's first whitespace-separated word ('' for an empty title)."""
    words = title.split(None, 1)
    return words[0] if words else ""


def sequence_problems(record: Record, seq: bytes, locate: Callable[[], tuple[int, int, str]],
                      header_char: str = ">") -> list[Problem]:
    """Record-level problems (empty id, empty sequence, first non-IUPAC character).

    `locate` gives (line, column, char) of the first bad character; it is called only when
    there is one, so the caller's raw lines are scanned only for broken records.
    """
    found: list[Problem] = []
    path, rid, line = record.path, record.id, record.line
    if not rid:
        found.append(Problem(path, line, None, EMPTY_ID, f"header has no id (nothing after {header_char!r})"))
    if not seq:
        found.append(Problem(path, line, rid, EMPTY_SEQUENCE, "empty sequence"))
    elif bad := seq.translate(None, _VALID):
        bad_line, column, char = locate()
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        message = (
            f"invalid character {char!r} at line {bad_line}, column {column}{more}; "
            f"only IUPAC nucleotide codes ({IUPAC_NUCLEOTIDES}, either case) are allowed"
        )
        found.append(Problem(path, bad_line, rid, INVALID_CHAR, message))
    return found


def first_junk(data: bytes, is_header: Callable[[bytes, int], bool]) -> int:
    """Offset of the first byte a sequence text file may not hold, or -1 if there is none.

    Non-ASCII is excused in a header's description (after the id) when the header line is
    valid UTF-8, as Biopython reads it; `is_header(line, index)` says whether the line
    (its 0-based index in data) is a header. The common all-ASCII case costs one C pass.
    """
    if data.isascii() and not data.translate(None, _TEXT):
        return -1
    pos, index, counted_to = 0, 0, 0
    while (match := _JUNK_RE.search(data, pos)) is not None:
        start = match.start()
        if data[start] < 0x80:
            return start
        line_start = data.rfind(b"\n", 0, start) + 1
        line_end = data.find(b"\n", start)
        line_end = len(data) if line_end < 0 else line_end
        index += data.count(b"\n", counted_to, line_start)
        counted_to = line_start
        line = data[line_start:line_end]
        if not (is_header(line, index) and _utf8_description(line, start - line_start)):
            return start
        pos = line_end
    return -1


def binary_problem(path: str, data: bytes, at: int, first_line: int, what: str) -> Problem:
    """The Problem for junk byte `at` of data, which starts at file line `first_line`."""
    line = first_line + data.count(b"\n", 0, at)
    column = at - (data.rfind(b"\n", 0, at) + 1) + 1
    message = f"binary or non-ASCII byte 0x{data[at]:02x} at column {column}: not a {what} text file"
    if line == 1 and first_line == 1:  # data starts the file: say what it looks like
        message += "".join(f" (looks like {name} data)" for magic, name in LOOKS_LIKE.items()
                           if data.startswith(magic))
    return Problem(path, line, None, BINARY, message)


# --------------------------------------------------------------------------- internals

# A parsed record before validation: (title, sequence, raw body lines, header line).
# The raw lines are kept only to locate a bad character. A plain tuple: millions are made.
_Raw = tuple[str, bytes, bytes, int]
def _utf8_description(line: bytes, at: int) -> bool:
    """Whether non-ASCII byte `at` of a header line lies after the id, in a UTF-8 line."""
    before = line[1:at].lstrip()
    if not before or not any(char in before for char in b" \t\x0b\x0c\r"):
        return False  # still inside the id (or no id yet)
    if _ASCII_JUNK_RE.search(line):
        return False
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_fasta_header(line: bytes, _index: int) -> bool:
    return line.startswith(b">")


def _record_problems(raw: _Raw, record: Record) -> list[Problem]:
    """Everything wrong with one FASTA record's content (not its id's uniqueness)."""
    return sequence_problems(record, raw[1], lambda: _locate_bad_char(raw))


def _locate_bad_char(raw: _Raw) -> tuple[int, int, str]:
    """(line, 1-based column, char) of the first invalid sequence character in the raw lines."""
    _title, _seq, body, header_line = raw
    for i, text in enumerate(body.split(b"\n")):
        match = _BAD_IN_LINE_RE.search(text.rstrip())
        if match:
            return header_line + 1 + i, match.start() + 1, chr(text[match.start()])
    raise AssertionError("invalid character not found in the record's lines")  # pragma: no cover


def scan_buffers(path: str, buffers: Iterable[bytes]) -> Iterator[list[_Raw] | Problem]:
    """A whole FASTA file, given as its decompressed bytes, as batches of raw records and
    structural Problems.

    After binary junk or unreadable data (a FastaError raised by ``buffers``) the file is
    abandoned; text before the first header is reported once and parsing goes on, so more
    problems can be reported.
    """
    found = False
    try:
        for batch in _scan_text(path, _line_runs(_newlines_normalised(buffers)), 1):
            found = True
            yield batch
    except FastaError as error:  # from the opener: cannot open, or corrupt compressed data
        yield error.problems[0]
        return
    if not found:  # nothing but blank lines, or nothing at all
        yield Problem(path, None, None, EMPTY_FILE, "empty file: no FASTA records")


def _scan_text(path: str, runs: Iterable[bytes], line: int) -> Iterator[list[_Raw] | Problem]:
    """Parse runs of whole LF-ended lines (the first at file line `line`) into raw records.

    Yields batches of records and structural Problems; stops at binary junk. Text before
    the first header is reported once and parsing goes on.
    """
    title: str | None = None  # of the record being read; None before the first header
    body_parts: list[bytes] = []
    record_line = 0
    preamble_reported = False
    for run in runs:
        junk = first_junk(run, _is_fasta_header)
        if junk >= 0:
            yield binary_problem(path, run, junk, line, "FASTA")
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
            title = header.decode("utf-8").rstrip()
            body_parts = [body]
            record_line = part_line
            part_line += part.count(b"\n") + 1
        if batch:
            yield batch
        line += run.count(b"\n")
    if title is not None:
        yield [_finish(title, body_parts, record_line)]


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
