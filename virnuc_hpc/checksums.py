"""sha256 of files and bytes, and the checksum files kept beside bags.

One place for both: model files, staged downloads and bag files are all identified by the sha256
of their bytes, and a bag's checksum file (``bag-000001.nc.sha256``) holds that digest on one line.
A base module, so that the reading, output and encoder layers all use the same function.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_BLOCK = 1 << 24  # 16 MB reads: few syscalls, little memory per thread
CHECKSUM_SUFFIX = ".sha256"  # bags/bag-000001.nc.sha256: the sha256 of the bag file's bytes


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, always read: size and mtime prove nothing (weights rewritten in place
    with the mtime restored keep both). Streams 16 MB blocks; hashlib releases the GIL on each, so
    several files hash in parallel threads."""
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_path(path: Path) -> Path:
    """Where the checksum of ``path`` is kept: beside it, its name plus ``.sha256``."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def checksum_text(data: bytes) -> str:
    """The content of a checksum file for ``data``: its digest on one line."""
    return bytes_sha256(data) + "\n"


def recorded_checksum(path: Path) -> str | None:
    """The digest kept beside ``path``; None when there is none (or it cannot be read)."""
    try:
        return checksum_path(path).read_text().strip()
    except OSError:
        return None


def matches_recorded(path: Path) -> bool | None:
    """True/False: the file's bytes do/do not match the digest kept beside it; None: no digest kept."""
    recorded = recorded_checksum(path)
    return None if recorded is None else file_sha256(path) == recorded
