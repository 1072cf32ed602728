"""Mistakes and interruptions a user meets on the command line: each ends with one clear message and
the right exit status (2, or 130 for Ctrl-C), fast, with no traceback, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import psutil
import pytest

from conftest import DEMO, DEMO_FASTA, cli
from virnuc_hpc.outputs import store
from virnuc_hpc.config import CONFIG_DIR

#: The log lines a run writes before its cluster is busy (they are not error output).
LOG_LINES = ("Dask scheduler:", "Dask dashboard:")


def cli_without(modules: list[str], *args: str, env_extra: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a subprocess where ``modules`` cannot be imported (nor found), whether or not they
    are installed here: what a machine without them sees."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({modules!r})); "
            "from virnuc_hpc.cli import main; main(prog_name='virnuc-hpc')")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit status 2, one ``virnuc-hpc: error:`` message holding every phrase, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("virnuc-hpc: error: "), proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr
    assert "Dask scheduler:" not in proc.stderr, "a cluster was started before the error"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_group(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Ctrl-C to the run's process group (as a terminal sends it); kill it if it does not end."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def big_fasta(path: Path, copies: int) -> Path:
    """The demo reads ``copies`` times over, with ids of their own: a run that takes minutes."""
    records = DEMO_FASTA.read_text().split(">")[1:]
    with path.open("w") as out:
        for copy in range(copies):
            for record in records:
                header, _, sequence = record.partition("\n")
                out.write(f">{header.split()[0]}_copy{copy}\n{sequence}")
    return path


# --- 1. device cuda, engine deepspeed: the package missing, or no GPU ---------------------------

@pytest.mark.parametrize("missing, option, phrases", [
    ("dask_cuda", ("--device", "cuda"), ("dask-cuda", "pip install", "--device cpu")),
    ("deepspeed", ("--engine", "deepspeed"), ("deepspeed package", "pip install", "--engine native")),
], ids=["device-cuda-without-dask-cuda", "engine-deepspeed-without-deepspeed"])
@pytest.mark.e2e  # the CLI in a subprocess
def test_option_without_its_package_exits_2(demo_cache: Path, tmp_path: Path, missing: str,
                                            option: tuple[str, str], phrases: tuple[str, ...]):
    t0 = time.perf_counter()
    proc = cli_without([missing], "predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), *DEMO, *option)
    assert_user_error(proc, *phrases)
    assert time.perf_counter() - t0 < 60


def test_device_cuda_without_visible_gpu_exits_2(demo_cache: Path, tmp_path: Path):
    # dask-cuda "installed" (a stub: found, never imported) but every GPU hidden
    stub = tmp_path / "stub" / "dask_cuda"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('the stub dask_cuda must not be imported')\n")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), *DEMO, "--device", "cuda",
               env_extra={"PYTHONPATH": os.pathsep.join(filter(None, [str(stub.parent),
                                                                     os.environ.get("PYTHONPATH")])),
                          "CUDA_VISIBLE_DEVICES": ""})
    assert_user_error(proc, "no GPU is visible", "--device cpu")


# --- 2. dashboard address ----------------------------------------------------------------------

def dashboard_bind(tmp_path: Path, address: str, port: int) -> str:
    """Start a real run with ``--dashboard-address address`` and return the IP its dashboard
    listens on (then interrupt the run)."""
    proc = subprocess.Popen([sys.executable, "-m", "virnuc_hpc.cli", "predict", str(DEMO_FASTA), "-o",
                             str(tmp_path / "out"), *DEMO, "--dashboard-address", address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    bound, deadline = None, time.monotonic() + 240
    try:
        while bound is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                listening = psutil.Process(proc.pid).net_connections(kind="inet")
            except psutil.NoSuchProcess:
                break
            bound = next((c.laddr.ip for c in listening
                          if c.status == psutil.CONN_LISTEN and c.laddr.port == port), None)
            time.sleep(0.1)
    finally:
        _, stderr = stop_group(proc) if proc.poll() is None else proc.communicate()
    assert "Traceback" not in stderr, stderr
    assert bound is not None, f"nothing listened on port {port}:\n{stderr}"
    return bound


@pytest.mark.parametrize("form", ["{port}", ":{port}"])
@pytest.mark.e2e  # the CLI in a subprocess
def test_dashboard_port_without_host_binds_localhost(demo_cache: Path, tmp_path: Path, form: str):
    port = free_port()
    assert dashboard_bind(tmp_path, form.format(port=port), port) == "127.0.0.1"


@pytest.mark.e2e  # the CLI in a subprocess
def test_dashboard_explicit_host_is_bound(demo_cache: Path, tmp_path: Path):
    port = free_port()
    assert dashboard_bind(tmp_path, f"0.0.0.0:{port}", port) == "0.0.0.0"


@pytest.mark.parametrize("address", ["not an address", "127.0.0.1:99999", "http://127.0.0.1:8787"])
def test_dashboard_garbage_address_exits_2(tmp_path: Path, address: str):
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), *DEMO, "--dashboard-address", address)
    assert_user_error(proc, "invalid configuration: dashboard_address", "[HOST]:PORT", repr(address))


# --- 3. scheduler address ----------------------------------------------------------------------

def test_scheduler_malformed_address_exits_2(tmp_path: Path):
    t0 = time.perf_counter()
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), *DEMO,
               "--scheduler-address", "not an address", timeout=120)
    assert_user_error(proc, "invalid configuration: scheduler_address", "tcp://HOST:PORT")
    assert time.perf_counter() - t0 < 45


def test_scheduler_unreachable_exits_2_within_timeout(demo_cache: Path, tmp_path: Path):
    address = f"tcp://127.0.0.1:{free_port()}"  # well formed, nothing listening
    t0 = time.perf_counter()
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), *DEMO,
               "--scheduler-address", address, "--scheduler-timeout", "2", timeout=120)
    assert_user_error(proc, f"cannot reach the Dask scheduler at {address} within 2 s")
    assert proc.stderr.count("\n") == 1, proc.stderr  # nothing else, at exit either
    assert time.perf_counter() - t0 < 45


# --- 4. YAML types -----------------------------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("bag_size: true", "bag_size: expected a whole number, got true"),
    ("bag_size: 2.5", "bag_size: expected a whole number, got 2.5"),
    ("workers: yes", "workers: expected a whole number, got true"),
    ("skip_invalid: 1", "skip_invalid: expected true or false, got 1"),
    ("scheduler_timeout: true", "scheduler_timeout: expected a number, got true"),
])
def test_yaml_boolean_or_float_for_integer_exits_2(tmp_path: Path, line: str, expected: str):
    config = tmp_path / "mine.yaml"
    config.write_text(line + "\n")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), "--preset", "demo", "--no-progress",
               "--config", str(config))  # not DEMO: its --bag-size would win over the file
    assert_user_error(proc, f"invalid configuration: {expected}")


# --- 5. presets --------------------------------------------------------------------------------

@pytest.mark.parametrize("absolute", [False, True])
def test_preset_path_is_refused_exits_2(tmp_path: Path, absolute: bool):
    # a readable YAML file the preset would name by path: it must not be read
    (tmp_path / "elsewhere.yaml").write_text("bag_size: 3\nno_such_option: 1\n")
    target = tmp_path / "elsewhere"
    preset = str(target) if absolute else os.path.relpath(target, CONFIG_DIR)
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "out"), "--no-progress", "--preset", preset)
    assert_user_error(proc, f"unknown preset {preset!r}", "known presets: default, demo", "--config")


# --- 6. Ctrl-C ---------------------------------------------------------------------------------

@pytest.mark.e2e  # the CLI in a subprocess
def test_ctrl_c_exits_130_with_one_line_and_no_workers_left(demo_cache: Path, tmp_path: Path):
    fasta = big_fasta(tmp_path / "big.fasta", copies=20)
    outdir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "virnuc_hpc.cli", "predict", str(fasta), "-o", str(outdir),
                             *DEMO, "--dashboard-address", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    deadline = time.monotonic() + 300
    while not store.bag_files(outdir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # until the workers are busy: the first bag is written
    assert proc.poll() is None, proc.communicate()
    assert store.bag_files(outdir), "no bag finished in time"
    time.sleep(1)
    started = descendants(proc.pid)
    assert started, "the run has no worker processes"
    stdout, stderr = stop_group(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    said = [line for line in stderr.splitlines() if line.strip() and not line.startswith(LOG_LINES)]
    assert said == ["virnuc-hpc: interrupted: finished bags are kept; rerun the same command to resume"], \
        stderr
    assert stdout == ""
    assert store.bag_files(outdir)
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"


# --- 7. one mapping ----------------------------------------------------------------------------

def test_every_command_maps_its_errors_in_one_place():
    """Every command (and group) ends through cli.exit_statuses: none may go without it."""
    from virnuc_hpc import cli

    def commands(group: click.Group) -> list[click.Command]:
        found: list[click.Command] = [group]
        for command in group.commands.values():
            found += commands(command) if isinstance(command, click.Group) else [command]
        return found

    every = commands(cli.main)
    assert len(every) >= 10, [c.name for c in every]
    assert not [c.name for c in every if not isinstance(c, (cli.Command, cli.CommandGroup))]
    assert [c.name for c in every if getattr(c, "keeps_bags", False)] == ["predict", "embed"]


@pytest.mark.parametrize("args, phrase", [
    (["validate", "--samplesheet", "missing.tsv"], "missing.tsv: cannot read samplesheet"),
    (["status", "no-such-folder"], "no-such-folder"),
], ids=["validate", "status"])
def test_user_errors_of_other_commands_exit_2(tmp_path: Path, args: list[str], phrase: str):
    from click.testing import CliRunner

    from virnuc_hpc import cli
    result = CliRunner().invoke(cli.main, args, prog_name="virnuc-hpc")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("virnuc-hpc: error: ") and phrase in result.output, result.output
