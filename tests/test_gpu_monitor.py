"""The NVML utilization sampler and the steady-state mean (NVML itself is stood in for: CI has no GPU)."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

from virnuc_hpc.runtime.gpu_monitor import UtilizationSampler, mean_utilization


class FakeNVML:
    """nvmlDeviceGetUtilizationRates for one handle: 100, 0, 100, 0, ... percent."""

    def __init__(self) -> None:
        self.values = itertools.cycle([100, 0])

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
        assert handle == "gpu0"
        return SimpleNamespace(gpu=next(self.values))


def test_sampler_collects_and_drains():
    sampler = UtilizationSampler("gpu0", FakeNVML(), period=0.01)
    time.sleep(0.3)
    samples = sampler.drain()
    assert len(samples) >= 5
    assert [u for _, u in samples[:4]] == [100, 0, 100, 0]
    assert all(a[0] <= b[0] for a, b in zip(samples, samples[1:]))  # in time order
    sampler.close()
    time.sleep(0.05)
    sampler.drain()
    time.sleep(0.1)
    assert sampler.drain() == []  # the polling thread has stopped


def test_mean_utilization_uses_only_the_window():
    samples = [(1.0, 100), (2.0, 50), (3.0, 0), (4.0, 100)]
    assert mean_utilization(samples, 2.0, 3.0) == 0.25
    assert mean_utilization(samples, 0.0, 10.0) == 0.625
    assert mean_utilization(samples, 5.0, 6.0) is None
