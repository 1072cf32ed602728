"""Getting a Dask client: bring your own, join a scheduler, or start a local (CUDA) cluster.

A thin layer over distributed: one worker per GPU through dask-cuda's LocalCUDACluster when GPUs are
visible, a plain LocalCluster of processes otherwise. Everything binds to 127.0.0.1 unless the user
passes other addresses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from .config import RunConfig


# Task threads per worker. A GPU worker has two: one bag holds the device (worker.py's lock) while
# another bag's classification and NetCDF writing run. A CPU worker computes with torch threads.
GPU_WORKER_THREADS = 2
CPU_WORKER_THREADS = 1


def worker_dask_config() -> dict[str, object]:
    """Dask settings for the worker processes we start.

    Non-daemonic workers (so that a worker may start processes of its own). And no
    MALLOC_TRIM_THRESHOLD_: Dask's Nanny sets it by default, which also pins glibc's mmap threshold
    at 128 KiB, so every megabyte-sized buffer of a bag becomes a fresh mmap with its page faults;
    parsing and translating a bag measured 1.5x slower that way.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return {"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": environ}


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
def local_cluster(config: RunConfig, host: str = "127.0.0.1") -> Iterator[LocalCluster]:
    """Start the cluster a stand-alone run needs; torn down on exit.

    ``host`` is where the scheduler and workers listen: 127.0.0.1 unless workers on other nodes
    must join (the multi-node Slurm job binds to the node's address).
    """
    common = dict(host=host, dashboard_address=_dashboard_host_port(config.dashboard_address),
                  silence_logs=logging.CRITICAL)  # task errors reach the client
    # A bag that kills its worker twice is reported, not retried forever.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, **worker_dask_config()}):
        if wants_gpu(config):
            from dask_cuda import LocalCUDACluster  # imported only where GPUs exist
            cluster = LocalCUDACluster(n_workers=config.workers, threads_per_worker=GPU_WORKER_THREADS,
                                       **common)
        else:
            cluster = LocalCluster(n_workers=config.workers or 1, threads_per_worker=CPU_WORKER_THREADS,
                                   processes=True, memory_limit=0, **common)
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


def serve_workers(scheduler_address: str, config: RunConfig, *, host: str | None = None,
                  name: str | None = None, death_timeout: float = 60,
                  handle_signals: bool = True) -> None:
    """Run this node's workers for a remote scheduler until it goes away (``virnuc-hpc worker``).

    One dask-cuda worker per visible GPU (``CUDAWorker``), else ``config.workers`` CPU worker
    processes. Nothing run-specific is needed: the EncoderPlugin that ``predict`` registers on the
    scheduler is applied to workers that join later too. With ``handle_signals``, SIGINT/SIGTERM
    close the workers cleanly (their processes are not daemonic, so they must not be orphaned).
    """
    asyncio.run(_serve_workers(scheduler_address, config, host, name, death_timeout, handle_signals))


async def _serve_workers(scheduler_address: str, config: RunConfig, host: str | None, name: str | None,
                         death_timeout: float, handle_signals: bool) -> None:
    from distributed import Nanny

    with dask.config.set(worker_dask_config()):
        if wants_gpu(config):
            from dask_cuda import CUDAWorker  # imported only where GPUs exist
            servers = [CUDAWorker(scheduler_address, host=host, nthreads=GPU_WORKER_THREADS, name=name,
                                  death_timeout=death_timeout)]
        else:
            n = config.workers or 1
            servers = [Nanny(scheduler_address, host=host, nthreads=CPU_WORKER_THREADS, memory_limit=0,
                             name=f"{name}-{i}" if name else None, death_timeout=death_timeout)
                       for i in range(n)]
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: [asyncio.ensure_future(s.close())
                                                      for s in servers])
        await asyncio.gather(*servers)
        await asyncio.gather(*(s.finished() for s in servers))
