"""Getting a Dask client: bring your own, join a scheduler, or start a local (CUDA) cluster.

A thin layer over distributed: one worker per GPU through dask-cuda's LocalCUDACluster when GPUs are
visible, a plain LocalCluster of processes otherwise. Everything binds to 127.0.0.1 unless the user
passes other addresses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster

from virnuc_hpc.config import RunConfig
from virnuc_hpc.errors import SetupError

log = logging.getLogger(__name__)

# Task threads per worker. A GPU worker has two: one bag holds the device (worker.py's lock) while
# another bag's classification and NetCDF writing run. A CPU worker computes with torch threads.
GPU_WORKER_THREADS = 2
CPU_WORKER_THREADS = 1


# glibc malloc settings for our workers: trim at 128 MiB, mmap from 32 MiB (glibc's own ceiling for
# its dynamic mmap threshold). See worker_dask_config.
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(128 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def worker_dask_config() -> dict[str, object]:
    """Dask settings for the worker processes we start.

    Non-daemonic workers (so that a worker may start processes of its own). And malloc settings
    of our own: Dask's Nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap
    threshold at 128 KiB, so every megabyte-sized buffer of a bag becomes a fresh mmap with its page
    faults, which makes parsing and translating a bag markedly slower. Both thresholds are set
    explicitly, here and in the environment while our workers spawn (``worker_environ``): Dask
    lets a value already in the parent's environment win over its config, and every Nanny it
    starts writes its own value there.
    """
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
    return {"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": environ}


@contextmanager
def worker_environ() -> Iterator[None]:
    """WORKER_MALLOC in this process's environment while worker processes are spawned (glibc reads
    it when a process starts), restored afterwards."""
    saved = {k: os.environ.get(k) for k in WORKER_MALLOC}
    os.environ.update(WORKER_MALLOC)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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


def preflight(config: RunConfig, client: Client | None = None) -> None:
    """Refuse, before any process starts, a run whose workers could not start or load the models.

    Packages and devices only where this process starts the workers itself: the workers of a
    scheduler we join (or of the caller's client) run elsewhere, with their own. A scheduler to join
    must answer, within ``scheduler_timeout``.
    """
    if client is not None:
        return
    address = scheduler_address(config)
    if address:
        check_scheduler(address, config.scheduler_timeout)
    else:
        check_local_workers(config)
        check_dashboard(config.dashboard_address, config.scheduler_timeout)


def scheduler_address(config: RunConfig) -> str | None:
    """The scheduler to join: ``scheduler_address``, or the one named in ``scheduler_file``."""
    if config.scheduler_file:
        return read_scheduler_file(config.scheduler_file, config.scheduler_timeout)
    return config.scheduler_address


def read_scheduler_file(path: str | Path, timeout: float, poll_s: float = 0.2) -> str:
    """The address in a Dask scheduler file (the JSON ``dask scheduler --scheduler-file`` writes).

    Waits up to ``timeout`` seconds for the file to appear, as Dask's own workers do: in a batch
    job the scheduler may still be starting when the client or the workers look.
    """
    path = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            identity = json.loads(path.read_text())
            break
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise SetupError(f"no Dask scheduler file at {path} after {timeout:g} s: start the scheduler "
                                 "with `dask scheduler --scheduler-file PATH` (or raise scheduler_timeout)") from None
        except ValueError:  # being written (or not a scheduler file): look again until the deadline
            if time.monotonic() >= deadline:
                raise SetupError(f"{path} is not a Dask scheduler file (JSON with an 'address')") from None
        time.sleep(poll_s)
    address = identity.get("address") if isinstance(identity, dict) else None
    if not isinstance(address, str) or not address:
        raise SetupError(f"{path} is not a Dask scheduler file (JSON with an 'address')")
    return address


def check_local_workers(config: RunConfig) -> None:
    """The packages and devices that workers started on this machine need (a SetupError if not)."""
    if wants_gpu(config) and importlib.util.find_spec("dask_cuda") is None:
        asked = "device cuda" if config.device == "cuda" else f"{gpu_count()} visible GPU(s)"
        raise SetupError(f"{asked} needs the dask-cuda package (one Dask worker per GPU): "
                         "pip install 'virnuc-hpc[gpu]', or run on the CPU with --device cpu")
    if config.device == "cuda" and gpu_count() == 0:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else ""
        raise SetupError(f"device cuda was asked for, but no GPU is visible here{where}: run on a GPU "
                         "node, or use --device cpu (or auto)")
    if config.engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise SetupError("engine deepspeed needs the deepspeed package: pip install 'virnuc-hpc[deepspeed]', "
                         "or use --engine native (the same results)")


def check_dashboard(address: str, timeout: float) -> None:
    """A SetupError unless the dashboard's ``HOST:PORT`` names an address of this machine: Dask
    would fail to start the cluster with a traceback. A taken port is Dask's to handle (it serves
    the dashboard on another one and says so)."""
    failure = _bind_failure(address.rpartition(":")[0], timeout)
    if failure is not None:
        raise SetupError(f"cannot serve the Dask dashboard at {_one_line(address, 80)}: {failure}; give "
                         "[HOST]:PORT with a host of this machine, e.g. 127.0.0.1:8787 (this machine only) "
                         "or 0.0.0.0:8787 (every interface)")


def _bind_failure(host: str, timeout: float) -> str | None:
    """None if ``host`` (a name or address, IPv6 in brackets or not) can be listened on here, with a
    free port, its name looked up within ``timeout`` seconds; else why not."""
    host = host.strip("[]")
    shown = _one_line(repr(host), 80)
    try:
        infos = _bounded(lambda: socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE),
                         timeout)
    except TimeoutError:
        return f"looking up {shown} took longer than {timeout:g} s"
    except (OSError, UnicodeError) as err:
        return f"cannot look up {shown}: {err.strerror if isinstance(err, OSError) and err.strerror else err}"
    failure = f"{shown} has no address"
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.bind((sockaddr[0], 0, *sockaddr[2:]))
            return None
        except OSError as err:
            failure = f"{shown} is not an address of this machine ({err.strerror or err})"
    return failure


def _bounded(call: Any, timeout: float) -> Any:
    """``call()``'s result, or TimeoutError after ``timeout`` seconds; run in a daemon thread that is
    left behind at the deadline (a stuck name lookup cannot be cancelled, nor hold the exit)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # re-raised in the caller
            outcome["error"] = err

    thread = threading.Thread(target=target, name="virnuc-lookup", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while a cluster starts.

    The threads the cluster starts inherit the mask, and so do the worker processes they spawn
    (across fork and exec), for their whole life: a Ctrl-C in the terminal, which signals the whole
    process group, reaches only the client, which shuts the workers down (instead of every worker
    dying with a traceback of its own). A Ctrl-C while the cluster starts is handled once it is up.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    # multiprocessing starts its resource tracker with the first worker, and then *unblocks* SIGINT
    # in the starting thread (whatever its mask was before): start it now, before blocking.
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def local_cluster(config: RunConfig, host: str = "127.0.0.1") -> Iterator[LocalCluster]:
    """Start the cluster a stand-alone run needs; torn down on exit.

    ``host`` is where the scheduler and workers listen: 127.0.0.1 unless workers on other nodes
    must join (the multi-node Slurm job binds to the node's address). The dashboard listens where
    ``config.dashboard_address`` says (127.0.0.1 unless it names a host).
    """
    check_local_workers(config)
    check_dashboard(config.dashboard_address, config.scheduler_timeout)
    common = dict(host=host, dashboard_address=config.dashboard_address,
                  silence_logs=logging.CRITICAL)  # task errors reach the client
    cluster: LocalCluster | None = None
    try:
        # A bag that kills its worker twice is reported, not retried forever.
        with dask.config.set({"distributed.scheduler.allowed-failures": 1, **worker_dask_config()}), \
                worker_environ(), _sigint_blocked():
            if wants_gpu(config):
                from dask_cuda import LocalCUDACluster  # imported only where GPUs exist
                cluster = LocalCUDACluster(n_workers=config.workers, threads_per_worker=GPU_WORKER_THREADS,
                                           **common)
            else:
                cluster = LocalCluster(n_workers=config.workers or 1, threads_per_worker=CPU_WORKER_THREADS,
                                       processes=True, memory_limit=0, **common)
        yield cluster
    finally:
        if cluster is not None:
            _close(cluster)


def _close(cluster: LocalCluster) -> None:
    """Shut the cluster down. A worker process slow to exit (a loaded node) is no failure of the
    run, whose outputs are complete by now: Dask has already sent it the signal to stop."""
    try:
        cluster.close()
    except TimeoutError:
        log.warning("a Dask worker process did not exit in time at shutdown; it was told to stop")


def join_scheduler(address: str, timeout: float) -> Client:
    """A client of the scheduler at ``address``, or a SetupError within about ``timeout`` seconds.

    The scheduler is first reached with a bare connection: a Client whose connection fails is left
    half made, and its ``__del__`` prints a traceback when the interpreter exits.
    """
    check_scheduler(address, timeout)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:  # gone since the check
        failure = str(err)
    raise _unreachable(address, timeout, failure)


def check_scheduler(address: str, timeout: float) -> None:
    """A SetupError unless a Dask scheduler answers at ``address`` within ``timeout`` seconds."""
    failure = _probe_scheduler(address, timeout)
    if failure is not None:
        raise _unreachable(address, timeout, failure)


def _unreachable(address: str, timeout: float, failure: str) -> SetupError:
    return SetupError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({failure}); "
                      "check the address and that the scheduler is running (or raise scheduler_timeout)")


def _probe_scheduler(address: str, timeout: float) -> str | None:
    """None if a Dask scheduler answers at ``address`` within ``timeout`` seconds, else why not.

    A connection, Dask's handshake and an ``identity`` call, all under one deadline: Dask's own
    ``connect`` bounds only the connection, so a server that accepts and never speaks (or an HTTP
    server, a dashboard) would keep it waiting. The probe runs in a thread of its own (asyncio.run
    also where an event loop runs, as in Jupyter), left behind should a name lookup get stuck.
    """
    stage = ["nothing answered as a Dask scheduler"]  # connect() includes Dask's handshake

    async def identity() -> dict[str, Any]:
        from distributed.comm import connect as comm_connect
        from distributed.security import Security

        comm = await comm_connect(address, timeout=timeout, **Security().get_connection_args("client"))
        stage[0] = "a Dask server answered, but not its identity"
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> dict[str, Any]:
        # a little past connect()'s own deadline, so that its reason (refused, no route) is kept
        return await asyncio.wait_for(identity(), timeout + 0.5)

    try:
        reply = _bounded(lambda: asyncio.run(bounded()), timeout + 1.5)
    except TimeoutError:  # asyncio's too
        return stage[0]
    except MemoryError:  # a frame length read from a server that does not speak Dask
        return "a server that does not speak Dask's protocol answers there"
    except Exception as err:
        # connect()'s "Timed out trying to connect ..." says less than the last attempt's reason
        reason = str(err.__cause__ or "") or str(err) or type(err).__name__
        return _one_line(re.sub(r"^in <[^>]*>: ", "", reason))
    kind = reply.get("type") if isinstance(reply, dict) else None
    if not isinstance(kind, str) or "Scheduler" not in kind:
        what = f"a Dask {kind}" if isinstance(kind, str) else "a server that does not speak Dask's protocol"
        return _one_line(f"{what} answers there, not a Dask scheduler")
    return None


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: whatever a server says must not make a long message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


@contextmanager
def connect(config: RunConfig, client: Client | None = None) -> Iterator[Client]:
    """The caller's client, a client of the scheduler the configuration names (address or scheduler
    file), or a fresh local cluster's."""
    if client is not None:
        yield client
        return
    address = scheduler_address(config)
    if address:
        with join_scheduler(address, config.scheduler_timeout) as remote:
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
    if host is not None and (failure := _bind_failure(host, config.scheduler_timeout)) is not None:
        raise SetupError(f"the workers cannot listen at host {_one_line(host, 80)}: {failure}; give an "
                         "address of this machine (or none: this node's own)")
    check_scheduler(scheduler_address, config.scheduler_timeout)  # Dask's workers would retry for death_timeout
    check_local_workers(config)
    asyncio.run(_serve_workers(scheduler_address, config, host, name, death_timeout, handle_signals))


async def _serve_workers(scheduler_address: str, config: RunConfig, host: str | None, name: str | None,
                         death_timeout: float, handle_signals: bool) -> None:
    from distributed import Nanny

    os.environ.update(WORKER_MALLOC)  # this process only serves workers: see worker_dask_config
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
