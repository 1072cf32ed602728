"""Small pieces of model maths both encoders share: LayerNorm in fp32, the attention callable.

Why fp32: in fp16/bf16 a LayerNorm's mean and variance lose digits that the next layers amplify; the
released models' LayerNorm parameters are therefore kept in fp32 and the normalisation is computed
in fp32 whatever the activation dtype, then cast back. Every LayerNorm of both encoders, padded,
packed and compiled, goes through ``layer_norm_fp32``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Attention over projected q, k, v (..., tokens, heads, head_dim) -> context of the same shape.

Which token sees which (padding, packing, ALiBi) is the callable's business, so one layer
implementation serves the padded and the packed layouts."""


def layer_norm_fp32(x: Tensor, weight: Tensor, bias: Tensor, eps: float,
                    residual: Tensor | None = None) -> Tensor:
    """LN(x) or LN(x + residual), accumulated in fp32 with fp32 ``weight``/``bias``; x's dtype out.

    Explicit upcasts: CUDA layer_norm refuses half input with fp32 parameters, and torch.compile
    fuses the casts into the normalisation kernel."""
    h = x.float() if residual is None else x.float() + residual.float()
    return F.layer_norm(h, (x.shape[-1],), weight, bias, eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, same state-dict names) computed by ``layer_norm_fp32``."""

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_fp32(x, self.weight.float(), self.bias.float(), self.eps)


def cast_keeping_fp32_layer_norms(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move ``model`` to ``device`` in ``dtype``, then put its nn.LayerNorm parameters back in fp32
    (in place; returns the model). The parameters pass through ``dtype`` on the way: DNABERT's
    features are validated against exactly that rounding."""
    model = model.to(device, dtype)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.float()
    return model
