"""Calls from classifier probabilities: the one rule every table follows, without torch.

Kept apart from `classifier` (which needs torch to load and run the MLP) so that the client,
the tables and anyone reading outputs never import torch.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 2  # column 0 = others, column 1 = virus
LABELS = ("others", "virus")


def labels_from_proba(proba: np.ndarray) -> np.ndarray:
    """'virus' iff P(virus) > P(others); an exact tie is 'others', as torch.max picks the first index."""
    proba = np.asarray(proba)
    if proba.ndim != 2 or proba.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected probabilities of shape (N, 2), got {proba.shape}")
    return np.where(proba[:, 1] > proba[:, 0], LABELS[1], LABELS[0])
