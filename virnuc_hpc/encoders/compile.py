"""torch.compile set-up shared by the workers of a node: one on-disk cache, bounded shapes.

Why: compiling the ESM-2 layer graphs costs seconds per shape; every worker process on a node
compiles the same graphs. Pointing TorchInductor's and Triton's caches at one node-local directory
lets the second worker (and the next job on the node) load the compiled kernels instead of
rebuilding them. Workers inherit the variables from the process that set them (Dask spawns them).

Part of the encoders package (the packed encoders compile their own graphs); it imports nothing
else of ours, so engines and encoders alike may use it.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

def default_cache_root() -> Path:
    """`<TMPDIR or /tmp>/virnuc_hpc-compile-<user>` (node-local); RunConfig.compile_cache (a node-local
    SSD, say) is passed in by the engines instead where set."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return Path(tempfile.gettempdir()) / f"virnuc_hpc-compile-{user}"


def configure_compile_cache(root: str | Path | None = None) -> Path:
    """Point TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR at `root`/{inductor,triton}.

    Variables already set (by a Slurm script, say) win, so an operator can place the cache anywhere.
    Call before the first compiled call; returns the inductor cache directory in use."""
    root = Path(root) if root is not None else default_cache_root()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_static(fn: F, max_shapes: int) -> F:
    """torch.compile with static shapes, allowing `max_shapes` specialisations of fn.

    Callers bucket their input sizes so that the number of shapes is bounded; dynamo's default
    recompile limit (8) would otherwise silently drop back to eager past the eighth bucket. The limit
    is process-wide in dynamo, so it is only ever raised here, never lowered."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), max_shapes))
    return torch.compile(fn, dynamic=False, fullgraph=True)


def compile_dynamic(fn: F) -> F:
    """torch.compile of one graph for inputs whose dimension 0 the caller marks dynamic
    (``torch._dynamo.mark_dynamic``); every other size stays static, so the kernels keep their
    specialised reductions over the model width."""
    return torch.compile(fn, dynamic=None, fullgraph=True)
