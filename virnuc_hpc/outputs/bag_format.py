"""What a bag file holds, and the seam between that and how it is encoded on disk.

A bag is the unit of work and of output: its frames' ids, features and probabilities, and its
table parts (rows of the final tables, the records viral.fna is made from). ``BagFormat`` is what
store.py needs of a file format to write, check and read bags; the run's OUTDIR layout, checksums
and resume rules stay in store.py, independent of the format. NetCDF-4/HDF5 (netcdf_bags.py) is
the format today: xarray reads it lazily and users' readers depend on its bytes and attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: bytes of each features mode: float32 (NetCDF-4), float16 (HDF5 half floats), none (ids and
#: probabilities only). See README, "Features".
FEATURE_MODES = ("float32", "float16", "none")
#: "viral": the records viral.fna is made from (outputs/sequences.py), in every bag, maybe empty
TABLE_PARTS = ("predictions", "chunk_calls", "reads", "ids", "problems", "viral")
FRAME_PARTS = ("nucleotide", "protein")  # only in the bags of a --write-frames run
#: role -> the label of its feature columns (coordinate ``source``); another role is its own label
SOURCE_LABELS = {"dnabert": "dnabert_s", "esm2": "esm2"}
#: the roles whose ``<role>_dim`` attributes (0) a bag without features carries when none are named
DEFAULT_ROLES = ("dnabert", "esm2")


@dataclass(frozen=True)
class BagPayload:
    """Everything one bag file holds, before it is encoded.

    ``bag`` is the bag's reference (name, index, digest, sample, path, first_record, n_records);
    ``frames`` has columns frame_id, chunk_id, read_id and ``record`` (record number in its file);
    ``parts`` is (role, vectors) per encoder, in feature column order."""

    bag: Any
    frames: Any
    parts: Sequence[tuple[str, np.ndarray]] | None
    probability: np.ndarray | None
    attrs: Mapping[str, Any]
    features: str = "float32"
    compression: str = "none"
    tables: Mapping[str, str] | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=lambda: dict(SOURCE_LABELS))

    def __post_init__(self) -> None:
        if self.features not in FEATURE_MODES:
            raise ValueError(f"features must be one of {FEATURE_MODES}, got {self.features!r}")

    @property
    def n_frames(self) -> int:
        return len(self.frames.frame_id)

    def roles(self) -> list[str]:
        return [role for role, _ in self.parts] if self.parts is not None else list(DEFAULT_ROLES)

    def source_of(self, role: str) -> str:
        return self.sources.get(role, role)


@dataclass(frozen=True)
class BagInfo:
    """What a bag file says about itself, read without its arrays: enough to decide whether it
    may be reused."""

    attrs: dict[str, Any]
    variables: frozenset[str]
    tables: frozenset[str]


@dataclass(frozen=True)
class BagTables:
    """One bag's table parts as text, and its counts (read back from its file)."""

    parts: dict[str, str]
    counts: dict[str, int]

    def __getitem__(self, name: str) -> str:
        return self.parts[name]


class BagFormat(Protocol):
    """How bags are encoded on disk; store.py names files and keeps their checksums."""

    suffix: str  # of a bag file's name: bag-000001<suffix>

    def encode(self, payload: BagPayload) -> bytes:
        """The whole file's bytes, in memory: written (and checksummed) by the caller."""

    def write(self, path: Path, payload: BagPayload) -> bytes:
        """Encode and write atomically to ``path``; the bytes written."""

    def verify(self, path: Path) -> str | None:
        """What is wrong with the file (unreadable, truncated, not a bag), or None."""

    def describe(self, path: Path) -> BagInfo:
        """The file's attributes and contents; raises when it cannot be read."""

    def read_tables(self, path: Path, names: Sequence[str] = TABLE_PARTS) -> BagTables:
        """Some (default all) of the bag's table parts, and its counts."""

    def read_frames(self, path: Path) -> tuple[list[str], list[str]]:
        """(frame ids, read ids) of one bag, in order."""

    def open_many(self, paths: Sequence[Path]) -> Any:
        """One lazy dataset over bag files, frames concatenated in the order given."""
