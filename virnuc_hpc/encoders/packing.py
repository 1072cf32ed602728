"""Greedy packing under a token budget, shared by the packed ESM-2 and DNABERT encoders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_sizes(sizes: Sequence[int] | np.ndarray, budget: int) -> list[np.ndarray]:
    """Index arrays in ascending size order (stable), each summing to at most ``budget`` tokens.

    Sorting first leaves only the last batch part-filled. An item larger than the budget gets a batch
    to itself. Loops per batch, not per item (cumulative sums + searchsorted): bags hold thousands."""
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    ends = np.concatenate(([0], np.cumsum(sizes[order])))
    batches, start = [], 0
    while start < len(order):
        stop = int(np.searchsorted(ends, ends[start] + budget, side="right")) - 1
        stop = max(stop, start + 1)
        batches.append(order[start:stop])
        start = stop
    return batches
