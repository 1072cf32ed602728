"""Errors a user can act on: a model file that is absent, or present but unusable.

Kept apart from the code that raises them so the CLI can catch them without importing torch models.
"""

from __future__ import annotations


class ModelNotFoundError(FileNotFoundError):
    """The model could not be found (or fetched); the message says where we looked and how to get it."""


class ModelFileError(RuntimeError):
    """A model file exists but is corrupt, unsafe or not the expected format; the message names the file."""
