"""Faults on a real multi-process Dask cluster: killed workers, a bag that keeps killing them."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster, WorkerPlugin

from conftest import DEMO_FASTA, assert_nothing_finished, finished_outputs
from virnuc_hpc.config import load_config
from virnuc_hpc.runtime.pipeline import predict
from virnuc_hpc.errors import BagsFailedError


def _cluster(n_workers: int = 2) -> LocalCluster:
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, host="127.0.0.1",
                            dashboard_address=":0", processes=True)


def _config():
    return load_config(preset="demo", overrides={"bag_size": 8, "progress": False})


class HoldBag(WorkerPlugin):
    """Test-only: the first attempt at one bag stops right after it starts on its worker (a marker
    file says which process holds it) until that process is killed; every attempt at that bag
    appends "start|done <pid>" to a log shared by all workers.

    ``run_bag`` is looked up by name when a worker unpickles a task, so replacing it in the
    worker's module (in ``setup``, before any bag arrives) wraps every bag that worker runs."""

    name = "hold-bag"

    def __init__(self, bag_name: str, folder: str):
        self.bag_name, self.folder = bag_name, folder

    def setup(self, worker):
        from virnuc_hpc.runtime import worker as module
        original = getattr(module, "_unwrapped_run_bag", module.run_bag)
        module._unwrapped_run_bag = original
        module.run_bag = functools.partial(_held_run_bag, original, self.bag_name, self.folder)


def _held_run_bag(original, bag_name: str, folder: str, bag, *args):
    log, marker = Path(folder) / "attempts.log", Path(folder) / "held"
    if bag.name != bag_name:
        return original(bag, *args)
    with open(log, "a") as fh:
        fh.write(f"start {os.getpid()}\n")
    if not marker.exists():  # the first attempt: wait here, mid-bag, to be killed
        tmp = marker.with_name("held.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker)  # whole when seen
        time.sleep(120)
    report = original(bag, *args)
    with open(log, "a") as fh:
        fh.write(f"done {os.getpid()}\n")
    return report


def test_worker_killed_mid_bag_recomputes_elsewhere(reference: Path, tmp_path: Path, demo_cache: Path):
    """A worker is killed (SIGKILL) while it holds bag-000002 (held there by ``HoldBag``); the bag is
    computed again by another worker process and the outputs equal an undisturbed run."""
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    outdir, folder = tmp_path / "out", tmp_path / "hold"
    folder.mkdir()
    with _cluster() as cluster, Client(cluster) as client:
        client.register_plugin(HoldBag("bag-000002", str(folder)))
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.setdefault(
            "result", predict([DEMO_FASTA], outdir, client=client, config=_config())))
        thread.start()
        deadline = time.time() + 120
        while not (folder / "held").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (folder / "held").exists(), "bag-000002 never started"
        victim = int((folder / "held").read_text())
        assert not (outdir / "bags" / "bag-000002.nc").exists()  # it is in flight, not finished
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
        assert "result" in outcome, "the run did not finish after a worker was killed"
    attempts = [line.split() for line in (folder / "attempts.log").read_text().splitlines()]
    starts = [int(pid) for what, pid in attempts if what == "start"]
    done = [int(pid) for what, pid in attempts if what == "done"]
    assert starts[0] == victim and victim not in done, attempts  # the killed worker never finished it
    assert len(done) == 1 and done[0] != victim and done[0] in starts[1:], attempts  # another one did
    assert json.loads((outdir / "run.json").read_text())["bags"]["computed_now"] == outcome["result"].counts["bags"]
    assert finished_outputs(outdir) == finished_outputs(reference)


class KillOnBag(WorkerPlugin):
    """Test-only fault injection: the worker process dies whenever it starts the given bag."""

    name = "kill-on-bag"

    def __init__(self, prefix: str):
        self.prefix = prefix

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith(self.prefix):
            os._exit(17)


def test_bag_that_kills_workers_twice_is_reported(tmp_path: Path, demo_cache: Path):
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    outdir = tmp_path / "out"
    with _cluster() as cluster, Client(cluster) as client:
        client.register_plugin(KillOnBag("bag-000002-"))
        with pytest.raises(BagsFailedError, match="bag-000002") as err:
            predict([DEMO_FASTA], outdir, client=client, config=_config())
    failed = (outdir / "failed_bags.tsv").read_text().splitlines()
    assert failed[0] == "bag\tsample\tfile\tfirst_record\tlast_record" and len(failed) == 2
    bag, sample, path, first, last = failed[1].split("\t")
    assert (bag, sample, path) == ("bag-000002", "demo", str(DEMO_FASTA)) and 0 < int(first) <= int(last)
    assert_nothing_finished(outdir)
    done = sorted(p.name for p in (outdir / "bags").glob("bag-*.nc"))
    assert "bag-000002.nc" not in done and len(done) >= 5, done  # the others were finished
    assert "rerun" in str(err.value)
