"""Scheduler and dashboard addresses that lead nowhere useful: whatever answers at the other end
(nothing, a silent server, an HTTP server, a Dask dashboard or worker, an unknown host, garbage),
``predict`` and ``worker`` end within ``--scheduler-timeout`` with one message and exit 2, having
started nothing and written nothing."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster

from conftest import DEMO_FASTA, cli_here, timed_cli
from virnuc_hpc.runtime.cluster import check_dashboard, check_scheduler
from virnuc_hpc.errors import SetupError

TIMEOUT = 2  # --scheduler-timeout of every test here
SLACK = 3    # seconds allowed past it (a probe's own deadline is the timeout plus 1.5 s at most)
PREDICT = ["predict", str(DEMO_FASTA), "--preset", "demo", "--no-progress"]


def silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts every connection and never says a word (nor closes one)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at the end of the module
                return
    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """An HTTP server's handler that logs nothing (its log lines would mix with the CLI's stderr)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, str]]:
    """Addresses of real servers on 127.0.0.1 that are not a Dask scheduler, and one that is."""
    silent, silent_port = silent_server()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    dashboard = cluster.scheduler.services["dashboard"].port  # bokeh is a dependency: it must be there
    try:
        yield {"closed-port": f"tcp://127.0.0.1:{closed_port()}",
               "silent-server": f"tcp://127.0.0.1:{silent_port}",
               "http-server": f"tcp://127.0.0.1:{web.server_address[1]}",
               "dask-dashboard": f"tcp://127.0.0.1:{dashboard}",
               "dask-worker": next(iter(cluster.scheduler.workers)),
               "unknown-host": "tcp://256.1.1.1:8786",
               "scheduler": cluster.scheduler_address}
    finally:
        cluster.close()
        web.shutdown()
        silent.close()


def assert_one_error(stderr: str, stdout: str, seconds: float, *phrases: str) -> None:
    """One line ``virnuc-hpc: error: ...`` holding every phrase, in time."""
    assert stderr.startswith("virnuc-hpc: error: ") and stderr.count("\n") == 1, stderr
    assert len(stderr) < 500, stderr
    for phrase in phrases:
        assert phrase in stderr, stderr
    assert seconds < TIMEOUT + SLACK, f"{seconds:.1f} s: {stderr}"
    assert stdout == ""


def refused_here(*args: str) -> str:
    """Run the CLI in this process; it must exit 2 (no other exception) with one message in time."""
    result, seconds = cli_here(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.stderr)
    return result.stderr, result.stdout, seconds


def refused_in_subprocess(tmp_path: Path, *args: str) -> str:
    """Run the CLI as a process: exit 2, no traceback, also none printed while the interpreter exits."""
    proc, seconds = timed_cli(tmp_path / "clock", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    return proc.stderr, proc.stdout, seconds


NOT_SCHEDULERS = ["closed-port", "silent-server", "http-server", "dask-dashboard", "dask-worker", "unknown-host"]
#: What the message gives as the reason (any one of them: Dask retries a refused connection until
#: the deadline, so a closed port on a loaded machine may read as a time-out).
REASONS = {"closed-port": ("Connection refused", "Timed out trying to connect"),
           "silent-server": "nothing answered as a Dask scheduler",
           "http-server": "nothing answered as a Dask scheduler",
           "dask-dashboard": "nothing answered as a Dask scheduler",
           "dask-worker": "a Dask Worker answers there, not a Dask scheduler", "unknown-host": ""}


def assert_reason(stderr: str, target: str) -> None:
    reasons = REASONS[target]
    assert any(reason in stderr for reason in ((reasons,) if isinstance(reasons, str) else reasons)), stderr


def command_args(command: str, tmp_path: Path) -> list[str]:
    return [*PREDICT, "-o", str(tmp_path / "out")] if command == "predict" else ["worker"]


@pytest.mark.parametrize("command", ["predict", "worker"])
@pytest.mark.parametrize("target", NOT_SCHEDULERS)
def test_scheduler_address_that_is_no_scheduler_exits_2_in_time(targets: dict[str, str], tmp_path: Path,
                                                                command: str, target: str):
    address = targets[target]
    said = refused_here(*command_args(command, tmp_path), "--scheduler-address", address,
                        "--scheduler-timeout", str(TIMEOUT))
    assert_one_error(*said, f"cannot reach the Dask scheduler at {address} within {TIMEOUT} s")
    assert_reason(said[0], target)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, target", [("predict", "silent-server"), ("worker", "dask-dashboard")])
def test_no_scheduler_as_a_process_exits_2_without_traceback(targets: dict[str, str], tmp_path: Path,
                                                             command: str, target: str):
    address = targets[target]
    said = refused_in_subprocess(tmp_path, *command_args(command, tmp_path), "--scheduler-address", address,
                                 "--scheduler-timeout", str(TIMEOUT))
    assert_one_error(*said, f"cannot reach the Dask scheduler at {address} within {TIMEOUT} s")
    assert_reason(said[0], target)


@pytest.mark.parametrize("command", ["predict", "worker"])
@pytest.mark.parametrize("address", ["tcp://::::", "nonsense"])
def test_garbage_scheduler_address_exits_2(tmp_path: Path, command: str, address: str):
    said = refused_here(*command_args(command, tmp_path), "--scheduler-address", address,
                        "--scheduler-timeout", str(TIMEOUT))
    assert_one_error(*said, "invalid configuration: scheduler_address", repr(address), "tcp://HOST:PORT")


@pytest.mark.parametrize("command", ["predict", "worker"])
@pytest.mark.parametrize("content", ["silent-server", "tcp://::::"])
def test_scheduler_file_naming_no_scheduler_exits_2_in_time(targets: dict[str, str], tmp_path: Path,
                                                            command: str, content: str):
    address = targets.get(content, content)
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": address}))
    said = refused_here(*command_args(command, tmp_path), "--scheduler-file", str(scheduler_file),
                        "--scheduler-timeout", str(TIMEOUT))
    assert_one_error(*said, f"cannot reach the Dask scheduler at {address} within {TIMEOUT} s")


@pytest.mark.parametrize("address", ["badhost:8787", "256.1.1.1:8787", "192.0.2.1:8787"])
def test_dashboard_host_not_of_this_machine_exits_2(tmp_path: Path, address: str):
    # badhost and 256.1.1.1 resolve to nothing; 192.0.2.1 (TEST-NET-1) is no address of this machine
    args = [*PREDICT, "-o", str(tmp_path / "out"), "--dashboard-address", address,
            "--scheduler-timeout", str(TIMEOUT)]
    said = refused_in_subprocess(tmp_path, *args) if address == "badhost:8787" else refused_here(*args)
    assert_one_error(*said, f"cannot serve the Dask dashboard at {address}", "127.0.0.1:8787")
    assert not (tmp_path / "out").exists()


def test_worker_host_not_of_this_machine_exits_2(targets: dict[str, str], tmp_path: Path):
    said = refused_here("worker", "--scheduler-address", targets["scheduler"], "--host", "badhost",
                        "--scheduler-timeout", str(TIMEOUT))
    assert_one_error(*said, "the workers cannot listen at host badhost")


def test_real_scheduler_and_dashboard_pass_the_checks(targets: dict[str, str]):
    check_scheduler(targets["scheduler"], TIMEOUT)  # no error: a Dask scheduler answers
    for address in ("127.0.0.1:8787", "0.0.0.0:0", "localhost:0"):
        check_dashboard(address, TIMEOUT)
    with pytest.raises(SetupError, match="a Dask Worker answers there"):
        check_scheduler(targets["dask-worker"], TIMEOUT)
