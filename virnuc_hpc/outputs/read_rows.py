"""reads.tsv's rows: one typed definition of its columns for the writer and every reader.

Why a module of its own: reads.tsv is written in the workers (one part per bag, column-wise) and
read back on the client (repeats dropped, pairs.tsv, the mates' viral files, the report). Naming the
columns once keeps those readers off column numbers. New columns go at the end: readers that count
columns keep working. Light: no numpy, no NetCDF stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class ReadRow(NamedTuple):
    """One reads.tsv row, as text (the file's cells); ``-`` where a value does not apply."""
    read_id: str
    file: str
    length: str
    status: str                 # ok, no_open_frame, skipped:<kinds>
    chunks: str
    chunks_with_frames: str
    frames: str
    virus_chunks: str           # "-" for embed
    call: str                   # virus, others, "-"
    chunks_without_frames: str
    virus_score: str            # the read's best P(virus), "-" for embed or no frames

    @classmethod
    def parse(cls, line: str) -> ReadRow:
        """A row from one tab-separated line (without its newline)."""
        return cls(*line.split("\t"))

    def line(self) -> str:
        return "\t".join(self) + "\n"


#: reads.tsv's header, in column order.
READS_HEADER: tuple[str, ...] = ReadRow._fields


def read_rows(text: str) -> Iterator[ReadRow]:
    """The rows of a bag's reads part (header-less lines, each ending in a newline)."""
    for line in text.split("\n")[:-1]:
        yield ReadRow.parse(line)
