"""DNABERT-S throughput on one GPU, same run, same card: the original setting, the padded peer path
and our packed FlexAttention path, on nucleotides from 150-bp reads (151 nt) and 500-bp chunks (499 nt).

Why: the DNA encoder must run near the matmul ceiling, and the speed must not cost fidelity.
  (a) original: batch 1, fp32 (a timed subset; it is slow)
  (b) peer: padded fp16 token-budget batches, materialised (B, H, L, L) ALiBi bias through SDPA
  (c) ours: packed, compiled FlexAttention with a same-sequence block mask + ALiBi score_mod, fp16 / bf16
Full-size random DNABERT-S (12 layers, 768, vocab 4096, BPE tokenizer from random_models); compute does
not depend on weight values. Times are wall clock of ``embed(strings)``: tokenisation included.
MFU = model FLOPs / time / ceiling, FLOPs per sequence of L tokens ([CLS]/[SEP] included) =
L * 2 * (matmul parameters) + L^2 * 4 * hidden * layers (docs/encoder-facts.md: ~0.23 GFLOP/token + 0.037 MFLOP/token/position);
the ceiling is a bf16 8192^3 matmul measured in the same process. Fidelity: cosine per sequence
against the fp32 padded path on the same card.

    python benchmarks/dnabert_throughput.py [--out-dir benchmarks/results] [--reads N] [--chunks N]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import card_slug, cosine, dnabert_flops, matmul_ceiling, random_dna, timed  # benchmarks/ on sys.path
from virnuc_hpc.encoders.dnabert import DNABERTEncoder, load_dnabert_parts
from virnuc_hpc.encoders.dnabert_packed import PackedDNABERTEncoder, pool
from virnuc_hpc.models.random_weights.dnabert import write_random_dnabert_dir

RESULTS = Path(__file__).resolve().parent / "results"


def device_only(enc: PackedDNABERTEncoder, seqs: list[str]) -> tuple[np.ndarray, float]:
    """The packed path with tokenising, packing and copies done beforehand: the GPU's own rate,
    to show what the host pipeline costs."""
    batches = [b.to(enc.device) for b in enc._host_batches(seqs)]
    out = np.zeros((len(seqs), enc.dim), dtype=np.float32)
    with torch.inference_mode():
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        vecs = [pool(enc.forward(b), b) for b in batches]
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    for b, v in zip(batches, vecs):
        out[b.index] = v.cpu().numpy()
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--reads", type=int, default=100_000, help="151-nt sequences (150-bp reads)")
    parser.add_argument("--chunks", type=int, default=32_000, help="499-nt sequences (500-bp chunks)")
    parser.add_argument("--original", type=int, default=150, help="sequences timed in setting (a)")
    parser.add_argument("--peer-fraction", type=float, default=0.35, help="share timed in setting (b)")
    parser.add_argument("--fidelity", type=int, default=2000, help="sequences compared with fp32")
    parser.add_argument("--max-tokens", type=int, default=65536, help="packed / padded token budget")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of the packed path")
    parser.add_argument("--extra-budgets", type=int, nargs="*", default=[32768],
                        help="more packed token budgets to time (first precision only)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny model, few sequences: checks the script, measures nothing")
    args = parser.parse_args()
    t_start = time.perf_counter()
    if args.smoke:
        device, card, ceiling, size = "cpu", "smoke-cpu", 1.0, dict(layers=2, hidden=64, heads=4,
                                                                    intermediate=128, vocab_size=256)
        args.reads, args.chunks, args.original, args.fidelity, args.max_tokens = 300, 100, 5, 50, 1024
        args.reps, args.extra_budgets = 1, [512]
        precisions = ("bf16",)
    else:
        assert torch.cuda.is_available(), "needs a CUDA device (or --smoke)"
        device, card, ceiling, size = "cuda", torch.cuda.get_device_name(), matmul_ceiling(), {}
        precisions = ("fp16", "bf16")
    print(f"card {card}; bf16 8192^3 matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_dnabert_dir(Path(tmp) / "dnabert-s", seed=0, **size)
        model, tokenizer, weights = load_dnabert_parts(str(model_dir))
    data = {"150bp_reads_151nt": random_dna(args.reads, 151, 1),
            "500bp_chunks_499nt": random_dna(args.chunks, 499, 2)}
    lengths = {k: np.array([len(e.ids) for e in tokenizer.encode_batch(v)]) for k, v in data.items()}

    def encoder(kind: str, precision: str, **kw):
        cls = PackedDNABERTEncoder if kind == "packed" else DNABERTEncoder
        return cls(copy.deepcopy(model), tokenizer, name="random DNABERT-S", weights=weights, device=device,
                   precision=precision, **kw)

    ref = {}
    enc = encoder("padded", "fp32", max_tokens=16384)
    for name, seqs in data.items():
        ref[name] = enc.embed(seqs[: args.fidelity])
    del enc

    rows: list[dict] = []

    def record(setting: str, precision: str, name: str, n: int, seconds: float, peak: float,
               out: np.ndarray, **extra) -> None:
        toks = int(lengths[name][:n].sum())
        flops = dnabert_flops(model.cfg, lengths[name][:n])
        k = min(len(out), args.fidelity)
        cos = cosine(out[:k], ref[name][:k])
        row = dict(setting=setting, precision=precision, data=name, sequences=n, tokens=toks,
                   mean_tokens=round(toks / n, 2), seconds=round(seconds, 4),
                   tokens_per_s=round(toks / seconds), sequences_per_s=round(n / seconds, 1),
                   tflops=round(flops / seconds / 1e12, 2), mfu=round(flops / seconds / 1e12 / ceiling, 4),
                   peak_gib=round(peak, 3), cos_min=float(cos.min()), cos_median=float(np.median(cos)),
                   **extra)
        rows.append(row)
        print(f"{setting:9s} {precision:4s} {row.get('max_tokens', ''):>6} {name:19s} {row['tokens_per_s']:>10,d} tok/s "
              f"{row['sequences_per_s']:>9,.0f} seq/s MFU {row['mfu']:.3f} peak {peak:.2f} GiB "
              f"cos min {row['cos_min']:.6f} med {row['cos_median']:.6f}", flush=True)

    # (a) original: one sequence at a time, fp32
    enc = encoder("padded", "fp32", max_tokens=1)
    for name, seqs in data.items():
        enc.embed(seqs[:5])
        s, out, peak = timed(enc.embed, seqs[: args.original])
        record("original", "fp32", name, args.original, s, peak, out, batch=1)
    del enc

    # (b) peer: padded fp16 batches with the materialised bias
    enc = encoder("padded", precisions[0], max_tokens=args.max_tokens)
    for name, seqs in data.items():
        n = int(len(seqs) * args.peer_fraction)
        enc.embed(seqs[:2000])
        s, out, peak = timed(enc.embed, seqs[:n])
        record("padded", precisions[0], name, n, s, peak, out, max_tokens=args.max_tokens)
    del enc

    # (c) ours: packed + compiled FlexAttention; the first call compiles (one shape per dtype)
    variants = [(p, args.max_tokens) for p in precisions] + [(precisions[0], t) for t in args.extra_budgets]
    for precision, budget in variants:
        enc = encoder("packed", precision, max_tokens=budget)
        t0 = time.perf_counter()
        enc.embed(data["500bp_chunks_499nt"][: args.chunks // 8])
        compile_s = time.perf_counter() - t0
        print(f"packed {precision} budget {enc.max_tokens}: first call (compile) {compile_s:.1f} s", flush=True)
        for name, seqs in data.items():
            for rep in range(args.reps):
                before = dict(enc.stats)
                s, out, peak = timed(enc.embed, seqs)
                fill = (enc.stats["tokens"] - before["tokens"]) / (enc.stats["padded_tokens"] - before["padded_tokens"])
                record("packed", precision, name, len(seqs), s, peak, out, rep=rep,
                       max_tokens=enc.max_tokens, fill=round(fill, 4), compile_s=round(compile_s, 1),
                       nonfinite_recomputed=enc.stats["nonfinite_recomputed_batches"])
            out, s = device_only(enc, seqs)
            record("gpu-only", precision, name, len(seqs), s, 0.0, out, max_tokens=enc.max_tokens)
        del enc
        if device == "cuda":
            torch.cuda.empty_cache()

    per_pair = 4 * model.cfg.hidden_size * model.cfg.num_hidden_layers
    result = {"benchmark": "dnabert_throughput", "card": card, "ceiling_tflops": round(ceiling, 1),
              "torch": torch.__version__, "python": platform.python_version(),
              "model": "random DNABERT-S, 12 layers, hidden 768, 12 heads, vocab 4096",
              "flops_per_token_matmul": dnabert_flops(model.cfg, np.array([1])) - per_pair,
              "flops_per_token_per_position": per_pair,
              "total_s": round(time.perf_counter() - t_start, 1), "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"dnabert_throughput-{card_slug(card)}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    print("\n" + table)


def markdown(result: dict) -> str:
    head = (f"# DNABERT-S throughput on {result['card']}\n\n"
            f"bf16 8192^3 matmul ceiling {result['ceiling_tflops']} TFLOP/s (same process); "
            f"torch {result['torch']}; whole run {result['total_s']} s. Tokens include [CLS]/[SEP]; "
            "times are `embed(strings)` wall clock, tokenisation included, except `gpu-only` (batches "
            "tokenised, packed and on the GPU beforehand: the device's own rate). Cosine: per sequence vs fp32.\n\n"
            "| setting | prec | budget | data | seqs | tokens/s | seqs/s | TFLOP/s | MFU | peak GiB | cos min | cos median |\n"
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['setting']} | {r['precision']} | {r.get('max_tokens', '')} | {r['data']} | {r['sequences']} | {r['tokens_per_s']:,} | "
             f"{r['sequences_per_s']:,.0f} | {r['tflops']} | {r['mfu']:.3f} | {r['peak_gib']:.2f} | "
             f"{r['cos_min']:.6f} | {r['cos_median']:.6f} |" for r in result["rows"]]
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
