"""Row-by-row cosines of two embeddings of the same frames: how check-precision and an int8 run's
self-check measure drift (a module of its own, so neither imports the other for it)."""

from __future__ import annotations

import numpy as np


def row_cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``other`` to the same row of ``reference``, in float64.

    Two zero rows agree (1.0); a zero row against a non-zero one does not (0.0). A non-finite row
    gives NaN, which fails every threshold."""
    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denominator = norm_a * norm_b
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", a, b) / denominator  # NaN stays NaN
    cos = np.where(denominator == 0, np.where((norm_a == 0) & (norm_b == 0), 1.0, 0.0), cos)
    return np.minimum(cos, 1.0)  # rounding can pass 1 by an ulp; NaN stays NaN
