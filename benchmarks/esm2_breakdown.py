"""Where an ESM-2 3B packed forward spends its GPU time, and what the variants are worth.

For each of --precisions (fp16, bf16, int8): tokens/s and MFU of PackedESM2Encoder on 45-50 aa proteins (150-bp
reads), then one profiled pass with CUDA kernel time grouped as attention / matmul / Triton (fused
elementwise, LayerNorm, rotary) / other (common.KERNEL_KINDS). Random weights (cost does not depend
on values). Writes esm2_breakdown-<card>.json|md under --out-dir.

The committed H100 breakdown predates the attention-first grouping: its "matmul 82%" includes flash
attention (8% of kernel time in results/esm2_variants-*).

    python benchmarks/esm2_breakdown.py [--proteins 20000]

(Tried once on an H100: with Inductor's max-autotune GEMMs the kernel-time mix stayed the same (matmul
82%) after a 64 s first call; not pursued.)
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from pathlib import Path

import torch

from common import (card_slug, kernel_mix, kernel_times, matmul_ceiling, random_proteins,  # benchmarks/ on sys.path
                    time_interleaved)
from virnuc_hpc.devices import activation_precision, dtype_of
from virnuc_hpc.encoders.esm2 import ESM2
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder

GFLOP_PER_TOKEN = 5.66e9
LAYERS, DIM, HEADS = 36, 2560, 40
RESULTS = Path(__file__).resolve().parent / "results"
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proteins", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--precisions", default="fp16,bf16,int8")
    parser.add_argument("--top", type=int, default=0, help="also print the N longest kernels per precision")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    ceiling = matmul_ceiling()
    card = torch.cuda.get_device_name()
    print(f"{card}: ceiling {ceiling:.1f} TFLOP/s", flush=True)
    proteins = random_proteins(45, 50, args.proteins, seed=7)
    tokens = sum(len(p) + 2 for p in proteins)
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = ESM2(LAYERS, DIM, HEADS).eval().requires_grad_(False)
    rows = []
    for precision in args.precisions.split(","):
        torch._dynamo.reset()
        dtype = dtype_of(activation_precision(precision, torch.device("cuda")))  # int8: fp16 around the int8 GEMMs
        model = copy.deepcopy(base).cast(torch.device("cuda"), dtype)
        enc = PackedESM2Encoder(model, name="esm2_t36_3B_random", device=torch.device("cuda"),
                                precision=precision, max_tokens=65536)
        t0 = time.perf_counter()
        enc.embed(proteins[:2600])  # compiles the two shapes used below (full and tail bucket)
        compile_s = time.perf_counter() - t0
        seconds = time_interleaved({precision: enc}, proteins, args.repeats)[precision][0]
        per_kernel = kernel_times(functools.partial(enc.embed, proteins[:2600]))
        share = kernel_mix(per_kernel)
        whole = sum(per_kernel.values())
        for name, us in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {precision} {us / whole:6.3f} {us / 1e3:9.2f} ms  {name[:110]}", flush=True)
        r = {"precision": precision, "tokens": tokens, "seconds": seconds,
             "tokens_per_s": tokens / seconds, "mfu": tokens * GFLOP_PER_TOKEN / seconds / (ceiling * 1e12),
             "first_call_s": compile_s, "kernel_time_share": share,
             "nonfinite_recomputed_batches": enc.stats["nonfinite_recomputed_batches"]}
        rows.append(r)
        print(json.dumps(r), flush=True)
        del enc, model
        torch.cuda.empty_cache()
    tag = card_slug(card)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"card": card, "ceiling_tflops": ceiling, "torch": torch.__version__, "rows": rows}
    (args.out_dir / f"esm2_breakdown-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    kinds = sorted({k for r in rows for k in r["kernel_time_share"]})
    lines = [f"# ESM-2 3B packed forward on {card} (ceiling {ceiling:.1f} TFLOP/s), {len(proteins):,} proteins "
             "of 45-50 aa, random weights", "",
             "| precision | tok/s | MFU | first call s | " + " | ".join(kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.3f} | "
                     f"{r['first_call_s']:.1f} | "
                     + " | ".join(f"{r['kernel_time_share'].get(k, 0):.3f}" for k in kinds) + " |")
    table = "\n".join(lines)
    (args.out_dir / f"esm2_breakdown-{tag}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
