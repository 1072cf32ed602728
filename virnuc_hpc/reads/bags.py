"""Bags: runs of whole input records, cut from the input stream as it is read.

A bag is the unit of scheduling, of output (one NetCDF file) and of resume. It holds the raw text
of consecutive records of one input file; the worker that takes it parses, translates, embeds and
classifies it. So the client never holds more than a few bags of input, and the first bag starts
as soon as its records have been read.

Layout is a pure function of the inputs and the configuration (never of timing or worker count),
so a resumed run cuts the same bags: every file is cut into *pieces* of about a sixteenth of
a bag; a bag is 16 consecutive pieces of one file, except at the very end of the run, where the
last pieces are grouped into shrinking bags (guided self-scheduling: no GPU idles on one big bag
while the others are done). A bag's digest covers the run's identity, its place in the input and
the sha256 of its text, so a bag file written from other input or settings is never reused.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from virnuc_hpc.ahead import map_ahead
from virnuc_hpc.reads.reading import Block, ReadDigest, iter_blocks
from virnuc_hpc.reads.samples import InputFile

PIECES_PER_BAG = 16
TAIL_BAGS = 4  # the last TAIL_BAGS * PIECES_PER_BAG pieces of the run form the shrinking tail


@dataclass(frozen=True, slots=True)
class BagRef:
    """What the client keeps of a bag once it is submitted: identity and place, no sequence data."""

    index: int
    sample: str
    path: str
    mate: int | None
    first_record: int
    first_line: int
    n_records: int
    digest: str

    @property
    def name(self) -> str:
        return f"bag-{self.index:06d}"


@dataclass(frozen=True, slots=True)
class Bag:
    """A bag with its records' raw text: what a worker gets."""

    ref: BagRef
    block: Block

    @property
    def index(self) -> int:
        return self.ref.index

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def digest(self) -> str:
        return self.ref.digest

    @property
    def n_records(self) -> int:
        return self.ref.n_records

    def for_transfer(self) -> tuple[Bag, np.ndarray]:
        """The bag without its text, and the text as a uint8 array: Dask ships arrays as raw
        frames (no pickling of megabytes), about twice as fast as bytes inside the task."""
        light = Bag(self.ref, replace(self.block, data=b""))
        return light, np.frombuffer(self.block.data, dtype=np.uint8)

    def with_text(self, text: np.ndarray) -> Bag:
        """The bag again, from ``for_transfer``'s two halves (on the worker)."""
        return Bag(self.ref, replace(self.block, data=text.tobytes()))


def bag_digest(run_key: str, block: Block) -> str:
    """Identity of a bag: the run, where its records are, and the sha256 of their text."""
    h = hashlib.sha256(run_key.encode())
    where = f"{block.file.sample}\0{block.file.path}\0{block.file.mate}\0{block.first_record}\0{block.n_records}"
    h.update(where.encode())
    h.update(hashlib.sha256(block.data).digest())
    return h.hexdigest()


def bag_sizes(n_pieces: int, pieces_per_bag: int) -> list[int]:
    """Full bags, then a tail of shrinking bags (a quarter of what is left, down to one piece)."""
    if pieces_per_bag < 1:
        raise ValueError("pieces_per_bag must be >= 1")
    sizes, remaining = [], n_pieces
    while remaining > 0:
        size = pieces_per_bag if remaining > TAIL_BAGS * pieces_per_bag else max(1, -(-remaining // 4))
        size = min(size, remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def planned_bag_counts(files: Sequence[tuple[int, int]]) -> list[int]:
    """Bags ``plan_bags`` cuts from each of the files of ``(records, records_per_bag)``, in run
    order, without reading them: its layout (pieces, full bags, the last file's shrinking tail)
    counted. The dry run and the progress total use it; a test holds it equal to ``plan_bags``."""
    counts = []
    for number, (records, wanted) in enumerate(files):
        per_bag = min(PIECES_PER_BAG, max(1, wanted))
        pieces = -(-max(0, records) // (max(1, wanted) // per_bag))
        if number < len(files) - 1:
            counts.append(-(-pieces // per_bag))
            continue
        hold = (TAIL_BAGS + 1) * per_bag  # what _bag_pieces holds back of the last file
        full = (pieces - hold) // per_bag + 1 if pieces >= hold else 0
        counts.append(full + len(bag_sizes(pieces - full * per_bag, per_bag)))
    return counts


def planned_bag_count(files: Sequence[tuple[int, int]]) -> int:
    """All the bags of ``planned_bag_counts``."""
    return sum(planned_bag_counts(files))


def join_blocks(blocks: list[Block]) -> Block:
    """Consecutive blocks of one file as one block."""
    first = blocks[0]
    if len(blocks) == 1:
        return first
    return Block(file=first.file, fmt=first.fmt, index=first.index, first_record=first.first_record,
                 first_line=first.first_line, n_records=sum(b.n_records for b in blocks),
                 data=b"".join(b.data for b in blocks))


def plan_bags(files: list[InputFile], records_per_bag: Callable[[InputFile], int], run_key: str,
              *, read_size: int = 1 << 22, digests: dict[InputFile, ReadDigest] | None = None) -> Iterator[Bag]:
    """Bags of every input file, in input order, cut while the files are read.

    ``records_per_bag(file)`` sizes the bags of each file (a pure function of its content). A bag
    never spans two files. Of the last file, up to ``TAIL_BAGS + 1`` bags' worth of pieces are
    held back to recognise the run's tail; other files end in one smaller bag. ``digests`` gets
    each file's ReadDigest: the size and sha256 of the very bytes its bags were cut from.
    """
    # Joining a bag's pieces and hashing them (hashlib releases the GIL) run on a thread while the
    # next bag is cut: one bag of look-ahead.
    yield from map_ahead(lambda job: _bag(job[0], run_key, job[1]),
                         _bag_pieces(files, records_per_bag, read_size, digests),
                         depth=2, thread_name="virnuc-bag-digest")


def _bag_pieces(files: list[InputFile], records_per_bag: Callable[[InputFile], int], read_size: int,
                digests: dict[InputFile, ReadDigest] | None) -> Iterator[tuple[int, list[Block]]]:
    """(index, pieces) of every bag, in input order, as the files are read."""
    index = 0
    for number, file in enumerate(files):
        last_file = number == len(files) - 1
        wanted = max(1, records_per_bag(file))
        per_bag = min(PIECES_PER_BAG, wanted)  # pieces per bag
        per_piece = wanted // per_bag
        hold = (TAIL_BAGS + 1) * per_bag if last_file else per_bag
        held: deque[Block] = deque()
        digest = None if digests is None else digests.setdefault(file, ReadDigest())
        for piece in iter_blocks(file, per_piece, read_size=read_size, digest=digest):
            held.append(piece)
            if len(held) >= hold:  # the oldest pieces are surely not the tail: a full bag
                yield index, [held.popleft() for _ in range(per_bag)]
                index += 1
        pieces = list(held)
        sizes = bag_sizes(len(pieces), per_bag) if last_file else _chunks(len(pieces), per_bag)
        start = 0
        for size in sizes:
            yield index, pieces[start:start + size]
            index += 1
            start += size


def _chunks(n_pieces: int, per_bag: int) -> list[int]:
    """Full bags and one smaller last bag."""
    return [min(per_bag, n_pieces - s) for s in range(0, n_pieces, per_bag)]


def _bag(index: int, run_key: str, pieces: list[Block]) -> Bag:
    block = join_blocks(pieces)
    ref = BagRef(index=index, sample=block.file.sample, path=block.file.path, mate=block.file.mate,
                 first_record=block.first_record, first_line=block.first_line,
                 n_records=block.n_records, digest=bag_digest(run_key, block))
    return Bag(ref, block)


SAMPLE_RECORDS = 2000  # records read from the head of a file to size its bags (and for --dry-run)


@dataclass(frozen=True, slots=True)
class HeadStats:
    """What the first records of a file hold: the basis of bag sizing and of ``--dry-run``."""

    records: int
    bytes: int            # decompressed bytes of those records
    bases: int
    chunks: int
    frames: int
    protein_tokens: int   # ESM-2 tokens, BOS and EOS included
    dna_bases: int        # nucleotides of the kept frames (DNABERT-S input)

    @property
    def frames_per_record(self) -> float:
        return self.frames / self.records if self.records else 0.0


def head_stats(file: InputFile, chunk_size: int, records: int = SAMPLE_RECORDS) -> HeadStats:
    """Parse and translate the first ``records`` records of a file (invalid ones are left out)."""
    from virnuc_hpc.reads.frames import frames_for_records
    from virnuc_hpc.reads.validation import parse_block

    block = next(iter_blocks(file, records), None)
    if block is None:
        return HeadStats(0, 0, 0, 0, 0, 0, 0)
    parsed = parse_block(block)
    kept = [r for i, r in enumerate(parsed.records) if i not in parsed.invalid]
    table = frames_for_records(kept, chunk_size)
    return HeadStats(records=block.n_records, bytes=len(block.data), bases=sum(len(r.seq) for r in kept),
                     chunks=int(table.read_n_chunks.sum()), frames=len(table),
                     protein_tokens=sum(map(len, table.protein)) + 2 * len(table),
                     dna_bases=sum(map(len, table.nucleotide)))


def records_per_bag(stats: HeadStats, bag_size: int) -> int:
    """Records that make about ``bag_size`` frames, judged on the head of the file."""
    per_record = max(stats.frames_per_record, 1.0 / 64)  # a head without frames: bags of 64 frames' worth
    return max(1, round(bag_size / per_record))
