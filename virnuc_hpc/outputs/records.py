"""Reading back the JSON records a run leaves (run.json, the manifest, the progress file, the Slurm
job registry) without trusting them.

Why: these files outlive the process that wrote them, on shared filesystems, next to users'
hands: a full disk truncates one, an editor leaves half a line, a careless ``cp`` puts a FIFO or
a link to ``/dev/zero`` in its place. A reader here never raises and never blocks: a record that
cannot be used comes back as a problem, ``FILE:LINE: what is wrong`` (at most about 200 characters,
values quoted short), for the caller to report and skip.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from virnuc_hpc.errors import shorten

#: A record of ours is small; the largest, run.json, holds a bag timeline (about 200 bytes a bag).
MAX_RECORD_BYTES = 64 << 20
MAX_TEXT = 4096  # a path or a command: longer is not a value we wrote


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _read_bytes(path: Path, limit: int) -> tuple[bytes | None, str | None]:
    """The file's bytes, None when it does not exist, or a problem (not a regular file, too big)."""
    try:  # O_NONBLOCK: a FIFO put in a record's place must not hang the reader
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"{path}: cannot be read ({err.strerror or err})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, f"{path}: not a regular file"
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        return None, f"{path}: cannot be read ({err.strerror or err})"
    finally:
        os.close(fd)
    if len(data) > limit:
        return None, f"{path}: larger than {limit >> 20} MiB, not a record of ours"
    return data, None


def parse_json(text: str | bytes, where: str, first_line: int = 1) -> tuple[Any, str | None]:
    """One JSON value, or a problem naming ``where`` and the line (counted from ``first_line``)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            line = first_line + text[:err.start].count(b"\n")
            return None, f"{where}:{line}: not UTF-8 text (byte {text[err.start]:#04x})"
    try:
        return json.loads(text, parse_constant=_refuse_constant), None
    except json.JSONDecodeError as err:
        return None, f"{where}:{first_line + err.lineno - 1}: not valid JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        return None, f"{where}:{first_line}: nested too deeply to be a record of ours"
    except ValueError as err:  # NaN/Infinity, an integer of thousands of digits
        return None, f"{where}:{first_line}: not valid JSON ({shorten(str(err))})"


def read_json_object(path: str | Path, *, limit: int = MAX_RECORD_BYTES) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object in ``path``, None); (None, None) when there is no such file; (None, the
    problem) when it cannot be read or holds anything but one JSON object."""
    path = Path(path)
    data, problem = _read_bytes(path, limit)
    if data is None:
        return None, problem
    value, problem = parse_json(data, str(path))
    if problem is not None:
        return None, problem
    if not isinstance(value, dict):
        return None, f"{path}:1: not a JSON object (found {type(value).__name__})"
    return value, None


def read_json_lines(path: str | Path, *, limit: int = MAX_RECORD_BYTES) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """A JSON-lines file, line by line: (line number, the JSON object, None), or (line number,
    None, the problem) for a line that is not one; blank lines are no records. No file: nothing;
    a file that cannot be read: one problem, numbered 0."""
    path = Path(path)
    data, problem = _read_bytes(path, limit)
    if data is None:
        return [] if problem is None else [(0, None, problem)]
    lines: list[tuple[int, dict[str, Any] | None, str | None]] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        value, problem = parse_json(line, str(path), number)
        if problem is None and not isinstance(value, dict):
            problem = f"{path}:{number}: not a JSON object (found {type(value).__name__})"
        lines.append((number, None, problem) if problem is not None else (number, value, None))
    return lines


def text_field(record: dict[str, Any], key: str) -> str | None:
    """``record[key]`` when it is text of a plausible length, else None."""
    value = record.get(key)
    return value if isinstance(value, str) and len(value) <= MAX_TEXT else None


def int_field(record: dict[str, Any], key: str) -> int | None:
    """``record[key]`` when it is a whole number (not a bool) of at most 64 bits, else None."""
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63 else None


def number_field(record: dict[str, Any], key: str) -> float | None:
    """``record[key]`` when it is a finite number (not a bool) of plausible size (seconds, rates,
    times since 1970: below 1e15), else None."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) >= 1e15:
        return None
    return float(value) if math.isfinite(value) else None
