"""The job script ``submit --show-script`` prints, rendered from the parameters submitit gets.

submitit writes a job's script only as it submits the job; its public API has no preview. So the
script is rendered here, the way submitit's Slurm executor writes it, from the same parameters
(``options.sbatch_parameters``) and the same interpreter: ``#SBATCH`` lines in name order, the
setup lines, then ``srun`` starting submitit's job runner. tests/test_slurm.py holds the preview
against the scripts submitit wrote for real submissions (``FOLDER/<job id>_submission.sh``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment

from virnuc_hpc.runtime.job_script import python_command
from virnuc_hpc.runtime.slurm.options import SlurmOptions, sbatch_parameters

#: Parameters of submitit's that shape the script but are no ``#SBATCH`` line of their own.
NOT_SBATCH = {"array_parallelism", "setup", "signal_delay_s", "additional_parameters"}


def sbatch_flag(key: str, value: Any) -> str:
    """One ``#SBATCH`` line: a bare flag for True, else ``--key=value`` with the value quoted."""
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def render_script(params: Mapping[str, Any], folder: str | Path, python: str, *, array_size: int = 0) -> str:
    """The batch script for ``params`` (``SlurmExecutor.update_parameters``' keywords), jobs in
    ``folder``, started by ``python``; ``array_size`` > 1: a job array of that many tasks."""
    folder = Path(folder).expanduser().absolute()  # as submitit's executor and JobPaths take it
    paths = JobPaths(folder)
    stdout, stderr = str(paths.stdout), str(paths.stderr)
    flags = {k: v for k, v in params.items() if v is not None and k not in NOT_SBATCH}
    flags["signal"] = f"{SlurmJobEnvironment.USR_SIG}@{params['signal_delay_s']}"
    if array_size > 1:  # array tasks write <array id>_<task index>_<rank> files
        flags["array"] = f"0-{array_size - 1}%{min(array_size, params['array_parallelism'])}"
        stdout, stderr = stdout.replace("%j", "%A_%a"), stderr.replace("%j", "%A_%a")
    flags.update({"output": stdout.replace("%t", "0"), "error": stderr.replace("%t", "0"), "open-mode": "append"})
    flags.update(params.get("additional_parameters") or {})
    srun = shlex.join(["srun", "--unbuffered", "--output", stdout, "--error", stderr])
    command = f"{srun} {python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    lines = ["#!/bin/bash", "", "# Parameters", *(sbatch_flag(k, flags[k]) for k in sorted(flags)),
             "", "# setup", *params.get("setup", []),
             "", "# command", "export SUBMITIT_EXECUTOR=slurm", command, ""]
    return "\n".join(lines)


def job_script(options: SlurmOptions, *, jobs: int = 1) -> str:
    """The batch script ``submit`` would queue for ``jobs`` jobs (more than one: a job array);
    nothing is written."""
    return render_script(sbatch_parameters(options), options.folder,
                         python_command(options.python, options.launcher), array_size=jobs)
