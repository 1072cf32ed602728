"""Files written whole or not at all: to a temporary name in the same folder, then renamed.

Every output of a run is written this way, so a file that exists under its final name is whole,
and a killed run leaves only temporaries (``.NAME.tmp-PID-RANDOM``), which the next run removes.
Light on purpose (no NetCDF stack): status and the model manifest write through it too.
"""

from __future__ import annotations

import gzip
import os
import uuid
from pathlib import Path
from typing import IO

from virnuc_hpc.errors import OutputError


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = tmp_name(path)
    try:  # a new file (O_EXCL), never through a link placed at the temporary's name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


class AtomicStream:
    """A UTF-8 text file written in pieces (gzip-compressed when asked) to a temporary name and
    renamed into place by ``commit``; ``discard`` leaves nothing behind. For outputs too large to
    hold in memory (tables and sequences of a whole sample)."""

    def __init__(self, path: Path, compressed: bool = False) -> None:
        self.path, self.tmp = path, tmp_name(path)
        try:
            self.raw: IO[bytes] = open(self.tmp, "xb")
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        # mtime=0 and no name: the same records give the same bytes
        self.out: IO[bytes] = (gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, compresslevel=6, mtime=0)
                               if compressed else self.raw)

    def write(self, text: str) -> None:
        try:
            self.out.write(text.encode())
        except OSError as err:
            self.discard()
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err

    def commit(self) -> None:
        try:
            if self.out is not self.raw:
                self.out.close()
            self.raw.flush()
            os.fsync(self.raw.fileno())
            self.raw.close()
            os.replace(self.tmp, self.path)
        except OSError as err:
            self.discard()
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err

    def discard(self) -> None:
        try:
            self.out.close()
            self.raw.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
