"""Shared by the benchmarks: the matmul ceiling (measured in the benchmark's own process), inputs."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# Kinds of CUDA kernels, first match wins: flash kernels carry 'cutlass' in their names, so
# attention is matched before the matmuls.
KERNEL_KINDS = (("int8 matmul", re.compile(r"int8_gemm", re.IGNORECASE)),
                ("attention", re.compile(r"flash|fmha|attn", re.IGNORECASE)),
                ("matmul", re.compile(r"gemm|cutlass|nvjet|sm90_xmma|cublas|_mm_|matmul", re.IGNORECASE)),
                ("triton", re.compile(r"triton", re.IGNORECASE)))


def matmul_ceiling(n: int = 8192, reps: int = 30) -> float:
    """bf16 n^3 matmul TFLOP/s on random operands: median of timed products after warm-up."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return product_ceiling(lambda: a @ b, n, reps)


def product_ceiling(product: Callable[[], object], n: int, reps: int = 30) -> float:
    """T(FL)OP/s of an n^3 product: the median of `reps` CUDA-event timings after 5 warm-up calls."""
    for _ in range(5):
        product()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        product()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n ** 3 / float(np.median(times)) / 1e12


def random_proteins(lo: int, hi: int, n: int, seed: int) -> list[str]:
    """n random proteins with lengths uniform in [lo, hi] (seeded)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, size=n)
    letters = rng.choice(np.array(list("ACDEFGHIKLMNPQRSTVWY")), size=int(lengths.sum()))
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    return ["".join(letters[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def random_dna(n: int, length: int, seed: int) -> list[str]:
    """n random ACGT strings of one length (seeded)."""
    rng = np.random.default_rng(seed)
    rows = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, (n, length))]
    return [r.tobytes().decode() for r in rows]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, computed in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def card_slug(name: str | None = None) -> str:
    """File-name form of a GPU's name (the current CUDA device's by default): 'nvidia-h200'."""
    name = torch.cuda.get_device_name() if name is None else name
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def dnabert_flops(cfg: object, lengths: np.ndarray) -> float:
    """DNABERT-2 forward FLOPs over sequences of `lengths` tokens: the matmuls (q/k/v, output,
    gated GELU MLP: 4d^2 + 3d*i per layer and token) plus attention's 4*d per token pair."""
    d, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    lengths = lengths.astype(np.float64)
    return float((lengths * 2 * n * (4 * d * d + 3 * d * i) + lengths ** 2 * 4 * d * n).sum())


def kernel_kind(name: str) -> str:
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")


def kernel_times(run: Callable[[], object]) -> dict[str, float]:
    """CUDA kernel time (microseconds) per kernel name over one call of `run` (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
        if us and event.key and not event.key.startswith("ProfilerStep"):
            per_kernel[event.key] += us
    return dict(per_kernel)


def kernel_mix(per_kernel: dict[str, float]) -> dict[str, float]:
    """Share of kernel time per kind (KERNEL_KINDS)."""
    whole = sum(per_kernel.values()) or 1.0
    kinds: dict[str, float] = defaultdict(float)
    for name, us in per_kernel.items():
        kinds[kernel_kind(name)] += us / whole
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def timed(fn: Callable[[list[str]], np.ndarray], data: list[str]) -> tuple[float, np.ndarray, float]:
    """(seconds, result, peak GiB allocated on the GPU during the call, weights included; 0 on CPU)."""
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn(data)
    if gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out, torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0


def time_interleaved(encs: dict[str, Any], data: list[str],
                     repeats: int) -> dict[str, tuple[float, float, list[float]]]:
    """Per encoder: median seconds of `embed(data)`, peak GiB and every run's seconds; the encoders
    alternate each repeat so that drift (clocks, heat) hits them alike."""
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in encs}
    for _ in range(repeats):
        for name, enc in encs.items():
            sec, _, peak = timed(enc.embed, data)
            runs[name].append((sec, peak))
    return {name: (float(np.median([r[0] for r in rs])), max(r[1] for r in rs), [r[0] for r in rs])
            for name, rs in runs.items()}
