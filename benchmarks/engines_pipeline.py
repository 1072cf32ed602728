"""The deepspeed engine inside the Dask pipeline, next to native: 1 and 2 GPUs, real model sizes.

Random-weight ESM-2 3B, DNABERT-S and classifier (the real file formats; timings real, calls not).
Each engine runs `predict` on the same synthetic reads on 1 GPU and on 2 GPUs (and native once per
precision in --precisions); every stored feature vector of every run is compared with the reference
run, native fp32 on 1 GPU with --fp32-reference (else the first native run): cosine per frame, and
the share of frame labels equal to the reference's. Prints a table; writes engines_pipeline-<card>.json|md under benchmarks/results/.

    python benchmarks/engines_pipeline.py --reads 40000 --gpus 1,2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import card_slug, cosine
from pipeline_scaling import make_models, one_run, startup_of, synthetic_reads  # benchmarks/ is on sys.path

RESULTS = Path(__file__).resolve().parent / "results"


def features(outdir: Path) -> tuple[list[str], np.ndarray]:
    from virnuc_hpc.outputs import store
    with store.open_features(outdir) as ds:
        return [str(x) for x in ds.frame.values], ds.features.values


def predictions(outdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(virus)) per frame from prediction_results.txt."""
    lines = (outdir / "prediction_results.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if not line.startswith("#")][1:]
    return np.array([r[1] for r in rows]), np.array([float(r[3]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=40_000)
    parser.add_argument("--read-length", type=int, default=150)
    parser.add_argument("--coding-fraction", type=float, default=0.26)
    parser.add_argument("--gpus", default="1,2")
    parser.add_argument("--precisions", default="fp16,bf16", help="native runs; deepspeed uses the first")
    parser.add_argument("--fp32-reference", action="store_true", help="reference: native fp32 on 1 GPU")
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

    precisions = args.precisions.split(",")
    plan = ([("native", "fp32", 1)] if args.fp32_reference else [])
    plan += [("native", p, gpu_counts[0]) for p in precisions]
    plan += [("deepspeed", precisions[0], g) for g in gpu_counts]
    runs, outs = [], {}
    for engine, precision, gpus in plan:
        args.engine, args.precision = engine, precision
        out = args.workdir / f"out_{engine}_{precision}_{gpus}"
        r = one_run(fasta, out, models, gpus, args)
        r.update(engine=engine, precision=precision)
        outs[(engine, precision, gpus)] = out
        runs.append(r)
        print(json.dumps(r), flush=True)
    reference = outs[plan[0]]
    ref_ids, ref = features(reference)
    ref_labels, ref_p = predictions(reference)
    for r in runs:
        out = outs[(r["engine"], r["precision"], r["gpus"])]
        ids, got = features(out)
        r["same_frames_as_reference"] = ids == ref_ids
        r["cosine_min_vs_reference"] = float(cosine(got, ref).min())
        got_labels, got_p = predictions(out)
        r["labels_equal_to_reference"] = float(np.mean(got_labels == ref_labels))
        r["p_virus_max_abs_diff"] = float(np.abs(got_p - ref_p).max())
        # a random classifier puts many frames at P ~ 0.5, where any rounding flips a label; frames
        # whose reference P(virus) is at least 0.01 from the boundary show what a confident model sees
        clear = np.abs(ref_p - 0.5) >= 0.01
        r["labels_equal_where_clear"] = float(np.mean(got_labels[clear] == ref_labels[clear]))
        r["clear_frames"] = int(clear.sum())
    payload = {"benchmark": "engines_pipeline", "card": card, "reads": args.reads,
               "read_length": args.read_length, "reference": "-".join(map(str, plan[0])),
               "bag_size": args.bag_size,
               "note": "random weights: timings are real, calls are not biological", "runs": runs}
    tag = card_slug(card)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"engines_pipeline-{tag}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# engines in the pipeline on {card}: {args.reads:,} reads of {args.read_length} bp, "
             "random weights", "", f"Reference: {' '.join(map(str, plan[0]))} GPU.", "",
             "| engine | precision | GPUs | wall s | startup s | embed s | ESM tok/s (embed) | same frames "
             "| cos min vs reference | P(virus) max diff | labels = reference | labels = ref. where abs(P-0.5) >= 0.01 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        startup = startup_of(r)
        lines.append(f"| {r['engine']} | {r['precision']} | {r['gpus']} | {r['wall_s']:.1f} | {startup:.1f} | "
                     f"{r['stages_s']['embed_classify']:.1f} | {r['embed_stage_tokens_per_s']:,.0f} | "
                     f"{r['same_frames_as_reference']} | {r['cosine_min_vs_reference']:.6f} | "
                     f"{r['p_virus_max_abs_diff']:.2e} | {r['labels_equal_to_reference']:.4f} | "
                     f"{r['labels_equal_where_clear']:.4f} ({r['clear_frames']:,}) |")
    table = "\n".join(lines)
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
