"""Slurm through submitit: submit runs as jobs or job arrays, requeue and resume, job status.

One job runs ``pipeline.run`` on the GPUs Slurm granted (a LocalCUDACluster, or a LocalCluster on
CPU-only nodes, through ``cluster``). A job of several tasks (one per node) binds rank 0's
scheduler to the node's address, writes a Dask scheduler file ``FOLDER/<job>_scheduler.json`` (Dask's
own JSON, plus the attempt it belongs to) and every other rank joins it with ``cluster.serve_workers``;
so can any ``dask worker --scheduler-file`` or ``virnuc-hpc worker --scheduler-file``. The finished bags on disk are the checkpoint: on timeout or
preemption submitit calls ``PipelineJob.checkpoint()`` and requeues the job, which then resumes.

Submitted jobs are recorded in ``FOLDER/virnuc-jobs.jsonl`` so ``virnuc-hpc status FOLDER`` can list
them without Slurm accounting (``sacct`` is used when the site has it).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths

from virnuc_hpc.config import RunConfig
from virnuc_hpc.errors import ConfigError
from virnuc_hpc.runtime.job_script import SBATCH_KEY, check_line, exported_environment, python_command
from virnuc_hpc.runtime.job_script import setup_lines

log = logging.getLogger("virnuc_hpc")

REGISTRY = "virnuc-jobs.jsonl"  # also store.JOB_REGISTRY: predict tells a job folder in OUTDIR by it
DEFAULT_DASHBOARD = "127.0.0.1:8787"
#: Slurm states after which a job will not run again (a requeued job goes back to PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


# --- options and submission ------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmOptions:
    """What ``sbatch`` is asked for; None means "the site's default"."""

    folder: Path
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_gpu: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str = "60"
    array_parallelism: int = 64
    job_name: str = "virnuc-hpc"
    max_requeues: int = 3
    signal_delay_s: int = 120
    gres: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    mail_type: str | None = None
    mail_user: str | None = None
    wckey: str | None = None  # none unless asked (submitit would write its own)
    extra: dict[str, Any] = field(default_factory=dict)  # any other sbatch option (--slurm-opt)
    setup: tuple[str, ...] = ()  # the user's shell lines before the command (module load cuda)
    python: str | None = None  # the job's interpreter; None: the one running submit
    launcher: str | None = None  # a prefix for the command (apptainer exec --nv img.sif)


#: sbatch options that ``submit`` sets itself (its own options, or what requeue, resume and the job
#: logs rely on): refused in ``--slurm-opt``.
OWN_SBATCH_OPTIONS = {
    "job-name": "--job-name", "time": "--time", "nodes": "--nodes", "ntasks-per-node": "--tasks-per-node",
    "gpus-per-node": "--gpus-per-node", "cpus-per-task": "--cpus-per-task", "cpus-per-gpu": "--cpus-per-gpu",
    "partition": "--partition", "account": "--account", "qos": "--qos", "mem": "--mem", "gres": "--gres",
    "constraint": "--constraint", "exclusive": "--exclusive", "mail-type": "--mail-type",
    "mail-user": "--mail-user", "array": "(job arrays: several inputs)",
    "requeue": None, "chdir": None, "output": None, "error": None, "signal": None, "open-mode": None,
}


def parse_slurm_opts(values: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` (or a bare ``KEY`` for a flag) per item, as sbatch's long options without the
    dashes (``reservation=maint``, ``--comment=x``, ``requeue``): passed through to the job script."""
    options: dict[str, Any] = {}
    for item in values:
        check_line("--slurm-opt", item)
        key, sep, value = item.strip().lstrip("-").partition("=")
        key = key.strip().lower().replace("_", "-")
        if not SBATCH_KEY.fullmatch(key):
            raise ConfigError(f"--slurm-opt {item!r}: expected KEY=VALUE with an sbatch option name as KEY "
                              "(e.g. reservation=maint)")
        if key in OWN_SBATCH_OPTIONS:
            own = OWN_SBATCH_OPTIONS[key]
            raise ConfigError(f"--slurm-opt {key}: " + (f"use submit's own option {own}" if own else
                                                         "virnuc-hpc sets it (requeue, resume and job logs rely on it)"))
        if sep and not value:
            raise ConfigError(f"--slurm-opt {item!r}: no value after '='")
        options[key] = value if sep else True
    return options


def time_minutes(value: str | int) -> int:
    """Slurm time syntax (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole minutes."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ConfigError(f"cannot read time limit {value!r} (use minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        secs = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        secs = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        secs = a * 60 + b
    else:  # MM
        secs = a * 60
    return max(1, -(-secs // 60))


def job_script(executor: submitit.SlurmExecutor) -> str:
    """The batch script ``executor`` would submit (``submit --show-script``; submitit writes the same
    text, with the job's own command, when it submits)."""
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")


#: SlurmOptions fields that reach the job script as text, and the option of ``submit`` setting each.
TEXT_OPTIONS = {"partition": "--partition", "account": "--account", "qos": "--qos", "mem": "--mem",
                "time": "--time", "job_name": "--job-name", "gres": "--gres", "constraint": "--constraint",
                "mail_type": "--mail-type", "mail_user": "--mail-user", "wckey": "--wckey",
                "python": "--python", "launcher": "--launcher"}
#: sbatch options that ask for GPUs as --gpus-per-node does.
GPU_OPTIONS = ("gpus", "gpus-per-task", "gpus-per-socket")


def check_options(options: SlurmOptions) -> None:
    """Refuse (ConfigError naming the option) any value that could break out of its place in the
    job script (job_script.py), and GPUs asked for twice: ``--gres gpu:N`` beside ``--gpus-per-node``
    would be two requests for the same GPUs, which Slurm may add up or reject."""
    for name, flag in TEXT_OPTIONS.items():
        if getattr(options, name) is not None:
            check_line(flag, getattr(options, name))
    check_line("the working directory (the job's --chdir)", os.getcwd())
    check_line("--folder", options.folder)
    for key, value in options.extra.items():
        if not SBATCH_KEY.fullmatch(str(key)):
            raise ConfigError(f"--slurm-opt {key!r}: not an sbatch option name")
        check_line(f"--slurm-opt {key}", value)
    setup_lines(options.setup)
    exported_environment()
    if "wckey" in options.extra and options.wckey is not None:
        raise ConfigError("give the wckey once: --wckey or --slurm-opt wckey=..., not both")
    if options.gpus_per_node:
        if options.gres and re.search(r"(^|,)gpu(:|,|$)", options.gres):
            raise ConfigError(f"--gres {options.gres} and --gpus-per-node {options.gpus_per_node} both ask "
                              "for GPUs: give one of them")
        twice = [k for k in GPU_OPTIONS if k in options.extra]
        if twice:
            raise ConfigError(f"--slurm-opt {twice[0]} and --gpus-per-node both ask for GPUs: give one of them")


def build_executor(options: SlurmOptions, *, create: bool = True) -> submitit.SlurmExecutor:
    """A SlurmExecutor for these options, its values checked (``check_options``) before anything
    is written (``create``: make the job folder and its job registry; not for a preview). Jobs run
    ``--python`` (default: this very interpreter), behind ``--launcher`` where given."""
    check_options(options)
    if create:
        options.folder.mkdir(parents=True, exist_ok=True)
        (options.folder / REGISTRY).touch()  # first: it makes the folder ours inside OUTDIR (store.py)
    executor = submitit.SlurmExecutor(folder=options.folder, max_num_timeout=options.max_requeues,
                                      python=python_command(options.python, options.launcher))
    # Relative paths (inputs, models) mean the same in the job as here, and so do the outputs.
    extra: dict[str, Any] = {"requeue": True, "chdir": os.getcwd(), **options.extra}
    site = {"gres": options.gres, "constraint": options.constraint, "mail-type": options.mail_type,
            "mail-user": options.mail_user, "exclusive": options.exclusive or None}
    extra.update({k: v for k, v in site.items() if v is not None})
    if options.mem:  # Slurm syntax as given (64G, 0 = whole node); submitit would want float GB
        extra["mem"] = options.mem
    if options.cpus_per_gpu:  # valid with --gpus-per-node; submitit only knows it with gpus_per_task
        extra["cpus-per-gpu"] = options.cpus_per_gpu
    params: dict[str, Any] = {
        "job_name": options.job_name, "time": time_minutes(options.time), "nodes": options.nodes,
        "ntasks_per_node": options.tasks_per_node, "array_parallelism": options.array_parallelism,
        "signal_delay_s": options.signal_delay_s, "additional_parameters": extra,
        # jobs see the same model cache, offline flag etc. even where sbatch does not export them;
        # the user's own lines (module load, source env.sh) come last, just before the command
        "setup": [*exported_environment(), "export PYTHONUNBUFFERED=1", *setup_lines(options.setup)],
        # submitit writes its own default wckey (submitit): only the user's, where asked for
        "wckey": options.wckey if options.wckey is not None else extra.pop("wckey", None),
    }
    for key in ("partition", "account", "qos", "cpus_per_task"):
        if getattr(options, key) is not None:
            params[key] = getattr(options, key)
    if options.gpus_per_node:
        params["gpus_per_node"] = options.gpus_per_node
    executor.update_parameters(**params)
    return executor


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


def output_dirs(inputs: Sequence[str | Path], outdir: str | Path) -> list[Path]:
    """One OUTDIR per input for job arrays: OUTDIR/<sample name of the input>."""
    from virnuc_hpc.reads.samples import sample_name

    names: list[str] = []
    for path in inputs:
        name = sample_name(str(path)) or "input"
        names.append(name if name not in names else f"{name}-{len(names)}")
    return [Path(outdir) / n for n in names]


def job_outdirs(inputs: Sequence[str | Path], outdir: str | Path, *, per_input: bool | None = None,
                samplesheet: str | None = None) -> list[Path]:
    """The OUTDIR of each job ``submit`` would queue: one, or one per input for a job array."""
    outdir = Path(outdir).resolve()
    if samplesheet is None and (len(inputs) > 1 if per_input is None else per_input):
        return output_dirs(inputs, outdir)
    return [outdir]


@dataclass
class Submitted:
    job_id: str
    inputs: list[str]
    outdir: str
    log: str
    err: str


def submit(inputs: Sequence[str | Path], outdir: str | Path, config: RunConfig, options: SlurmOptions,
           *, classify: bool = True, per_input: bool | None = None,
           interface: str | None = None, samplesheet: str | None = None) -> list[Submitted]:
    """Submit one job for all inputs (or a samplesheet), or (several inputs, ``per_input``) a job
    array, one task and one OUTDIR/<name> per input. Returns what was submitted; also recorded in
    the job folder."""
    paths = [str(p) for p in inputs]  # as typed: the job runs in this directory (--chdir)
    outdir = Path(outdir).resolve()
    per_input = len(paths) > 1 if per_input is None else per_input
    if samplesheet is not None:
        jobs = [PipelineJob([], str(outdir), config, classify, interface=interface, samplesheet=samplesheet)]
    elif per_input:
        jobs = [PipelineJob([p], str(o), config, classify, interface=interface)
                for p, o in zip(paths, output_dirs(paths, outdir))]
    else:
        jobs = [PipelineJob(paths, str(outdir), config, classify, interface=interface)]
    executor = build_executor(options)
    if len(jobs) == 1:
        handles = [executor.submit(jobs[0])]
    else:
        handles = executor.submit_array(jobs)
    submitted = [Submitted(job_id=h.job_id, inputs=j.inputs, outdir=j.outdir,
                           log=str(h.paths.stdout), err=str(h.paths.stderr))
                 for h, j in zip(handles, jobs)]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with open(options.folder / REGISTRY, "a") as registry:
        for s in submitted:
            registry.write(json.dumps({**asdict(s), "submitted": now, "tasks":
                                       options.nodes * options.tasks_per_node,
                                       "command": "predict" if classify else "embed"}) + "\n")
    return submitted


# --- inside a job: cluster rendezvous, dashboard, signals ---------------------------------------

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


# --- status ------------------------------------------------------------------------------------

@dataclass
class JobStatus:
    job_id: str
    state: str
    outdir: str
    log: str
    err: str
    bags_done: int
    node: str = ""
    reason: str = ""
    dashboard: str = ""
    tunnel: str = ""
    bags_total: int | None = None  # None: not known yet (the input is cut while the job reads it)
    total_exact: bool = False
    eta_s: float | None = None

    def bags(self) -> str:
        """done/total, done/~total while the total is an estimate, done/? before any estimate."""
        total = "?" if self.bags_total is None else f"{'' if self.total_exact else '~'}{self.bags_total}"
        return f"{self.bags_done}/{total}"


JOB_ID = re.compile(r"\d{1,20}(_\d{1,10})?")  # a Slurm job id, or an array task's (123_4)
MAX_TASKS = 100_000


def read_registry(folder: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Jobs submitted into FOLDER (newest record of a job id wins). A line that is no job record
    (garbage, or no job id, output or log path) is skipped, and ``problems``, when given, gets a
    line for it: ``FILE:LINE: what is wrong; skipped``."""
    from virnuc_hpc.outputs.records import read_json_lines

    records: dict[str, dict[str, Any]] = {}
    for number, rec, problem in read_json_lines(folder / REGISTRY):
        why = problem or _registry_problem(rec or {})
        if why is None and rec is not None:
            records[rec["job_id"]] = {**rec, "tasks": rec.get("tasks", 1)}
        elif problems is not None:
            problems.append(f"{why}; skipped" if problem else f"{folder / REGISTRY}:{number}: {why}; skipped")
    return list(records.values())


def _registry_problem(rec: dict[str, Any]) -> str | None:
    """What keeps a registry record from being a job of ours, or None."""
    from virnuc_hpc.errors import shorten
    from virnuc_hpc.outputs.records import int_field, text_field

    job_id = rec.get("job_id")
    if job_id is None:
        return "a record without job_id"
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        shown = job_id if isinstance(job_id, str) else json.dumps(job_id)[:100]
        return f"job_id {shorten(shown, 40)} is not a Slurm job id"
    for key in ("outdir", "log", "err"):
        if text_field(rec, key) is None:
            return f"job {job_id}: " + (f"no {key}" if key not in rec else f"{key} is not a path")
    tasks = int_field(rec, "tasks") if "tasks" in rec else 1
    if tasks is None or not 1 <= tasks <= MAX_TASKS:
        return f"job {job_id}: tasks {shorten(json.dumps(rec['tasks'])[:100], 40)} is not a task count"
    return None


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _queue_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """job id -> (state, node, reason) from squeue (jobs Slurm still remembers), else sacct."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}
    states: dict[str, tuple[str, str, str]] = {}
    out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%r", "-j", ",".join(mains)])
    for line in (out or "").splitlines():
        jid, state, node, reason = (line.split("|") + ["", "", ""])[:4]
        states[jid.strip()] = (state.strip(), node.strip(), reason.strip())
    missing = [j for j in job_ids if j not in states]
    if missing:
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j",
                    ",".join(sorted({j.split("_")[0] for j in missing}))])
        for line in (out or "").splitlines():
            jid, state, node = (line.split("|") + ["", ""])[:3]
            states.setdefault(jid.strip(), (state.split()[0] if state else "", node, ""))
    return states


def _result_state(folder: Path, job_id: str, tasks: int) -> str | None:
    """COMPLETED/FAILED from submitit's result files, when Slurm no longer knows the job."""
    outcomes = []
    for task in range(max(1, tasks)):
        pickle_path = JobPaths(folder, job_id=job_id, task_id=task).result_pickle
        if not pickle_path.exists():
            return None if not outcomes else "FAILED"
        try:
            outcome, _ = submitit.core.utils.pickle_load(pickle_path)
        except Exception:
            outcome = "error"
        outcomes.append(outcome)
    return "COMPLETED" if all(o == "success" for o in outcomes) else "FAILED"


def job_status(folder: str | Path, problems: list[str] | None = None) -> list[JobStatus]:
    """State, output and log files of every job submitted into FOLDER (``problems``: where the
    records read back are damaged, see ``read_registry``)."""
    from virnuc_hpc.outputs.layout import bag_files

    folder = Path(folder).resolve()
    records = read_registry(folder, problems)
    queue = _queue_states([r["job_id"] for r in records])
    result: list[JobStatus] = []
    for rec in records:
        jid = rec["job_id"]
        state, node, reason = queue.get(jid, ("", "", ""))
        finished = _result_state(folder, jid, int(rec.get("tasks", 1)))
        if not state or state in FINAL_STATES:
            # submitit's result file knows whether the Python side failed (exit 0 or not)
            state = finished or state or "UNKNOWN"
            if state == "UNKNOWN" and (Path(rec["outdir"]) / "run.json").exists():
                state = "COMPLETED"
        status = JobStatus(job_id=jid, state=state, outdir=rec["outdir"], log=rec["log"], err=rec["err"],
                           bags_done=len(bag_files(rec["outdir"])), node=node, reason=reason)
        _add_progress(status, folder, problems)
        result.append(status)
    return result


def _add_progress(status: JobStatus, folder: Path, problems: list[str] | None = None) -> None:
    """Bags done/total and ETA: a finished run's run.json, else what the running job last wrote to
    its progress file; a multi-node job's dashboard from its scheduler file."""
    from virnuc_hpc.outputs.layout import PROGRESS, RUN_JSON
    from virnuc_hpc.outputs.records import int_field, read_json_object, text_field
    from virnuc_hpc.runtime.progress import read_progress

    outdir = Path(status.outdir)
    run, problem = read_json_object(outdir / RUN_JSON)
    bags = run.get("bags") if run is not None else None
    total = int_field(bags, "total") if isinstance(bags, dict) else None
    if total is not None:
        status.bags_done = status.bags_total = total
        status.total_exact = True
        return
    if problems is not None and (problem or run is not None):
        problems.append(problem or f"{outdir / RUN_JSON}: no bags total; left out")
    if status.state != "RUNNING":
        return
    snap = read_progress(outdir / PROGRESS, problems)
    if snap is not None:
        status.bags_done = snap["bags_done"]
        status.bags_total, status.total_exact = snap["bags_total"], snap["total_exact"]
        status.eta_s = snap["eta_s"]
    info, _ = read_json_object(folder / f"{status.job_id}_scheduler.json")
    if info is not None:
        status.dashboard, status.tunnel = text_field(info, "dashboard") or "", text_field(info, "tunnel") or ""


def wait(folder: str | Path, job_ids: Sequence[str], timeout_s: float | None = None,
         poll_s: float = 2.0) -> list[JobStatus]:
    """Block until the given jobs are in a final state (COMPLETED, FAILED, ...)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wanted = set(job_ids)
    while True:
        states = [s for s in job_status(folder) if s.job_id in wanted]
        if states and all(s.state in FINAL_STATES for s in states):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("jobs not finished: " + ", ".join(
                f"{s.job_id} {s.state}" for s in states if s.state not in FINAL_STATES))
        time.sleep(poll_s)


def format_status(states: Sequence[JobStatus]) -> str:
    if not states:
        return "no jobs recorded in this folder"
    from virnuc_hpc.runtime.progress import duration

    rows = [("JOB", "STATE", "BAGS", "ETA", "OUTDIR", "LOG")]
    rows += [(s.job_id, s.state + (f" ({s.reason})" if s.state == "PENDING" and s.reason else ""),
              s.bags(), duration(s.eta_s) if s.eta_s is not None else "-", s.outdir, s.log) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    for s in states:
        if s.state == "FAILED":
            lines.append(f"{s.job_id}: see {s.err}")
        if s.dashboard:
            lines.append(f"{s.job_id}: dashboard {s.dashboard} on {s.node}; tunnel: {s.tunnel}")
    return "\n".join(lines)
