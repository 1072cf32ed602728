"""Device and precision resolution shared by encoders, engines and the pipeline.

One place decides what "auto" means, so that the client, the workers and the
benchmarks agree on it.
"""

from __future__ import annotations

import torch

from virnuc_hpc.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> the current CUDA device when there is one, else CPU."""
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is visible")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> fp32 on CPU (exact, compatible), fp16 on GPU. bf16 is 3-5% faster, but in the whole
    pipeline against fp32 (benchmarks/engines_pipeline.py) fp16 kept 99.9% of frame labels and bf16
    98.7% (a random classifier, most frames near P = 0.5): fp16 is the one that meets the bar."""
    if precision == "auto":
        return "fp32" if device.type == "cpu" else "fp16"
    if precision == "int8":
        return precision
    if precision not in _DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, fp16, bf16, int8 or auto")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 is not supported on CPU; use fp32 or bf16")
    return precision


def dtype_of(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def activation_precision(precision: str, device: torch.device) -> str:
    """The float precision everything but ESM-2's int8 GEMMs runs in: "int8" quantises only ESM-2's
    linear layers, around fp16 activations on a GPU (DNABERT-S runs fp16) and fp32 ones on CPU."""
    if precision != "int8":
        return precision
    return "fp16" if device.type == "cuda" else "fp32"
