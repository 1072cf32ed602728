"""virnuc-hpc: VirNucPro-compatible viral read identification across GPUs with Dask.

    import virnuc_hpc
    virnuc_hpc.predict(["reads.fa"], "out", client=my_client)   # or client=None: a local cluster
    ds = virnuc_hpc.open_features("out")                        # one lazy xarray Dataset
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["predict", "embed", "open_features", "load_config", "RunConfig", "__version__"]

_LAZY = {"predict": "runtime.pipeline", "embed": "runtime.pipeline", "open_features": "outputs.store",
         "load_config": "config", "RunConfig": "config"}


def __getattr__(name: str) -> Any:  # imported on first use: `import virnuc_hpc` stays light
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'virnuc_hpc' has no attribute {name!r}")
