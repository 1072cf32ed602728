"""The runtime facts our numbers rely on: how peak memory is read, how workers are started."""

from __future__ import annotations

import json
import subprocess
import sys

import dask
from distributed import Client

from virnuc_hpc.runtime.cluster import WORKER_MALLOC, local_cluster
from virnuc_hpc.config import load_config

CHILD = "from virnuc_hpc.timing import peak_rss_mb; print(peak_rss_mb())"


def test_peak_rss_is_the_process_own_not_its_parents():
    # A parent holding ~400 MB starts a small child: ru_maxrss would report the parent's peak there.
    parent = ("import subprocess, sys\n"
              "block = bytearray(400 * 2**20)\n"
              "for i in range(0, len(block), 4096): block[i] = 1\n"
              f"print(subprocess.run([sys.executable, '-c', {CHILD!r}], capture_output=True, text=True,"
              " check=True).stdout.strip())\n")
    child_mb = float(subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                                    check=True).stdout)
    assert 0 < child_mb < 300


def test_workers_start_with_our_malloc_settings_not_dasks(monkeypatch):
    # Dask's default pins glibc's mmap threshold in workers (bags parse 1.5x slower): ours set both
    # thresholds, also when the parent's environment already holds Dask's value.
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    config = load_config(overrides={"device": "cpu", "workers": 1, "dashboard_address": "127.0.0.1:0"})
    with local_cluster(config) as cluster, Client(cluster, set_as_default=False) as client:
        env = client.run(lambda: json.dumps({k: v for k, v in __import__("os").environ.items()
                                             if k.startswith(("MALLOC_", "OMP_"))}))
    [seen] = [json.loads(v) for v in env.values()]
    assert {k: seen.get(k) for k in WORKER_MALLOC} == WORKER_MALLOC
    assert seen.get("OMP_NUM_THREADS") == "1"  # Dask's other worker settings are kept
