"""An exclusive lock on an output directory for the whole run: a second run into the same OUTDIR
is refused at once instead of mixing its files with the first one's.

Why a lock *file* with a heartbeat, not ``flock``/``fcntl``: OUTDIR usually lives on a shared
filesystem (NFS, Lustre, GPFS, BeeGFS), where advisory locks are unreliable or switched off (Lustre
mounted without ``-o flock``, NFS without a working lockd/statd, locks silently local to one
client), and a lock held by a node that crashed may never be released. Creating a file with
``O_CREAT | O_EXCL`` is atomic on local filesystems, on NFS v3 and later and on Lustre, and
``rename`` is atomic everywhere, so both are safe between nodes. A holder that dies cannot remove
its lock file, so the file says who holds it (host, pid, Slurm job) and a heartbeat thread touches
it every few seconds: a lock whose process is gone (same host) or whose heartbeat stopped (any
host; the mtime is compared with this node's clock, so the threshold is kept far above any
plausible clock skew) is stale and is taken over: renamed away under a short-lived second O_EXCL
file, so that two runs finding the same stale lock cannot both end up holding the directory.

``locked`` holds the lock; ``read_lock`` describes it for ``virnuc-hpc status``.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnuc_hpc.errors import OutputError, OutputLockedError

log = logging.getLogger("virnuc_hpc")

LOCK_NAME = ".virnuc-hpc.lock"
STALE_INFIX = ".stale-"  # a stale lock is renamed to LOCK_NAME + STALE_INFIX + <hex> to take it over
TAKEOVER_SUFFIX = ".takeover"  # the O_EXCL mutex that serialises takeovers of a stale lock
TAKEOVER_WAIT_S = 10.0  # how long a contender waits for another one's takeover (milliseconds, normally)
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
MAX_LOCK_BYTES = 64 << 10  # ours are a few hundred bytes


@dataclass
class HeldLock:
    """What ``locked`` yields: the lock file, what it says about us, and whether it was broken
    (removed or taken over by someone else while we ran; the heartbeat notices it)."""

    path: Path
    info: dict[str, Any]
    broken: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Seen:
    """A lock file as read once: its exact bytes (to recognise it again), parsed content and age."""

    raw: bytes
    info: dict[str, Any] | None  # None: not (yet) valid JSON, e.g. half-written by a crash
    mtime: float

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.mtime)


def lock_path(outdir: str | Path) -> Path:
    return Path(outdir) / LOCK_NAME


def _holder_info(command: str, heartbeat_s: float) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid())
    info: dict[str, Any] = {
        "token": secrets.token_hex(16), "host": socket.gethostname(), "pid": os.getpid(),
        "user": user, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "heartbeat_s": heartbeat_s}
    info.update({name.lower(): os.environ[name] for name in SLURM_VARS if os.environ.get(name)})
    return info


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True  # unknown: assume alive, the heartbeat age decides
    return True


def _read(path: Path) -> _Seen | None:
    """The lock file as it is now, or None when there is none. Whatever is found in its place is
    read without blocking (a FIFO), at most MAX_LOCK_BYTES of it, and only a JSON object with a
    token counts as a lock's content."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    with open(fd, "rb") as fh:
        meta = os.fstat(fh.fileno())
        raw = fh.read(MAX_LOCK_BYTES) if stat.S_ISREG(meta.st_mode) else b""
    try:
        info = json.loads(raw)
        info = info if isinstance(info, dict) and "token" in info else None
    except (ValueError, RecursionError):
        info = None
    return _Seen(raw, info, meta.st_mtime)


def _stale_reason(seen: _Seen, stale_after_s: float) -> str | None:
    """Why this lock no longer protects a live run, or None while it may.

    A holder's heartbeat interval may exceed ours: a lock counts as silent only after three of its
    own intervals (and never before stale_after_s)."""
    info = seen.info
    limit = stale_after_s
    if info is not None:
        try:
            limit = max(stale_after_s, 3 * float(info.get("heartbeat_s") or 0))
        except (TypeError, ValueError):
            pass
    if seen.age_s > limit:
        return f"no heartbeat for {seen.age_s:.0f} s (limit {limit:.0f} s)"
    if info is None:
        return None  # unreadable but fresh: someone is writing it right now, or just crashed
    same_host = info.get("host") == socket.gethostname()
    pid = info.get("pid")
    if same_host and isinstance(pid, int) and not _pid_alive(pid):
        return f"its process {pid} on this host is gone"
    job = os.environ.get("SLURM_JOB_ID")
    if job and str(info.get("slurm_job_id")) == job and pid != os.getpid():
        # A requeued Slurm job taking its own directory back (its earlier attempt was killed).
        # Two runs started by one job script on one node are not that: the other pid is alive.
        if not (same_host and isinstance(pid, int) and _pid_alive(pid)):
            return f"held by an earlier attempt of this Slurm job ({job})"
    return None


def describe_holder(info: dict[str, Any] | None, age_s: float) -> str:
    """One line about who holds a lock, for messages and ``virnuc-hpc status``."""
    if info is None:
        return f"unreadable lock file (being written, or left half-written by a crash), " \
               f"last modified {age_s:.0f} s ago"
    slurm = ""
    if info.get("slurm_job_id"):
        array = (f", array {info['slurm_array_job_id']}_{info.get('slurm_array_task_id', '')}"
                 if info.get("slurm_array_job_id") else "")
        slurm = f", Slurm job {info['slurm_job_id']}{array}"
    return (f"pid {info.get('pid')} on host {info.get('host')}, user {info.get('user')}{slurm}, "
            f"started {info.get('started')}, command: {info.get('command')!r}, "
            f"last heartbeat {age_s:.0f} s ago")


def _locked_error(path: Path, seen: _Seen, stale_after_s: float) -> OutputLockedError:
    outdir = path.parent
    return OutputLockedError(
        f"output directory {outdir} is in use by another run: lock file {path} is held by "
        f"{describe_holder(seen.info, seen.age_s)}.\n"
        f"Wait for that run to finish, or choose another output directory (-o). If that run is gone "
        f"(e.g. its node crashed), delete {path} (a lock without heartbeat for {stale_after_s:.0f} s "
        f"is also taken over automatically). `virnuc-hpc status {outdir}` shows the holder.")


def _create(path: Path, info: dict[str, Any]) -> bool:
    """O_EXCL create with our content; False when a lock file already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(info, indent=1) + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def _take_over(path: Path, seen: _Seen, stale_after_s: float) -> bool | None:
    """Remove the stale lock ``seen`` (with a warning naming its holder): True when we removed it,
    False when it changed meanwhile (look again), None while another contender is taking it over.

    Deciding "stale" and removing the file are two steps, so between them another contender may
    already have replaced it with its own live lock; a plain rename would then steal that one.
    Takeovers are therefore serialised by a second O_EXCL file (the takeover mutex, held for
    milliseconds), and under it the lock file is read again and must still be the very bytes
    judged stale, and still stale. Only one contender can then remove it, so exactly one warns;
    the O_EXCL create that follows decides who holds the lock."""
    mutex = path.with_name(path.name + TAKEOVER_SUFFIX)
    token = secrets.token_hex(16)
    if not _create(mutex, {"token": token, "host": socket.gethostname(), "pid": os.getpid()}):
        other = _read(mutex)
        if other is None:
            return False  # that takeover just finished
        if other.age_s > stale_after_s:  # its owner crashed mid-takeover (a window of milliseconds)
            _remove_if_unchanged(mutex, other)
        return None
    try:
        current = _read(path)
        if current is None or current.raw != seen.raw:
            return False
        reason = _stale_reason(current, stale_after_s)
        if reason is None:  # its heartbeat came back
            return False
        if not _remove_if_unchanged(path, current):
            return False
        log.warning("warning: taking over the stale lock %s (%s); it was held by %s", path, reason,
                    describe_holder(current.info, current.age_s))
        return True
    finally:
        mine = _read(mutex)
        if mine is not None and mine.info is not None and mine.info.get("token") == token:
            mutex.unlink(missing_ok=True)


def _remove_if_unchanged(path: Path, seen: _Seen | None) -> bool:
    """Remove ``path`` if it still holds ``seen``'s bytes: rename it to a unique name (atomic, and
    only one contender can win it), compare, and put back (``link``: never replaces a file) what
    turns out to be another file."""
    if seen is None:
        return False
    moved = path.with_name(path.name + STALE_INFIX + secrets.token_hex(6))
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False
    try:
        if moved.read_bytes() == seen.raw:
            return True
        try:
            os.link(moved, path)
        except FileExistsError:
            log.error("error: removed another run's live lock file %s by mistake", path)
        except OSError:  # no hard links on this filesystem: rename back (not exclusive)
            os.rename(moved, path)
        return False
    finally:
        moved.unlink(missing_ok=True)


def _heartbeat(held: HeldLock, token: str, interval: float, stop: threading.Event) -> None:
    """Touch the lock file every ``interval`` seconds so others see this run alive; stop (and say
    so, once) when the file is gone or holds another token: our lock was broken."""
    while not stop.wait(interval):
        try:
            seen = _read(held.path)
            if seen is None or seen.info is None or seen.info.get("token") != token:
                holder = "removed" if seen is None else \
                    f"replaced by {describe_holder(seen.info, seen.age_s)}"
                log.error("error: this run's lock %s was %s; another run may now write into %s",
                          held.path, holder, held.path.parent)
                held.broken.set()
                return
            os.utime(held.path)
        except FileNotFoundError:
            continue  # removed between the read and the touch: the next beat reports it
        except OSError as err:  # a filesystem hiccup: try again at the next beat
            log.debug("lock heartbeat on %s failed: %s", held.path, err)


@contextmanager
def locked(outdir: str | Path, *, command: str, heartbeat_s: float = 10.0,
           stale_after_s: float = 60.0) -> Iterator[HeldLock]:
    """Hold OUTDIR's lock (creating OUTDIR) while the block runs.

    Raises OutputLockedError at once when another live run holds it; takes a stale lock over (with
    a warning naming the previous holder). On exit the file is removed only if it is still ours.
    """
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"output directory {outdir} is not writable: cannot create it ({err.strerror or err})") from err
    path = lock_path(outdir)
    if path.is_symlink():  # never judged, renamed or removed through a link
        raise OutputError(f"lock file {path} is a symbolic link; a run follows no link inside its "
                          "output directory: remove it")
    info = _holder_info(command, heartbeat_s)
    deadline = time.monotonic() + TAKEOVER_WAIT_S
    while True:
        try:
            if _create(path, info):
                break
        except OSError as err:
            raise OutputError(f"cannot create lock file {path}: {err.strerror or err}") from err
        seen = _read(path)
        busy = False  # another contender is taking the stale lock over right now
        if seen is not None:
            if _stale_reason(seen, stale_after_s) is None:
                raise _locked_error(path, seen, stale_after_s)
            busy = _take_over(path, seen, stale_after_s) is None
        if time.monotonic() > deadline:
            raise OutputLockedError(
                f"could not take the lock {path} within {TAKEOVER_WAIT_S:.0f} s: it is stale but "
                f"other runs keep taking it over ({path.name + TAKEOVER_SUFFIX}); try again, or "
                f"delete both files if no other run is starting")
        if busy:
            time.sleep(0.02)

    held = HeldLock(path=path, info=info)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(held, info["token"], heartbeat_s, stop),
                            name="virnuc-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield held
    finally:
        stop.set()
        beat.join(timeout=max(5.0, heartbeat_s))
        seen = _read(path)
        if seen is not None and seen.info is not None and seen.info.get("token") == info["token"]:
            path.unlink(missing_ok=True)


def read_lock(outdir: str | Path, *, stale_after_s: float = 60.0) -> dict[str, Any] | None:
    """The lock's holder (host, pid, user, start, command, Slurm ids) plus ``path``, ``age_s``
    (since the last heartbeat), ``stale`` and ``stale_reason``; None when OUTDIR has no lock."""
    path = lock_path(outdir)
    try:
        seen = _read(path)
    except OSError as err:  # e.g. no permission to read it
        return {"unreadable": True, "problem": f"{path}: cannot be read ({err.strerror or err})",
                "path": str(path), "age_s": None, "stale": False, "stale_reason": None}
    if seen is None:
        return None
    reason = _stale_reason(seen, stale_after_s)
    if seen.info is None:
        kind = "not a regular file" if path.is_symlink() or not path.is_file() else "not a lock record of ours"
        info: dict[str, Any] = {"unreadable": True, "problem": f"{path}: {kind} (being written, or damaged)"}
    else:  # shown to people and printed as JSON: short values, nothing JSON cannot carry
        info = {k: _shown(v) for k, v in list(seen.info.items())[:40] if len(k) <= 40 and k != "token"}
    return {**info, "path": str(path), "age_s": round(seen.age_s, 1), "stale": reason is not None,
            "stale_reason": reason}


def _shown(value: Any, limit: int = 200) -> Any:
    """A lock value as status shows it: numbers, switches and short text as they are; anything
    else (a list, a huge or non-finite number, a long text) as short text."""
    if value is None or isinstance(value, (bool, int)) and abs(value) < 1 << 63:
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    text = value if isinstance(value, str) else json.dumps(value)[:limit + 1]
    return text if len(text) <= limit else text[:limit] + "..."
