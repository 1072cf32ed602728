"""Faults on a real multi-process Dask cluster: killed workers, a bag that keeps killing them."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster, WorkerPlugin

from conftest import DEMO_FASTA, assert_nothing_finished, finished_outputs
from virnuc_hpc.config import load_config
from virnuc_hpc.pipeline import BagsFailedError, predict


def _cluster(n_workers: int = 2) -> LocalCluster:
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, host="127.0.0.1",
                            dashboard_address=":0", processes=True)


def _config():
    return load_config(preset="demo", overrides={"bag_size": 8, "progress": False})


def test_worker_killed_mid_bag_recomputes_elsewhere(reference: Path, tmp_path: Path, demo_cache: Path):
    outdir = tmp_path / "out"
    with _cluster() as cluster, Client(cluster) as client:
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.setdefault(
            "result", predict([DEMO_FASTA], outdir, client=client, config=_config())))
        thread.start()
        victim = None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline:  # a worker that is busy with a bag
            busy = [w for w, keys in client.processing().items()
                    if any(str(k).startswith("bag-") for k in keys)]
            if busy and list((outdir / "bags").glob("bag-*.nc")):
                victim = busy[0]
            time.sleep(0.05)
        assert victim is not None, "no bag was ever processing"
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert "result" in outcome, "the run did not finish after a worker was killed"
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
    import sys
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
