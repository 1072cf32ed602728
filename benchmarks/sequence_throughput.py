"""CPU throughput of FASTA loading and chunk + six-frame translation, on one core.

Why: reading and translating must never be the bottleneck in front of the GPUs; the bars are
1M 150-bp reads loaded in well under 20 s and chunked + translated in under a minute.
Wall and CPU seconds are both reported: on a shared machine the wall time includes waiting.

    python benchmarks/sequence_throughput.py [--reads N] [--length 150] [--chunk-size 300]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse
import json
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from virnuc_hpc.testing.loading import load_records
from virnuc_hpc.reads.frames import frames_for_records

RESULTS = Path(__file__).resolve().parent / "results"


def write_reads(path: Path, n_reads: int, length: int, seed: int, n_rate: float) -> int:
    """Random ACGT reads with a few N, 60-column lines like most FASTA writers; returns bytes written."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGT", dtype=np.uint8)
    size = 0
    with open(path, "wb") as out:
        for start in range(0, n_reads, 100_000):
            count = min(100_000, n_reads - start)
            bases = alphabet[rng.integers(0, 4, size=(count, length))]
            bases[rng.random((count, length)) < n_rate] = ord("N")
            rows = bases.tobytes()
            lines = []
            for i in range(count):
                seq = rows[i * length : (i + 1) * length]
                wrapped = b"\n".join(seq[j : j + 60] for j in range(0, length, 60))
                lines.append(b">read%d sample=bench\n%s\n" % (start + i, wrapped))
            block = b"".join(lines)
            out.write(block)
            size += len(block)
    return size


def pin_to_one_core() -> str:
    """Keep the measurement single-core even on a busy many-core node."""
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--length", type=int, default=150)
    parser.add_argument("--chunk-size", type=int, default=300, choices=(300, 500))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n-rate", type=float, default=0.001, help="fraction of bases set to N")
    args = parser.parse_args()

    pinning = pin_to_one_core()
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "reads.fa"
        size = write_reads(fasta, args.reads, args.length, args.seed, args.n_rate)

        t0, c0 = time.perf_counter(), time.process_time()
        loaded = load_records([fasta], skip_invalid=False)
        load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        table = frames_for_records(loaded.records, args.chunk_size)
        frames_s, frames_cpu = time.perf_counter() - t0, time.process_time() - c0

    n = len(loaded.records)
    result = {
        "benchmark": "sequence_throughput",
        "host": socket.gethostname() or "cpu",
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pinning": pinning,
        "reads": n,
        "read_length": args.length,
        "chunk_size": args.chunk_size,
        "fasta_mb": round(size / 1e6, 1),
        "load_s": round(load_s, 3),
        "load_cpu_s": round(load_cpu, 3),
        "load_reads_per_s": round(n / load_s),
        "frames_s": round(frames_s, 3),
        "frames_cpu_s": round(frames_cpu, 3),
        "frames_reads_per_s": round(n / frames_s),
        "kept_frames": len(table),
        "chunks_without_frames": len(table.chunks_without_frames),
        "total_s": round(load_s + frames_s, 3),
    }
    print(f"reads: {n:,} x {args.length} bp ({result['fasta_mb']} MB FASTA), chunk size {args.chunk_size}, {pinning}")
    print(f"load_records:       {load_s:7.2f} s wall ({load_cpu:6.2f} s CPU)  {n / load_s:12,.0f} reads/s")
    print(f"frames_for_records: {frames_s:7.2f} s wall ({frames_cpu:6.2f} s CPU)  {n / frames_s:12,.0f} reads/s"
          f"  ({len(table):,} kept frames, {len(table.chunks_without_frames):,} chunks without frames)")
    print(f"total:              {load_s + frames_s:7.2f} s wall ({load_cpu + frames_cpu:6.2f} s CPU)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sequence_throughput-{result['host']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
