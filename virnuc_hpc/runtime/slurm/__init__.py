"""Slurm through submitit: runs as jobs or job arrays, requeue and resume, job status.

- ``options``: what sbatch is asked for, checked, and the parameters submitit gets;
- ``script``: the job script ``submit --show-script`` prints (the one submitit writes);
- ``submission``: the executor, one job or a job array, recorded in the job folder's ``registry``;
- ``job``: what runs inside the job (the run, a multi-node rendezvous, requeue on signals);
- ``status``: each recorded job's state, bags and log, for ``virnuc-hpc status`` and ``--wait``.
"""

from virnuc_hpc.runtime.slurm.job import DEFAULT_DASHBOARD, PipelineJob, job_config, node_address
from virnuc_hpc.runtime.slurm.job import rendezvous_path, scheduler_file_content
from virnuc_hpc.runtime.slurm.options import (GPU_OPTIONS, OWN_SBATCH_OPTIONS, TEXT_OPTIONS, SlurmOptions,
                                              check_options, parse_slurm_opts, sbatch_parameters, time_minutes)
from virnuc_hpc.runtime.slurm.registry import JOB_ID, MAX_TASKS, REGISTRY, read_registry
from virnuc_hpc.runtime.slurm.script import job_script, render_script
from virnuc_hpc.runtime.slurm.status import FINAL_STATES, JobStatus, format_status, job_status, wait
from virnuc_hpc.runtime.slurm.submission import Submitted, build_executor, job_outdirs, output_dirs, submit

__all__ = ["DEFAULT_DASHBOARD", "FINAL_STATES", "GPU_OPTIONS", "JOB_ID", "MAX_TASKS", "OWN_SBATCH_OPTIONS",
           "REGISTRY", "TEXT_OPTIONS", "JobStatus", "PipelineJob", "SlurmOptions", "Submitted", "build_executor",
           "check_options", "format_status", "job_config", "job_outdirs", "job_script", "job_status",
           "node_address", "output_dirs", "parse_slurm_opts", "read_registry", "render_script",
           "rendezvous_path", "sbatch_parameters", "scheduler_file_content", "submit", "time_minutes", "wait"]
