"""Shared fixtures: the demo models in a per-session cache, a shared Dask client, and a CLI runner.

Tests are in two tiers. ``e2e`` tests start a Dask cluster, Slurm, the CLI in a subprocess or a
browser; the rest (``pytest -m "not e2e"``) are unit and contract tests that run in a few minutes.
The mark comes from the fixtures a test uses (``E2E_FIXTURES``) or is written on the test or module;
a test left unmarked that starts one of those anyway fails at once, naming what it started, so
the fast tier stays fast and a full run never skips an end-to-end test by mistake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: fixtures that start a cluster, Slurm, a CLI run or a browser: a test using one (directly or
#: through another fixture) is ``e2e``
E2E_FIXTURES = frozenset({"client", "reference", "three_samples", "slurm_up"})
#: programs whose start in a subprocess makes a test ``e2e``
E2E_PROGRAMS = frozenset({"virnuc-hpc", "chromium", "chromium-browser", "snakemake",
                          "sbatch", "srun", "salloc", "squeue", "sinfo", "scancel", "sacct", "scontrol"})


class NotMarkedE2E(RuntimeError):
    """A test outside the ``e2e`` tier started a cluster, Slurm, a CLI run or a browser."""


#: the node id of the running test when it is not ``e2e``; the guards below refuse then
_unit_test: str | None = None


def _refuse(what: str) -> None:
    if _unit_test is not None:
        raise NotMarkedE2E(f"{_unit_test} {what}: mark it e2e (pytest.mark.e2e, or use a fixture "
                           "of E2E_FIXTURES in tests/conftest.py)")


def _audit(event: str, args: tuple) -> None:
    """Subprocesses of the fast tier: refused when they run the CLI, Slurm or a browser."""
    if event != "subprocess.Popen" or _unit_test is None:
        return
    argv = [os.fsdecode(a) for a in (args[1] if isinstance(args[1], (list, tuple)) else [args[1]])
            if isinstance(a, (str, bytes, os.PathLike))]
    if argv and (Path(argv[0]).name in E2E_PROGRAMS or any("virnuc_hpc.cli" in a for a in argv)):
        _refuse(f"runs {' '.join(argv)[:120]!r} in a subprocess")


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_audit)
    from distributed.deploy.spec import SpecCluster  # LocalCluster and Client() of no address

    started = SpecCluster.__init__

    def guarded(self, *args, **kwargs):
        _refuse("starts a Dask cluster")
        started(self, *args, **kwargs)

    SpecCluster.__init__ = guarded


#: names whose use in a test, its fixtures or the module's functions they call makes the test
#: ``e2e``: the subprocess CLI helpers below, and what starts a Dask cluster
CLUSTERS = frozenset({"LocalCluster", "SLURMCluster", "local_cluster"})
E2E_NAMES = CLUSTERS | {"cli", "timed_cli", "killed_run"}


def _starts_e2e(func: Any, module: Any, seen: set[int]) -> bool:
    """Whether FUNC's code (nested functions and lambdas included) names one of ``E2E_NAMES``,
    itself or through a function of MODULE it calls. The guards above catch what this misses."""
    code = getattr(getattr(func, "__wrapped__", func), "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    codes, names = [code], set()
    while codes:
        c = codes.pop()
        names.update(c.co_names)
        codes.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    if any(n in E2E_NAMES and (n in CLUSTERS or getattr(module, n, None) is globals()[n]) for n in names):
        return True
    helpers = (getattr(module, n, None) for n in names)
    return any(_starts_e2e(h, module, seen) for h in helpers
               if callable(h) and getattr(h, "__module__", None) == module.__name__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") or not isinstance(item, pytest.Function):
            continue
        fixtures = item._fixtureinfo.name2fixturedefs
        funcs = [item.function, *(defs[-1].func for defs in fixtures.values() if defs)]
        if (E2E_FIXTURES.intersection(item.fixturenames) or item.get_closest_marker("slurm")
                or any(_starts_e2e(f, sys.modules[f.__module__], set()) for f in funcs
                       if getattr(f, "__module__", None) in sys.modules)):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _unit_test
    _unit_test = None if item.get_closest_marker("e2e") else item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    global _unit_test
    _unit_test = None
DEMO_FASTA = ROOT / "examples" / "demo.fasta"
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def proteins(lengths, seed: int = 0) -> list[str]:
    """Random proteins of the given lengths (seeded), for the encoder tests."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(AMINO, int(n))) for n in lengths]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) feature matrices."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo models made once per test session (workers inherit the variable)."""
    cache = tmp_path_factory.mktemp("virnuc-cache")
    os.environ["VIRNUC_HPC_CACHE"] = str(cache)
    from virnuc_hpc.models.demo import ensure_demo_models
    ensure_demo_models()
    return cache


@pytest.fixture(scope="session")
def client(demo_cache: Path) -> Iterator[Any]:
    """One local Dask cluster for the end-to-end tests whose subject is not the cluster itself: the
    one a demo run starts (two workers, our worker settings), bound to 127.0.0.1.

    Pass it as ``client=``, or its address to the CLI (``shared_scheduler``): a run takes its
    encoders off the workers when it returns, so runs do not see each other's models. Never for a
    run that is killed (its tasks would go on on these workers). Started after ``demo_cache`` so
    that the workers inherit its cache."""
    from distributed import Client

    from virnuc_hpc.config import load_config
    from virnuc_hpc.runtime.cluster import local_cluster

    config = load_config(preset="demo", overrides={"dashboard_address": "127.0.0.1:0"})
    with local_cluster(config) as cluster, Client(cluster, set_as_default=False) as shared:
        yield shared


def shared_scheduler(client: Any) -> tuple[str, str]:
    """The CLI options that make a run join the shared cluster of ``client`` instead of starting one."""
    return ("--scheduler-address", client.scheduler.address)


def cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300,
        **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "virnuc_hpc.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, **kwargs)


#: The CLI with its modules imported before the clock starts, the seconds until it exits written to
#: argv[1]: what a command spends on its work, whatever importing costs on a busy machine.
_TIMED_CLI = ("import sys, time\n"
              "import virnuc_hpc.cli, virnuc_hpc.runtime.cluster, virnuc_hpc.runtime.pipeline\n"
              "t0 = time.perf_counter()\n"
              "try:\n"
              "    virnuc_hpc.cli.main(args=sys.argv[2:], prog_name='virnuc-hpc')\n"
              "finally:\n"
              "    open(sys.argv[1], 'w').write(repr(time.perf_counter() - t0))\n")


def timed_cli(clock: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a subprocess and the seconds it ran once its modules were imported (kept in ``clock``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", _TIMED_CLI, str(clock), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    return proc, float(clock.read_text())


def cli_here(*args: str) -> tuple[Any, float]:
    """The CLI run in this process (click's CliRunner: no start-up to pay per case) and its seconds.

    The modules the commands import on first use are imported before the clock starts. What
    ``main`` and the commands change in the process (a log handler bound to the captured stderr,
    the SIGINT handler) is put back afterwards.
    """
    import logging

    from click.testing import CliRunner

    import virnuc_hpc.runtime.pipeline  # noqa: F401 - imported by predict on first use
    import virnuc_hpc.runtime.slurm  # noqa: F401 - imported by worker on first use
    from virnuc_hpc.cli import main
    ours, dask_log = logging.getLogger("virnuc_hpc"), logging.getLogger("distributed")
    saved = (list(ours.handlers), ours.level, dask_log.level, signal.getsignal(signal.SIGINT))
    t0 = time.perf_counter()
    try:
        result = CliRunner().invoke(main, list(args), prog_name="virnuc-hpc")
        return result, time.perf_counter() - t0
    finally:
        ours.handlers[:] = saved[0]
        ours.setLevel(saved[1])
        dask_log.setLevel(saved[2])
        signal.signal(signal.SIGINT, saved[3])


FINAL = ("prediction_results.txt", "prediction_results_highestscore.csv", "reads.tsv")
DEMO = ["--preset", "demo", "--no-progress", "--bag-size", "8"]


def finished_outputs(outdir: Path) -> dict[str, bytes]:
    return {name: (outdir / name).read_bytes() for name in FINAL}


def assert_nothing_finished(outdir: Path) -> None:
    for name in (*FINAL, "run.json"):
        assert not (outdir / name).exists(), f"{name} left behind by a failed run"


@pytest.fixture(scope="session")
def reference(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted demo run through the CLI: what every disturbed run must reproduce."""
    outdir = tmp_path_factory.mktemp("reference")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stdout
    return outdir


#: three samples of different reads (so that their % virus differ), cut from the demo
THREE_SAMPLES = {"gut": (0, 24), "soil": (24, 40), "lake": (36, 60)}


@pytest.fixture(scope="session")
def three_samples(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo run of three samples through the CLI (samples/<name>/, samples.tsv) on the shared
    cluster; not to be changed."""
    folder = tmp_path_factory.mktemp("three-samples")
    records = [">" + r for r in DEMO_FASTA.read_text().split(">")[1:]]
    inputs = []
    for name, (start, end) in THREE_SAMPLES.items():
        inputs.append(folder / f"{name}.fa")
        inputs[-1].write_text("".join(records[start:end]))
    outdir = folder / "out"
    proc = cli("predict", *map(str, inputs), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    return outdir


def finished_bags(outdir: Path) -> int:
    """Bag files present in OUTDIR (each one present is whole: they are written atomically)."""
    from virnuc_hpc.outputs import store
    return len(store.bag_files(outdir))


def killed_run(outdir: Path, *extra: str, after_bags: int, delay: float = 0.0, timeout: float = 120) -> int:
    """A demo CLI run killed with SIGKILL (its whole process group: client, scheduler, workers) once
    OUTDIR holds ``after_bags`` finished bags, ``delay`` seconds later. Returns the bags finished then.

    The callers check the kill fell mid-run (no run.json): a run may finish before it is killed."""
    args = [sys.executable, "-m", "virnuc_hpc.cli", "predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *extra]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and finished_bags(outdir) < after_bags:
        time.sleep(0.05)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group had already exited
        pass
    proc.wait()
    return finished_bags(outdir)


@contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real, tiny filesystem to fill up (full-disk tests); needs root, as CI has."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture(scope="session")
def slurm_up() -> None:
    """Slurm must answer: these tests fail (never skip) without it, so CI cannot silently drop them."""
    def usable() -> bool:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        return proc.returncode == 0 and proc.stdout.split()[:1] in (["idle"], ["mix"], ["alloc"])
    try:
        if not usable() and os.geteuid() == 0:
            subprocess.run(["bash", str(ROOT / "slurm" / "start-test-slurm.sh")], check=True,
                           timeout=300)
        ok = usable()
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        pytest.fail("no usable Slurm (`sinfo` fails or the node is down); "
                    "start it with slurm/start-test-slurm.sh (tests/run.sh does)")
