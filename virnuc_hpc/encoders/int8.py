"""int8 linear layers for ESM-2 (precision "int8"): half the bytes and twice the tensor-core rate of fp16.

Why: ESM-2 3B's linear layers are nearly all of its GPU time, and fp16 tensor cores run them close
to their ceiling; Hopper's int8 tensor cores run about twice as fast. The scheme (the
fidelity and speed measured in benchmarks/esm2_throughput.py; docs/precision.md):
- weights are quantised once at load, symmetric, one scale per output channel (row of W);
- activations are quantised per token (row), symmetric. After a LayerNorm (before q/k/v and fc1)
  ``layer_norm_quantize`` does the residual add, the LayerNorm and the quantisation in one pass (one
  kernel of ours on CUDA), so the normalised row is quantised straight from fp32. The other two
  inputs, the attention output before out_proj and fc1's output before fc2, go through ``quantize``,
  one bandwidth-bound kernel of ours on CUDA (faster than TorchInductor's standalone kernels for
  them: benchmarks/probes/int8_tiles.py);
- the GEMM ``int8_linear`` multiplies int8 x int8 into int32 and dequantises in its epilogue:
  ``acc * row_scale * column_scale + bias``, optionally GELU (tanh form like the fp16 path's fused
  epilogue, or erf with exact_gelu), written in the bias's dtype; for fc1 the epilogue also records
  each row's max |value| (``int8_linear_absmax``), so fc2's input is quantised without a reduction.
  On CUDA both are our Triton kernels (encoders/int8_triton.py); elsewhere torch (torch._int_mm for
  the GEMM), so CPU tests check the very maths the GPU runs (integer products are exact).
Attention, LayerNorm statistics, rotary, the residual stream and pooling stay in fp16/fp32.

Outlier channels: trained transformers have a few hidden dimensions 10-100x larger than the rest, and
one scale per token then leaves the other dimensions a handful of int8 steps. ``smoothing_scales``
(SmoothQuant's migration, alpha 0.5) divides each input channel by s_j and multiplies the weight's
column j by s_j, an exact rewrite of the layer that balances the two operands' ranges; the division
is folded into the LayerNorm before q/k/v and fc1 and into v_proj's rows before out_proj, so it costs
nothing at run time. The channel ranges are estimated from the weights alone (``layer_norm_range``,
``value_range``): the same scales on every worker and every resume, and nothing to calibrate or store.
fc2's input comes through GELU, where no exact migration exists; it keeps per-token scales, and the
run's self-check (fp16 fallback) guards what smoothing cannot reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

QMAX = 127          # symmetric int8: -127..127 (-128 unused, so that negation is exact)
TINY = 1e-12        # scale floor: an all-zero row quantises to zeros, not NaN


@dataclass(frozen=True)
class Int8Weight:
    """One quantised linear layer: W ~= values * scale[:, None]; bias kept in the activation dtype."""

    values: Tensor   # (N, K) int8, contiguous
    scale: Tensor    # (N,) float32
    bias: Tensor     # (N,) activation dtype

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.values, self.scale, self.bias


def quantize_weight(weight: Tensor, bias: Tensor, dtype: torch.dtype) -> Int8Weight:
    """Per-output-channel symmetric int8 of a (N, K) weight, computed in fp32."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(TINY) / QMAX
    values = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
    return Int8Weight(values, scale.contiguous(), bias.detach().to(dtype).contiguous())


def concat(parts: list[Int8Weight]) -> Int8Weight:
    """Stack layers that read the same input (q, k, v) into one wider GEMM; per-row scales stay valid."""
    return Int8Weight(torch.cat([p.values for p in parts]).contiguous(),
                      torch.cat([p.scale for p in parts]).contiguous(), torch.cat([p.bias for p in parts]).contiguous())


SMOOTHINGS = ("weights", "none")  # "weights": smoothing_scales from the weights; "none": plain per-token
SMOOTH_ALPHA = 0.5
SMOOTH_LIMIT = 1e4  # smoothing factors are clipped to [1 / limit, limit]


def smoothing_scales(activation_range: Tensor, weight: Tensor, alpha: float = SMOOTH_ALPHA) -> Tensor:
    """SmoothQuant's per-input-channel factors s_j = range(x_j)^alpha / max_i |W_ij|^(1 - alpha):
    x / s and W * s have balanced column ranges. ``weight`` is (N, K), ``activation_range`` (K,);
    a channel with no range on either side keeps s = 1."""
    a = activation_range.float().abs()
    w = weight.float().abs().amax(dim=0)
    s = a.pow(alpha) / w.pow(1 - alpha)
    ok = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp(1 / SMOOTH_LIMIT, SMOOTH_LIMIT)


def layer_norm_range(weight: Tensor, bias: Tensor) -> Tensor:
    """A LayerNorm output's range per channel from its affine parameters: |gamma_j| + |beta_j|
    (the normalised input has unit variance per token)."""
    return weight.float().abs() + bias.float().abs()


def value_range(v_weight: Tensor, v_bias: Tensor, ln_weight: Tensor, ln_bias: Tensor) -> Tensor:
    """The range of attention's output per channel (a convex mix of the values v = W_v LN(x) + b_v):
    the spread of W_v gamma over unit-variance inputs plus v's offset W_v beta + b_v."""
    w = v_weight.float()
    return (w * ln_weight.float()[None, :]).norm(dim=1) + (w @ ln_bias.float() + v_bias.float()).abs()


def absmax_scale(absmax: Tensor) -> Tensor:
    """The per-row scale of rows whose max |x| is known: max |x| / 127, floored."""
    return absmax.clamp_min(TINY) / QMAX


def quantize_scaled(x: Tensor, scale: Tensor) -> Tensor:
    """Rows of x in int8 at given scales: round-half-even of x * (1 / scale), within +-127."""
    return torch.round(x.float() * (1.0 / scale)[:, None]).clamp(-QMAX, QMAX).to(torch.int8)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row (per-token) symmetric int8 of a 2-D activation: (values int8, scale float32 (M,))."""
    xf = x.float()
    scale = absmax_scale(xf.abs().amax(dim=-1))
    return quantize_scaled(xf, scale), scale


def layer_norm_quantize(x: Tensor, residual: Tensor | None, weight: Tensor, bias: Tensor,
                        eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The residual add (if ``residual``), the LayerNorm after it and its per-token quantisation:
    (x + residual, or x itself; int8 values; float32 scales). On CUDA one pass of ours over the
    rows (int8_triton.layer_norm_quantize), each row read once; elsewhere torch, the same maths."""
    if x.is_cuda:
        from .int8_triton import layer_norm_quantize as layer_norm_quantize_cuda

        return layer_norm_quantize_cuda(x, residual, weight, bias, eps)
    total = x if residual is None else x + residual
    # LayerNorm in fp32 (as layers.layer_norm_fp32), quantised straight from fp32
    return (total, *quantize_rows(F.layer_norm(total.float(), (total.shape[-1],), weight, bias, eps)))


GELUS = ("none", "tanh", "erf")


@torch.library.custom_op("virnuc_hpc::int8_linear", mutates_args=())
def int8_linear(a: Tensor, a_scale: Tensor, w: Tensor, w_scale: Tensor, bias: Tensor,
                gelu: str = "none") -> Tensor:
    """gelu((a @ w.T) * a_scale[:, None] * w_scale + bias) in bias.dtype; gelu is "none", "tanh"
    (the approximation) or "erf" (exact).

    a (M, K) int8 per-row quantised, w (N, K) int8 per-row quantised. A custom op, so a compiled
    graph (a benchmark's, a user's) keeps it as one opaque call."""
    if a.is_cuda:
        from .int8_triton import int8_gemm

        return int8_gemm(a, a_scale, w, w_scale, bias, gelu)[0]
    return dequantize(torch._int_mm(a.contiguous(), w.t()), a_scale, w_scale, bias, gelu)


@int8_linear.register_fake
def _(a: Tensor, a_scale: Tensor, w: Tensor, w_scale: Tensor, bias: Tensor, gelu: str = "none") -> Tensor:
    return a.new_empty((a.shape[0], w.shape[0]), dtype=bias.dtype)


@torch.library.custom_op("virnuc_hpc::int8_linear_absmax", mutates_args=())
def int8_linear_absmax(a: Tensor, a_scale: Tensor, w: Tensor, w_scale: Tensor, bias: Tensor,
                       gelu: str = "none") -> tuple[Tensor, Tensor]:
    """int8_linear and, from the same epilogue, each output row's max |value| (fp32): the next
    GEMM's per-token scale without a reduction pass over the (wide) output."""
    if a.is_cuda:
        from .int8_triton import int8_gemm

        return int8_gemm(a, a_scale, w, w_scale, bias, gelu, row_absmax=True)
    out = dequantize(torch._int_mm(a.contiguous(), w.t()), a_scale, w_scale, bias, gelu)
    return out, out.float().abs().amax(dim=1)


@int8_linear_absmax.register_fake
def _(a: Tensor, a_scale: Tensor, w: Tensor, w_scale: Tensor, bias: Tensor,
      gelu: str = "none") -> tuple[Tensor, Tensor]:
    return (a.new_empty((a.shape[0], w.shape[0]), dtype=bias.dtype),
            a.new_empty((a.shape[0],), dtype=torch.float32))


@torch.library.custom_op("virnuc_hpc::quantize", mutates_args=())
def quantize(x: Tensor, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """quantize_rows as one kernel on CUDA: (values int8, scale float32 (M,)); ``scale``: the rows'
    scales if already known (absmax_scale of int8_linear_absmax's maxima), else found here. The
    scales come back as a new tensor (a custom op's outputs may not alias its inputs)."""
    if x.is_cuda:
        from .int8_triton import quantize_rows as quantize_cuda

        return quantize_cuda(x, scale)
    if scale is None:
        return quantize_rows(x)
    return quantize_scaled(x, scale), scale.float().clone()


@quantize.register_fake
def _(x: Tensor, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)


def dequantize(acc: Tensor, a_scale: Tensor, w_scale: Tensor, bias: Tensor, gelu: str = "none") -> Tensor:
    """The GEMM epilogue in torch (the reference for the Triton kernel's)."""
    if gelu not in GELUS:
        raise ValueError(f"gelu must be one of {GELUS}, not {gelu!r}")
    y = acc.float() * a_scale[:, None] * w_scale[None, :] + bias.float()
    if gelu != "none":
        y = F.gelu(y, approximate="tanh" if gelu == "tanh" else "none")
    return y.to(bias.dtype)


def linear(x: Tensor, weight: Int8Weight, gelu: str = "none") -> Tensor:
    """An fp activation through a quantised layer (quantisation unfused: for tests and small paths)."""
    return int8_linear(*quantize_rows(x), *weight.tensors(), gelu)
