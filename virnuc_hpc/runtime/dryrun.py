"""``--dry-run``: what a run would be, from the head of each input; no model loaded, nothing written.

Why: on a shared cluster a user sizes the job (GPU hours, disk quota) before submitting it. The
head of each file (its first records, parsed and translated exactly as a run would) gives reads per
byte, chunks, frames and tokens per read; the file's size (and, for compressed files, the
decompression ratio of its first megabytes) scales that to the whole file. Bags are counted with
the run's own layout (``bags.planned_bag_count``), so the estimate is the run's count wherever the
records are. Time is GPU time only where the run will use GPUs, from the throughput we measured on
that card; on CPU it is a lower bound from the models' FLOPs at this machine's measured matmul rate.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from virnuc_hpc.config import RunConfig
from virnuc_hpc.encoders.roster import STANDARD_ROSTER, Roster
from virnuc_hpc.reads.bags import records_per_bag
from virnuc_hpc.reads.sizing import FileEstimate, estimate_file, estimated_file_bags, estimated_run_bags
from virnuc_hpc.runtime.threads import available_cpus, per_worker


@dataclass(frozen=True)
class Throughput:
    """ESM-2 3B tokens per second of one GPU through a whole run's embed-and-classify stage."""

    tokens_per_s: float
    benchmark: str   # the benchmark that measured it
    result: str      # its results file (benchmarks/results/<result>.json)


# One GPU, ESM-2 3B + DNABERT-S + the classifier, engine native, 150-bp reads: ESM-2 tokens over the
# seconds of the embed_classify stage, so DNABERT-S, the classifier and the bag writes are included.
# Measured by benchmarks/pipeline_scaling.py (fp16, int8) and benchmarks/engines_pipeline.py (fp32):
# its JSON's runs[].embed_stage_tokens_per_s. Rerun them on a new card and add its row here.
GPU_THROUGHPUT: dict[tuple[str, str], Throughput] = {
    ("H100", "fp16"): Throughput(91_882, "pipeline_scaling",
                                 "pipeline_scaling-150bp-1xNVIDIA_H100_80GB_HBM3-final-check"),
    ("H100", "fp32"): Throughput(7_896, "engines_pipeline", "engines_pipeline-nvidia-h100-80gb-hbm3"),
    ("H200", "fp16"): Throughput(90_909, "pipeline_scaling", "pipeline_scaling-150bp-1xNVIDIA_H200-int8-r3"),
    ("H200", "int8"): Throughput(133_446, "pipeline_scaling", "pipeline_scaling-150bp-1xNVIDIA_H200-int8-r3"),
}
CARDS = ("H100", "H200")

# Bag-file bytes besides the features: per frame (ids, probabilities, table parts; measured by
# benchmarks/features_bytes.py on 100,000 150-bp reads: its bytes_per_frame less the feature bytes)
# and per file (HDF5 headers and indexes; the demo's bag files of 5-8 frames less their frames' bytes).
FRAME_OVERHEAD_BYTES = {"float32": 151, "float16": 148, "none": 118}
BAG_FILE_BYTES = {"float32": 66_000, "float16": 66_000, "none": 37_000}
GZIP_RATIO = {"float32": 0.852, "float16": 0.852, "none": 0.483}  # features_bytes: gzip / none
FEATURE_ITEMSIZE = {"float32": 4, "float16": 2, "none": 0}

DNABERT_BASES_PER_TOKEN = 4.5  # DNABERT-S's BPE tokens are 4-5 bases on average
#: fair-esm ESM-2 widths by layer count (esm2_t<layers>_<size>_UR50D).
ESM2_WIDTHS = {6: 320, 12: 480, 30: 640, 33: 1280, 36: 2560, 48: 5120}


@dataclass(frozen=True)
class Encoder:
    """An encoder's size, for FLOPs per token (2 per matmul parameter) and feature width."""

    name: str
    width: int
    matmul_params: float
    known: bool = True   # False: the name told nothing, the default size is assumed


def esm2_size(model: str) -> Encoder:
    """ESM-2's size from its name (fair-esm's names tell layers and width); the demo's is 8M-shaped."""
    if model == "demo":
        return Encoder("demo (ESM-2 8M shape)", 320, 12 * 320**2 * 6)
    found = re.search(r"esm2_t(\d+)_(\w+?)_UR50D", model)
    if found and int(found[1]) in ESM2_WIDTHS:
        layers = int(found[1])
        return Encoder(f"ESM-2 {found[2]}", ESM2_WIDTHS[layers], 12 * ESM2_WIDTHS[layers] ** 2 * layers)
    return Encoder(f"ESM-2 {model!r} (size unknown, 3B assumed)", 2560, 12 * 2560**2 * 36, known=False)


def dnabert_size(model: str) -> Encoder:
    """DNABERT-S (12 layers of 768, GeGLU 3072), or the demo's 2 layers of 128."""
    if model == "demo":
        return Encoder("demo DNABERT", 128, (4 * 128**2 + 3 * 128 * 512) * 2)
    return Encoder("DNABERT-S", 768, (4 * 768**2 + 3 * 768 * 3072) * 12)


#: What a known roster encoder's size is, from its model's name (by role).
SIZES: dict[str, Callable[[str], Encoder]] = {"esm2": esm2_size, "dnabert": dnabert_size}


def encoder_sizes(config: RunConfig, roster: Roster = STANDARD_ROSTER) -> dict[str, Encoder]:
    """Each roster encoder's size by role, in column order: from its model's name where the role is
    known, else its declared width (no FLOPs counted: its cost is not known here)."""
    sizes = {}
    for entry in roster:
        sizer = SIZES.get(entry.role)
        if sizer is not None and entry.model_field:
            sizes[entry.role] = sizer(getattr(config, entry.model_field))
        else:
            sizes[entry.role] = Encoder(entry.name, entry.width or 0, 0.0, known=entry.width is not None)
    return sizes


def _tokens(entry_sequences: str, totals: "Totals") -> float:
    """Tokens an encoder of ``entry_sequences`` sees: residues for proteins, BPE tokens for DNA."""
    return totals.protein_tokens if entry_sequences == "protein" else totals.dna_bases / DNABERT_BASES_PER_TOKEN


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.2f} {unit}"
    return f"{nbytes / 1e3:,.1f} kB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    return f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def bag_bytes(features: str, compression: str, frames: float, bags: int, width: int) -> float:
    """Bytes of the bag files for ``frames`` frames in ``bags`` files of features ``width`` wide."""
    per_frame = width * FEATURE_ITEMSIZE[features] + FRAME_OVERHEAD_BYTES[features]
    total = frames * per_frame + bags * BAG_FILE_BYTES[features]
    return total * (GZIP_RATIO[features] if compression == "gzip" else 1.0)


def card_of(name: str) -> str | None:
    """The GPU_THROUGHPUT card a CUDA device name is (``NVIDIA H100 80GB HBM3`` -> H100)."""
    return next((card for card in CARDS if card in name.upper()), None)


def gpu_rate(card: str, precision: str) -> tuple[Throughput, str]:
    """The measured rate for ``card`` at ``precision`` and what it is: an entry of its own, or the
    one that stands in for a precision not measured there (said in the note)."""
    wanted = "fp16" if precision == "auto" else precision
    if (card, wanted) in GPU_THROUGHPUT:
        return GPU_THROUGHPUT[card, wanted], wanted
    if wanted == "bf16":
        return GPU_THROUGHPUT[card, "fp16"], "bf16 not measured in a whole run: fp16's rate"
    if wanted == "int8":
        return GPU_THROUGHPUT[card, "fp16"], f"int8 not measured on {card}: fp16's rate, an upper bound of the time"
    other = next(c for c in CARDS if (c, wanted) in GPU_THROUGHPUT)
    return GPU_THROUGHPUT[other, wanted], f"{wanted} not measured on {card}: {other}'s rate"


def visible_gpus() -> list[str]:
    """Names of the CUDA devices this process sees (none without torch's CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def cpu_matmul_flops(threads: int, size: int = 1024, repeats: int = 3) -> float:
    """fp32 matmul FLOP/s of this machine on ``threads`` torch threads (best of ``repeats``)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return 2 * size**3 / max(best, 1e-9)


@dataclass(frozen=True)
class Totals:
    reads: float
    chunks: float
    frames: float
    bags: int
    protein_tokens: float
    dna_bases: float


def estimate(inputs: Sequence[str], config: RunConfig, *, samplesheet: str | None = None
             ) -> tuple[list[FileEstimate], Totals]:
    """Each input file's estimate and the run's totals; bags counted with the run's layout."""
    from virnuc_hpc.runtime.pipeline import resolve_samples

    files = [f for sample in resolve_samples(inputs, samplesheet) for f in sample.files]
    estimates = [estimate_file(f, config.expected_length) for f in files]

    def total(attribute: str) -> float:
        return sum(getattr(e.head, attribute) * e.scale for e in estimates)
    return estimates, Totals(reads=total("records"), chunks=total("chunks"), frames=total("frames"),
                             bags=estimated_run_bags(estimates, config.bag_size),
                             protein_tokens=total("protein_tokens"), dna_bases=total("dna_bases"))


def _time_lines(config: RunConfig, totals: Totals, sizes: dict[str, Encoder], gpus: list[str],
                roster: Roster = STANDARD_ROSTER) -> list[str]:
    """GPU time where the run will use GPUs, else CPU time; each says where its rate comes from."""
    use_gpu = config.device == "cuda" or (config.device == "auto" and bool(gpus))
    if use_gpu:
        count = config.workers or len(gpus) or 1
        here = sorted({card for card in map(card_of, gpus) if card})
        cards = here or list(CARDS)
        lines = []
        if gpus and not here:
            lines.append(f"GPU time: this machine's {gpus[0]} is not a card we measured; H100 and H200 figures:")
        elif not gpus:
            lines.append("GPU time (no GPU visible here; figures for the cards we measured):")
        for card in cards:
            rate, what = gpu_rate(card, config.precision)
            seconds = totals.protein_tokens / rate.tokens_per_s
            lines.append(f"GPU time on {card}: about {seconds / 3600:,.2f} GPU hours, {_duration(seconds / count)} "
                         f"on {_plural(count, 'GPU')} ({what}; from our measurement on {card}, benchmark "
                         f"{rate.benchmark}: {rate.tokens_per_s:,.0f} ESM-2 3B tokens/s per GPU with "
                         f"DNABERT-S and the classifier)")
        esm2 = sizes.get("esm2")  # the rates are ESM-2 3B's, measured with DNABERT-S beside it
        if esm2 is not None and esm2.matmul_params != esm2_size("esm2_t36_3B_UR50D").matmul_params:
            lines.append(f"  measured with ESM-2 3B; this run's ESM-2 is {esm2.name}: not measured, 3B's rate shown")
        return lines
    workers = config.workers or 1
    threads = config.threads_per_worker or per_worker(config.threads or available_cpus(), workers)
    probe = max(1, min(threads * workers, available_cpus()))
    rate = cpu_matmul_flops(probe)
    flops = 2 * sum(sizes[e.role].matmul_params * _tokens(e.sequences, totals) for e in roster)
    seconds = flops / rate
    why = "device: cpu" if config.device == "cpu" else "no GPU visible here; --device cuda for a GPU job's figure"
    return [f"CPU time ({why}; no GPU will be used): at least {_duration(seconds)} on {_plural(probe, 'thread')} "
            f"({seconds * probe / 3600:,.2f} core hours)",
            f"  a lower bound: {' + '.join(s.name for s in sizes.values())} matmul FLOPs ({flops:,.3g}) at this machine's fp32 "
            f"matmul rate, measured now ({rate / 1e9:,.1f} GFLOP/s on {_plural(probe, 'thread')}); "
            "not a GPU figure"]


def dry_run(inputs: Sequence[str], config: RunConfig, *, samplesheet: str | None = None,
            classify: bool = True, gpus: list[str] | None = None, roster: Roster = STANDARD_ROSTER) -> str:
    """The estimate as text for the terminal. ``gpus``: the CUDA devices to plan for (default:
    those this process sees); ``roster``: the encoders whose columns make the features."""
    estimates, totals = estimate(inputs, config, samplesheet=samplesheet)
    rows = []
    for e, bags in zip(estimates, estimated_file_bags(estimates, config.bag_size), strict=True):
        reads = e.head.records * e.scale
        whole = e.exact and e.head.bytes >= e.text_bytes  # the head was the whole file
        rows.append(f"{e.file.sample:<16} {Path(e.file.path).name:<28} {'=' if whole else '~'}"
                    f"{reads:>13,.0f} {e.head.frames * e.scale:>13,.0f} {bags:>6,}"
                    f"  ({records_per_bag(e.head, config.bag_size):,} reads per bag)")
    sizes = encoder_sizes(config, roster)
    width = sum(s.width for s in sizes.values())
    disk = []
    for features in ("float32", "float16", "none"):
        size = bag_bytes(features, config.compression, totals.frames, totals.bags, width)
        per_frame = width * FEATURE_ITEMSIZE[features] + FRAME_OVERHEAD_BYTES[features]
        disk.append(f"  {features:<8} {_size(size):>12}  ({per_frame:,} bytes per frame + "
                    f"{BAG_FILE_BYTES[features] // 1000} kB per bag file)"
                    f"{'   <- this run' if features == config.features else ''}")
    compressed = ", gzip" if config.compression == "gzip" else ""
    lines = [
        "dry run: estimates from the head of each input (= exact, ~ extrapolated); nothing was computed",
        "",
        f"{'sample':<16} {'file':<28} {'reads':>14} {'frames':>13} {'bags':>6}",
        *rows,
        "",
        f"reads {totals.reads:,.0f}   chunks {totals.chunks:,.0f}   frames {totals.frames:,.0f}   "
        f"bags {totals.bags:,}",
        f"ESM-2 tokens {totals.protein_tokens:,.0f}   DNABERT-S bases {totals.dna_bases:,.0f}",
        f"disk, bag files by --features ({width:,}-wide features{compressed}; our measurement of bag files):",
        *disk,
        *_time_lines(config, totals, sizes, visible_gpus() if gpus is None else gpus, roster),
    ]
    lines += [f"  ({size.name}: its size is not in its name)" for size in sizes.values() if not size.known]
    if not classify:
        lines.append("(embed: no classifier, about the same time)")
    return "\n".join(lines)
