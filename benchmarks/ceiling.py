"""The matmul ceiling every benchmark reports MFU against, measured in the benchmark's own process."""

from __future__ import annotations

import numpy as np
import torch


def matmul_ceiling(n: int = 8192, reps: int = 30) -> float:
    """bf16 n^3 matmul TFLOP/s on random operands: median of timed products after warm-up."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(5):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n ** 3 / float(np.median(times)) / 1e12
