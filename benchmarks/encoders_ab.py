"""Same-card A/B of the two encoders between two trees of the package: no regression beyond 2%.

    python benchmarks/encoders_ab.py --baseline-tree /path/to/old/checkout [--rounds 2] [--tag refactor]
    python benchmarks/encoders_ab.py --baseline-tree /path/to/copy/of/this/tree --tag aa   # an A/A

An A/A run (the baseline a copy of this very tree) shows how far apart two identical trees land on
this card: the noise floor a ratio of the A/B must be read against. Each tree compiles into its own
cache, so neither runs kernels the other compiled.

Why: a refactor of the encoder layer (one contract, no import circles) must not cost speed. Both
trees load ESM-2 3B and DNABERT-S (real sizes, random weights: compute cost does not depend on the
weight values) through their own public factory, on the same card, in alternating child processes
(A B, then B A, ...: drift of the card's clocks and the order hit both alike), in fp16 on a GPU. Each child warms the encoder
up (compiles), then embeds a fixed workload twice and reports the faster pass:
  esm2     proteins of 45-50 aa, as translated from 150-bp reads
  dnabert  151-nt sequences (the DNA of 150-bp reads' frames)
Prints tokens/s per tree, the ratio ours/baseline and MFU against a bf16 8192^3 matmul ceiling
measured in the same run; writes encoders_ab-<card>.json|md under --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OURS = HERE.parent
ESM2_FLOP_PER_TOKEN = 5.66e9     # ESM-2 3B matrix products per token (docs/encoder-facts.md)
DNABERT_FLOP_PER_TOKEN = 0.227e9  # DNABERT-S matrix products per token (docs/encoder-facts.md)


def child(tree: Path, which: str, model: str, n: int, device: str = "cuda") -> dict:
    """In a fresh process: load one encoder from ``tree`` and time it (run with --child)."""
    sys.path.insert(0, str(tree))
    sys.path.insert(1, str(HERE))
    from common import random_dna, random_proteins

    try:  # the public factories (after the refactor), else the submodule ones (before)
        from virnuc_hpc.encoders import load_dnabert, load_esm2
    except ImportError:
        from virnuc_hpc.encoders.dnabert import load_dnabert
        from virnuc_hpc.encoders.esm2 import load_esm2
    import torch

    try:  # this tree's own compile cache (the parent names one per tree); older trees read the variable
        from virnuc_hpc.encoders.compile import configure_compile_cache
        configure_compile_cache(os.environ["VIRNUC_HPC_COMPILE_CACHE"])
    except ImportError:
        pass
    load = load_esm2 if which == "esm2" else load_dnabert
    t0 = time.perf_counter()
    encoder = load(model, device=device, precision="fp16" if device == "cuda" else "fp32")
    warm = getattr(encoder, "warm_up", None)
    if warm is not None:
        warm()
    loaded = time.perf_counter() - t0
    data = random_proteins(45, 50, n, seed=1) if which == "esm2" else random_dna(n, 151, seed=1)
    tokens = sum(len(s) + 2 for s in data) if which == "esm2" else None
    encoder.embed(data[: n // 10])  # every shape of the workload seen once
    best = float("inf")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        sync()
        t = time.perf_counter()
        out = encoder.embed(data)
        sync()
        best = min(best, time.perf_counter() - t)
    if tokens is None:  # DNABERT: tokens from the model directory's own tokenizer ([CLS] and [SEP] included)
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
        tokens = sum(len(e.ids) for e in tokenizer.encode_batch(data))
    return {"which": which, "tree": str(tree), "seconds": best, "tokens": tokens, "tokens_per_s": tokens / best,
            "shape": list(out.shape), "dtype": str(out.dtype), "load_and_warm_up_s": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", type=Path, required=True, help="a checkout of the baseline")
    parser.add_argument("--ours-tree", type=Path, default=OURS, help="the tree under test (default: this one)")
    parser.add_argument("--tag", default="", help="added to the result file names")
    parser.add_argument("--rounds", type=int, default=2, help="each round runs both trees; the order alternates")
    parser.add_argument("--only", default="esm2,dnabert", help="comma list: esm2,dnabert")
    parser.add_argument("--proteins", type=int, default=20_000)
    parser.add_argument("--dna", type=int, default=60_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnuc-encoders-ab"))
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--child", nargs=5, metavar=("TREE", "WHICH", "MODEL", "N", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tree, which, model, n, device = args.child
        print(json.dumps(child(Path(tree), which, model, int(n), device)))
        return

    sys.path.insert(0, str(HERE))
    import torch

    from common import card_slug, matmul_ceiling
    from pipeline_scaling import make_models

    if "esm2" in args.only:
        models = make_models(args.workdir / "models")
    else:  # DNABERT-S alone: skip writing the 5.6 GB ESM-2 file
        from virnuc_hpc.models.random_weights import write_random_dnabert_dir
        models = {"esm2": "", "dnabert": str(args.workdir / "models" / "dnabert_s_random")}
        if not Path(models["dnabert"]).exists():
            write_random_dnabert_dir(Path(models["dnabert"]), seed=0)
    ceiling = matmul_ceiling() * 1e12
    torch.cuda.empty_cache()
    trees = {"baseline": args.baseline_tree.resolve(), "ours": args.ours_tree.resolve()}
    sizes = {"esm2": (models["esm2"], args.proteins), "dnabert": (models["dnabert"], args.dna)}
    runs: list[dict] = []
    sizes = {k: v for k, v in sizes.items() if k in args.only.split(",")}
    for round_ in range(args.rounds):
        for which, (model, n) in sizes.items():
            order = list(trees.items()) if round_ % 2 == 0 else list(trees.items())[::-1]  # A B, then B A
            for label, tree in order:
                cmd = [sys.executable, __file__, "--baseline-tree", str(tree), "--child", str(tree), which, model, str(n), "cuda"]
                path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])  # this tree's package first
                env = {**os.environ, "PYTHONPATH": path,
                       "VIRNUC_HPC_COMPILE_CACHE": str(args.workdir / f"compile-cache-{label}")}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"{label} {which} failed:\n{proc.stderr[-3000:]}")
                row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "label": label}
                print(f"{which:8s} {label:9s} {row['tokens_per_s']:>12,.0f} tok/s", flush=True)
                runs.append(row)
    flop = {"esm2": ESM2_FLOP_PER_TOKEN, "dnabert": DNABERT_FLOP_PER_TOKEN}
    summary = {}
    for which in sizes:
        rate = {label: statistics.median(r["tokens_per_s"] for r in runs if r["which"] == which and r["label"] == label)
                for label in trees}
        summary[which] = {**{f"{k}_tokens_per_s": v for k, v in rate.items()}, "ratio": rate["ours"] / rate["baseline"],
                          "mfu_ours": rate["ours"] * flop[which] / ceiling,
                          "mfu_baseline": rate["baseline"] * flop[which] / ceiling}
    card = torch.cuda.get_device_name(0)
    payload = {"benchmark": "encoders_ab", "card": card, "tag": args.tag,
               "trees": {k: str(v) for k, v in trees.items()}, "ceiling_tflops": ceiling / 1e12, "rounds": args.rounds,
               "note": "random weights: speed is real; fp16; medians over rounds", "summary": summary, "runs": runs}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    slug = card_slug(card) + (f"-{args.tag}" if args.tag else "")
    (args.out_dir / f"encoders_ab-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# encoders_ab on {card}: baseline tree vs ours, fp16, {args.rounds} rounds (medians)"
             + (f", {args.tag}" if args.tag else ""), "",
             f"baseline: `{trees['baseline']}`; ours: `{trees['ours']}`", "",
             f"bf16 matmul ceiling in this run: {ceiling / 1e12:,.0f} TFLOP/s", "",
             "| encoder | baseline tok/s | ours tok/s | ours / baseline | MFU ours |", "|---|---|---|---|---|"]
    for which, s in summary.items():
        lines.append(f"| {which} | {s['baseline_tokens_per_s']:,.0f} | {s['ours_tokens_per_s']:,.0f} | "
                     f"{s['ratio']:.3f} | {s['mfu_ours']:.3f} |")
    (args.out_dir / f"encoders_ab-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
