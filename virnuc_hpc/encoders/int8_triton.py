"""The int8 GEMM of encoders/int8.py on CUDA: Triton, int8 tensor cores, dequantisation in the epilogue.

Why our own kernel: through torch, cuBLAS's int8 path (torch._int_mm) plus a dequantisation pass ran
at 0.3-0.8x fp16 on an H200; this kernel reads int8, accumulates in int32 registers and writes the
dequantised tile once. It is persistent (one program per SM walking the output tiles) and moves its
operands with TMA descriptors, which on Hopper ran 1.16x faster than one program per tile
(benchmarks/int8_gemm_probe.py). Imported only on CUDA (Triton ships with CUDA builds of torch).

Tile shapes follow a fixed rule (``pick_tile``) measured on an H200 for every power-of-two packed
length (benchmarks/int8_tiles.py) rather than Triton's autotuner: autotuning ~40 (shape, length)
pairs and compiling every candidate cost a cold start 30 s, for tiles the rule picks anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.tools.tensor_descriptor import TensorDescriptor

GELU_CODES = {"none": 0, "tanh": 1, "erf": 2}


@dataclass(frozen=True)
class Tile:
    """One program's output tile and pipeline: Triton compiles one kernel per Tile (and epilogue)."""

    block_m: int
    block_n: int
    block_k: int
    stages: int
    warps: int = 8


SQUARE, WIDE = Tile(128, 128, 128, 4), Tile(128, 256, 128, 3)
SQUARE_FP, WIDE_FP = Tile(128, 128, 128, 3), Tile(128, 256, 64, 4)  # fp16 A: twice the bytes per stage
WIDE_FROM = 16384   # packed lengths from here on use the wide tiles (benchmarks/int8_tiles.py)


def pick_tile(m: int, fp_input: bool) -> Tile:
    """The tile for an M-row GEMM; ``fp_input``: A arrives in fp16/bf16 and is quantised in the kernel."""
    if fp_input:
        return WIDE_FP if m >= WIDE_FROM else SQUARE_FP
    return WIDE if m >= WIDE_FROM else SQUARE


def warm_up_lengths(budget: int) -> list[int]:
    """Packed lengths that, run once each, compile every tile a budget's batches can pick."""
    return sorted({64, budget} | ({WIDE_FROM} if WIDE_FROM < budget else set()))


@triton.jit
def _int8_gemm(a_desc, w_desc, c_desc, sa_ptr, sw_ptr, bias_ptr, absmax_ptr, M, N, K,
               NUM_SMS: tl.constexpr, GELU: tl.constexpr, ROW_ABSMAX: tl.constexpr, A_FP: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C = gelu(A @ W.T * sa[:, None] * sw[None, :] + bias); A (M, K), W (N, K) int8 row-major.

    GELU: 0 none, 1 tanh form, 2 erf form. ROW_ABSMAX: also max |C| per row into absmax_ptr (zeroed
    by the caller), so the next layer's per-token quantisation needs no reduction pass. A_FP: A is
    fp16/bf16 and each tile is quantised here, rint(a * (1 / sa)) clamped to +-127, as
    int8.quantize_scaled does, which saves a pass over A. TMA reads out-of-range rows as 0 and does not
    write them."""
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
        rm = off_m + tl.arange(0, BLOCK_M)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=1.0)
        inv = tl.math.div_rn(tl.full((BLOCK_M,), 1.0, tl.float32), sa)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(k_tiles):
            a = a_desc.load([off_m, k * BLOCK_K])
            if A_FP:
                a = tl.clamp(libdevice.rint(a.to(tl.float32) * inv[:, None]), -127.0, 127.0).to(tl.int8)
            w = w_desc.load([off_n, k * BLOCK_K])
            acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
        rn = off_n + tl.arange(0, BLOCK_N)
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
              bias: torch.Tensor, gelu: str, row_absmax: bool = False, tile: Tile | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See int8.int8_linear: (out in bias.dtype, per-row max |out| in fp32 or None).

    a int8, or fp16/bf16 to be quantised per row by ``a_scale`` in the kernel (int8.int8_linear_scaled);
    w int8 with K a multiple of 16 (TMA's row alignment); scales float32. ``tile``: pick_tile's unless
    given (benchmarks)."""
    a, w = a.contiguous(), w.contiguous()
    (M, K), N = a.shape, w.shape[0]
    fp_input = a.dtype != torch.int8
    tile = tile or pick_tile(M, fp_input)
    c = torch.empty((M, N), device=a.device, dtype=bias.dtype)
    absmax = torch.zeros(M if row_absmax else 1, device=a.device, dtype=torch.float32)
    if M == 0:
        return c, (absmax if row_absmax else None)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    descs = [TensorDescriptor.from_tensor(a, [tile.block_m, tile.block_k]),
             TensorDescriptor.from_tensor(w, [tile.block_n, tile.block_k]),
             TensorDescriptor.from_tensor(c, [tile.block_m, tile.block_n])]
    grid = (min(sms, triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n)),)
    _int8_gemm[grid](*descs, a_scale.float().contiguous(), w_scale, bias, absmax, M, N, K,
                     NUM_SMS=sms, GELU=GELU_CODES[gelu], ROW_ABSMAX=row_absmax, A_FP=fp_input,
                     BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, GROUP_M=8,
                     num_stages=tile.stages, num_warps=tile.warps)
    return c, (absmax if row_absmax else None)
