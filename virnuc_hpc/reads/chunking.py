"""Split reads into the fixed-size chunks VirNucPro classifies (compat spec, section 1).

The shipped classifiers were trained on chunks cut by the original's overlap arithmetic,
so these bounds reproduce it exactly, including the quirk that the last chunk is usually
shorter than the chunk size.
"""

from __future__ import annotations


def chunk_bounds(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk of a sequence of `length` bases, as the original cuts them.

    L = 0 gives no chunk (the original crashes there); L <= c gives the whole sequence.
    Otherwise n = ceil(L / c) chunks start at i*c minus the sum of the first i back-shifts,
    where the shifts are k copies of base+1 then copies of base (spec section 1); that sum
    is i*base + min(i, k), which avoids building the shift list.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0:
        return []
    if length <= chunk_size:
        return [(0, length)]
    n = -(-length // chunk_size)
    overlap = n * chunk_size - length
    base = overlap // n
    k = overlap - base * (n - 1)
    bounds = []
    for i in range(n):
        start = i * chunk_size - (i * base + min(i, k))
        bounds.append((start, min(start + chunk_size, length)))
    return bounds


def chunk_sequence(seq_id: str, seq: str, chunk_size: int) -> list[tuple[str, str]]:
    """[(f"{seq_id}_chunk_{i+1}", subsequence), ...]; the sequence is not altered (no upper-casing)."""
    return [
        (f"{seq_id}_chunk_{i + 1}", seq[start:end])
        for i, (start, end) in enumerate(chunk_bounds(len(seq), chunk_size))
    ]
