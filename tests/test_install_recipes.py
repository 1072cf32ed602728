"""The pinned install: constraints.txt, and the recipes that install from it (tests/run.sh, the
Dockerfile, the Apptainer definition). No container engine or registry is reachable here, so the
recipes are read, not built: they must name the same constraints file, install the project with it
and run the virnuc-hpc entry point."""

from __future__ import annotations

import importlib.metadata as md
import re
import shlex
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILE = ROOT / "Dockerfile"
APPTAINER = ROOT / "apptainer" / "virnuc-hpc.def"
GPU_ONLY = ("dask-cuda", "rapids-dask-dependency")  # the gpu extra: pinned, not installed in CI (no GPU)


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists of the ``pip install`` commands among shell ``commands``."""
    found = []
    for command in commands:
        for part in re.split(r"&&|;|\|\|", command):
            if not re.search(r"\bpip install\b", part):
                continue
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                found.append(words[words.index("install") + 1:])
    return found


def _constraint_of(args: list[str]) -> str | None:
    for flag in ("-c", "--constraint"):
        if flag in args:
            return args[args.index(flag) + 1]
    return next((a.split("=", 1)[1] for a in args if a.startswith("--constraint=")), None)


def test_constraints_pin_every_dependency_within_the_projects_ranges():
    pins, project = _pins(), _project()
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in ("test", "gpu"):
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    assert pins["torch"] == Version("2.13.0")
    assert pins["dask"] == pins["distributed"] == Version("2026.7.1")  # what dask-cuda 26.10 requires
    assert pins["bokeh"] < Version("3.10") and pins["dask-cuda"].major == 26
    assert not [n for n in pins if n.startswith("nvidia-") or n in ("virnuc-hpc", "pip", "setuptools")]


def test_this_environment_has_the_pinned_versions():
    """What the tests run on is what constraints.txt says (tests/run.sh installs with it); the GPU
    extra is not installed without a GPU."""
    differ = {}
    for name, pinned in _pins().items():
        try:
            installed = Version(md.version(name))
        except md.PackageNotFoundError:
            assert name in GPU_ONLY, f"{name} is pinned but not installed: pip install -c constraints.txt"
            continue
        if Version(installed.public) != pinned:
            differ[name] = f"{installed} installed, {pinned} pinned"
    assert not differ, f"install with `pip install -c constraints.txt` (tests/run.sh does): {differ}"


def test_ci_installs_from_the_constraints():
    installs = _pip_installs([line for line in (ROOT / "tests" / "run.sh").read_text().splitlines()
                              if not line.lstrip().startswith("#")])
    project = [args for args in installs if any(a.startswith(("-e", ".[")) or a.startswith("'.[") for a in args)]
    assert project and all(_constraint_of(args) == "constraints.txt" for args in project), installs


def test_dockerfile_installs_from_the_constraints_with_the_entry_point():
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n", " ", text)
    runs = [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith("RUN ")]
    installs = _pip_installs(runs)
    assert installs and all(_constraint_of(args) == "constraints.txt" for args in installs), installs
    assert any(a.startswith(".[gpu]") for args in installs for a in args)
    assert re.search(r"^COPY constraints\.txt .*\./$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["virnuc-hpc"\]$', text, re.M)
    assert re.search(r"VIRNUC_HPC_MODELS=/models", text) and re.search(r"^VOLUME /models$", text, re.M)


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^%(\w+)[ \t]*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_apptainer_definition_installs_from_the_constraints_with_the_entry_point():
    sections = _sections(APPTAINER.read_text())
    copied = dict(line.split() for line in sections["files"].strip().splitlines())
    assert copied["constraints.txt"] == "/opt/virnuc-hpc/constraints.txt"
    installs = _pip_installs([line for line in sections["post"].splitlines() if not line.strip().startswith("#")])
    assert installs and all(_constraint_of(args) == copied["constraints.txt"] for args in installs), installs
    assert any(a == "/opt/virnuc-hpc[gpu]" for args in installs for a in args)
    assert re.search(r'^\s*exec virnuc-hpc "\$@"\s*$', sections["runscript"], re.M)
    assert "export VIRNUC_HPC_MODELS=/models" in sections["environment"]


def test_the_entry_point_is_the_cli():
    assert _project()["scripts"] == {"virnuc-hpc": "virnuc_hpc.cli:main"}
