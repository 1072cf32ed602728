"""OUTDIR/run.log: what a run printed, with debug detail, kept beside its results.

For the duration of a run the package's loggers (``virnuc_hpc`` and below) log at DEBUG into a
file handler; what was shown before (the CLI's stderr lines, a notebook's handlers) stays at its
level: the handlers already on the package logger keep their threshold, and records reach the
ancestors' handlers only at the level they reached them before.

Lines are held in memory until ``open`` names the file: run.log is written only once OUTDIR is
locked and claimed as ours, so a run refused for a foreign or locked OUTDIR writes nothing there.
A resumed run appends to the file (one header per attempt): a requeued Slurm job keeps the log of
the attempt that was cut short. A run that fails after the file is open records the error and its
traceback there (the CLI prints only the one-line message).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from virnuc_hpc import __version__

PACKAGE_LOGGER = "virnuc_hpc"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Records held before the file is open (the setup logs a handful; a bound against surprises).
PENDING_MAX = 10_000

_active = threading.Lock()  # one run at a time adjusts the package logger's levels


class _Forward(logging.Handler):
    """Hands records on to the ancestors' handlers at the earlier level, as propagation did
    (with Python's last resort, stderr for warnings, where nobody had set up any handler)."""

    def __init__(self, parent: logging.Logger, level: int, last_resort: bool):
        super().__init__(level)
        self.parent, self.last_resort = parent, last_resort

    def emit(self, record: logging.LogRecord) -> None:
        found, logger = 0, self.parent
        while logger is not None:
            for handler in logger.handlers:
                found += 1
                if record.levelno >= handler.level:
                    handler.handle(record)
            logger = logger.parent if logger.propagate else None
        fallback = logging.lastResort
        if not found and self.last_resort and fallback is not None and record.levelno >= fallback.level:
            fallback.handle(record)


class _File(logging.Handler):
    """Holds records until the file is named, then writes each one as it comes (flushed)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))
        self._pending: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is not None:
            self._file.handle(record)
        elif len(self._pending) < PENDING_MAX:
            self._pending.append(record)

    def open(self, path: Path) -> None:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(self.formatter)
        handler.setLevel(logging.DEBUG)
        with self.lock:
            self._file = handler
            pending, self._pending = self._pending, []
        for record in pending:
            handler.handle(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class RunLog:
    """Context manager of one run's log file; ``open(path)`` once OUTDIR is ours."""

    def __init__(self, command_line: str):
        self.command_line = command_line
        self.path: Path | None = None
        self._handler = _File()
        self._restore: list[tuple[logging.Handler, int]] = []
        self._owner = False
        self._saved: tuple[int, bool] = (logging.NOTSET, True)
        self._forward: _Forward | None = None

    def __enter__(self) -> "RunLog":
        logger = logging.getLogger(PACKAGE_LOGGER)
        self._owner = _active.acquire(blocking=False)
        if self._owner:  # a second run in this process at once only adds its file
            shown = logger.getEffectiveLevel()
            self._saved = (logger.level, logger.propagate)
            self._restore = [(h, h.level) for h in logger.handlers]
            for handler, level in self._restore:
                handler.setLevel(max(level, shown))
            if logger.propagate and logger.parent is not None:
                self._forward = _Forward(logger.parent, shown, last_resort=not logger.handlers)
                logger.addHandler(self._forward)
                logger.propagate = False
            logger.setLevel(logging.DEBUG)
        logger.addHandler(self._handler)
        logging.getLogger(__name__).debug("run of virnuc-hpc %s, pid %d on %s; command line: %s", __version__,
                                          os.getpid(), socket.gethostname(), self.command_line)
        return self

    def open(self, path: Path) -> None:
        """Start writing ``path`` (appending), with what was logged since the run began."""
        self._handler.open(path)
        self.path = path
        logging.getLogger(__name__).debug("run log: %s", path)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        logger = logging.getLogger(PACKAGE_LOGGER)
        try:
            if error is not None and self.path is not None:  # into the file only: the CLI says it once
                record = logger.makeRecord(__name__, logging.ERROR, __file__, 0, "run stopped: %s: %s",
                                           (type(error).__name__, error), (kind, error, trace))
                self._handler.handle(record)
        finally:
            logger.removeHandler(self._handler)
            self._handler.close()
            if self._owner:
                if self._forward is not None:
                    logger.removeHandler(self._forward)
                for handler, level in self._restore:
                    handler.setLevel(level)
                logger.setLevel(self._saved[0])
                logger.propagate = self._saved[1]
                _active.release()
