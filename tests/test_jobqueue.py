"""``virnuc_hpc.predict(client=...)`` on a dask-jobqueue ``SLURMCluster``: workers started as Slurm
jobs of the real test Slurm (CPU workers here; on a cluster the same call gets GPU jobs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from distributed import Client

import virnuc_hpc
from conftest import finished_outputs, DEMO_FASTA
from virnuc_hpc.runtime.worker import PLUGIN_NAME

pytestmark = pytest.mark.slurm


def test_predict_on_a_slurm_cluster_matches_a_local_run(slurm_up: None, reference: Path, demo_cache: Path,
                                                         tmp_path: Path) -> None:
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(cores=2, processes=1, memory="4GB", walltime="00:15:00", queue="debug",
                           job_name="virnuc-jobqueue-test", python=sys.executable,
                           log_directory=str(tmp_path / "logs"), local_directory=str(tmp_path / "dask"),
                           scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
    with cluster, Client(cluster) as client:
        script = cluster.job_script()
        assert "#SBATCH -p debug" in script and "distributed.cli.dask_worker" in script, script
        cluster.scale(jobs=1)
        client.wait_for_workers(1, timeout=240)
        config = virnuc_hpc.load_config(preset="demo", overrides={"bag_size": 8})
        result = virnuc_hpc.predict([DEMO_FASTA], tmp_path / "out", client=client, config=config)
        assert result.counts["bags"] > 1
        assert finished_outputs(tmp_path / "out") == finished_outputs(reference)
        # the caller's workers no longer hold our encoders once predict has returned
        held = client.run(lambda dask_worker: sorted(dask_worker.plugins))  # by value: workers lack this module
        assert held and all(PLUGIN_NAME not in names for names in held.values()), held
