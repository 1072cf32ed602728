"""The run's Dask workers as the client sees them: started once, their models loaded, int8 settled.

Why a module of its own: the workers start as early as possible (a fresh run starts them before it
plans, so the models load while the client reads) yet only when needed (a resume whose bags are all
kept starts none). ``Workers`` holds that state for the rest of the run and what run.json reports
of it (``worker.py`` is what runs on each worker).
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Executor, Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client

from virnuc_hpc.config import RunConfig
from virnuc_hpc.outputs import store
from virnuc_hpc.reads.bags import Bag
from virnuc_hpc.runtime.cluster import connect, dashboard_link
from virnuc_hpc.runtime.int8_check import Int8Decision, decide, read_decision, sample_proteins, write_decision
from virnuc_hpc.runtime.summary import Milestones
from virnuc_hpc.runtime.threads import ThreadPlan, busiest_node, plan_threads, warn_if_oversubscribed
from virnuc_hpc.runtime.worker import BagRules, EncoderPlugin, ModelSpec, check_int8, translate_bag, warm_up
from virnuc_hpc.timing import StageTimer

log = logging.getLogger("virnuc_hpc")


@dataclass
class Connection:
    """A connected cluster with the encoder plugin registered and every worker warming up."""
    client: Client
    warm_up: list[Any]            # futures: each worker's seconds to load and compile, per phase
    dashboard: str | None
    threads: ThreadPlan           # torch threads per worker, as told to every worker


@dataclass
class Workers:
    """The workers of one run: ``start`` connects at most once; ``ready`` waits for their models
    (before any bag: a bag that kills its worker must not take a warm-up pinned to that worker down
    with it) and settles int8 vs fp16. The cluster closes with ``stack``."""
    stack: ExitStack
    timer: StageTimer
    config: RunConfig
    given: Client | None          # the caller's client, or None for our own cluster
    spec: ModelSpec
    outdir: Path
    connection: Connection | None = None
    load_s: float | None = None   # longest load + compile of the models on a worker
    load_phases: dict[str, float] = field(default_factory=dict)  # of the slowest worker
    int8_decision: Int8Decision | None = None

    def start(self) -> Connection:
        if self.connection is None:
            self.connection = start_workers(self.stack, self.timer, self.config, self.given, self.spec)
        return self.connection

    @property
    def client(self) -> Client:
        return self.start().client

    @property
    def dashboard(self) -> str | None:
        return self.connection.dashboard if self.connection is not None else None

    def ready(self, first: Bag, rules: BagRules, hasher: Executor, clock: Milestones) -> BagRules:
        """Start (if not yet), wait for every worker's models and check int8 on them once; the
        rules for the bags, with int8's fallback where the check found it drifting."""
        if self.load_s is None:
            connection = self.start()
            sample = hasher.submit(int8_sample, first, rules) if checks_int8(self.config, self.outdir) else None
            with self.timer("model_load"):  # what is left of it once the client is ready
                loaded = connection.client.gather(connection.warm_up)
            clock.mark("models_ready")
            slowest = max(loaded, key=lambda p: sum(p.values()), default={})
            self.load_s, self.load_phases = sum(slowest.values()), slowest
            with self.timer("int8_check"):
                self.int8_decision = int8_decision(connection.client, self.config, self.outdir, sample)
        return dataclasses.replace(rules, int8_fallback=bool(self.int8_decision and self.int8_decision.fell_back))

    def threads(self) -> dict[str, Any] | None:
        """Torch threads per worker (None when every bag was kept from an earlier run: none ran)."""
        return self.connection.threads.as_dict() if self.connection is not None else None

    def int8_record(self) -> dict[str, Any] | None:
        return self.int8_decision.as_dict() if self.int8_decision is not None else kept_int8_decision(self.outdir)


def start_workers(stack: ExitStack, timer: StageTimer, config: RunConfig, client: Client | None,
                  spec: ModelSpec) -> Connection:
    """Connect (or start the local cluster), register the encoder plugin and have every current
    worker load and compile the models, in parallel and without waiting: model errors surface when
    the warm-ups are gathered, before any bag; workers that join later load with their first bag."""
    with timer("cluster_start"):
        dask_client = stack.enter_context(connect(config, client))
        dashboard = dashboard_link(dask_client)
        log.info("Dask scheduler: %s (more workers can join: virnuc-hpc worker "
                 "--scheduler-address ...)", dask_client.scheduler.address)
        if dashboard:
            log.info("Dask dashboard: %s", dashboard)
        found = dask_client.scheduler_info(n_workers=-1).get("workers", {})
        threads = plan_threads(config, busiest_node(str(w.get("host")) for w in found.values()))
        warn_if_oversubscribed(threads)
        log.debug("threads: %s", threads.as_dict())
        spec = dataclasses.replace(spec, threads=threads.per_worker)
        dask_client.register_plugin(EncoderPlugin(spec), name=EncoderPlugin.name)  # waits for setup()
        stack.callback(remove_plugin, dask_client)  # the caller's workers do not keep our models
        addresses = list(dask_client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = [dask_client.submit(warm_up, workers=[w], allow_other_workers=False, pure=False,
                                      key=f"virnuc-warm-up-{i}") for i, w in enumerate(addresses)]
        stack.callback(dask_client.cancel, futures)  # an input error while they load: stop them
    return Connection(dask_client, futures, dashboard, threads)


def remove_plugin(client: Client) -> None:
    """Take the encoders off the workers when the run ends: workers of a client the caller brought
    (or of a scheduler we joined) live on and would otherwise hold the models' memory."""
    try:
        client.unregister_worker_plugin(EncoderPlugin.name)
    except Exception as err:  # the scheduler may be gone already (a failed or interrupted run)
        log.debug("could not remove the encoder plugin: %s", err)


def checks_int8(config: RunConfig, outdir: Path) -> bool:
    """An int8 run with the check on, and no decision kept from an earlier attempt."""
    return (config.precision == "int8" and config.int8_check_cosine > 0
            and kept_int8_decision(outdir) is None)


def kept_int8_decision(outdir: Path) -> dict[str, Any] | None:
    """The int8 decision an earlier attempt of this run kept in OUTDIR, as run.json records it."""
    decision = read_decision(outdir / store.INT8_CHECK)
    return decision.as_dict() if decision is not None else None


def int8_sample(bag: Bag, rules: BagRules) -> list[str]:
    """The frames every worker embeds twice: the first bag's, spread over it."""
    return sample_proteins(translate_bag(bag, rules)[3].protein)


def int8_decision(client: Client, config: RunConfig, outdir: Path,
                  sample: Future[list[str]] | None) -> Int8Decision | None:
    """int8 or fp16 for the whole run: kept from an earlier attempt, else checked on every worker
    now (before any bag), logged once and kept in OUTDIR. None for a run that is not int8."""
    if config.precision != "int8":
        return None
    kept = read_decision(outdir / store.INT8_CHECK)
    if kept is not None:
        if kept.fell_back:
            log.warning("int8: an earlier attempt of this run found int8 drifting; it goes on in %s",
                        kept.precision)
        return kept
    if sample is None:  # the check is off (int8_check_cosine: 0)
        return None
    proteins = sample.result()
    addresses = list(client.scheduler_info(n_workers=-1).get("workers", {}))
    futures = [client.submit(check_int8, proteins, workers=[w], allow_other_workers=False,
                             pure=False, key=f"virnuc-int8-check-{i}") for i, w in enumerate(addresses)]
    checks = client.gather(futures)
    decision = decide(checks, config.int8_check_cosine)
    (log.warning if decision.fell_back else log.info)("%s", decision.message())
    write_decision(outdir / store.INT8_CHECK, decision)
    return decision
