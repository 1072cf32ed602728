"""Getting a Dask client: bring your own, join a scheduler, or start a local (CUDA) cluster.

A thin layer over distributed: one worker per GPU through dask-cuda's LocalCUDACluster when GPUs are
visible, a plain LocalCluster of processes otherwise. Everything binds to 127.0.0.1 unless the user
passes other addresses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from .config import RunConfig


def gpu_count() -> int:
    """GPUs visible to this process, without initialising CUDA in it (workers do that)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - no torch CUDA runtime
        return 0


def wants_gpu(config: RunConfig) -> bool:
    return config.device == "cuda" or (config.device == "auto" and gpu_count() > 0)


def _dashboard_host_port(address: str) -> str:
    return address if ":" in address else f"{address}:8787"


@contextmanager
def local_cluster(config: RunConfig) -> Iterator[LocalCluster]:
    """Start the cluster a stand-alone run needs; torn down on exit."""
    common = dict(host="127.0.0.1", dashboard_address=_dashboard_host_port(config.dashboard_address),
                  threads_per_worker=1, silence_logs=logging.CRITICAL)  # task errors reach the client
    # A bag that kills its worker twice is reported, not retried forever.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.worker.daemon": False}):
        if wants_gpu(config):
            from dask_cuda import LocalCUDACluster  # imported only where GPUs exist
            cluster = LocalCUDACluster(n_workers=config.workers, **common)
        else:
            workers = config.workers or 1
            cluster = LocalCluster(n_workers=workers, processes=True, memory_limit=0, **common)
    try:
        yield cluster
    finally:
        cluster.close()


@contextmanager
def connect(config: RunConfig, client: Client | None = None) -> Iterator[Client]:
    """The caller's client, a client of ``config.scheduler_address``, or a fresh local cluster's."""
    if client is not None:
        yield client
        return
    if config.scheduler_address:
        with Client(config.scheduler_address, set_as_default=False) as remote:
            yield remote
        return
    with local_cluster(config) as cluster, Client(cluster, set_as_default=False) as own:
        yield own


def dashboard_link(client: Client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:
        return None
