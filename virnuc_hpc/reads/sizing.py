"""How big an input is, judged from its head: reads, frames and bags of the whole file.

The head of a file (its first records, parsed and translated exactly as a run would) gives reads
per byte, frames and tokens per read; the file's size (and, for a compressed file, the
decompression ratio of its first megabytes) scales that to the whole file. Used by ``--dry-run``
and by the progress lines of a run, whose input is cut into bags while it is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virnuc_hpc.reads.bags import HeadStats, head_stats, planned_bag_counts, records_per_bag
from virnuc_hpc.reads.reading import sniff
from virnuc_hpc.reads.samples import InputFile

SAMPLE_BYTES = 8 << 20  # decompressed bytes read to judge a compressed file's ratio


@dataclass(frozen=True)
class FileEstimate:
    file: InputFile
    head: HeadStats
    size: int              # bytes on disk
    text_bytes: float      # decompressed bytes, estimated
    exact: bool            # the whole file was in the sample

    @property
    def scale(self) -> float:
        """Whole file / head."""
        return self.text_bytes / self.head.bytes if self.head.bytes else 0.0


def decompressed_size(path: str, sample_bytes: int = SAMPLE_BYTES) -> tuple[float, bool]:
    """(decompressed bytes of the file, estimated from its first ``sample_bytes``; whether exact)."""
    from xopen import xopen

    size = Path(path).stat().st_size
    with open(path, "rb") as raw, xopen(raw, "rb", threads=0) as stream:
        seen = 0
        while seen < sample_bytes:
            block = stream.read(1 << 20)
            if not block:
                return float(seen), True
            seen += len(block)
        consumed = raw.tell()
    return seen * size / max(consumed, 1), False


def estimate_file(file: InputFile, chunk_size: int) -> FileEstimate:
    sniff(file.path)
    head = head_stats(file, chunk_size)
    text, exact = decompressed_size(file.path)
    return FileEstimate(file, head, Path(file.path).stat().st_size, text, exact)


def estimated_file_bags(estimates: Sequence[FileEstimate], bag_size: int) -> list[int]:
    """Bags a run cuts from each of these files (in run order): the bag layout, the last file's
    shrinking tail included, applied to each file's estimated records."""
    return planned_bag_counts([(round(e.head.records * e.scale), records_per_bag(e.head, bag_size))
                               for e in estimates])


def estimated_run_bags(estimates: Sequence[FileEstimate], bag_size: int) -> int:
    """All the bags of ``estimated_file_bags``."""
    return sum(estimated_file_bags(estimates, bag_size))


def estimated_bags(estimate: FileEstimate, bag_size: int) -> int:
    """Bags the whole file will be cut into (exact when the whole file was in the sample)."""
    reads = estimate.head.records * estimate.scale
    return math.ceil(reads / records_per_bag(estimate.head, bag_size)) if reads else 0
