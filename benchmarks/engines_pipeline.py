"""The deepspeed engine inside the Dask pipeline, next to native: 1 and 2 GPUs, real model sizes.

Random-weight ESM-2 3B, DNABERT-S and classifier (the real file formats; timings real, calls not).
Each engine runs `predict` on the same synthetic reads on 1 GPU and on 2 GPUs; every stored feature
vector of every run is compared with the native 1-GPU run (cosine per frame), and so are the frame
labels. Prints a table; writes engines_pipeline-<card>.json|md under benchmarks/results/.

    python benchmarks/engines_pipeline.py --reads 40000 --gpus 1,2
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from pipeline_scaling import make_models, one_run, synthetic_reads  # benchmarks/ is on sys.path

RESULTS = Path(__file__).resolve().parent / "results"


def features(outdir: Path) -> tuple[list[str], np.ndarray]:
    from virnuc_hpc import store
    with store.open_features(outdir) as ds:
        return [str(x) for x in ds.frame.values], ds.features.values


def labels(outdir: Path) -> list[str]:
    lines = (outdir / "prediction_results.txt").read_text().splitlines()
    return [line.split("\t")[1] for line in lines if not line.startswith("#")][1:]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=40_000)
    parser.add_argument("--read-length", type=int, default=150)
    parser.add_argument("--coding-fraction", type=float, default=0.26)
    parser.add_argument("--gpus", default="1,2")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--bag-size", type=int, default=4000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--demo-models", action="store_true", help="tiny random models (smoke run on CPU)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnuc-engines-pipeline"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    gpu_counts = [g for g in map(int, args.gpus.split(",")) if g <= max(torch.cuda.device_count(), 1)]
    args.workdir.mkdir(parents=True, exist_ok=True)
    fasta = args.workdir / f"reads_{args.reads}_{args.read_length}.fa"
    synthetic_reads(fasta, args.reads, args.read_length, args.coding_fraction)
    models = ({k: "demo" for k in ("esm2", "dnabert", "classifier")} if args.demo_models
              else make_models(args.workdir / "models"))

    runs, outs = [], {}
    for engine in ("native", "deepspeed"):
        for gpus in gpu_counts:
            args.engine, out = engine, args.workdir / f"out_{engine}_{gpus}"
            r = one_run(fasta, out, models, gpus, args)
            r["engine"], outs[(engine, gpus)] = engine, out
            runs.append(r)
            print(json.dumps(r), flush=True)
    ref_ids, ref = features(outs[("native", gpu_counts[0])])
    ref_labels = labels(outs[("native", gpu_counts[0])])
    for r in runs:
        ids, got = features(outs[(r["engine"], r["gpus"])])
        cos = cosine(got, ref)
        r["same_frames_as_native"] = ids == ref_ids
        r["cosine_min_vs_native"] = float(cos.min())
        r["labels_equal_to_native"] = float(np.mean(np.array(labels(outs[(r["engine"], r["gpus"])]))
                                                    == np.array(ref_labels)))
    payload = {"benchmark": "engines_pipeline", "card": card, "reads": args.reads,
               "read_length": args.read_length, "precision": args.precision, "bag_size": args.bag_size,
               "note": "random weights: timings are real, calls are not biological", "runs": runs}
    tag = re.sub(r"[^a-z0-9.]+", "-", card.lower()).strip("-")
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"engines_pipeline-{tag}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# engines in the pipeline on {card}: {args.reads:,} reads of {args.read_length} bp, "
             f"{args.precision}, random weights", "",
             "| engine | GPUs | wall s | startup s | embed s | ESM tok/s (embed) | same frames | cos min vs native 1-GPU "
             "| labels = native |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        startup = r["stages_s"].get("cluster_start", 0) + r["stages_s"].get("model_load", 0)
        lines.append(f"| {r['engine']} | {r['gpus']} | {r['wall_s']:.1f} | {startup:.1f} | "
                     f"{r['stages_s']['embed_classify']:.1f} | {r['embed_stage_tokens_per_s']:,.0f} | "
                     f"{r['same_frames_as_native']} | {r['cosine_min_vs_native']:.6f} | "
                     f"{r['labels_equal_to_native']:.4f} |")
    table = "\n".join(lines)
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
