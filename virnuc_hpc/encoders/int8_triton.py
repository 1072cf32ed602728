"""The int8 GEMM of encoders/int8.py on CUDA: Triton, int8 tensor cores, dequantisation in the epilogue.

Why a kernel of its own: through torch, cuBLAS's int8 path (torch._int_mm) plus a dequantisation
pass runs slower than fp16; this kernel reads int8, accumulates in int32 registers and writes the
dequantised tile once. It is persistent (one program per SM walking the output tiles) and moves its
operands with TMA descriptors, which on Hopper beats one program per tile
(benchmarks/probes/int8_gemm_probe.py measures both). Imported only on CUDA (Triton ships with CUDA builds of torch).

One tile shape serves every packed length (``TILE``): it is the fastest candidate, or close to it,
from 8,192 tokens up, where nearly all of a run's time is, and a few % behind at short lengths, where
a GEMM takes a fraction of a millisecond (benchmarks/probes/int8_tiles.py compares the candidates). So a cold
start compiles two GEMM kernels (with and without fc1's GELU and row maxima) and tunes nothing:
autotuning over every (shape, length) pair would cost tens of seconds of start-up.

The activation quantisation that cannot fuse into a LayerNorm (the attention output before out_proj,
fc1's output before fc2) is ``quantize_rows`` here: a bandwidth-bound row kernel that gets close to
a device copy's bytes per second, where TorchInductor's standalone kernels for it stay well below
(the same benchmark measures both).

The rest of the int8 forward is two more small kernels, so that it needs no torch.compile (graph
compilation would cost a cold start many seconds more than these few kernels): ``layer_norm_quantize`` (residual
add, LayerNorm in fp32 and per-row quantisation, each row read once; as fast as TorchInductor's
fusion of the same graph) and ``rotary_qk`` (q and k read out of the fused q/k/v output, rotated in
fp32, written contiguous for the attention kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.tools.tensor_descriptor import TensorDescriptor

GELU_CODES = {"none": 0, "tanh": 1, "erf": 2}
# int8.QMAX and int8.TINY, for the kernels (int8 imports this module, not the reverse; a GPU test
# checks that they agree)
QMAX: tl.constexpr = tl.constexpr(127.0)
TINY: tl.constexpr = tl.constexpr(1e-12)


@dataclass(frozen=True)
class Tile:
    """One program's output tile and pipeline: Triton compiles one kernel per Tile (and epilogue)."""

    block_m: int
    block_n: int
    block_k: int
    stages: int
    warps: int = 8


TILE = Tile(128, 256, 128, 3)


@triton.jit
def _int8_gemm(a_desc, w_desc, c_desc, sa_ptr, sw_ptr, bias_ptr, absmax_ptr, M, N, K,
               NUM_SMS: tl.constexpr, GELU: tl.constexpr, ROW_ABSMAX: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
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
        rm, rn = off_m + tl.arange(0, BLOCK_M), off_n + tl.arange(0, BLOCK_N)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        c = acc.to(tl.float32) * sa[:, None] * sw[None, :] + bias[None, :]
        if GELU == 1:  # 0.5 c (1 + tanh(u)) = c * sigmoid(2u), u = sqrt(2/pi) (c + 0.044715 c^3); the
            # approximate division (2 ulp) makes fc1 a few % faster (benchmarks/probes/int8_ws_probe.py)
            c = libdevice.fast_dividef(c, 1.0 + tl.exp(-1.5957691216057308 * (c + 0.044715 * c * c * c)))
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

    a, w int8 with K a multiple of 16 (TMA's row alignment); scales float32. ``tile``: TILE unless given
    (benchmarks/probes/int8_tiles.py)."""
    a, w, a_scale = a.contiguous(), w.contiguous(), a_scale.float().contiguous()
    (M, K), N = a.shape, w.shape[0]
    tile = tile or TILE
    c = torch.empty((M, N), device=a.device, dtype=bias.dtype)
    absmax = torch.zeros(M, device=a.device, dtype=torch.float32) if row_absmax else None
    if M == 0:
        return c, absmax
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    descs = [TensorDescriptor.from_tensor(a, [tile.block_m, tile.block_k]),
             TensorDescriptor.from_tensor(w, [tile.block_n, tile.block_k]),
             TensorDescriptor.from_tensor(c, [tile.block_m, tile.block_n])]
    grid = (min(sms, triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n)),)
    _int8_gemm[grid](*descs, a_scale, w_scale, bias, a_scale if absmax is None else absmax, M, N, K,
                     NUM_SMS=sms, GELU=GELU_CODES[gelu], ROW_ABSMAX=row_absmax,
                     BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, GROUP_M=8,
                     num_stages=tile.stages, num_warps=tile.warps)
    return c, absmax


@triton.jit
def _quantize_rows(x_ptr, scale_in_ptr, scale_ptr, out_ptr, M, D, KNOWN_SCALE: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK_R rows of x (M, D) to int8: rint(x * (1 / scale)) clamped to +-127, and the scales to
    scale_ptr. KNOWN_SCALE: the scales are read from scale_in_ptr; else found first (max |x| / 127,
    floored), the second read of the rows coming from L2. Divisions round to nearest, as torch's on
    the CPU, so both give the same int8 values."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    inside = rows < M
    base = rows.to(tl.int64)[:, None] * D
    if KNOWN_SCALE:
        scale = tl.load(scale_in_ptr + rows, mask=inside, other=1.0)
    else:
        amax = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for d in range(0, D, BLOCK_D):
            cols = d + tl.arange(0, BLOCK_D)
            x = tl.load(x_ptr + base + cols[None, :], mask=inside[:, None] & (cols[None, :] < D), other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
        scale = tl.math.div_rn(tl.maximum(amax, TINY), tl.full((BLOCK_R,), QMAX, tl.float32))
    tl.store(scale_ptr + rows, scale, mask=inside)
    inv = tl.math.div_rn(tl.full((BLOCK_R,), 1.0, tl.float32), scale)
    for d in range(0, D, BLOCK_D):
        cols = d + tl.arange(0, BLOCK_D)
        mask = inside[:, None] & (cols[None, :] < D)
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        q = tl.clamp(libdevice.rint(x * inv[:, None]), -QMAX, QMAX)
        tl.store(out_ptr + base + cols[None, :], q.to(tl.int8), mask=mask)


def quantize_rows(x: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """See int8.quantize: (int8 values, float32 scales: a new tensor, found here unless given)."""
    x = x.contiguous()
    M, D = x.shape
    out = torch.empty((M, D), device=x.device, dtype=torch.int8)
    scale_out = torch.empty(M, device=x.device, dtype=torch.float32)
    known = scale is not None
    scale_in = scale.float().contiguous() if known else scale_out
    if M:
        block_r = 8
        _quantize_rows[(triton.cdiv(M, block_r),)](x, scale_in, scale_out, out, M, D, KNOWN_SCALE=known,
                                                    BLOCK_R=block_r, BLOCK_D=512, num_warps=4)
    return out, scale_out


@triton.jit
def _layer_norm_quantize(x_ptr, r_ptr, sum_ptr, w_ptr, b_ptr, scale_ptr, out_ptr, M, eps,
                         D: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK_R rows in one pass, each row held in registers: RESIDUAL: s = x + r written to sum_ptr
    (rounded to the residual stream's dtype, as torch's add), else s = x; then LayerNorm of s in fp32
    and its per-row int8 quantisation (scale max |h| / 127, values rint(h * (1 / scale)))."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    inside = rows < M
    mask = inside[:, None] & (cols[None, :] < D)
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    s = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if RESIDUAL:
        s = (s.to(tl.float32) + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(
            sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + offs, s, mask=mask)
    s = s.to(tl.float32)
    mean = tl.sum(s, axis=1) / D
    centred = tl.where(mask, s - mean[:, None], 0.0)
    rstd = libdevice.rsqrt(tl.sum(centred * centred, axis=1) / D + eps)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    h = centred * rstd[:, None] * w[None, :] + b[None, :]
    amax = tl.max(tl.where(mask, tl.abs(h), 0.0), axis=1)
    scale = tl.math.div_rn(tl.maximum(amax, TINY), tl.full((BLOCK_R,), QMAX, tl.float32))
    tl.store(scale_ptr + rows, scale, mask=inside)
    inv = tl.math.div_rn(tl.full((BLOCK_R,), 1.0, tl.float32), scale)
    q = tl.clamp(libdevice.rint(h * inv[:, None]), -QMAX, QMAX)
    tl.store(out_ptr + offs, q.to(tl.int8), mask=mask)


def layer_norm_quantize(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                        bias: torch.Tensor, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See int8.layer_norm_quantize: (x + residual, or x itself; int8 values; float32 scales)."""
    x = x.contiguous()
    M, D = x.shape
    total = torch.empty_like(x) if residual is not None else None
    out = torch.empty((M, D), device=x.device, dtype=torch.int8)
    scale = torch.empty(M, device=x.device, dtype=torch.float32)
    if M:
        block_d = triton.next_power_of_2(D)
        block_r = max(1, min(4, 4096 // block_d))
        r = residual.contiguous() if residual is not None else x
        _layer_norm_quantize[(triton.cdiv(M, block_r),)](
            x, r, total if total is not None else x, weight, bias, scale, out, M, eps, D=D,
            RESIDUAL=residual is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=8)
    return (x if total is None else total), out, scale


@triton.jit
def _rotary(qkv_ptr, cos_ptr, sin_ptr, qk_ptr, T, D: tl.constexpr, HALF: tl.constexpr,
            BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """Rotate-half rotary of q (columns 0..D, program_id(2) = 0) or k (D..2D, 1) of a (T, 3D) q/k/v
    matrix into qk[program_id(2)], a contiguous (T, D) matrix of a (2, T, D) output: per head of
    2 * HALF columns, (x1, x2) -> (x1 cos1 - x2 sin1, x2 cos2 + x1 sin2) in fp32, with cos/sin
    (T, 2 * HALF) fp32."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)   # pair index over the D / 2 pairs
    which = tl.program_id(2)
    mask = (t < T)[:, None] & (p < D // 2)[None, :]
    j = p % HALF
    col = (p // HALF) * (2 * HALF) + j
    row = t.to(tl.int64)[:, None]
    src = qkv_ptr + row * (3 * D) + which * D + col[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    trig = row * (2 * HALF) + j[None, :]
    c1 = tl.load(cos_ptr + trig, mask=mask, other=0.0)
    c2 = tl.load(cos_ptr + trig + HALF, mask=mask, other=0.0)
    s1 = tl.load(sin_ptr + trig, mask=mask, other=0.0)
    s2 = tl.load(sin_ptr + trig + HALF, mask=mask, other=0.0)
    dst = qk_ptr + which.to(tl.int64) * T * D + row * D + col[None, :]
    tl.store(dst, (x1 * c1 - x2 * s1).to(qk_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * c2 + x1 * s2).to(qk_ptr.dtype.element_ty), mask=mask)


def rotary_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """See esm2_packed.rotary_qk: q and k of a (T, 3D) q/k/v matrix, rotated, each (T, D) contiguous."""
    qkv, cos, sin = qkv.contiguous(), cos.float().contiguous(), sin.float().contiguous()
    T, D = qkv.shape[0], qkv.shape[1] // 3
    half = cos.shape[1] // 2
    qk = torch.empty((2, T, D), device=qkv.device, dtype=qkv.dtype)
    if T:
        block_t, block_p = 16, 256
        _rotary[(triton.cdiv(T, block_t), triton.cdiv(D // 2, block_p), 2)](
            qkv, cos, sin, qk, T, D=D, HALF=half, BLOCK_T=block_t, BLOCK_P=block_p, num_warps=4)
    return qk[0], qk[1]
