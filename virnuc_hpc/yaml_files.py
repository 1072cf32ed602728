"""YAML files given by users (configurations), read with limits.

A configuration is a few dozen ``option: value`` lines. A file that is large, not UTF-8, nested
deep, uses aliases or holds thousands of values is refused, with one short line naming the file
and the reason, before PyYAML spends minutes or gigabytes on it: an alias "bomb" of a few lines
expands exponentially, deep nesting exhausts the recursion of its composer, and ``/dev/zero``
never ends. The file is first walked as a stream of events (cheap, with no nodes built), and only
loaded once the walk found nothing to refuse.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from virnuc_hpc.errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB: a configuration of every option is about 3 KB
MAX_DEPTH = 32       # nested collections (a configuration needs 1)
MAX_NODES = 10_000   # scalars and collections (a configuration of every option has about 100)
MAX_REASON = 300     # characters of a parser's explanation kept in a message

#: libyaml's parser where PyYAML was built with it (a tenth of the time), else PyYAML's own.
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path | Traversable, what: str = "configuration") -> Any:
    """The YAML document in ``path``, or a ConfigError ``cannot read {what} {path}: reason``."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_BYTES + 1)  # enough to know it is too large (/dev/zero included)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"cannot read {what} {path}: larger than {MAX_BYTES >> 20} MB (a configuration "
                          "is a few dozen lines of option: value)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"cannot read {what} {path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line "
                          f"{line}); save it as UTF-8") from None
    try:
        _check_events(text)
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except _Refused as err:
        raise ConfigError(f"cannot read {what} {path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        raise ConfigError(f"cannot read {what} {path}: {_marked(err)}") from None
    except yaml.YAMLError as err:  # the reader's: a character YAML does not allow
        reason = str(err).replace(' in "<unicode string>",', " at")
        raise ConfigError(f"cannot read {what} {path}: {_cut(reason)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as err:
        # a value YAML cannot convert: an integer of more digits than Python converts, a bad date
        reason = str(err).partition("; use sys.set_int_max_str_digits")[0] or type(err).__name__
        raise ConfigError(f"cannot read {what} {path}: a value YAML cannot convert ({_cut(reason)})") from None


class _Refused(Exception):
    """Something the walk over the events refuses; the message says what and where."""


def _check_events(text: str) -> None:
    """Refuse aliases, nesting deeper than MAX_DEPTH and more than MAX_NODES nodes, as soon as met."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"line {event.start_mark.line + 1}: YAML aliases ({_cut('*' + str(event.anchor), 80)}) "
                           "are not accepted; write the value out")
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            nodes += 1
            if nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES:,} values (a configuration is a few dozen lines of "
                               "option: value)")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _marked(err: yaml.MarkedYAMLError) -> str:
    """A parser error as ``line L, column C: what`` (without PyYAML's quoted snippet of the file)."""
    what = "; ".join(str(part) for part in (err.context, err.problem) if part) or "not valid YAML"
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return _cut(where + what)


def _cut(text: str, limit: int = MAX_REASON) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."

