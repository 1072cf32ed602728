"""A tiny encoder for roster tests: 3-mer counts of a nucleotide sequence through a fixed random
projection to ``WIDTH`` columns. Deterministic and torch-free, so a test shows that a roster entry
is all another encoder needs (encoders/roster.py), without a model file."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from virnuc_hpc.encoders.roster import DNABERT, ESM2, RosterEntry

WIDTH = 8
K = 3
SEED = 0
KMERS = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=K))}


class KmerEncoder:
    """Nucleotide strings -> (N, WIDTH) float32: normalised 3-mer counts times a fixed matrix."""

    dim = WIDTH
    engine = "native"

    def __init__(self, device: str = "cpu", precision: str = "fp32"):
        self.device, self.precision = device, precision
        self.projection = np.random.default_rng(SEED).standard_normal((len(KMERS), WIDTH)).astype(np.float32)
        self.stats: dict[str, int] = {"sequences": 0, "batches": 0}

    def counts(self, sequence: str) -> np.ndarray:
        row = np.zeros(len(KMERS), np.float32)
        text = sequence.upper()
        for i in range(len(text) - K + 1):
            index = KMERS.get(text[i:i + K])
            if index is not None:
                row[index] += 1
        return row / max(1.0, float(row.sum()))

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        self.stats["sequences"] += len(sequences)
        self.stats["batches"] += 1
        if not len(sequences):
            return np.zeros((0, WIDTH), np.float32)
        return np.stack([self.counts(s) for s in sequences]) @ self.projection

    def warm_up(self) -> None:
        """Nothing to compile."""

    def with_engine(self, name: str, wrap: Any) -> None:
        self.engine = name  # no device work for an engine to take over


def load_kmer_encoder(encoder: Any, *, device: str = "auto", precision: str = "auto") -> KmerEncoder:
    """The roster loader (``module:function``): the encoder needs no model file."""
    return KmerEncoder(device=device, precision=precision)


KMER = RosterEntry(role="kmer", loader=f"{__name__}:load_kmer_encoder", sequences="nucleotide",
                   source="kmer3", title="3-mer projection", width=WIDTH)

#: The standard roster with the k-mer encoder's columns after ESM-2's.
KMER_ROSTER = (DNABERT, ESM2, KMER)
