"""What ``sbatch`` is asked for: submit's options, checked, and the parameters submitit gets.

``sbatch_parameters`` is the one place that turns ``SlurmOptions`` into submitit's parameters: the
executor (submit.py) and the script preview (script.py) both take them from here, so the preview
shows what is submitted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnuc_hpc.errors import ConfigError
from virnuc_hpc.runtime.job_script import SBATCH_KEY, check_line, exported_environment, setup_lines


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
#: SlurmOptions fields that reach the job script as text, and the option of ``submit`` setting each.
TEXT_OPTIONS = {"partition": "--partition", "account": "--account", "qos": "--qos", "mem": "--mem",
                "time": "--time", "job_name": "--job-name", "gres": "--gres", "constraint": "--constraint",
                "mail_type": "--mail-type", "mail_user": "--mail-user", "wckey": "--wckey",
                "python": "--python", "launcher": "--launcher"}
#: sbatch options that ask for GPUs as --gpus-per-node does.
GPU_OPTIONS = ("gpus", "gpus-per-task", "gpus-per-socket")


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


def sbatch_parameters(options: SlurmOptions) -> dict[str, Any]:
    """The keyword arguments of ``SlurmExecutor.update_parameters`` for these options (checked first,
    ``check_options``)."""
    check_options(options)
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
    return params
