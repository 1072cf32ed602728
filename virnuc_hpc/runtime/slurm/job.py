"""What runs inside a Slurm job: the run itself, a multi-node job's rendezvous, requeue on signals.

One job runs ``pipeline.run`` on the GPUs Slurm granted (a LocalCUDACluster, or a LocalCluster on
CPU-only nodes, through ``cluster``). A job of several tasks (one per node) binds rank 0's
scheduler to the node's address, writes a Dask scheduler file ``FOLDER/<job>_scheduler.json`` (Dask's
own JSON, plus the attempt it belongs to) and every other rank joins it with ``cluster.serve_workers``;
so can any ``dask worker --scheduler-file`` or ``virnuc-hpc worker --scheduler-file``. The finished
bags on disk are the checkpoint: on timeout or preemption submitit calls ``PipelineJob.checkpoint()``
and requeues the job, which then resumes.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from virnuc_hpc.config import RunConfig

DEFAULT_DASHBOARD = "127.0.0.1:8787"


@dataclass
class PipelineJob:
    """One job (or array task): ``predict``/``embed`` of some inputs into one OUTDIR.

    Picklable; submitit calls it in every task of the job. ``checkpoint`` returns the job itself:
    the finished bags in OUTDIR are the state, so a requeued job simply resumes.
    """

    inputs: list[str]
    outdir: str
    config: RunConfig
    classify: bool = True
    join_timeout_s: float = 300.0
    interface: str | None = None
    samplesheet: str | None = None  # instead of inputs

    def __call__(self) -> dict[str, Any]:
        _log_to_stderr()
        env = submitit.JobEnvironment()
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        _say(f"job {env.job_id} attempt {attempt + 1}, task {env.global_rank} of {env.num_tasks} "
             f"on {env.hostname}; GPUs granted: {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'}; "
             f"output {self.outdir}")
        if env.num_tasks > 1 and env.global_rank > 0:
            return self._join(env, attempt)
        return self._lead(env, attempt)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption; the requeued job resumes from the bags."""
        _say("checkpoint: requeueing; finished bags are kept and will be reused")
        return submitit.helpers.DelayedSubmission(self)

    # rank 0: scheduler, client and this node's workers
    def _lead(self, env: submitit.JobEnvironment, attempt: int) -> dict[str, Any]:
        from distributed import Client

        from virnuc_hpc.runtime import pipeline

        from virnuc_hpc.outputs import store
        from virnuc_hpc.runtime.cluster import connect, local_cluster

        config = job_config(self.config)
        multi = env.num_tasks > 1
        stopping = _TermWatch()
        try:
            with ExitStack() as stack:
                with _children_ignore_signals():  # see there: workers outlive SIGTERM/USR2
                    if config.scheduler_address or config.scheduler_file:  # the user's own scheduler
                        client = stack.enter_context(connect(config))
                    else:
                        host = node_address(self.interface, config.host) if multi else "127.0.0.1"
                        cluster = stack.enter_context(local_cluster(config, host=host))
                        client = stack.enter_context(Client(cluster, set_as_default=False))
                info = _announce(client, config, env, attempt)
                if multi:
                    store.write_json(rendezvous_path(env), scheduler_file_content(client, info))
                    _wait_for_ranks(client, env.num_tasks, self.join_timeout_s)
                result = pipeline.run(self.inputs, self.outdir, client=client, config=config,
                                      classify=self.classify, samplesheet=self.samplesheet)
                names = {a: str(w.get("name")) for a, w in
                         client.scheduler_info(n_workers=-1)["workers"].items()}
        except Exception:
            if stopping.fired:
                stopping.wait_for_kill()
            raise
        _say(f"finished: {result.counts.get('reads', 0)} reads, {result.counts.get('bags', 0)} bags "
             f"in {result.outdir}")
        return {"outdir": str(result.outdir), "counts": result.counts, "seconds": result.seconds,
                "dashboard": info["dashboard"], "worker_names": names, "attempt": attempt + 1}

    # ranks > 0: workers joining rank 0's scheduler until it closes
    def _join(self, env: submitit.JobEnvironment, attempt: int) -> dict[str, Any]:
        from virnuc_hpc.runtime.cluster import serve_workers

        info = _wait_for_rendezvous(rendezvous_path(env), attempt, self.join_timeout_s)
        _say(f"joining scheduler {info['address']}")
        # SIGTERM/USR2 are rank 0's business; these workers keep going until Slurm kills the step.
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        serve_workers(info["address"], job_config(self.config), host=node_address(self.interface, self.config.host),
                      name=f"rank{env.global_rank}", handle_signals=False)
        _say("scheduler closed; worker task done")
        return {"rank": env.global_rank, "joined": info["address"], "attempt": attempt + 1}


def job_config(config: RunConfig) -> RunConfig:
    """The configuration inside a job: no progress bar in log files, and a free dashboard port
    (several jobs may share a node) unless the user chose one."""
    update: dict[str, Any] = {"progress": False}
    if config.dashboard_address == DEFAULT_DASHBOARD:
        update["dashboard_address"] = "127.0.0.1:0"
    return config.model_copy(update=update)


def node_address(interface: str | None = None, host: str | None = None) -> str:
    """Address other nodes can reach this one at: ``host`` (RunConfig.host) where given, else
    this node's address on ``interface`` (or its default one)."""
    if host:
        return host
    from distributed.utils import get_ip, get_ip_interface
    return get_ip_interface(interface) if interface else get_ip()


def rendezvous_path(env: submitit.JobEnvironment) -> Path:
    """The job's Dask scheduler file, where the other ranks (and any other worker) find rank 0."""
    return Path(env.paths.folder) / f"{env.job_id}_scheduler.json"


def scheduler_file_content(client: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Dask's scheduler file (the scheduler's identity, as ``dask scheduler --scheduler-file`` writes
    it) with our keys added: ``attempt`` keeps a requeued job's ranks off the previous attempt's
    scheduler; the dashboard link and tunnel are for people reading it."""
    identity = {k: v for k, v in client.scheduler_info(n_workers=0).items() if k != "workers"}
    return {**identity, **info, "address": client.scheduler.address}


def _announce(client: Any, config: RunConfig, env: submitit.JobEnvironment,
              attempt: int) -> dict[str, Any]:
    """Write the dashboard address and an SSH tunnel line to the job log."""
    from virnuc_hpc.runtime.cluster import dashboard_link

    node = os.environ.get("SLURMD_NODENAME") or env.hostname
    login = os.environ.get("SLURM_SUBMIT_HOST", "LOGIN_NODE")
    user = getpass.getuser()
    # Dask's link names the scheduler's host; the dashboard listens where the config says.
    port = re.search(r":(\d+)/", (dashboard_link(client) or "").split("//", 1)[-1])
    link = tunnel = None
    if port:
        bind = config.dashboard_address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        target = "127.0.0.1" if bind in ("localhost", "0.0.0.0", "::") else bind
        link = f"http://{target}:{port.group(1)}/status"
        tunnel = f"ssh -N -L 8787:{target}:{port.group(1)} -J {user}@{login} {user}@{node}"
        _say(f"Dask dashboard on {node}: {link}")
        _say(f"dashboard tunnel, run on your machine and open http://localhost:8787/status: {tunnel}")
    return {"address": client.scheduler.address, "dashboard": link, "tunnel": tunnel, "node": node,
            "attempt": attempt, "job_id": env.job_id}


def _wait_for_ranks(client: Any, num_tasks: int, timeout_s: float) -> None:
    """Wait until every other task has a worker connected (so all nodes share the work)."""
    wanted = {f"rank{r}" for r in range(1, num_tasks)}
    deadline = time.monotonic() + timeout_s
    while True:
        names = {str(w.get("name")) for w in client.scheduler_info(n_workers=-1)["workers"].values()}
        missing = {r for r in wanted if not any(n.startswith(f"{r}-") or n == r for n in names)}
        if not missing:
            _say(f"all {num_tasks} tasks joined ({len(names)} workers)")
            return
        if time.monotonic() > deadline:
            _say(f"tasks {sorted(missing)} did not join within {timeout_s:.0f} s; going on without them")
            return
        time.sleep(0.5)


def _wait_for_rendezvous(path: Path, attempt: int, timeout_s: float) -> dict[str, Any]:
    """Rank 0's scheduler address for this attempt (a requeued job must not join a stale one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            info = json.loads(path.read_text())
            if info.get("attempt") == attempt:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no scheduler address in {path} after {timeout_s:.0f} s")


@contextmanager
def _children_ignore_signals() -> Iterator[None]:
    """Worker processes started in here ignore SIGTERM and SIGUSR2 (inherited across exec).

    Slurm signals every process of the job step: USR2 ahead of the time limit (submitit's
    checkpoint, handled by rank 0 alone) and SIGTERM on requeue/preemption/cancel. Dying workers
    would only make the Nanny restart them and fail bags; they stop with SIGKILL after the grace time.
    """
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class _TermWatch:
    """Notes SIGTERM (then passes it on to submitit's handler) so that errors caused by the
    stopping job are not reported as the run's failure: Slurm is about to kill or requeue it."""

    def __init__(self) -> None:
        self.fired = False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.fired = True
        if callable(self._previous):
            self._previous(signum, frame)

    def wait_for_kill(self, limit_s: float = 900) -> None:
        _say("stopping (SIGTERM: requeue, preemption or cancel); finished bags are kept")
        time.sleep(limit_s)


def _say(message: str) -> None:
    print(f"virnuc-hpc: {message}", flush=True)


def _log_to_stderr() -> None:
    ours = logging.getLogger("virnuc_hpc")
    if not ours.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
