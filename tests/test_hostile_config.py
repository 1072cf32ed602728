"""Hostile or broken configuration files (``--config FILE``): an alias bomb, aliases nested or
recursive, deep nesting, ``/dev/zero``, Latin-1 text, a file too large, thousands of values, a
number too long to convert. Each ends in well under 2 s with exit 2 and one short message naming
the file and the reason, in every command that reads a configuration, never with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DEMO_FASTA, cli_here, timed_cli
from virnuc_hpc.config import load_config

PREDICT = ["predict", str(DEMO_FASTA), "--preset", "demo", "--no-progress"]


def laughs(levels: int, width: int = 10) -> str:
    """A "billion laughs" document: each alias level ``width`` times the one below, the top level
    under a known option (``width ** levels`` strings, were the aliases expanded)."""
    lines = ['lol0: &lol0 "lol"']
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"esm2_model: *lol{levels}", ""])


#: name -> (file content, or a path to read; a phrase of the reason)
CASES: dict[str, tuple[str | bytes | Path, str]] = {
    "billion-laughs": (laughs(9), "line 2: YAML aliases (*lol0) are not accepted"),
    "six-alias-levels": (laughs(6), "YAML aliases (*lol0) are not accepted"),
    "recursive-alias": ("a: &a [*a]\n", "line 1: YAML aliases (*a) are not accepted"),
    "merge-key-alias": ("base: &b {bag_size: 3}\n<<: *b\n", "YAML aliases (*b) are not accepted"),
    "deep-flow-nesting": ("esm2_model: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than 32 levels"),
    "deep-block-nesting": ("".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
                           "line 33: nested deeper than 32 levels"),
    "dev-zero": (Path("/dev/zero"), "larger than 1 MB"),
    "two-megabytes": ("# " + "x" * (2 << 20) + "\nbag_size: 8\n", "larger than 1 MB"),
    "latin-1": ("esm2_model: café\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 1)"),
    "many-values": ("x: [" + ", ".join(["1"] * 20_000) + "]\n", "more than 10,000 values"),
    "long-number": ("bag_size: " + "9" * 5000 + "\n", "a value YAML cannot convert"),
    "nul-character": (b"esm2_model: \x00\n", "unacceptable character #x0000"),
    "python-tag": ("esm2_model: !!python/object/apply:os.system ['touch /tmp/PWNED']\n",
                   "could not determine a constructor"),
    "number-as-option": ("1: 2\n", "option names are text, got 1"),
}


def config_file(tmp_path: Path, name: str) -> tuple[Path, str]:
    content, reason = CASES[name]
    if isinstance(content, Path):
        return content, reason
    path = tmp_path / f"{name}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path, reason


def assert_refused(stderr: str, stdout: str, seconds: float, path: Path, reason: str) -> None:
    """One line naming the file and the reason, short, in under 2 s."""
    assert stderr.startswith("virnuc-hpc: error: ") and stderr.count("\n") == 1, stderr[:1000]
    assert len(stderr) < 500, stderr[:1000]
    assert str(path) in stderr and reason in stderr, stderr
    assert seconds < 2, f"{seconds:.1f} s: {stderr}"
    assert stdout == ""


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_config_exits_2_fast_with_one_line(tmp_path: Path, name: str):
    path, reason = config_file(tmp_path, name)
    result, seconds = cli_here(*PREDICT, "-o", str(tmp_path / "out"), "--config", str(path))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.stderr)
    assert_refused(result.stderr, result.stdout, seconds, path, reason)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["embed", "worker", "check-precision", "submit"])
def test_every_command_reads_configs_with_limits(tmp_path: Path, command: str):
    path, reason = config_file(tmp_path, "billion-laughs")
    if command == "check-precision":
        import virnuc_hpc.runtime.precision_check  # noqa: F401 - its import (torch) is not the file's time
    args = {"embed": ["embed", str(DEMO_FASTA), "-o", str(tmp_path / "out"), "--config", str(path)],
            "worker": ["worker", "--scheduler-address", "tcp://127.0.0.1:1", "--config", str(path)],
            "check-precision": ["check-precision", str(DEMO_FASTA), "--config", str(path)],
            "submit": ["submit", "--", str(DEMO_FASTA), "-o", str(tmp_path / "out"), "--config", str(path)]}
    result, seconds = cli_here(*args[command])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.stderr)
    assert_refused(result.stderr, result.stdout, seconds, path, reason)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, command", [("billion-laughs", "predict"), ("dev-zero", "worker")])
def test_hostile_config_as_a_process_exits_2_without_traceback(tmp_path: Path, name: str, command: str):
    path, reason = config_file(tmp_path, name)
    args = ([*PREDICT, "-o", str(tmp_path / "out")] if command == "predict"
            else ["worker", "--scheduler-address", "tcp://127.0.0.1:1"])
    proc, seconds = timed_cli(tmp_path / "clock", *args, "--config", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_refused(proc.stderr, proc.stdout, seconds, path, reason)


def test_anchors_without_aliases_and_long_values_read_fine(tmp_path: Path):
    # an anchor alone expands nothing: accepted; a long value is refused by its option, briefly
    mine = tmp_path / "mine.yaml"
    mine.write_text("bag_size: &size 7\n")
    assert load_config(config_file=mine).bag_size == 7
    mine.write_text(f"bag_size: '{'9' * 500_000}'\ndashboard_address: '{'x' * 500_000}'\n")
    result, _ = cli_here(*PREDICT, "-o", str(tmp_path / "out"), "--config", str(mine))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "bag_size: expected a whole number" in result.stderr and "dashboard_address:" in result.stderr
    assert len(result.stderr) < 800, result.stderr[:1000]
