"""Model name or file -> ready encoder, padded or packed: the one place that chooses.

The padded modules (esm2.py, dnabert.py) hold the reference maths and file readers; the packed
modules (esm2_packed.py, dnabert_packed.py) build on them. Only this module imports both sides, so
neither padded module needs to import its packed counterpart. Re-exported as
``virnuc_hpc.encoders.load_esm2`` / ``load_dnabert``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..devices import activation_precision, dtype_of, resolve_device, resolve_precision
from ..errors import ConfigError
from .dnabert import DNABERTEncoder, load_dnabert_parts
from .esm2 import ESM2Encoder, load_esm2_model, model_name, resolve_esm2_checkpoint

if TYPE_CHECKING:
    from ..spec import EncoderSpec
    from .dnabert_packed import PackedDNABERTEncoder

CPU_PACKED_TOKENS = 1024  # packed batch on CPU (int8 checks): its block-diagonal mask is T x T

# The packed modules are imported on first use, so that a CPU run never imports FlexAttention.


def load_esm2(spec: str, device: str = "auto", precision: str = "auto",
              max_tokens: int | None = None, exact_gelu: bool = False, *,
              host_weights: bool = False, offline: bool = False, int8_smoothing: str = "weights") -> ESM2Encoder:
    """ESM2Encoder from a fair-esm checkpoint path or released model name, or a Hugging Face ESM-2
    directory or hub id (see resolve_esm2_checkpoint; both formats give the same module).

    On a GPU in fp16/bf16 (with varlen attention available) the packed, compiled encoder of
    encoders/esm2_packed.py; otherwise (CPU, fp32) the padded reference path. Both have the same
    API; `max_tokens` is then the packed token budget (default: derived from free GPU memory), and
    fc1's GELU runs in its GEMM's epilogue (tanh form) unless `exact_gelu`. Precision "int8" is
    always the packed encoder with int8 linear layers (fp16 activations on a GPU, fp32 on CPU),
    outlier channels migrated into the weights first unless ``int8_smoothing`` is "none".

    `host_weights` leaves the weights in host memory and takes the padded path, whose every weight
    is read through a module's forward: for an engine that fetches them layer by layer (ZeRO-3
    parameter offload) and then runs the encoder through ``with_engine``."""
    from .esm2_packed import PackedESM2Encoder, varlen_available

    path = resolve_esm2_checkpoint(spec, offline=offline)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if prec == "int8" and (host_weights or (dev.type == "cuda" and not varlen_available(dev))):
        raise ConfigError("precision int8 needs the native engine on a GPU of compute capability >= 8.0 "
                          "(or the CPU, for checking); use fp16 here")
    model = load_esm2_model(path, device="cpu" if host_weights else dev,
                            dtype=dtype_of(activation_precision(prec, dev)))
    name = model_name(spec, path)
    if prec == "int8":  # quantised linear layers exist only in the packed forward (CPU: masked attention)
        if dev.type == "cuda" and model.embed_dim % 16:
            raise ConfigError(f"precision int8 needs a model width that is a multiple of 16 (the int8 "
                              f"kernel's TMA rows); {name} has {model.embed_dim}")
        if dev.type == "cpu":  # the CPU's masked attention is quadratic in the packed length
            max_tokens = min(max_tokens or CPU_PACKED_TOKENS, CPU_PACKED_TOKENS)
        return PackedESM2Encoder(model, name=name, device=dev, precision=prec, max_tokens=max_tokens,
                                 path=path, gelu_epilogue=False if exact_gelu else None,
                                 int8_smoothing=int8_smoothing)
    if not host_weights and prec in ("fp16", "bf16") and varlen_available(dev):
        return PackedESM2Encoder(model, name=name, device=dev, precision=prec, max_tokens=max_tokens,
                                 path=path, gelu_epilogue=not exact_gelu)
    return ESM2Encoder(model, name=name, device=dev, precision=prec, max_tokens=max_tokens, path=path)


def _use_packed_dnabert(device: torch.device, precision: str, layout: str = "auto") -> bool:
    """Packed FlexAttention on CUDA in fp16/bf16; fp32 (the compat mode) and CPU stay padded.

    ``layout="padded"`` forces the padded SDPA path (an escape hatch: RunConfig.dnabert_layout)."""
    forced = layout.strip().lower()
    if forced not in {"auto", "packed", "padded"}:
        raise ValueError(f"the DNABERT layout must be auto, packed or padded, not {forced!r}")
    if forced == "padded":
        return False
    return device.type == "cuda" and precision != "fp32"


def load_dnabert(spec: str, device: str = "auto", precision: str = "auto",
                 max_tokens: int | None = None, layout: str = "auto", *,
                 offline: bool = False) -> DNABERTEncoder | PackedDNABERTEncoder:
    """Directory or hub id -> ready encoder. Reads only data files; never runs the hub's code.

    On a GPU in fp16/bf16 this is the packed, compiled FlexAttention encoder (dnabert_packed.py);
    otherwise the padded SDPA encoder of dnabert.py (CPU, CI, fp32 compat mode)."""
    model, tokenizer, weights = load_dnabert_parts(spec, offline=offline)
    dev = resolve_device(device)
    prec = activation_precision(resolve_precision(precision, dev), dev)  # int8 is ESM-2's alone
    if _use_packed_dnabert(dev, prec, layout):
        from .dnabert_packed import PackedDNABERTEncoder
        return PackedDNABERTEncoder(model, tokenizer, name=spec, weights=weights, device=str(dev),
                                    precision=prec, max_tokens=max_tokens)
    return DNABERTEncoder(model, tokenizer, name=spec, weights=weights, device=str(dev), precision=prec,
                          max_tokens=max_tokens)


def esm2_from_spec(encoder: "EncoderSpec", *, device: str = "auto", precision: str = "auto",
                   host_weights: bool = False) -> ESM2Encoder:
    """The roster's ESM-2 loader (encoders/roster.py): ``load_esm2`` with the worker's settings."""
    return load_esm2(str(encoder.path), device=device, precision=precision, max_tokens=encoder.max_tokens,
                     host_weights=host_weights, **dict(encoder.options))


def dnabert_from_spec(encoder: "EncoderSpec", *, device: str = "auto",
                      precision: str = "auto") -> DNABERTEncoder | PackedDNABERTEncoder:
    """The roster's DNABERT-S loader (encoders/roster.py): ``load_dnabert`` with the worker's settings."""
    return load_dnabert(str(encoder.path), device=device, precision=precision, max_tokens=encoder.max_tokens,
                        **dict(encoder.options))
