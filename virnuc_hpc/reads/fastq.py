"""FASTQ blocks to records, with the same id and sequence rules as FASTA input.

Why dnaio: it parses 4-line FASTQ in C and says on which line a record breaks. A record's
id is its header up to the first whitespace (as for FASTA), its sequence is checked
against the same IUPAC codes, and qualities are ignored (the classifiers never see them).
CRLF is accepted; text after the id may be UTF-8, as in FASTA headers.
"""

from __future__ import annotations

import io
import itertools
import re

import dnaio

from virnuc_hpc.reads.fasta import (
    _VALID,
    MALFORMED,
    Parsed,
    Problem,
    Record,
    binary_problem,
    first_junk,
    record_id,
    sequence_problems,
)
from virnuc_hpc.reads.samples import mate_read_id

_NON_ASCII = re.compile(rb"[\x80-\xff]")
_TRUNCATED = "Premature end of file"


def parse_text(data: bytes, path: str, first_line: int, id_suffix: str = "",
               expected: int | None = None) -> Parsed:
    """Parse whole FASTQ records cut from a file (`first_line` is the file line of the first).

    Blank lines at the file's start and end are skipped; `id_suffix` is a mate file's "/1"
    or "/2". `expected` is the record count the cutter saw: fewer records means blank lines
    inside the file, which were cut off the end of this block as if they ended the file.
    """
    text, line = _without_blank_ends(data, first_line)
    junk = first_junk(text, _is_header)
    if junk >= 0:
        return Parsed([], [binary_problem(path, text, junk, line, "FASTQ")], frozenset())
    if not text.isascii():  # only header descriptions can hold it now; dnaio wants ASCII
        text = _NON_ASCII.sub(b"?", text)
    names: list[str] = []  # of the records before any format error
    seqs: list[str] = []
    problems: list[Problem] = []
    try:
        for read in dnaio.open(io.BytesIO(text), fileformat="fastq"):
            names.append(read.name)
            seqs.append(read.sequence)
    except dnaio.FastqFormatError as error:
        problems.append(_malformed(path, text, line, len(names), id_suffix, error))
    else:
        if expected is not None and len(names) < expected:
            message = "malformed FASTQ: blank line between records (a FASTQ record is exactly 4 lines)"
            problems.append(Problem(path, line + 4 * len(names), None, MALFORMED, message))
    # Column by column: the loop above does only what must happen while dnaio reads.
    ids = [record_id(name) for name in names]
    if id_suffix:
        ids = [mate_read_id(rid, id_suffix) for rid in ids]
    records = list(map(Record, ids, seqs, itertools.repeat(path), range(line, line + 4 * len(ids), 4)))
    invalid = _invalid(ids, seqs)
    record_problems = [p for i in invalid for p in _record_problems(records[i])]
    return Parsed(records, record_problems + problems, frozenset(invalid))


# --------------------------------------------------------------------------- internals


def _is_header(line: bytes, index: int) -> bool:
    return index % 4 == 0 and line.startswith(b"@")


def _invalid(ids: list[str], seqs: list[str]) -> list[int]:
    """Positions of records with an empty id or sequence or a non-IUPAC character.

    One C pass over all sequences when the block is clean, which it nearly always is.
    """
    if all(ids) and all(seqs):
        if not "".join(seqs).encode("ascii").translate(None, _VALID):
            return []
    return [i for i, (rid, seq) in enumerate(zip(ids, seqs))
            if not (rid and seq and not seq.encode("ascii").translate(None, _VALID))]


def _record_problems(record: Record) -> list[Problem]:
    def locate() -> tuple[int, int, str]:
        column = next(i for i, char in enumerate(record.seq) if char.encode("ascii") not in _VALID)
        return record.line + 1, column + 1, record.seq[column]

    return sequence_problems(record, record.seq.encode("ascii"), locate, header_char="@")


def _without_blank_ends(data: bytes, first_line: int) -> tuple[bytes, int]:
    """Data without the blank lines allowed at the start and end of a file.

    Leading ones are dropped only from the file's first line on. At the end, blank lines
    are kept where the last record needs them (an empty sequence has an empty quality line).
    """
    start = 0
    if first_line == 1 and data[:1].isspace():
        text_at = len(data) - len(data.lstrip())
        if text_at == len(data):
            return b"", first_line
        start = data.rfind(b"\n", 0, text_at) + 1
    end = _end_of_records(data, start)
    return data[start:end], first_line + data.count(b"\n", 0, start)


def _end_of_records(data: bytes, start: int) -> int:
    """Where the records of data[start:] end, blank lines after the last record left out."""
    tail = data[-64:]
    kept = tail.rstrip()
    text_end = len(data) - len(tail) + len(kept) if kept else len(data.rstrip())
    newline = data.find(b"\n", text_end)
    if newline < 0 or newline + 1 == len(data):
        return len(data)  # the common case: nothing after the last line with text
    lines = data.count(b"\n", start, newline) + 1  # up to the last line with text
    end = newline + 1
    for _ in range(-lines % 4):  # blank lines that complete the last record
        newline = data.find(b"\n", end)
        if newline < 0:
            return len(data)
        end = newline + 1
    return end


def _malformed(path: str, text: bytes, line: int, parsed: int, id_suffix: str,
               error: dnaio.FastqFormatError) -> Problem:
    """A Problem at the true file line for dnaio's complaint about record number `parsed`."""
    header = _line_of(text, 4 * parsed)
    rid = None
    if header.startswith(b"@"):
        rid = mate_read_id(record_id(header[1:].decode("ascii", "replace")), id_suffix) or None
    if error.message.startswith(_TRUNCATED) or error.line is None:
        lines = text.count(b"\n") - 4 * parsed + (0 if text.endswith(b"\n") else 1)
        message = f"truncated FASTQ record: the file ends after {lines} of its 4 lines"
        return Problem(path, line + 4 * parsed, rid, MALFORMED, message)
    if error.line == 4 * parsed:  # the header line itself is wrong: there is no record id
        rid = None
    message = "malformed FASTQ record: " + " ".join(error.message.split("\n"))
    return Problem(path, line + error.line, rid, MALFORMED, message)


def _line_of(text: bytes, index: int) -> bytes:
    """Line `index` (0-based) of text without its line end; b"" past the end."""
    lines = text.split(b"\n", index + 1)
    return lines[index].rstrip(b"\r") if index < len(lines) else b""
