"""ESM-2 3B throughput and fidelity on one GPU: the original setting, fair-esm fp16, and ours.

Why: the issue's bar is MFU >= 0.65 (against the bf16 8192^3 matmul ceiling measured in the same
process) on two workloads, and cosine >= 0.999 per protein against fp32 fair-esm. Random weights:
compute cost does not depend on weight values (docs/encoder-facts.md). All configurations run in one process on
one card, so the numbers compare.

    python benchmarks/esm2_throughput.py [--out-dir benchmarks/results] [--scale 1.0]

Configurations, per workload (proteins from 150-bp reads: 45-50 aa; from 500-bp chunks: 60-166 aa):
  a  fair-esm fp32, 2,048-token length-sorted padded batches (the original VirNucPro setting; a subset)
  b  fair-esm fp16, 32,768-token length-sorted padded batches
  c  ours (virnuc_hpc PackedESM2Encoder) in fp16, bf16 and int8 (--precisions): packed, varlen
     attention, compiled; int8 runs ESM-2's linear layers as int8 GEMMs (encoders/int8.py); warmed up
     (compiles) on the workload, then timed --repeats times interleaved; median reported, with its
     ratio to our fp16 in the same run ("x vs fp16")
Outlier stress (--outlier-factors): per F, the same weights with a few channels per layer made F times
larger by an exact reparametrisation (models/random_weights/outliers.py; fp32 output unchanged), as
trained models have them; fp16 and int8 (each int8 smoothing mode) against fp32 fair-esm on the
stressed weights, over the fidelity proteins.
Writes esm2_throughput-<card>.json|md and esm2_fidelity-<card>.json under --out-dir.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common import card_slug, cosine, matmul_ceiling, product_ceiling, random_proteins  # benchmarks/ on sys.path
from virnuc_hpc.devices import activation_precision, dtype_of
from virnuc_hpc.encoders.esm2 import ESM2, _IGNORED_RE, mean_residues, pad_batch, plan_batches, tokenize_many
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder
from virnuc_hpc.encoders.int8 import SMOOTHINGS
from virnuc_hpc.models.random_weights.outliers import add_outlier_channels

GFLOP_PER_TOKEN = 5.66e9        # 3B matrix products per token (docs/encoder-facts.md)
ATTN_FLOP_PER_TOKEN_POS = 0.37e6  # attention per token per position of sequence length
LAYERS, DIM, HEADS = 36, 2560, 40
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
RESULTS = Path(__file__).resolve().parent / "results"


def flops(proteins: list[str]) -> float:
    n = np.array([len(p) + 2 for p in proteins], dtype=np.float64)
    return float((n * GFLOP_PER_TOKEN + ATTN_FLOP_PER_TOKEN_POS * n * n).sum())


# --- fair-esm baselines ------------------------------------------------------------------------------------


def fair_esm_3b() -> torch.nn.Module:
    """fair-esm's own ESM2 3B module with its default random init, built on the GPU (fast init)."""
    import esm

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = esm.model.esm2.ESM2(num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS)
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def fair_embed(model: torch.nn.Module, proteins: list[str], max_tokens: int) -> np.ndarray:
    """fair-esm forward over length-sorted padded batches (tokens as fair-esm's converter makes them)."""
    ids = tokenize_many(proteins)
    lengths = np.array([len(x) for x in ids])
    out = np.empty((len(ids), DIM), dtype=np.float32)
    for batch in plan_batches(lengths, max_tokens):
        tokens, lens = pad_batch([ids[i] for i in batch])
        rep = model(tokens.cuda(non_blocking=True), repr_layers=[LAYERS])["representations"][LAYERS]
        out[batch] = mean_residues(rep, lens).cpu().numpy()
    return out


# --- ours ----------------------------------------------------------------------------------------------------


def our_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fair-esm module weights under our ESM2's names (the same, less rotary buffers and heads)."""
    return {k: v for k, v in state.items() if not _IGNORED_RE.search(k) and not k.startswith("contact_head.")}


def ours_from_fair(fair: torch.nn.Module, precision: str) -> PackedESM2Encoder:
    """Our ESM2 on fair-esm's weights (same names, as in a released file), cast and packed."""
    state = our_state(fair.state_dict())
    with torch.device("meta"):
        model = ESM2(LAYERS, DIM, HEADS)
    model.load_state_dict(state, strict=True, assign=True)
    dtype = dtype_of(activation_precision(precision, torch.device("cuda")))  # int8: fp16 around the int8 GEMMs
    model = model.cast(torch.device("cuda"), dtype).eval().requires_grad_(False)
    return PackedESM2Encoder(model, name="esm2_t36_3B_random", device=torch.device("cuda"), precision=precision)


def timed(fn, proteins: list[str]) -> tuple[float, np.ndarray, float]:
    """(seconds, result, peak GiB allocated above the resident level at start)."""
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = fn(proteins)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, result, (torch.cuda.max_memory_allocated() - resident) / 2**30


def row(label: str, proteins: list[str], seconds: float, peak: float, ceiling: float, **extra) -> dict:
    tokens = sum(len(p) + 2 for p in proteins)
    mfu = flops(proteins) / seconds / (ceiling * 1e12)
    return {"config": label, "proteins": len(proteins), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "proteins_per_s": len(proteins) / seconds, "mfu": mfu,
            "peak_activation_gib": peak, **extra}


def fidelity_set() -> list[str]:
    lengths = sorted({1, 2, 3, 4, 5, 7, 10, 45, 50, 60, 166, 1021, 1022,
                      *np.geomspace(6, 1020, 40).astype(int).tolist()})
    rng = np.random.default_rng(11)
    return ["".join(rng.choice(AMINO, n)) for n in lengths]


def summary(cos: np.ndarray, lengths: list[int]) -> dict:
    return {"min": float(cos.min()), "median": float(np.median(cos)), "argmin_length": lengths[int(cos.argmin())],
            "below_0.999": int((cos < 0.999).sum()), "n": len(cos)}


# --- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload size")
    parser.add_argument("--no-oom-check", dest="oom_check", action="store_false",
                        help="skip the forced-OOM check at the end")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median reported)")
    parser.add_argument("--precisions", default="fp16,bf16,int8", help="ours, comma-separated (fp16 first)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip fair-esm's fp32/fp16 timings (a and b); the fp32 reference still runs")
    parser.add_argument("--outlier-factors", default="1,10,30,100",
                        help="F values of the outlier stress, comma-separated ('' skips it)")
    parser.add_argument("--outlier-channels", type=int, default=4, help="outlier channels per layer and site")
    parser.add_argument("--outlier-seed", type=int, default=0, help="picks the outlier channels")
    args = parser.parse_args()
    try:
        factors = [float(f) for f in args.outlier_factors.split(",") if f.strip()]
    except ValueError:
        parser.error(f"--outlier-factors: not a comma-separated list of numbers: {args.outlier_factors!r}")
    if any(not np.isfinite(f) or f <= 0 for f in factors):
        parser.error(f"--outlier-factors: every F must be a finite number > 0: {args.outlier_factors!r}")
    warnings.filterwarnings("ignore")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 baseline and reference stay true fp32
    from torch.nn.attention import varlen

    print(f"torch {torch.__version__}; varlen_attn{inspect.signature(varlen.varlen_attn)}", flush=True)
    card = card_slug()
    ceiling = matmul_ceiling()
    print(f"card {torch.cuda.get_device_name()} ; bf16 8192^3 matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)
    int8_ceiling = int8_matmul_ceiling() if "int8" in args.precisions else None

    s = args.scale
    workloads = {  # name: (lo, hi, n ours, n baseline a, n baseline b)
        "reads150_45-50aa": (45, 50, int(20000 * s), int(1200 * s), int(8000 * s)),
        "chunks500_60-166aa": (60, 166, int(8000 * s), int(600 * s), int(3000 * s)),
    }
    data = {name: random_proteins(lo, hi, n, seed=i) for i, (name, (lo, hi, n, _, _)) in enumerate(workloads.items())}
    results: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "ceiling_tflops": ceiling, "int8_ceiling_tops": int8_ceiling, "workloads": {}}
    fid_seqs = fidelity_set()
    fid_len = [len(p) for p in fid_seqs]
    fidelity: dict = {"lengths": fid_len}

    fair = fair_esm_3b()
    ref = fair_embed(fair, fid_seqs, 2048)  # fp32 reference vectors (short proteins batched, long alone)
    for name, (lo, hi, n, na, nb) in workloads.items():
        rows = results["workloads"].setdefault(name, [])
        if not args.baselines:
            continue
        sub = data[name][:na]
        fair_embed(fair, sub[:64], 2048)
        sec, _, peak = timed(lambda p: fair_embed(fair, p, 2048), sub)
        rows.append(row("a fair-esm fp32 2048-tok", sub, sec, peak, ceiling))
        print(json.dumps(rows[-1]), flush=True)

    fair16 = copy.deepcopy(fair).half()
    fidelity["fair-esm fp16"] = summary(cosine(fair_embed(fair16, fid_seqs, 32768), ref), fid_len)
    for name, (lo, hi, n, na, nb) in workloads.items():
        if not args.baselines:
            continue
        sub = data[name][:nb]
        fair_embed(fair16, sub[:600], 32768)
        sec, _, peak = timed(lambda p: fair_embed(fair16, p, 32768), sub)
        results["workloads"][name].append(row("b fair-esm fp16 32k-tok", sub, sec, peak, ceiling))
        print(json.dumps(results["workloads"][name][-1]), flush=True)
    del fair16
    torch.cuda.empty_cache()

    encoders = {precision: ours_from_fair(fair, precision) for precision in args.precisions.split(",")}
    warm = {}
    for precision, enc in encoders.items():
        for name, proteins in data.items():
            t0 = time.perf_counter()
            enc.embed(proteins)  # warm-up: compiles this workload's buckets (cached on disk)
            warm[precision, name] = time.perf_counter() - t0
    runs: dict = {}
    for _ in range(args.repeats):  # interleaved, so drift (clocks, heat) hits both precisions alike
        for name, proteins in data.items():
            for precision, enc in encoders.items():
                before = dict(enc.stats)
                sec, out, peak = timed(enc.embed, proteins)
                assert np.isfinite(out).all()
                delta = {k: enc.stats[k] - before[k] for k in enc.stats}
                runs.setdefault((name, precision), []).append((sec, peak, delta))
    for (name, precision), got in runs.items():
        secs = [g[0] for g in got]
        sec, peak, delta = float(np.median(secs)), max(g[1] for g in got), got[0][2]
        results["workloads"][name].append(row(
            f"c ours {precision} packed", data[name], sec, peak, ceiling, runs_s=secs,
            warmup_s=warm[precision, name], token_budget=encoders[precision].token_budget,
            batches=delta["batches"], pad_fraction=1 - delta["tokens"] / delta["padded_tokens"],
            nonfinite_recomputed_batches=delta["nonfinite_recomputed_batches"],
            oom_split_batches=delta["oom_split_batches"]))
        if precision == "int8":  # the same work against int8's own ceiling, measured in this run
            last = results["workloads"][name][-1]
            last["mfu_int8"] = last["mfu"] * ceiling / int8_ceiling
        print(json.dumps(results["workloads"][name][-1]), flush=True)
    for precision, enc in encoders.items():
        got = enc.embed(fid_seqs)
        fidelity[f"ours {precision}"] = summary(cosine(got, ref), fid_len)
        fidelity[f"ours {precision} per protein"] = cosine(got, ref).tolist()

    for name, rows in results["workloads"].items():
        base = {r["config"][0]: r["tokens_per_s"] for r in rows}
        fp16 = next((r["tokens_per_s"] for r in rows if r["config"] == "c ours fp16 packed"), None)
        for r in rows:
            r["speedup_vs_a"] = r["tokens_per_s"] / base["a"] if "a" in base else None
            r["speedup_vs_b"] = r["tokens_per_s"] / base["b"] if "b" in base else None
            r["speedup_vs_ours_fp16"] = r["tokens_per_s"] / fp16 if fp16 else None
    results["fidelity"] = {k: v for k, v in fidelity.items() if "per protein" not in k and k != "lengths"}
    write(args.out_dir, card, results, fidelity)
    if factors:
        fp16 = encoders.get("fp16") or ours_from_fair(fair, "fp16")
        results["outliers"], fidelity["outliers per protein"] = outlier_stress(
            fair, fp16, factors, args.outlier_channels, args.outlier_seed, fid_seqs, ref)
        if "fp16" not in encoders:
            del fp16
            torch.cuda.empty_cache()
        write(args.out_dir, card, results, fidelity)
    if args.oom_check and "bf16" in encoders:
        results["oom_check"] = oom_check(encoders["bf16"], data["reads150_45-50aa"])
        print(json.dumps(results["oom_check"]), flush=True)
        write(args.out_dir, card, results, fidelity)


def outlier_stress(fair: torch.nn.Module, fp16: PackedESM2Encoder, factors: list[float], channels: int,
                   seed: int, proteins: list[str], plain_ref: np.ndarray) -> tuple[dict, dict]:
    """Per F: fair-esm fp32 (the reference), our fp16 and our int8 in each smoothing mode on the
    outlier variant of the benchmarked weights; (summary, per-protein cosines).

    The variant is made from a host copy of the plain weights and copied into fair-esm's module and
    into ``fp16``'s model (its compiled graphs take the weights as arguments: nothing recompiles);
    the int8 encoders quantise that model afresh per F. Both models get the plain weights back."""
    lengths = [len(p) for p in proteins]
    plain = {k: v.detach().to("cpu", copy=True) for k, v in fair.state_dict().items()}
    t0 = time.perf_counter()
    rows, per_protein = [], {}
    try:
        for factor in factors:
            stressed = add_outlier_channels(plain, factor, channels, seed)
            fair.load_state_dict(stressed)
            ref = fair_embed(fair, proteins, 2048)
            fp16.model.load_state_dict(our_state(stressed), strict=True)  # cast into the fp16 parameters
            del stressed
            before = fp16.stats["nonfinite_recomputed_batches"]
            got = {"fp16": fp16.embed(proteins)}
            nonfinite = {"fp16": fp16.stats["nonfinite_recomputed_batches"] - before}
            for mode in SMOOTHINGS:
                enc = PackedESM2Encoder(fp16.model, name="esm2_t36_3B_random_outliers", device=torch.device("cuda"),
                                        precision="int8", int8_smoothing=mode)
                got[f"int8 {mode}"] = enc.embed(proteins)
                nonfinite[f"int8 {mode}"] = enc.stats["nonfinite_recomputed_batches"]
                del enc
                torch.cuda.empty_cache()
            cos = {config: cosine(vectors, ref) for config, vectors in got.items()}
            rows.append({"factor": factor, "fp32 variant vs plain": summary(cosine(ref, plain_ref), lengths),
                         **{config: {**summary(c, lengths), "nonfinite_recomputed_batches": nonfinite[config]}
                            for config, c in cos.items()}})
            per_protein[f"{factor:g}"] = {config: c.tolist() for config, c in cos.items()}
            print(json.dumps(rows[-1]), flush=True)
    finally:
        fair.load_state_dict(plain)
        fp16.model.load_state_dict(our_state(plain), strict=True)
    return {"channels": channels, "seed": seed, "smoothings": list(SMOOTHINGS), "seconds": time.perf_counter() - t0,
            "rows": rows}, per_protein


def oom_check(enc: PackedESM2Encoder, proteins: list[str], free_gib: float = 40.0) -> dict:
    """A real CUDA OOM: leave `free_gib` free (a ballast allocation), force a 1M-token budget (~60 GiB of
    activations), and check that the batch is split, the budget lowered, and every row comes back in
    order, equal to a normal run's."""
    ref = enc.embed(proteins[:4000])
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(max(0, free - int(free_gib * 2**30)), dtype=torch.uint8, device="cuda")
    normal_budget, before, forced = enc.token_budget, dict(enc.stats), 1 << 20
    enc.token_budget = forced
    t0 = time.perf_counter()
    try:
        got = enc.embed(proteins)
    except Exception as exc:  # recorded, so the throughput results above still stand
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        lowered, enc.token_budget = enc.token_budget, normal_budget
        del ballast
        torch.cuda.empty_cache()
    cos = cosine(got[:4000], ref)
    splits = enc.stats["oom_split_batches"] - before["oom_split_batches"]
    return {"ok": bool(np.isfinite(got).all() and cos.min() > 0.9999 and splits > 0),
            "seconds": time.perf_counter() - t0, "free_gib": free_gib, "forced_budget": forced,
            "lowered_budget": lowered, "min_cosine_vs_normal_batches": float(cos.min()),
            "oom_split_batches": splits, "batches": enc.stats["batches"] - before["batches"]}


def int8_matmul_ceiling(n: int = 8192, reps: int = 30) -> float:
    """int8 n^3 TOP/s of our int8 GEMM (encoders/int8_triton.py; faster than torch._int_mm here)."""
    from virnuc_hpc.encoders.int8_triton import int8_gemm

    a = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    ones, zero = torch.ones(n, device="cuda"), torch.zeros(n, device="cuda", dtype=torch.float16)
    return product_ceiling(lambda: int8_gemm(a, ones, a, ones, zero, "none"), n, reps)


def mfu_int8(r: dict) -> str:
    return f" ({r['mfu_int8']:.3f})" if "mfu_int8" in r else ""


def ratio(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write(out_dir: Path, card: str, results: dict, fidelity: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"esm2_throughput-{card}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"esm2_fidelity-{card}.json").write_text(json.dumps(fidelity, indent=1))
    lines = [f"# ESM-2 3B throughput on {results['card']}", "",
             f"torch {results['torch']}; bf16 8192^3 matmul ceiling {results['ceiling_tflops']:.1f} TFLOP/s "
             f"(same process). MFU = (5.66 GFLOP/token + 0.37 MFLOP/token/position) / ceiling."
             + (f" int8 rows: MFU against the bf16 ceiling (fp16-equivalent) and, in brackets, against our int8 "
                f"GEMM's 8192^3 ceiling measured in the same run, {results['int8_ceiling_tops']:.0f} TOP/s."
                if results.get("int8_ceiling_tops") else ""), ""]
    for name, rows in results["workloads"].items():
        lines += [f"## {name}", "", "| config | proteins | tokens/s | proteins/s | MFU | peak act. GiB | "
                  "x vs a | x vs b | x vs ours fp16 |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['config']} | {r['proteins']} | {r['tokens_per_s']:,.0f} | {r['proteins_per_s']:,.0f} | "
                  f"{r['mfu']:.3f}{mfu_int8(r)} | {r['peak_activation_gib']:.1f} | {ratio(r['speedup_vs_a'], 1)} | "
                  f"{ratio(r['speedup_vs_b'], 2)} | {ratio(r.get('speedup_vs_ours_fp16'), 3)} |" for r in rows]
        lines.append("")
    lines += ["## Fidelity vs fair-esm fp32 (cosine per protein, lengths 1-1022)", "",
              "| config | min | median | proteins < 0.999 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['min']:.6f} | {v['median']:.6f} | {v['below_0.999']}/{v['n']} |"
              for k, v in results["fidelity"].items()]
    if stress := results.get("outliers"):
        modes = stress["smoothings"]
        lines += ["", "## Outlier channels: fidelity vs fair-esm fp32 on the same stressed weights", "",
                  f"{stress['channels']} channels per layer and site (both LayerNorms' outputs, attention's output) "
                  f"made F times larger by an exact reparametrisation (seed {stress['seed']}); the fp32 output "
                  "is unchanged (column 2). Cosine per protein, the fidelity proteins above; int8 per smoothing mode.",
                  "", "| F | fp32 variant vs plain, cos min | fp16 cos min vs fp32 | "
                  + " | ".join(f"int8 {m} cos min | int8 {m} proteins < 0.999" for m in modes) + " |",
                  "|---|---|---|" + "---|---|" * len(modes)]
        for r in stress["rows"]:
            cells = [f"{r['factor']:g}", f"{r['fp32 variant vs plain']['min']:.7f}", f"{r['fp16']['min']:.6f}"]
            cells += [f"{r[f'int8 {m}']['min']:.5f} | {r[f'int8 {m}']['below_0.999']}/{r[f'int8 {m}']['n']}"
                      for m in modes]
            lines.append("| " + " | ".join(cells) + " |")
    if oom := results.get("oom_check"):
        lines += ["", "## Forced CUDA OOM (bf16, reads workload, 40 GiB left free, 1M-token budget forced)", "",
                  "ok: {ok}; OOM splits {oom_split_batches}, budget lowered to {lowered_budget}, {batches} batches, "
                  "min cosine vs normal batches {min_cosine_vs_normal_batches:.6f}".format(**oom)
                  if oom.get("ok") is not None and "error" not in oom else f"failed: {oom}"]
    text = "\n".join(lines) + "\n"
    (out_dir / f"esm2_throughput-{card}.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
