"""`virnuc-hpc predict` end to end through the CLI, real-size random models, cold compile cache.

    python benchmarks/cli_end_to_end.py --reads 1000000 --features float32,float16 [--precision int8]

Real-size models with random weights in the real file formats (ESM-2 3B fair-esm checkpoint,
DNABERT-S directory, VirNucPro classifier; compute cost does not depend on weight values, so the
time is real and the calls mean nothing) and synthetic 150-bp reads as FASTQ.gz with the
open-frame density of pipeline_scaling.py. Each run starts from an empty compile cache and an empty
output directory, exactly as a user's first run on a node; wall time is measured around the CLI
process. The reference is the last measurement of the previous release on the same kind of card
(`--reference-min`, 7.97 min on an H200: the 1M-read CLI run quoted in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from input_scaling import device_name, synthetic_fastq_gz  # noqa: E402
from pipeline_scaling import make_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--features", default="float32")
    parser.add_argument("--precision", default="auto", help="predict's --precision (auto: fp16 on a GPU)")
    parser.add_argument("--reference-min", type=float, default=7.97)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnuc-cli"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--demo-models", action="store_true", help="tiny models on the CPU: a smoke run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = ({k: "demo" for k in ("esm2", "dnabert", "classifier")} if args.demo_models
              else make_models(args.workdir / "models"))
    reads = args.workdir / f"reads-{args.reads}.fastq.gz"
    if not reads.exists():
        synthetic_fastq_gz(reads, args.reads)
    print(f"models and reads ready in {time.perf_counter() - t0:.0f} s", flush=True)
    runs = []
    for features in args.features.split(","):
        cache = args.workdir / "compile-cache"
        shutil.rmtree(cache, ignore_errors=True)  # cold: as a node's first run
        outdir = args.workdir / f"out-{features}"
        shutil.rmtree(outdir, ignore_errors=True)
        cmd = [sys.executable, "-m", "virnuc_hpc.cli", "predict", str(reads), "-o", str(outdir),
               "--classifier", models["classifier"], "--esm2-model", models["esm2"],
               "--dnabert-model", models["dnabert"], "--expected-length", "300", "--features", features,
               "--no-progress", "--dashboard-address", "127.0.0.1:0",
               "--precision", args.precision]
        if args.demo_models:
            cmd += ["--preset", "demo"]
        env = {**os.environ, "VIRNUC_HPC_COMPILE_CACHE": str(cache)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        (args.workdir / f"log-{features}.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        run = json.loads((outdir / "run.json").read_text())
        workers = run["workers"].values()
        tokens = sum(w["protein_tokens"] for w in workers)
        util = [w["gpu_utilization_steady"] for w in workers if w.get("gpu_utilization_steady") is not None]
        row = {"features": features, "precision": args.precision, "wall_s": wall, "wall_min": wall / 60, "stages_s": run["seconds"],
               "milestones_s": run["milestones_s"], "client_peak_rss_mb": run["client_peak_rss_mb"],
               "client_peak_rss_mb_after_stage": run.get("client_peak_rss_mb_after_stage"),
               "reads": run["counts"]["reads"], "frames": run["counts"]["frames"], "esm_tokens": tokens,
               "esm_tokens_per_s_embed": tokens / run["seconds"]["embed_classify"],
               "gpu_util_nvml_steady_min": min(util) if util else None,
               "bytes_per_frame": run["features"]["bytes_per_frame"],
               # outside the timed stages: Python's start and imports, and the process exit
               "outside_stages_s": wall - sum(run["seconds"].values()),
               "model_load_on_workers_phases_s": run.get("model_load_on_workers_phases_s"),
               "ratio_to_reference": wall / 60 / args.reference_min}
        runs.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(outdir, ignore_errors=True)
    card = device_name()
    slug = card.lower().replace(" ", "-") + (f"-{args.tag}" if args.tag else "")
    payload = {"benchmark": "cli_end_to_end", "card": card, "reads": args.reads,
               "reference_min": args.reference_min, "note": "random weights: timings are real, calls are not",
               "runs": runs}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"cli_end_to_end-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# cli_end_to_end on {card}: {args.reads:,} 150-bp reads (FASTQ.gz), cold compile cache, "
             f"precision {args.precision}", "",
             "| features | wall min | vs reference | first bag s | ESM tok/s (embed) | GPU util | client RSS MB | bytes/frame |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        util = r["gpu_util_nvml_steady_min"]
        lines.append(f"| {r['features']} | {r['wall_min']:.2f} | {r['ratio_to_reference']:.3f} | "
                     f"{r['milestones_s'].get('first_bag_submitted', 0):.1f} | {r['esm_tokens_per_s_embed']:,.0f} | "
                     f"{'-' if util is None else f'{util:.3f}'} | {r['client_peak_rss_mb']:.0f} | {r['bytes_per_frame']:,.0f} |")
    lines += ["", f"Reference: {args.reference_min} min (the previous release, 1M reads, CLI, cold cache)."]
    (args.results / f"cli_end_to_end-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
