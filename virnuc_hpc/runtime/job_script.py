"""The text ``virnuc-hpc submit`` adds to a Slurm job script, and the values it refuses there.

A job script is shell text. A value holding a newline (or any other control character) would end
the ``#SBATCH`` line it sits on, and the rest of it would run as a command in the job; job names,
partitions and paths often come from workflow managers and web portals, that is from other people.
So every value bound for the script is checked here, before anything is written or queued, and
where it lands in shell text it is quoted with ``shlex.quote`` (submitit quotes the ``#SBATCH``
values it writes). ``--setup`` lines are the user's own shell, deliberately unquoted, but each is
still exactly one line.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import unicodedata
from collections.abc import Mapping, Sequence

from virnuc_hpc.errors import ConfigError

#: The variables of the submitting shell that jobs see too (model cache, offline switch, ...).
ENV_PREFIX = "VIRNUC_HPC_"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: sbatch long option names as ``--slurm-opt`` keys take them (without the dashes).
SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL byte", "\t": "a tab"}


def _control_character(text: str) -> str | None:
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def check_line(option: str, value: object) -> str:
    """``value`` as text, or ConfigError naming ``option`` when it holds a control character."""
    text = str(value)
    found = _control_character(text)
    if found is not None:
        what = _CONTROL_NAMES.get(found, f"the control character U+{ord(found):04X}")
        raise ConfigError(f"{option} {text!r} holds {what}: a value that goes into a job script must be "
                          "one line of printable text")
    return text


def exported_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """``export NAME=VALUE`` lines for the submitting shell's ``VIRNUC_HPC_*`` variables (sbatch
    does not export the environment everywhere); a name that is not a shell variable name, or a
    value with a control character, is refused rather than skipped: the job would run differently."""
    lines = []
    for name, value in sorted((os.environ if environ is None else environ).items()):
        if not name.startswith(ENV_PREFIX):
            continue
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(f"environment variable {name!r} is not a shell variable name "
                              "([A-Za-z_][A-Za-z0-9_]*), so it cannot be exported into the job script; "
                              "unset it")
        check_line(f"environment variable {name}", value)
        lines.append(f"export {name}={shlex.quote(value)}")
    return lines


def setup_lines(lines: Sequence[str]) -> list[str]:
    """``--setup`` lines (``module load cuda``, ``source env.sh``) as given, each one line."""
    return [check_line("--setup", line) for line in lines]


def launcher_words(launcher: str | None) -> list[str]:
    """``--launcher`` split as the shell would (``apptainer exec --nv img.sif``)."""
    if launcher is None:
        return []
    check_line("--launcher", launcher)
    try:
        words = shlex.split(launcher)
    except ValueError as err:
        raise ConfigError(f"--launcher {launcher!r}: {err}") from err
    if not words:
        raise ConfigError("--launcher is empty: give a command prefix such as 'apptainer exec --nv img.sif'")
    return words


def python_command(python: str | None, launcher: str | None) -> str:
    """The shell words that start Python in the job: the launcher's words, then the interpreter
    (``--python``, else the one running submit), each quoted."""
    words = launcher_words(launcher)
    interpreter = check_line("--python", python or sys.executable)
    return shlex.join([*words, interpreter])


def run_arg_option(args: Sequence[str], index: int) -> str:
    """How to name ``args[index]`` (a predict argument after ``--``) in a message: its option."""
    arg = args[index]
    if arg.startswith("-") and "=" in arg:
        return arg.split("=", 1)[0]
    if index > 0 and args[index - 1].startswith("-"):
        return args[index - 1]
    return "argument"


def check_run_args(args: Sequence[str]) -> None:
    """The predict command line after ``--``: paths from it (OUTDIR, inputs) reach the script."""
    for i, arg in enumerate(args):
        check_line(run_arg_option(args, i), arg)
