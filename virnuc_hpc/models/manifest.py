"""The models directory's manifest: every staged file with its size, sha256 and source.

``models fetch`` writes it (atomically, after each file, so an interrupted fetch keeps what it
finished); ``models verify`` re-hashes against it on the compute node, where the network that
produced the files is out of reach, so the manifest is the only witness of what was downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from virnuc_hpc.errors import ModelFileError, ModelNotFoundError
from virnuc_hpc.outputs.atomic import write_text_atomic

MANIFEST = "manifest.json"
FORMAT = "virnuc-hpc-models/1"


@dataclass(frozen=True)
class Entry:
    file: str          # path inside the models directory, with '/'
    role: str          # esm2 | dnabert | classifier
    model: str         # esm2 name, hub id, or chunk length
    size: int
    sha256: str
    url: str           # the upstream URL (the mirror, if one was used, is in fetched_from)
    fetched_from: str
    fetched_at: str


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST


def read_manifest(directory: Path, *, required: bool = True) -> dict[str, Entry]:
    """The entries by file; none (or ModelNotFoundError when ``required``) without a manifest."""
    path = manifest_path(directory)
    if not path.is_file():
        if required:
            raise ModelNotFoundError(f"no {MANIFEST} in the models directory {directory}: stage the models "
                                     "there with `virnuc-hpc models fetch` (on a machine with network access)")
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        entries = [Entry(**item) for item in data["files"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelFileError(f"cannot read the models manifest {path}: {exc}") from exc
    return {e.file: e for e in entries}


def write_manifest(directory: Path, entries: dict[str, Entry]) -> None:
    files = [asdict(entries[name]) for name in sorted(entries)]
    write_text_atomic(manifest_path(directory),
                      json.dumps({"format": FORMAT, "files": files}, indent=2) + "\n")
