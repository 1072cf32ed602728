"""End-to-end scaling of `predict` over 1, 2, 4 (, 8) GPUs of one machine, in one call.

Random-weight models of the real sizes (ESM-2 3B, DNABERT-S, VirNucPro MLP) in the real file formats;
compute cost does not depend on weight values, so the timings are real (the calls are not).

    python benchmarks/pipeline_scaling.py --reads 120000 --gpus 1,2,4 [--precision fp16,int8]

Synthetic reads: 150-bp reads mixing coding-like sequence (one stop-free frame by construction) and
random sequence so that about 0.8 stop-free frames come per read, as in real metagenomic reads;
`--read-length 500` for 500-bp reads. `--precision` takes a comma-separated list: every precision
runs every GPU count in the same call, and each row gets its speed relative to the first precision's
row with the same GPUs ("vs first"). Prints wall time, per-stage time, startup (cluster start plus
the part of model load + compile not hidden behind reading the input), embed-stage tokens/s,
scaling efficiency (end to end without startup, and of the embed stage), how busy the GPUs were in
the steady state (device lock held, an upper bound, and NVML utilization), and a model of the
end-to-end time for 1M reads; writes JSON + markdown under benchmarks/results/.

The compile cache is warmed first by a small run (its startup is reported as the cold start), so
every timed run starts alike, as any run after a node's first does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import time
from pathlib import Path

STOPS = {"TAA", "TAG", "TGA"}
CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOPS]


def synthetic_reads(path: Path, n: int, length: int, coding_fraction: float, seed: int = 0) -> None:
    """Reads with roughly real-world open-frame density (see module docstring)."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            if rng.random() < coding_fraction:
                seq = "".join(rng.choices(CODONS, k=length // 3 + 1))[:length]
            else:
                seq = "".join(rng.choices("ACGT", k=length))
            fh.write(f">read_{i}\n{seq}\n")


def make_models(root: Path) -> dict[str, str]:
    """ESM-2 3B (fp16 file), full-size DNABERT-S, 3328-input classifier; random weights."""
    import torch

    from virnuc_hpc.models.random_weights import (write_random_classifier, write_random_dnabert_dir,
                                          write_random_esm2_checkpoint)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"esm2": root / "esm2_t36_3B_random.pt", "dnabert": root / "dnabert_s_random",
             "classifier": root / "classifier_random.pth"}
    if not paths["esm2"].exists():
        write_random_esm2_checkpoint(paths["esm2"], layers=36, embed_dim=2560, heads=40, seed=0,
                                     dtype=torch.float16)
    if not paths["dnabert"].exists():
        write_random_dnabert_dir(paths["dnabert"], seed=0)
    if not paths["classifier"].exists():
        write_random_classifier(paths["classifier"], seed=0)
    return {k: str(v) for k, v in paths.items()}


def one_run(fasta: Path, outdir: Path, models: dict[str, str], gpus: int, args: argparse.Namespace,
            precision: str) -> dict:
    import virnuc_hpc
    config = virnuc_hpc.load_config(overrides={
        "esm2_model": models["esm2"], "dnabert_model": models["dnabert"],
        "classifier": models["classifier"], "expected_length": 300 if args.read_length <= 300 else 500,
        "device": args.device, "workers": gpus, "precision": precision, "bag_size": args.bag_size,
        "engine": args.engine, "progress": False, "dashboard_address": "127.0.0.1:0"})
    shutil.rmtree(outdir, ignore_errors=True)  # never resume an earlier benchmark's bags
    t0 = time.perf_counter()
    result = virnuc_hpc.predict([fasta], outdir, config=config)
    wall = time.perf_counter() - t0
    run = json.loads((outdir / "run.json").read_text())
    workers = run["workers"]
    tokens = sum(w["protein_tokens"] for w in workers.values())
    busy = [w["device_busy_fraction_steady"] for w in workers.values()
            if w.get("device_busy_fraction_steady") is not None]
    util = [w["gpu_utilization_steady"] for w in workers.values()
            if w.get("gpu_utilization_steady") is not None]
    embed = result.seconds.get("embed_classify", 0.0)
    return {
        "gpus": gpus, "precision": precision, "wall_s": wall, "stages_s": result.seconds, "frames": result.counts["frames"],
        "reads": result.counts["reads"], "esm_tokens": tokens,
        "embed_stage_tokens_per_s": tokens / embed if embed else None,
        "device_busy_steady_min": min(busy) if busy else None,
        "device_busy_steady_mean": sum(busy) / len(busy) if busy else None,
        "gpu_util_nvml_steady_min": min(util) if util else None,
        "gpu_util_nvml_steady_mean": sum(util) / len(util) if util else None,
        "model_load_on_workers_s": result.model_load_on_workers_s,
        "model_load_on_workers_phases_s": run.get("model_load_on_workers_phases_s"),
        "bags_per_worker": {k: w["bags"] for k, w in workers.items()},
        # summed over bags: prepare (host, before the device), device_wait, dnabert, esm2, classifier, write
        "worker_seconds": {k: sum(w["seconds"].get(k, 0.0) for w in workers.values())
                           for k in sorted({k for w in workers.values() for k in w["seconds"]})},
        "recomputed_nonfinite": sum(w["counters"].get("esm2_nonfinite_recomputed_batches", 0)
                                    for w in workers.values()),
    }


MODEL_DOC = ("1M reads, modelled: setup + cluster start + max(checksums + plan, model load on the workers) "
             "+ (embed + finalize) x k + cluster stop + the rest, k = 1M / reads measured. Reading and "
             "translating happen inside the bags (on the workers, beside the GPU), so they are part of "
             "embed; checksums (the model hashes) and plan (sizing bags from the head of the input) are "
             "fixed costs.")
BEFORE_EMBED = ("setup", "cluster_start", "checksums", "plan", "model_load")


def startup_of(r: dict) -> float:
    """Seconds before the first bag could start: every stage before embed_classify. Planning
    overlaps the workers' model load, so this is about max(planning, model load)."""
    return sum(r["stages_s"].get(stage, 0.0) for stage in BEFORE_EMBED)


def model_1m_reads(r: dict) -> float:
    """Seconds for 1M reads: the per-read stages scaled, the fixed ones kept (see MODEL_DOC)."""
    st, k = r["stages_s"], 1_000_000 / r["reads"]
    reading = st.get("plan", 0.0) + st.get("checksums", 0.0)
    rest = r["wall_s"] - sum(st.values())
    return (st.get("setup", 0.0) + st.get("cluster_start", 0.0)
            + max(reading, r["model_load_on_workers_s"] or 0.0)
            + (st["embed_classify"] + st.get("finalize", 0.0)) * k + st.get("cluster_stop", 0.0) + rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=120_000)
    parser.add_argument("--read-length", type=int, default=150)
    parser.add_argument("--coding-fraction", type=float, default=0.26,
                        help="share of coding-like reads; 0.26 gives ~0.8 open frames per 150-bp read")
    parser.add_argument("--gpus", default="1,2,4")
    parser.add_argument("--precision", default="auto", help="one precision or several, comma-separated")
    parser.add_argument("--device", default="cuda", help="cpu with --demo-models: a quick smoke run")
    parser.add_argument("--demo-models", action="store_true", help="tiny random models (smoke run)")
    parser.add_argument("--engine", default="native", choices=["native", "deepspeed"])
    parser.add_argument("--warm-reads", type=int, default=3000,
                        help="reads of the untimed first run that fills the compile cache (0: none)")
    parser.add_argument("--bag-size", type=int, default=8000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnuc-scaling"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the result files' names (e.g. run2)")
    args = parser.parse_args()

    import torch
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    n_visible = torch.cuda.device_count()
    gpu_counts = [g for g in map(int, args.gpus.split(",")) if g <= max(n_visible, 1)]
    args.workdir.mkdir(parents=True, exist_ok=True)
    fasta = args.workdir / f"reads_{args.reads}_{args.read_length}.fa"
    t0 = time.perf_counter()
    synthetic_reads(fasta, args.reads, args.read_length, args.coding_fraction)
    models = ({k: "demo" for k in ("esm2", "dnabert", "classifier")} if args.demo_models
              else make_models(args.workdir / "models"))
    prep = time.perf_counter() - t0

    cold, runs = {}, []
    precisions = args.precision.split(",")
    for precision in precisions:
        if args.warm_reads:
            small = args.workdir / f"warm_{args.warm_reads}_{args.read_length}.fa"
            synthetic_reads(small, args.warm_reads, args.read_length, args.coding_fraction, seed=1)
            warm = one_run(small, args.workdir / "out_warm", models, 1, args, precision)
            cold[precision] = {"startup_s": startup_of(warm), "model_load_on_workers_s": warm["model_load_on_workers_s"]}
            print(f"cold start, {precision} (fills the compile cache):", json.dumps(cold[precision]), flush=True)
        for gpus in gpu_counts:
            runs.append(one_run(fasta, args.workdir / f"out_{gpus}gpu", models, gpus, args, precision))
            print(json.dumps(runs[-1]), flush=True)
    for r in runs:
        base = next(b for b in runs if b["precision"] == r["precision"])  # this precision's fewest GPUs
        first = next(b for b in runs if b["gpus"] == r["gpus"])          # the first precision, same GPUs
        r["wall_vs_first_precision"] = first["wall_s"] / r["wall_s"]
        r["embed_vs_first_precision"] = first["stages_s"]["embed_classify"] / r["stages_s"]["embed_classify"]
        r["startup_s"] = startup_of(r)
        r["end_to_end_excl_startup_s"] = r["wall_s"] - r["startup_s"]
        r["speedup_wall"] = base["wall_s"] / r["wall_s"]
        r["scaling_efficiency_wall"] = r["speedup_wall"] * base["gpus"] / r["gpus"]
        r["scaling_efficiency_end_to_end"] = (base["end_to_end_excl_startup_s"] / r["end_to_end_excl_startup_s"]
                                              * base["gpus"] / r["gpus"])
        # the embedding stage alone
        r["speedup_embed_stage"] = base["stages_s"]["embed_classify"] / r["stages_s"]["embed_classify"]
        r["scaling_efficiency_embed_stage"] = r["speedup_embed_stage"] * base["gpus"] / r["gpus"]
        r["modelled_1M_reads_min"] = model_1m_reads(r) / 60

    tag = "".join(c if c.isalnum() else "_" for c in card).strip("_")
    payload = {"benchmark": "pipeline_scaling", "card": card, "gpus_visible": n_visible,
               "host": socket.gethostname(), "reads": args.reads, "read_length": args.read_length,
               "precision": args.precision, "engine": args.engine, "bag_size": args.bag_size,
               "prep_s": prep, "cold_start": cold,
               "model_1M_reads": MODEL_DOC,
               "note": "random weights: timings are real, calls are not biological", "runs": runs}
    args.results.mkdir(parents=True, exist_ok=True)
    engine = "" if args.engine == "native" else f"-{args.engine}"
    suffix = f"-{args.tag}" if args.tag else ""
    stem = args.results / f"pipeline_scaling-{args.read_length}bp{engine}-{n_visible}x{tag}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# pipeline_scaling on {n_visible}x {card}, {args.reads:,} reads of {args.read_length} bp, "
             f"engine {args.engine}, precision {args.precision}", "",
             "| precision | GPUs | wall s | startup s | embed s | ESM tok/s (embed) | embed vs first | eff. end-to-end "
             "| eff. embed | busy (lock) min | GPU util (NVML) min | 1M reads, modelled (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        util = r["gpu_util_nvml_steady_min"]
        lines.append(f"| {r['precision']} | {r['gpus']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | "
                     f"{r['stages_s']['embed_classify']:.1f} | {r['embed_stage_tokens_per_s']:,.0f} | "
                     f"{r['embed_vs_first_precision']:.2f}x | "
                     f"{r['scaling_efficiency_end_to_end']:.2f} | {r['scaling_efficiency_embed_stage']:.2f} | "
                     f"{(r['device_busy_steady_min'] or 0):.3f} | {'-' if util is None else f'{util:.3f}'} | "
                     f"{r['modelled_1M_reads_min']:.1f} |")
    for precision, c in cold.items():
        lines += ["", f"Cold start, {precision} (empty compile cache, first run on the node): {c['startup_s']:.1f} s; "
                  "timed runs start with the cache filled."]
    lines += ["", "startup: everything before the first bag (cluster start, and model load + compile on "
              "the workers, which the client's reading of the input overlaps). eff. end-to-end: wall "
              "time without startup, relative to 1 GPU. " + MODEL_DOC]
    table = "\n".join(lines)
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
