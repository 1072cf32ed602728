"""The DeepSpeed engine: our encoders, run inside DeepSpeed's InferenceEngine or ZeRO-3.

Why this shape:
- DeepSpeed has no injection policy for ESM-2 or DNABERT-2 layers, and its rotary kernel takes one
  position offset per batch (packed proteins restart at 0). So DeepSpeed wraps *our* modules and runs
  *our* maths, its fused kernels excluded: `deepspeed.init_inference(..., replace_with_kernel_inject=False)`.
- What DeepSpeed wraps is an `EngineModule`: it owns the encoder's weights (DeepSpeed casts them to
  the run's dtype; we put the fp32 LayerNorms back, as native does) and its forward is the encoder's
  own per-batch runner, packed where the encoder packs. The engine gets it through the encoders'
  one hook, ``encoder.with_engine(name, wrap)`` (encoders/contract.py), whatever the encoder's
  class. The packed paths keep their torch.compile'd layer halves and their attention kernels;
  every batch goes through `InferenceEngine.forward`.
- DeepSpeed's CUDA graphs capture one static input signature per engine; a packed batch carries its
  own cu_seqlens/max_seqlen and length, so they are not offered.
- `zero_offload: cpu | nvme` runs ESM-2 under ZeRO-3 parameter offload (`deepspeed.initialize`
  without an optimizer, the "ZeRO-Inference" recipe): weights live in host memory (or on NVMe) and
  are fetched layer by layer by forward hooks, so a model larger than the card runs. The hooks sit
  on module forwards, hence the padded ESM-2 path (the packed path reads weight tensors directly).
  DNABERT-S (117M) never needs offload and stays on the plain engine.
- ZeRO needs a process group: each Dask worker makes its own, world size 1, on a free local port.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..devices import dtype_of, resolve_device, resolve_precision
from ..encoders.contract import Encoder
from ..encoders.roster import load_encoder
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..spec import EncoderSpec, ModelSpec


def import_deepspeed(device: torch.device) -> Any:
    """Import DeepSpeed for this device without building any op.

    On a CPU run DeepSpeed is told to use its CPU accelerator (also on a GPU node), and its
    shared-memory collective op (a C++ JIT build of ~45 s, useful only for several CPU ranks) is
    skipped: our process groups have one rank."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise RuntimeError("engine: deepspeed needs the deepspeed package "
                           "(pip install 'virnuc-hpc[deepspeed]')") from exc
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from deepspeed.accelerator import get_accelerator
    accelerator = get_accelerator().device_name()
    if accelerator != device.type:
        raise RuntimeError(f"DeepSpeed chose its {accelerator!r} accelerator for a {device.type} run; "
                           f"set DS_ACCELERATOR={device.type} before the workers start")
    return deepspeed


class EngineModule(nn.Module):
    """The module DeepSpeed wraps: holds the weights, runs the encoder's own forward (`run`)."""

    def __init__(self, model: nn.Module, run: Callable[..., Any] | None = None):
        super().__init__()
        self.model = model
        self.__dict__["run"] = run or model  # not a submodule: `model` already owns the weights

    def forward(self, *args: Any) -> Any:
        return self.run(*args)


def _fp32_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The fp32 parameters/buffers (LayerNorms in half runs, everything in fp32 runs), by name."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {name: t.data for name, t in tensors.items() if t.dtype == torch.float32}


def _restore(module: nn.Module, kept: dict[str, torch.Tensor]) -> None:
    """Put back tensors DeepSpeed's whole-module cast replaced (same objects: packed paths that
    captured them at construction keep seeing the live weights)."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for name, data in kept.items():
        tensors[name].data = data


def wrap_inference(deepspeed: Any, model: nn.Module, precision: str,
                   run: Callable[..., Any] | None = None) -> nn.Module:
    """`deepspeed.init_inference` over our module (no kernel injection), with native's dtypes kept."""
    kept = _fp32_tensors(model)
    engine = deepspeed.init_inference(EngineModule(model, run), dtype=dtype_of(precision),
                                      replace_with_kernel_inject=False, keep_module_on_host=True)
    _restore(model, kept)
    return engine


def wrap_encoder(deepspeed: Any, encoder: Encoder) -> Encoder:
    """Run an encoder's device batches through an InferenceEngine (the ``with_engine`` hook);
    returns the encoder."""
    encoder.with_engine("deepspeed", lambda model, run: wrap_inference(deepspeed, model, encoder.precision, run))
    return encoder


# --------------------------------------------------------------------------- ZeRO-3 offload

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_single_process_group(deepspeed: Any, device: torch.device) -> None:
    """This process's own group (rank 0 of 1 on 127.0.0.1): every Dask worker is independent."""
    if torch.distributed.is_initialized():
        if torch.distributed.get_world_size() != 1:
            raise RuntimeError("zero_offload runs one process group per worker; found a larger one")
    else:
        port = free_port()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                          WORLD_SIZE="1")
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               auto_mpi_discovery=False, verbose=False, rank=0, world_size=1)


def zero3_config(offload: str, *, params_per_layer: int, pin_memory: bool,
                 nvme_path: str | None = None) -> dict[str, Any]:
    """ZeRO-3 inference config: parameters offloaded, about two layers prefetched ahead.

    No fp16/bf16 section: the model is cast by us first (fp32 LayerNorms kept, as native) and
    DeepSpeed then leaves dtypes alone; its fp16 mode would recast the whole module."""
    offload_param: dict[str, Any] = {"device": offload, "pin_memory": pin_memory}
    if offload == "nvme":
        if not nvme_path:
            raise ValueError("zero_offload: nvme needs nvme_path")
        offload_param |= {"nvme_path": nvme_path, "buffer_count": 6,
                          "buffer_size": max(int(1e8), 2 * params_per_layer)}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # required by the config parser; nothing is trained
        "zero_optimization": {
            "stage": 3, "offload_param": offload_param,
            "stage3_prefetch_bucket_size": 2 * params_per_layer,
            "stage3_max_live_parameters": 3 * params_per_layer,
            "stage3_param_persistence_threshold": 100_000,
        },
        "wall_clock_breakdown": False,
    }
    return config


def esm2_params_per_layer(embed_dim: int) -> int:
    return 12 * embed_dim * embed_dim + 13 * embed_dim


def zero3_engine(deepspeed: Any, model: nn.Module, config: dict[str, Any]) -> Any:
    """`deepspeed.initialize` without an optimizer: partitions (or adopts zero.Init-partitioned)
    parameters and offloads them; forward hooks fetch each layer when it runs."""
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.module.eval().requires_grad_(False)
    return engine


def check_nvme(deepspeed: Any, nvme_path: str | None) -> None:
    """NVMe offload needs DeepSpeed's async_io op (built against libaio) and a writable directory;
    say so before loading gigabytes, rather than fail deep inside DeepSpeed."""
    from deepspeed.ops.op_builder import AsyncIOBuilder

    if not AsyncIOBuilder().is_compatible(verbose=False):
        raise RuntimeError("zero_offload: nvme needs DeepSpeed's async_io op, which needs libaio "
                           "(Debian/Ubuntu: apt install libaio-dev; conda: libaio); it is not usable "
                           "here. Use zero_offload: cpu, or install libaio and rerun.")
    path = Path(nvme_path or "")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / ".virnuc-probe").write_bytes(b"x")
        (path / ".virnuc-probe").unlink()
    except OSError as err:
        raise RuntimeError(f"nvme_path {path} is not a writable directory: {err}") from err


def load_zero(deepspeed: Any, spec: "ModelSpec", encoder_spec: "EncoderSpec", device: torch.device,
              precision: str) -> Encoder:
    """The roster encoder's padded form (its ``offload`` loader, ESM-2's), weights left on the host,
    run under ZeRO-3 parameter offload."""
    if spec.zero_offload == "nvme":
        check_nvme(deepspeed, spec.nvme_path)
    init_single_process_group(deepspeed, device)
    encoder = load_encoder(encoder_spec, device=str(device), precision=precision,
                           host_weights=True)  # LayerNorms stay fp32
    config = zero3_config(spec.zero_offload, params_per_layer=esm2_params_per_layer(encoder.dim),
                          pin_memory=device.type == "cuda", nvme_path=spec.nvme_path)
    encoder.with_engine(f"deepspeed-zero3-{spec.zero_offload}",
                        lambda model, run: zero3_engine(deepspeed, model, config))
    return encoder


def load_deepspeed(spec: "ModelSpec") -> dict[str, Encoder]:
    """The roster's encoders run by DeepSpeed; same API and maths as native. With ZeRO-3 offload,
    the encoder the roster marks ``offload`` (ESM-2) is the one offloaded."""
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    if precision == "int8":
        raise ConfigError("precision int8 runs on the native engine only (its int8 kernels are ours)")
    deepspeed = import_deepspeed(device)
    encoders: dict[str, Encoder] = {}
    for entry in spec.encoders:
        if entry.offload and spec.zero_offload != "none":
            encoders[entry.role] = load_zero(deepspeed, spec, entry, device, precision)
        else:
            encoders[entry.role] = wrap_encoder(deepspeed, load_encoder(entry, device=str(device),
                                                                        precision=precision))
    return encoders
