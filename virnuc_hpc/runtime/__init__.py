"""Running: the per-bag worker, the pipeline, Dask clusters, Slurm, dry runs, GPU sampling."""
