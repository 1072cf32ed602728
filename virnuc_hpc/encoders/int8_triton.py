"""The int8 GEMM of encoders/int8.py on CUDA: Triton, int8 tensor cores, dequantisation in the epilogue.

Why our own kernel: through torch, cuBLAS's int8 path (torch._int_mm) plus a dequantisation pass ran
at 0.3-0.8x fp16 on an H200; this kernel reads int8, accumulates in int32 registers and writes the
dequantised tile once. It is persistent (one program per SM walking the output tiles) and moves its
operands with TMA descriptors, which on Hopper ran 1.16x faster than one program per tile
(benchmarks/int8_gemm_probe.py). Imported only on CUDA (Triton ships with CUDA builds of torch).

Tile shapes are autotuned per (N, K) and per power-of-two bucket of M, so the many packed lengths of
a run share a handful of tunings.
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

GELU_CODES = {"none": 0, "tanh": 1, "erf": 2}


def _set_block_shapes(nargs: dict) -> None:
    """Autotuner pre-hook: the TMA descriptors take the tile shape of the config being run."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["w_desc"].block_shape = [bn, bk]
    nargs["c_desc"].block_shape = [bm, bn]


CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=s, num_warps=8,
                         pre_hook=_set_block_shapes)
           for m, n, s in [(128, 256, 3), (128, 256, 4), (128, 128, 4), (128, 128, 5), (256, 128, 3)]]


LARGE_M = 16384  # packed lengths from here on tune among the wide tiles, below among the 128x128 ones


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """Tune each M bucket among the tiles that can win there (halves the tunings of a cold start)."""
    wide = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 128 * 128]
    if named_args["M_BUCKET"] >= LARGE_M:
        return wide
    return [c for c in configs if c not in wide] + wide[:1]  # the square tiles and one wide one


def _tuning_options() -> dict:
    """Short timings per candidate, and the tunings kept in Triton's cache directory (the node's
    compile cache), where this Triton supports it: a cold start tunes ~40 (shape, M bucket) pairs."""
    import functools

    params = inspect.signature(triton.autotune).parameters
    options: dict = {"prune_configs_by": {"early_config_prune": _prune}}
    if "do_bench" in params:
        options["do_bench"] = functools.partial(triton.testing.do_bench, warmup=5, rep=20)
    if "cache_results" in params:
        options["cache_results"] = True
    return options


@triton.autotune(configs=CONFIGS, key=["M_BUCKET", "N", "K"], **_tuning_options())
@triton.jit
def _int8_gemm(a_desc, w_desc, c_desc, sa_ptr, sw_ptr, bias_ptr, absmax_ptr, M, N, K, M_BUCKET,
               NUM_SMS: tl.constexpr, GELU: tl.constexpr, ROW_ABSMAX: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C = gelu(A @ W.T * sa[:, None] * sw[None, :] + bias); A (M, K), W (N, K) int8 row-major.

    GELU: 0 none, 1 tanh form, 2 erf form. ROW_ABSMAX: also max |C| per row into absmax_ptr (zeroed
    by the caller), so the next layer's per-token quantisation needs no reduction pass. TMA reads
    out-of-range rows as 0 and does not write them."""
    start = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    in_group = GROUP_M * num_n      # grouped tile order: programs in flight share W tiles in L2
    for tile in tl.range(start, num_m * num_n, NUM_SMS, flatten=True):
        first_m = (tile // in_group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % in_group) % size_m
        pid_n = (tile % in_group) // size_m
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(k_tiles):
            a = a_desc.load([off_m, k * BLOCK_K])
            w = w_desc.load([off_n, k * BLOCK_K])
            acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        c = acc.to(tl.float32) * sa[:, None] * sw[None, :] + bias[None, :]
        if GELU == 1:  # 0.5 c (1 + tanh(u)) = c * sigmoid(2u), u = sqrt(2/pi) (c + 0.044715 c^3)
            c = c / (1.0 + tl.exp(-1.5957691216057308 * (c + 0.044715 * c * c * c)))
        elif GELU == 2:
            c = 0.5 * c * (1.0 + tl.math.erf(c * 0.7071067811865476))
        if ROW_ABSMAX:
            inside = (rm[:, None] < M) & (rn[None, :] < N)
            tl.atomic_max(absmax_ptr + rm, tl.max(tl.where(inside, tl.abs(c), 0.0), axis=1), mask=rm < M)
        c_desc.store([off_m, off_n], c.to(c_desc.dtype))


def int8_gemm(a: torch.Tensor, a_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor, gelu: str, row_absmax: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See int8.int8_linear: (out in bias.dtype, per-row max |out| in fp32 or None).

    a, w int8 with K a multiple of 16 (TMA's row alignment); scales float32."""
    a, w = a.contiguous(), w.contiguous()
    (M, K), N = a.shape, w.shape[0]
    c = torch.empty((M, N), device=a.device, dtype=bias.dtype)
    absmax = torch.zeros(M if row_absmax else 1, device=a.device, dtype=torch.float32)
    if M == 0:
        return c, (absmax if row_absmax else None)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    dummy = [16, 16]  # _set_block_shapes sets the real tile shapes per config
    descs = [TensorDescriptor.from_tensor(t, dummy) for t in (a, w, c)]

    def grid(meta: dict) -> tuple[int]:
        return (min(sms, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)

    _int8_gemm[grid](*descs, a_scale.float().contiguous(), w_scale, bias, absmax, M, N, K,
                     1 << max(6, (M - 1).bit_length()), NUM_SMS=sms, GELU=GELU_CODES[gelu],
                     ROW_ABSMAX=row_absmax)
    return c, (absmax if row_absmax else None)
