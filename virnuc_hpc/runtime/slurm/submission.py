"""Queue runs through submitit: one job for all inputs, or a job array of one task per input.

Every submitted job is recorded in the job folder's registry (registry.py), so that
``virnuc-hpc status FOLDER`` finds it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import submitit

from virnuc_hpc.config import RunConfig
from virnuc_hpc.runtime.job_script import python_command
from virnuc_hpc.runtime.slurm.job import PipelineJob
from virnuc_hpc.runtime.slurm.options import SlurmOptions, sbatch_parameters
from virnuc_hpc.runtime.slurm.registry import create_registry, record_jobs


@dataclass
class Submitted:
    job_id: str
    inputs: list[str]
    outdir: str
    log: str
    err: str


def build_executor(options: SlurmOptions) -> submitit.SlurmExecutor:
    """A SlurmExecutor for these options, its values checked (``check_options``) before the job
    folder and its registry are made. Jobs run ``--python`` (default: this very interpreter),
    behind ``--launcher`` where given."""
    params = sbatch_parameters(options)
    create_registry(options.folder)  # first: it makes the folder ours inside OUTDIR (store.py)
    executor = submitit.SlurmExecutor(folder=options.folder, max_num_timeout=options.max_requeues,
                                      python=python_command(options.python, options.launcher))
    executor.update_parameters(**params)
    return executor


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
    record_jobs(options.folder, map(asdict, submitted), tasks=options.nodes * options.tasks_per_node,
                command="predict" if classify else "embed")
    return submitted
