"""``--dry-run``: what a run would be, from the head of each input; no model loaded, nothing written.

Why: on a shared cluster a user sizes the job (GPU hours, disk quota) before submitting it. The
head of each file (its first records, parsed and translated exactly as a run would) gives reads per
byte, chunks, frames and tokens per read; the file's size (and, for compressed files, the
decompression ratio of its first megabytes) scales that to the whole file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from virnuc_hpc.config import RunConfig
from virnuc_hpc.reads.bags import records_per_bag
from virnuc_hpc.reads.sizing import estimate_file

#: ESM-2 3B and DNABERT-S tokens/s of one GPU at fp16, end to end in the pipeline (H100/H200,
#: benchmarks/results: pipeline_scaling and esm2_throughput); used only for the estimate.
ESM2_3B_TOKENS_PER_S = 92_000
#: precision int8: fp16's rate x 1.41, the ratio of the embed stages of two 1M-read CLI runs on one
#: H200 (fp16 434.9 s, int8 309.1 s; benchmarks/results/cli_end_to_end-nvidia-h200-{run2,int8-r2}.json)
ESM2_3B_INT8_TOKENS_PER_S = 129_000
DNABERT_S_TOKENS_PER_S = 1_400_000
DNABERT_BASES_PER_TOKEN = 4.5  # DNABERT-S's BPE tokens are 4-5 bases on average

#: Bag-file bytes per frame besides the features (ids, probabilities, table parts), measured on
#: 150-bp reads (README, "Features").
OVERHEAD_BYTES_PER_FRAME = 160
FEATURE_BYTES = {"float32": 4 * 3328, "float16": 2 * 3328, "none": 0}


def gpu_seconds(protein_tokens: float, dna_bases: float, precision: str) -> float:
    """One H100/H200's seconds for the ESM-2 3B tokens and DNABERT-S bases (int8: ESM-2's rate)."""
    esm_rate = ESM2_3B_INT8_TOKENS_PER_S if precision == "int8" else ESM2_3B_TOKENS_PER_S
    return protein_tokens / esm_rate + dna_bases / DNABERT_BASES_PER_TOKEN / DNABERT_S_TOKENS_PER_S


def dry_run(inputs: Sequence[str], config: RunConfig, *, samplesheet: str | None = None,
            classify: bool = True) -> str:
    """The estimate as a table for the terminal."""
    from virnuc_hpc.runtime.pipeline import resolve_samples

    samples = resolve_samples(inputs, samplesheet)
    rows, totals = [], {"reads": 0.0, "chunks": 0.0, "frames": 0.0, "bags": 0, "tokens": 0.0, "dna": 0.0}
    for sample in samples:
        for file in sample.files:
            e = estimate_file(file, config.expected_length)
            reads = e.head.records * e.scale
            frames = e.head.frames * e.scale
            bags = math.ceil(reads / records_per_bag(e.head, config.bag_size)) if reads else 0
            totals["reads"] += reads
            totals["chunks"] += e.head.chunks * e.scale
            totals["frames"] += frames
            totals["bags"] += bags
            totals["tokens"] += e.head.protein_tokens * e.scale
            totals["dna"] += e.head.dna_bases * e.scale
            rows.append(f"{sample.name:<16} {Path(file.path).name:<28} {'=' if e.exact else '~'}"
                        f"{reads:>13,.0f} {frames:>13,.0f} {bags:>6,}")
    per_frame = FEATURE_BYTES[config.features] + OVERHEAD_BYTES_PER_FRAME
    int8 = config.precision == "int8"
    gpu_s = gpu_seconds(totals["tokens"], totals["dna"], config.precision)
    lines = [
        "dry run: estimates from the head of each input (= exact, ~ extrapolated); nothing was computed",
        "",
        f"{'sample':<16} {'file':<28} {'reads':>14} {'frames':>13} {'bags':>6}",
        *rows,
        "",
        f"reads {totals['reads']:,.0f}   chunks {totals['chunks']:,.0f}   frames {totals['frames']:,.0f}   "
        f"bags {totals['bags']:,}",
        f"ESM-2 tokens {totals['tokens']:,.0f}   DNABERT-S bases {totals['dna']:,.0f}",
        f"bag files: about {per_frame * totals['frames'] / 1e9:,.2f} GB ({per_frame:,} bytes per frame "
        f"with features: {config.features}"
        f"{', before compression' if config.compression != 'none' else ''})",
        f"GPU time with ESM-2 3B + DNABERT-S at {'int8 (ESM-2)' if int8 else 'fp16'} on one H100/H200: about "
        f"{gpu_s / 60:,.1f} min ({gpu_s / 3600:,.2f} GPU hours; divide by the GPUs you use)",
    ]
    if not classify:
        lines.append("(embed: no classifier, same GPU time)")
    return "\n".join(lines)
