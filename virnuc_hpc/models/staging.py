"""``models fetch``: the model files downloaded once, on a machine with network access, into one
models directory that compute nodes read offline.

Why each piece: the ESM-2 3B file is 5.7 GB, so a dropped connection resumes where it stopped (an
HTTP Range request on ``<file>.part``) instead of starting over; a file appears under its real
name only once whole (atomic rename), so a half-downloaded file is never mistaken for a model; and
each file's size, sha256 and source go into the manifest, which ``models verify`` checks on the
compute node. A progress bar shows on a terminal, log lines otherwise (a batch job's log).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virnuc_hpc.encoders.files import file_sha256
from virnuc_hpc.errors import ModelNotFoundError, OutputError
from virnuc_hpc.models.manifest import Entry, read_manifest, write_manifest
from virnuc_hpc.models.sources import Source, mirrored

log = logging.getLogger("virnuc_hpc")

BLOCK = 1 << 20            # bytes per read from the connection
TIMEOUT_S = 60.0           # a stalled connection is dropped (and resumed) after this long
LOG_EVERY_S = 30.0         # progress lines when no bar is shown
LOCK = ".fetch.lock"
_DROPPED = (http.client.HTTPException, urllib.error.URLError, ConnectionError, TimeoutError, OSError)


class _NotOnServer(Exception):
    """404: this candidate file is not on the server (the next candidate is tried)."""


@dataclass(frozen=True)
class Fetched:
    entry: Entry
    downloaded: bool    # False: already staged with the manifest's size and sha256


def _user_agent() -> str:
    from virnuc_hpc import __version__
    return f"virnuc-hpc/{__version__}"


@contextmanager
def _fetch_lock(directory: Path) -> Iterator[None]:
    """One fetch per models directory: two writing the same ``.part`` would interleave bytes."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / LOCK, "a")
    except OSError as err:
        raise OutputError(f"cannot write into the models directory {directory}: {err.strerror or err}") from err
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another `virnuc-hpc models fetch` is writing into {directory}; "
                              "wait for it to finish") from None
        yield


class _Meter:
    """Bytes so far of one file: a tqdm bar on a terminal, else a log line every LOG_EVERY_S."""

    def __init__(self, name: str, total: int | None, start: int, bar: bool):
        self.name, self.total, self.done = name, total, start
        self.started, self.start, self.last_line = time.monotonic(), start, time.monotonic()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=name, file=sys.stderr, leave=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last_line >= LOG_EVERY_S:
            self.last_line = time.monotonic()
            log.info("fetch: %s %s", self.name, self.describe())

    def describe(self) -> str:
        rate = (self.done - self.start) / max(time.monotonic() - self.started, 1e-6)
        of = f" of {_size(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{_size(self.done)}{of}, {_size(rate)}/s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _size(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` as (START, TOTAL or None); None when unreadable."""
    try:
        unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes":
            return None
        return int(span.split("-")[0]), (None if total in ("", "*") else int(total))
    except ValueError:
        return None


def download(url: str, target: Path, *, retries: int = 3, bar: bool | None = None,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Download ``url`` to ``target`` through ``target.part``, resuming what an earlier attempt left
    there; returns the size. Raises _NotOnServer on 404, ModelNotFoundError when the transfer keeps
    failing (the ``.part`` file stays, for the next fetch to resume)."""
    part = target.with_name(target.name + ".part")
    bar = sys.stderr.isatty() if bar is None else bar
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        meter: _Meter | None = None
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
                total, mode = resp.length, "wb"
                if resp.status == 206:
                    span = _content_range_start(resp.headers.get("Content-Range"))
                    if span is None or span[0] != have:  # not the bytes we asked for: start over
                        part.unlink(missing_ok=True)
                        continue
                    mode, total = "ab", span[1]
                    log.info("fetch: %s: resuming at %s", target.name, _size(have))
                elif have:
                    log.info("fetch: %s: the server ignored the range request; starting over", target.name)
                if mode == "wb":
                    have = 0
                    total = resp.length
                meter = _Meter(target.name, total, have, bar)
                with open(part, mode) as out:
                    while chunk := resp.read(BLOCK):
                        out.write(chunk)
                        meter.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                size = part.stat().st_size
                if total is not None and size != total:
                    raise http.client.IncompleteRead(b"", total - size)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise _NotOnServer(url) from None
            if err.code == 416 and have:  # the .part is not a prefix of this file: start over
                part.unlink(missing_ok=True)
                continue
            raise ModelNotFoundError(f"fetching {url} failed: HTTP {err.code} {err.reason}") from None
        except _DROPPED as err:
            got = part.stat().st_size if part.exists() else 0
            failures += 1
            reason = f"{type(err).__name__}: {err}".rstrip(": ")
            if failures > retries:
                raise ModelNotFoundError(
                    f"fetching {url} failed ({reason}); {_size(got)} of {target.name} are kept in {part}: "
                    "run the same `virnuc-hpc models fetch` again to resume") from None
            log.info("fetch: %s: connection lost at %s (%s); retrying (%d of %d)", target.name, _size(got),
                     reason, failures, retries)
            sleep(min(2.0 ** (failures - 1), 30.0))
            continue
        finally:
            if meter is not None:
                meter.close()
        if meter is not None and not bar:
            log.info("fetch: %s done: %s", target.name, meter.describe())
        _refuse_lfs_pointer(part, url)
        os.replace(part, target)
        _fsync_dir(target.parent)
        return size


def _refuse_lfs_pointer(part: Path, url: str) -> None:
    """A Git LFS pointer (a few hundred bytes of text) instead of the file: say so now, not at load."""
    with open(part, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs"):
        part.unlink(missing_ok=True)
        raise ModelNotFoundError(f"{url} served a Git LFS pointer, not the file; point --mirror at a copy "
                                 "of the file itself")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _staged(directory: Path, source: Source, manifest: dict[str, Entry]) -> Entry | None:
    """The manifest's entry for a file that is still whole (same size and sha256), else None."""
    for file, url in source.candidates:
        entry, path = manifest.get(file), directory / file
        if entry is None or entry.url != url or not path.is_file() or path.stat().st_size != entry.size:
            continue
        if file_sha256(path) == entry.sha256:
            return entry
        log.info("fetch: %s differs from the manifest; downloading it again", file)
    return None


def fetch(directory: Path, sources: Sequence[Source], *, mirror: str | None = None, retries: int = 3,
          bar: bool | None = None) -> list[Fetched]:
    """Stage every source's file in ``directory``; files already whole are kept (re-hashed)."""
    directory = directory.expanduser()
    done: list[Fetched] = []
    with _fetch_lock(directory):
        manifest = read_manifest(directory, required=False)
        for source in sources:
            kept = _staged(directory, source, manifest)
            if kept is not None:
                log.info("fetch: %s already staged (sha256 checked)", kept.file)
                done.append(Fetched(kept, downloaded=False))
                continue
            entry = _fetch_one(directory, source, mirror, retries, bar)
            manifest = {**read_manifest(directory, required=False), entry.file: entry}
            for file, _ in source.candidates:  # another candidate staged earlier is superseded
                if file != entry.file and file in manifest:
                    del manifest[file]
                    (directory / file).unlink(missing_ok=True)
            write_manifest(directory, manifest)
            done.append(Fetched(entry, downloaded=True))
    return done


def _fetch_one(directory: Path, source: Source, mirror: str | None, retries: int,
               bar: bool | None) -> Entry:
    tried = []
    for file, url in source.candidates:
        where = mirrored(url, mirror)
        target = directory / file
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("fetch: %s <- %s", file, where)
        try:
            size = download(where, target, retries=retries, bar=bar)
        except _NotOnServer:
            tried.append(where)
            continue
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return Entry(file=file, role=source.role, model=source.model, size=size,
                     sha256=file_sha256(target), url=url, fetched_from=where, fetched_at=now)
    hint = (f" (the mirror must hold each file at its upstream path: {mirror.rstrip('/')}/<path of the "
            "upstream URL>)" if mirror else "")
    raise ModelNotFoundError(f"{source.role} {source.model}: {source.label} not found (HTTP 404) at "
                             f"{' nor '.join(tried)}{hint}")
