"""Errors a user can act on. The CLI prints their message (no traceback) and exits 2.

Every error meant for the user derives from ``UserError``; anything else reaching the CLI is a bug
and keeps its traceback. Kept apart from the code that raises them so the CLI can catch them
without importing torch or Dask.
"""

from __future__ import annotations


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
