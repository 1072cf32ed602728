"""A/B of ESM-2 3B packed-forward variants in one process on one card, with fidelity and kernel mix.

Variants of PackedESM2Encoder (same fp16 weights, random values: cost does not depend on them):
- static:  one compiled graph per bucketed packed length, erf GELU, flash varlen attention (the
  default until these A/Bs);
- gelu-epilogue: fc1's GELU in the GEMM epilogue (cuBLASLt, tanh form);
- dynamic: one compiled graph for every packed length (mark_dynamic on the token dimension);
- dynamic+gelu-epilogue;
- dynamic+gelu-epilogue+efficient-attention: memory-efficient varlen attention (64-row tiles)
  instead of flash (128-row tiles); the default.
Tried and dropped (H100, results/esm2_variants-*): FlexAttention under a segment block mask instead
of varlen flash attention: attention's share of kernel time rose from 8.5% to 19%, -7% tok/s.
Each is compiled first (first call timed), then all are timed in interleaved rounds (median shown).
Fidelity: cosine per protein against the padded fp32 path on the same weights. Kernel mix: one
profiled call per variant, CUDA kernel time grouped as attention / matmul / Triton / other
(attention is matched first: flash kernels carry 'cutlass' in their names). Writes
esm2_variants-<card>.json|md under --out-dir.

    python benchmarks/esm2_variants.py [--proteins 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import (card_slug, cosine, kernel_mix, kernel_times, matmul_ceiling,  # benchmarks/ on sys.path
                    random_proteins, time_interleaved)
from virnuc_hpc.encoders.esm2 import ESM2, ESM2Encoder
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder, linear_gelu_tanh

GFLOP_PER_TOKEN = 5.66e9
LAYERS, DIM, HEADS = 36, 2560, 40
RESULTS = Path(__file__).resolve().parent / "results"
FLASH = {"attention": "varlen"}
VARIANTS = {"static": {"dynamic_shapes": False, "gelu_epilogue": False, **FLASH},
            "gelu-epilogue": {"dynamic_shapes": False, "gelu_epilogue": True, **FLASH},
            "dynamic": {"dynamic_shapes": True, "gelu_epilogue": False, **FLASH},
            "dynamic+gelu-epilogue": {"dynamic_shapes": True, "gelu_epilogue": True, **FLASH},
            "dynamic+gelu-epilogue+efficient-attention": {"dynamic_shapes": True, "gelu_epilogue": True,
                                                          "attention": "efficient"}}


def profiled(enc: PackedESM2Encoder, proteins: list[str], top: int = 8) -> tuple[dict, list]:
    """Kernel-time share per kind, and the `top` kernels by time, over one embed() call."""
    per_kernel = kernel_times(functools.partial(enc.embed, proteins))
    whole = sum(per_kernel.values()) or 1.0
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]
    return kernel_mix(per_kernel), [(name[:90], us / whole) for name, us in ranked]


def epilogue_check(dtype: torch.dtype, rows: int = 65536) -> float:
    """Largest |cuBLASLt GELU epilogue - (GEMM, then tanh GELU)| at the real fc1 shape."""
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(rows, DIM, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(4 * DIM, DIM, device="cuda", dtype=dtype, generator=g) * DIM ** -0.5
    b = torch.randn(4 * DIM, device="cuda", dtype=dtype, generator=g)
    fused = linear_gelu_tanh(x, w, b).float()
    ref = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
    return float((fused - ref).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proteins", type=int, default=20_000)
    parser.add_argument("--lengths", default="45,50", help="protein lengths lo,hi (aa)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fidelity", type=int, default=400, help="proteins compared with fp32")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch._dynamo.config.recompile_limit = 256  # four variants' graphs share two code objects
    ceiling = matmul_ceiling()
    card = torch.cuda.get_device_name()
    print(f"{card}: ceiling {ceiling:.1f} TFLOP/s; epilogue max abs err fp16 "
          f"{epilogue_check(torch.float16):.2e}", flush=True)
    lo, hi = map(int, args.lengths.split(","))
    proteins = random_proteins(lo, hi, args.proteins, seed=7)
    tokens = sum(len(p) + 2 for p in proteins)
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = ESM2(LAYERS, DIM, HEADS).eval().requires_grad_(False)
    sample = proteins[:args.fidelity]
    reference = ESM2Encoder(base, name="fp32", device=torch.device("cuda"), precision="fp32",
                            max_tokens=16384).embed(sample)
    model = copy.deepcopy(base).cast(torch.device("cuda"), torch.float16)
    del base
    torch.cuda.empty_cache()

    encoders, rows = {}, {}
    for name in args.variants.split(","):
        enc = PackedESM2Encoder(model, name=name, device=torch.device("cuda"), precision="fp16",
                                max_tokens=65536, **VARIANTS[name])
        t0 = time.perf_counter()
        enc.warm_up()
        first = time.perf_counter() - t0
        cos = cosine(reference, enc.embed(sample))
        encoders[name] = enc
        rows[name] = {"variant": name, "warm_up_s": first, "cos_min": float(cos.min()),
                      "cos_median": float(np.median(cos)), "times": []}
        print(json.dumps(rows[name]), flush=True)
    for name, (_, _, times) in time_interleaved(encoders, proteins, args.repeats).items():
        rows[name]["times"] = times
    base_tps = None
    for name, enc in encoders.items():
        r = rows[name]
        seconds = float(np.median(r["times"]))
        r["tokens_per_s"] = tokens / seconds
        r["mfu"] = tokens * GFLOP_PER_TOKEN / seconds / (ceiling * 1e12)
        base_tps = base_tps or r["tokens_per_s"]
        r["x_vs_first"] = r["tokens_per_s"] / base_tps
        r["kernel_mix"], r["top_kernels"] = profiled(enc, proteins[:2600])
        r["padded_tokens"], r["real_tokens"] = enc.stats["padded_tokens"], enc.stats["tokens"]
        print(json.dumps(r), flush=True)

    tag = card_slug(card)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"card": card, "ceiling_tflops": ceiling, "torch": torch.__version__,
               "proteins": args.proteins, "lengths": [lo, hi], "tokens": tokens,
               "note": "random weights: timings are real", "rows": list(rows.values())}
    stem = args.out_dir / f"esm2_variants-{lo}-{hi}aa-{tag}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    kinds = ("attention", "matmul", "triton", "other")
    lines = [f"# ESM-2 3B packed variants on {card} (ceiling {ceiling:.1f} TFLOP/s), {args.proteins:,} "
             f"proteins of {lo}-{hi} aa, fp16, random weights", "",
             "| variant | tok/s | MFU | x | warm-up s | cos min vs fp32 | " + " | ".join(kinds) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(kinds)]
    for r in rows.values():
        lines.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.3f} | {r['x_vs_first']:.3f} | "
                     f"{r['warm_up_s']:.1f} | {r['cos_min']:.6f} | "
                     + " | ".join(f"{r['kernel_mix'].get(k, 0):.3f}" for k in kinds) + " |")
    lines += ["", "Top kernels of the first variant (share of kernel time):", ""]
    lines += [f"- {share:.3f} {name}" for name, share in next(iter(rows.values()))["top_kernels"]]
    table = "\n".join(lines)
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
