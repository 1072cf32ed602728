"""How busy the GPU really is, sampled from NVML beside the worker's own lock-held time.

The device lock's hold time (worker.py) is an upper bound on GPU busy: the host may hold the lock
while the GPU waits for it. NVML's utilization.gpu is the share of the driver's last sample period
(1/6 s to 1 s, by product) in which any kernel ran; polled a few times a second and averaged over
the steady state it is the GPU-side figure. Absent (None) without a GPU or without nvidia-ml-py,
which dask-cuda installs.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class UtilizationSampler:
    """Polls one GPU's utilization in a daemon thread; `drain()` hands over the samples so far."""

    def __init__(self, handle: object, nvml: object, period: float = 0.2):
        self._handle, self._nvml, self._period = handle, nvml, period
        self._samples: deque[tuple[float, int]] = deque(maxlen=1_000_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="virnuc-gpu-util", daemon=True)
        self._thread.start()

    @classmethod
    def for_current_device(cls, period: float = 0.2) -> UtilizationSampler | None:
        """A sampler for this process's current CUDA device, matched to NVML by UUID (NVML numbers
        GPUs ignoring CUDA_VISIBLE_DEVICES, which dask-cuda sets per worker)."""
        try:
            import pynvml
            import torch
            if not torch.cuda.is_available():
                return None
            uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            pynvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception:  # no NVML library, no permission, MIG slice without utilization...
            return None
        return cls(handle, pynvml, period)

    def _poll(self) -> None:
        while not self._stop.wait(self._period):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu  # type: ignore[attr-defined]
            except Exception:
                return
            self._samples.append((time.time(), int(util)))

    def drain(self) -> list[tuple[float, int]]:
        """(unix time, percent busy) samples taken since the last drain."""
        out = []
        while self._samples:
            out.append(self._samples.popleft())
        return out

    def close(self) -> None:
        self._stop.set()


def mean_utilization(samples: list[tuple[float, int]], start: float, end: float) -> float | None:
    """Mean busy fraction (0..1) of the samples taken between `start` and `end` (unix time)."""
    inside = [u for t, u in samples if start <= t <= end]
    return sum(inside) / (100.0 * len(inside)) if inside else None
