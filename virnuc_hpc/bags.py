"""Bags: fixed, deterministic partitions of the frame table.

A bag is the unit of scheduling, of output (one NetCDF file) and of resume. Its digest covers the
run's identity and every frame it holds, so a bag file written by another input or configuration is
never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence


class FrameColumns(Protocol):
    frame_id: Sequence[str]
    chunk_id: Sequence[str]
    read_id: Sequence[str]
    protein: Sequence[str]
    nucleotide: Sequence[str]


@dataclass(frozen=True, slots=True)
class Bag:
    """A contiguous slice [start, start + len) of the run's frames, in input order."""

    index: int
    start: int
    digest: str
    frame_ids: list[str]
    chunk_ids: list[str]
    read_ids: list[str]
    proteins: list[str]
    nucleotides: list[str]

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def name(self) -> str:
        return f"bag-{self.index:06d}"

    @property
    def protein_tokens(self) -> int:
        """ESM-2 tokens, BOS and EOS included (what the GPU is paid for)."""
        return sum(map(len, self.proteins)) + 2 * len(self.proteins)


def bag_digest(run_key: str, frame_ids: Sequence[str], proteins: Sequence[str],
               nucleotides: Sequence[str]) -> str:
    h = hashlib.sha256(run_key.encode())
    for column in (frame_ids, proteins, nucleotides):
        h.update("\n".join(column).encode())
        h.update(b"\x00")
    return h.hexdigest()


def bag_sizes(n_frames: int, bag_size: int) -> list[int]:
    """Full bags, then a tail of shrinking bags (a quarter of what is left, down to bag_size/16).

    Guided self-scheduling for the end of a run: with small last bags no GPU idles while another
    finishes a big one. Depends only on the frame count and bag_size, so the layout (and resume)
    does not change with the number of workers.
    """
    if bag_size < 1:
        raise ValueError("bag_size must be >= 1")
    sizes, remaining, smallest = [], n_frames, max(1, bag_size // 16)
    while remaining > 0:
        size = bag_size if remaining > 4 * bag_size else max(smallest, -(-remaining // 4))
        size = min(size, remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def make_bags(frames: FrameColumns, bag_size: int, run_key: str) -> list[Bag]:
    """Cut the frame table, in input order, into bags (see ``bag_sizes``)."""
    bags, start = [], 0
    for index, size in enumerate(bag_sizes(len(frames.frame_id), bag_size)):
        sl = slice(start, start + size)
        ids, prot, nuc = list(frames.frame_id[sl]), list(frames.protein[sl]), list(frames.nucleotide[sl])
        bags.append(Bag(index=index, start=start, digest=bag_digest(run_key, ids, prot, nuc),
                        frame_ids=ids, chunk_ids=list(frames.chunk_id[sl]),
                        read_ids=list(frames.read_id[sl]), proteins=prot, nucleotides=nuc))
        start += size
    return bags
