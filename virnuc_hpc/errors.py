"""The package's exceptions, in one module: the CLI catches them without importing torch or Dask.

Errors a user can act on derive from ``UserError``: the CLI prints their message (no traceback)
and exits 2. ``FastaError`` carries every ``Problem`` found in the input records. Anything else
reaching the CLI is a bug and keeps its traceback; ``BagsFailedError`` (bags that kill their
worker) ends a run with exit status 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_LISTED = 50  # problems spelled out in a FastaError message


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """The model could not be found (or fetched); the message says where we looked and how to get it."""


class ModelFileError(UserError, RuntimeError):
    """A model file exists but is corrupt, unsafe or not the expected format; the message names the file."""


class OutputError(UserError, RuntimeError):
    """The output directory cannot be used (unwritable, full, locked, or holds something else)."""


class OutputLockedError(OutputError):
    """Another run holds the output directory's lock; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used (an unreadable file, an unknown preset, a setting the
    device cannot honour); values refused by RunConfig's own checks come as pydantic errors."""


class SetupError(UserError, RuntimeError):
    """The environment cannot run what was asked (a missing package, an unusable address)."""


class SampleError(UserError, ValueError):
    """A mistake in how inputs were named or listed; the message says how to fix it."""


# --- problems with the input's records ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with an input, located precisely enough for a user to fix it."""

    path: str
    line: int | None
    record: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = "" if self.record is None else f"record {shorten(self.record)}: "
        return f"{where}: {what}{self.message}"


def shorten(text: str, limit: int = 80) -> str:
    """repr of text, cut to ``limit`` characters: a 1 MB id must not make a 1 MB message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


class FastaError(UserError, ValueError):
    """Input refused; `problems` lists every reason found (the message shows the first 50)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(_summarise(self.problems))

    def __reduce__(self) -> tuple[type, tuple[list[Problem]]]:
        """Rebuilt from its problems when it crosses a process boundary (a Dask task's error)."""
        return type(self), (self.problems,)


def _summarise(problems: list[Problem]) -> str:
    if len(problems) == 1:
        return str(problems[0])
    lines = [f"{len(problems)} problems in the input:"]
    lines += [f"  {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


# --- not the user's to fix ----------------------------------------------------------------------

class BagsFailedError(RuntimeError):
    """Bags that killed their worker even when run alone; frame ids are listed in failed_bags.tsv."""
