"""Where each model comes from: the one table of upstream URLs, and where a file lands when staged.

A site mirror holds every file at its upstream path, the URL without scheme and host
(``MIRROR/fair-esm/models/esm2_t36_3B_UR50D.pt``), so that ``python -m http.server`` over a copied
folder serves an air-gapped cluster. Staged files keep simple names in the models directory:
``<esm2 name>.pt``, ``<hub id>/<file>`` for DNABERT, ``<length>_model.pth`` for the classifiers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from virnuc_hpc.errors import ConfigError

#: The upstream URLs, one per kind of model.
UPSTREAM = {
    # fair-esm's public bucket (the URL its torch-hub loader uses); the contact-regression file is not needed
    "esm2": "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt",
    # the Hugging Face hub's file endpoint; only the data files are fetched, never the remote code
    "dnabert": "https://huggingface.co/{repo}/resolve/main/{file}",
    # VirNucPro's repository, where the trained classifiers are published
    "classifier": "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/main/{length}_model.pth",
}

DEFAULT_ESM2 = "esm2_t36_3B_UR50D"
DEFAULT_DNABERT = "zhihan1996/DNABERT-S"
CLASSIFIER_LENGTHS = (300, 500)
#: The DNABERT files our loader reads; the weights are the first of these the source has
#: (safetensors preferred: no pickle).
DNABERT_FILES = ("config.json", "tokenizer.json")
DNABERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class Source:
    """One file to stage: its place in the models directory and where it may come from.

    ``candidates`` are (file, upstream URL) pairs tried in order, the first the server has wins;
    only DNABERT's weights have more than one."""

    role: str                                  # esm2 | dnabert | classifier
    model: str                                 # esm2 name, hub id, or chunk length
    candidates: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return " or ".join(file for file, _ in self.candidates)


def upstream_path(url: str) -> str:
    """The URL without scheme and host: where a mirror holds the file."""
    return urlsplit(url).path.lstrip("/")


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` itself, or its place under ``mirror`` (``MIRROR/<upstream path>``)."""
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + upstream_path(url)


def esm2_file(name: str) -> str:
    return f"{name}.pt"


def classifier_file(length: int | str) -> str:
    return f"{length}_model.pth"


def esm2_sources(name: str) -> list[Source]:
    from virnuc_hpc.encoders.esm2 import KNOWN_MODELS

    name = name.removesuffix(".pt")
    if name not in KNOWN_MODELS:
        raise ConfigError(f"--esm2 {name!r} is not a released ESM-2 model; known: {', '.join(KNOWN_MODELS)}")
    return [Source("esm2", name, ((esm2_file(name), UPSTREAM["esm2"].format(name=name)),))]


def dnabert_sources(repo: str) -> list[Source]:
    if not _HUB_ID.fullmatch(repo) or ".." in repo.split("/"):
        raise ConfigError(f"--dnabert {repo!r} is not a hub id (owner/name, e.g. {DEFAULT_DNABERT})")

    def pair(file: str) -> tuple[str, str]:
        return f"{repo}/{file}", UPSTREAM["dnabert"].format(repo=repo, file=file)

    sources = [Source("dnabert", repo, (pair(f),)) for f in DNABERT_FILES]
    return sources + [Source("dnabert", repo, tuple(pair(f) for f in DNABERT_WEIGHTS))]


def classifier_sources(lengths: str) -> list[Source]:
    """``300,500`` (or one of them) as Sources; an empty text gives none."""
    wanted = [part.strip().removesuffix("_model.pth") for part in lengths.split(",") if part.strip()]
    bad = [w for w in wanted if w not in {str(n) for n in CLASSIFIER_LENGTHS}]
    if bad:
        raise ConfigError(f"--classifiers takes {' and/or '.join(map(str, CLASSIFIER_LENGTHS))} "
                          f"(comma-separated), not {', '.join(bad)}")
    return [Source("classifier", w, ((classifier_file(w), UPSTREAM["classifier"].format(length=w)),))
            for w in dict.fromkeys(wanted)]


def default_models_dir() -> Path:
    """The per-user models directory: ``$XDG_DATA_HOME/virnuc-hpc/models``, else
    ``~/.local/share/virnuc-hpc/models`` (the XDG default)."""
    base = os.environ.get("XDG_DATA_HOME", "").strip() or os.path.join("~", ".local", "share")
    return Path(base).expanduser() / "virnuc-hpc" / "models"
