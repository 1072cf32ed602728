"""``virnuc-hpc submit`` against the real one-node Slurm: hostile values never reach a job script,
jobs are checked before they are queued, and the default job folder (OUTDIR/slurm) works.

Hostile values carry a shell command that would create a canary file if it ever ran in a job; each
is refused with exit 2 before anything is written (no job folder, hence no script, hence nothing
queued).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, cli, finished_outputs
from virnuc_hpc.errors import ConfigError, UserError
from virnuc_hpc.outputs import lock, store
from virnuc_hpc.runtime import job_checks, job_script, slurm

slurm_marked = pytest.mark.slurm
JOB_TIMEOUT_S = 420


def _canary(tmp: Path) -> tuple[Path, str]:
    canary = tmp / "CANARY"
    return canary, f"x\ntouch {canary} #"


# (submit options, predict options, the name the message gives): {hostile} is the injected value
HOSTILE = {
    "partition": (["--partition", "{hostile}"], [], "--partition"),
    "account": (["--account", "{hostile}"], [], "--account"),
    "qos": (["--qos", "{hostile}"], [], "--qos"),
    "job-name": (["--job-name", "{hostile}"], [], "--job-name"),
    "mail-user": (["--mail-user", "{hostile}"], [], "--mail-user"),
    "mail-type": (["--mail-type", "{hostile}"], [], "--mail-type"),
    "constraint": (["--constraint", "{hostile}"], [], "--constraint"),
    "mem": (["--mem", "{hostile}"], [], "--mem"),
    "gres": (["--gres", "{hostile}"], [], "--gres"),
    "time": (["--time", "{hostile}"], [], "--time"),
    "wckey": (["--wckey", "{hostile}"], [], "--wckey"),
    "slurm-opt value": (["--slurm-opt", "comment={hostile}"], [], "--slurm-opt"),
    "slurm-opt key": (["--slurm-opt", "{hostile}=1"], [], "--slurm-opt"),
    "setup": (["--setup", "echo ok{hostile}"], [], "--setup"),
    "python": (["--python", "{hostile}"], [], "--python"),
    "launcher": (["--launcher", "env{hostile}"], [], "--launcher"),
    "folder": (["--folder", "{tmp}/jobs{hostile}"], [], "--folder"),
    "outdir": ([], ["-o", "{tmp}/out{hostile}"], "-o"),
    "classifier": ([], ["--classifier", "{hostile}"], "--classifier"),
}


@slurm_marked
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_value_is_refused_before_anything_is_written(slurm_up: None, tmp_path: Path, case: str):
    canary, hostile = _canary(tmp_path)
    sbatch, run, named = HOSTILE[case]
    fill = [a.format(hostile=hostile, tmp=tmp_path) for a in (*sbatch, "--", str(DEMO_FASTA),
                                                               "-o", str(tmp_path / "out"), *DEMO, *run)]
    if "--folder" not in sbatch:
        fill[:0] = ["--folder", str(tmp_path / "jobs")]
    proc = cli("submit", *fill, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"virnuc-hpc: error: {named} "), proc.stderr
    assert proc.stderr.count("virnuc-hpc: error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == [] and not canary.exists()  # no folder, no script, no job


@slurm_marked
def test_hostile_working_directory_is_refused(slurm_up: None, tmp_path: Path):
    canary = tmp_path / "CANARY"
    workdir = tmp_path / "wdx\ncd ..; touch CANARY #"  # a job runs where sbatch ran: in workdir
    workdir.mkdir()
    proc = cli("submit", "--", str(DEMO_FASTA), "-o", "out", *DEMO, cwd=workdir)
    assert proc.returncode == 2 and "the working directory" in proc.stderr and "newline" in proc.stderr, proc.stderr
    assert list(workdir.iterdir()) == [] and not canary.exists()


@slurm_marked
@pytest.mark.parametrize("name, value, message", [
    ("VIRNUC_HPC_X;touch {canary};Y", "1", "environment variable 'VIRNUC_HPC_X;touch {canary};Y' is not a shell "
                                           "variable name"),
    ("VIRNUC_HPC_NOTE", "x\ntouch {canary} #", "environment variable VIRNUC_HPC_NOTE 'x\\ntouch {canary} #' holds "
                                               "a newline"),
])
def test_hostile_environment_variable_is_refused(slurm_up: None, tmp_path: Path, name: str, value: str,
                                                 message: str):
    canary = tmp_path / "CANARY"
    name, value, message = (s.format(canary=canary) for s in (name, value, message))
    proc = cli("submit", "--", str(DEMO_FASTA), "-o", "out", *DEMO, cwd=tmp_path, env_extra={name: value})
    assert proc.returncode == 2 and proc.stderr.startswith(f"virnuc-hpc: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == [] and not canary.exists()


def test_exported_environment_is_quoted():
    lines = job_script.exported_environment({"VIRNUC_HPC_CACHE": "/a b/$(touch x)'", "HOME": "/root"})
    assert lines == ["export VIRNUC_HPC_CACHE='/a b/$(touch x)'\"'\"''"]
    out = subprocess.run(["bash", "-c", lines[0] + '; printf %s "$VIRNUC_HPC_CACHE"'], capture_output=True,
                         text=True).stdout
    assert out == "/a b/$(touch x)'"


def test_gpus_asked_for_once():
    folder = Path("/tmp/unused")
    with pytest.raises(ConfigError, match="both ask for GPUs"):
        slurm.check_options(slurm.SlurmOptions(folder=folder, gpus_per_node=2, gres="gpu:a100:2"))
    with pytest.raises(ConfigError, match="both ask for GPUs"):
        slurm.check_options(slurm.SlurmOptions(folder=folder, gpus_per_node=1, extra={"gpus": "1"}))
    slurm.check_options(slurm.SlurmOptions(folder=folder, gpus_per_node=2, gres="nvme:1"))  # not GPUs


@slurm_marked
def test_show_script_setup_launcher_python_and_no_wckey(slurm_up: None, demo_cache: Path, tmp_path: Path):
    proc = cli("submit", "--show-script", "--setup", "module load cuda", "--setup", "source env.sh",
               "--launcher", "apptainer exec --nv --bind '/data dir' img.sif", "--python", "/opt/venv/bin/python",
               "--", str(DEMO_FASTA), "-o", str(tmp_path / "out"), *DEMO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    (command,) = [i for i, line in enumerate(lines) if line.startswith("srun ")]
    assert lines.index("module load cuda") < lines.index("source env.sh") < command, proc.stdout
    assert lines[command].endswith("apptainer exec --nv --bind '/data dir' img.sif /opt/venv/bin/python "
                                   f"-u -m submitit.core._submit {tmp_path / 'out' / 'slurm'}"), lines[command]
    assert "wckey" not in proc.stdout and not (tmp_path / "out").exists()
    proc = cli("submit", "--show-script", "--wckey", "mylab", "--", str(DEMO_FASTA), "-o", str(tmp_path / "o"), *DEMO)
    assert proc.returncode == 0 and "#SBATCH --wckey=mylab" in proc.stdout.splitlines(), proc.stderr


@slurm_marked
@pytest.mark.parametrize("show_script", [True, False])
def test_missing_classifier_is_refused_before_queueing(slurm_up: None, demo_cache: Path, tmp_path: Path,
                                                      show_script: bool):
    proc = cli("submit", *(["--show-script"] if show_script else []), "--", str(DEMO_FASTA), "-o", "out",
               *DEMO, "--classifier", "missing.pth", cwd=tmp_path)
    assert proc.returncode == 2 and "missing.pth" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def _check(tmp: Path, config_overrides: dict, inputs: list[str] | None = None, outdir: Path | None = None,
           **kwargs) -> None:
    from virnuc_hpc.config import load_config
    config = load_config(preset="demo", overrides=config_overrides)
    outdir = outdir or tmp / "out"
    job_checks.check_job(inputs or [str(DEMO_FASTA)], None, [outdir], outdir / "slurm", config,
                         classify=True, **kwargs)


def test_job_checks_refuse_what_would_fail_in_the_job(demo_cache: Path, tmp_path: Path):
    from virnuc_hpc.models.demo import ensure_demo_models

    _check(tmp_path, {})  # the demo as it is: fine, and nothing written
    assert list(tmp_path.iterdir()) == []
    five = tmp_path / "500_model.pth"  # the demo preset cuts 300-bp chunks
    shutil.copy(ensure_demo_models().classifier, five)
    with pytest.raises(ConfigError, match="500_model.pth looks trained for chunk size 500"):
        _check(tmp_path, {"classifier": str(five)})
    _check(tmp_path, {"classifier": str(five), "expected_length": 500})
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a classifier")
    with pytest.raises(UserError, match="broken.pth"):
        _check(tmp_path, {"classifier": str(broken)})
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(UserError, match="empty file"):
        _check(tmp_path, {}, inputs=[str(empty)])
    with pytest.raises(UserError, match="no-such.fa"):
        _check(tmp_path, {}, inputs=[str(tmp_path / "no-such.fa")])
    with pytest.raises(UserError, match="--python /no/python"):
        _check(tmp_path, {}, python="/no/python")
    _check(tmp_path, {}, python="/no/python", launcher="apptainer exec img.sif")  # the container's
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds notes.txt"):
        _check(tmp_path, {}, outdir=foreign)
    busy = tmp_path / "busy"
    with lock.locked(busy, command="predict elsewhere"):
        with pytest.raises(UserError, match="in use by a live run: pid"):
            _check(tmp_path, {}, outdir=busy)
    _check(tmp_path, {}, outdir=busy)  # released


def test_job_folder_in_outdir_is_ours_and_kept_by_overwrite(tmp_path: Path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "1_0_log.out").write_text("log")
    assert store.foreign_entries(tmp_path) == [tmp_path / "slurm"]  # no registry: not ours
    (tmp_path / "slurm" / slurm.REGISTRY).write_text("")
    assert store.foreign_entries(tmp_path) == []
    store.clear_outputs(tmp_path, bags=True)
    assert (tmp_path / "slurm" / "1_0_log.out").read_text() == "log"


@slurm_marked
def test_default_submit_runs_to_completion(slurm_up: None, demo_cache: Path, reference: Path, tmp_path: Path):
    """No --folder: the job folder is OUTDIR/slurm and the job's predict accepts it; --setup runs
    before the command, and --launcher/--python start the job's Python."""
    outdir = tmp_path / "out"
    proc = cli("submit", "--wait", "--setup", "echo setup-ran-in-$SLURM_JOB_ID", "--launcher", "env",
               "--python", sys.executable, "--", str(DEMO_FASTA), "-o", str(outdir), *DEMO,
               timeout=JOB_TIMEOUT_S)
    folder = outdir / "slurm"
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(folder.glob("*_log.*")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert finished_outputs(outdir) == finished_outputs(reference)
    (record,) = slurm.read_registry(folder)
    assert Path(record["log"]).parent == folder and json.loads((outdir / "run.json").read_text())
    assert f"setup-ran-in-{record['job_id']}" in Path(record["log"]).read_text()
    script = (folder / f"{record['job_id']}_submission.sh").read_text()
    assert f" env {sys.executable} -u -m submitit.core._submit " in script and "wckey" not in script, script
