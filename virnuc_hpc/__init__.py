"""virnuc-hpc: VirNucPro-compatible viral read identification across GPUs with Dask."""

__version__ = "0.1.0"
