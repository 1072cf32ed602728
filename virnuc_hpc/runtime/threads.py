"""How many CPU threads a run uses: ``threads`` in all on a node, split among its workers.

The CPUs counted are those this process may run on (``os.sched_getaffinity``), not the machine's:
a Slurm job, a cgroup or ``taskset`` gets what it was given, where ``os.cpu_count()`` would count
every core of the node. Dask's Nanny starts workers with ``OMP_NUM_THREADS=1``, so torch in a worker
runs on one thread unless told otherwise: every worker is told (``EncoderPlugin.setup``).

Precedence: ``threads_per_worker`` given explicitly wins; else ``threads`` (default: the CPUs
counted) divided by the workers on the busiest node, at least 1 each. The client resolves this once,
when the workers are known, and every worker gets the same number (nodes are assumed alike).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from virnuc_hpc.config import RunConfig

log = logging.getLogger(__name__)

#: Thread pools of the client that read and hash files: worth a few threads, never more.
IO_THREADS_MAX = 4


def available_cpus() -> int:
    """CPUs this process may run on (follows Slurm's allocation, cgroups' cpusets and taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - a platform without affinity
        return max(1, os.cpu_count() or 1)


def per_worker(total: int, workers: int) -> int:
    """Torch threads of each of ``workers`` workers sharing ``total`` threads: at least 1."""
    return max(1, total // max(1, workers))


def io_threads(config: RunConfig, cpus: int | None = None) -> int:
    """Threads for the client's file hashing: up to IO_THREADS_MAX, within ``threads``."""
    limit = config.threads or (available_cpus() if cpus is None else cpus)
    return max(1, min(IO_THREADS_MAX, limit))


@dataclass(frozen=True)
class ThreadPlan:
    """What a run uses, as run.json records it."""

    total: int                 # threads the run may use on a node (``threads`` or the CPUs counted)
    per_worker: int            # torch threads of each worker
    workers_per_node: int      # workers on the busiest node when the run started
    available_cpus: int        # CPUs this process may run on
    source: str                # threads_per_worker | threads | available_cpus: where per_worker came from

    @property
    def oversubscribed(self) -> bool:
        return max(self.total, self.per_worker * self.workers_per_node) > self.available_cpus

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "oversubscribed": self.oversubscribed}


def plan_threads(config: RunConfig, workers_per_node: int, cpus: int | None = None) -> ThreadPlan:
    """The threads of a run whose busiest node has ``workers_per_node`` workers (see the module)."""
    cpus = available_cpus() if cpus is None else cpus
    total = config.threads or cpus
    if config.threads_per_worker:
        threads, source = config.threads_per_worker, "threads_per_worker"
    else:
        threads, source = per_worker(total, workers_per_node), "threads" if config.threads else "available_cpus"
    return ThreadPlan(total=total, per_worker=threads, workers_per_node=max(1, workers_per_node),
                      available_cpus=cpus, source=source)


def busiest_node(hosts: Iterable[str]) -> int:
    """The most workers on one host, from each worker's host (at least 1)."""
    counts = Counter(hosts)
    return max(counts.values(), default=1)


def warn_if_oversubscribed(plan: ThreadPlan) -> None:
    """One warning per run when it asks for more threads than this process has CPUs."""
    if plan.oversubscribed:
        used = max(plan.total, plan.per_worker * plan.workers_per_node)
        log.warning("warning: %d threads asked for (%d worker(s) x %d torch threads, threads: %d) but "
                    "only %d CPU(s) are available to this process; threads compete for cores "
                    "(lower --threads or --threads-per-worker)", used, plan.workers_per_node,
                    plan.per_worker, plan.total, plan.available_cpus)
