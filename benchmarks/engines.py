"""Native vs DeepSpeed engines on one card, one process: tokens/s, MFU, peak memory, fidelity.

Why: these numbers pick the default engine (the faster one that keeps cosine >= 0.999 vs fp32), show
whether ZeRO-3 offload runs a model that does not fit on the card (ESM-2 15B), and when offload pays
for one that does (3B). Random weights: the work of a forward pass (its matrix shapes, hence its time
and memory) does not depend on the weights' values.

    python benchmarks/engines.py [--out-dir benchmarks/results] [--smoke]

Sections (each saved as soon as it ends, so a later failure keeps earlier numbers):
  esm2_3b     packed fp16, native vs deepspeed (InferenceEngine, no injection), interleaved repeats;
              fidelity vs the same weights in fp32 (padded reference path); plus a tanh-GELU
              fp16 run as a proxy for DeepSpeed's fused MLP kernel (which uses tanh-GELU)
  dnabert_s   packed fp16, native vs deepspeed; fidelity vs fp32
  offload_3b  ZeRO-3 CPU offload of the 3B (padded path) at two token budgets vs native padded
  esm2_15b    random fp16 15B built inside zero.Init (weights straight to pinned host memory),
              ZeRO-3 CPU offload, usable GPU memory capped below the weights' size
  pipeline    the demo CLI run (Dask, one worker) with each engine: same frames, same vectors
Writes engines-<card>.json|md under --out-dir.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from common import (card_slug, cosine, dnabert_flops, random_dna, random_proteins,  # benchmarks/ on sys.path
                    time_interleaved, timed)
from virnuc_hpc.encoders.batching import Fp32Weights
from virnuc_hpc.encoders.dnabert import DNABERTEncoder, load_dnabert_parts
from virnuc_hpc.encoders.dnabert_packed import PackedDNABERTEncoder
from virnuc_hpc.encoders.esm2 import ESM2, ESM2Encoder
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder
from virnuc_hpc.engines.deepspeed import (
    esm2_params_per_layer, import_deepspeed, init_single_process_group, wrap_encoder,
    zero3_config, zero3_engine,
)
from virnuc_hpc.models.random_weights.dnabert import write_random_dnabert_dir

RESULTS = Path(__file__).resolve().parent / "results"
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def esm2_flops(model: ESM2, proteins: list[str]) -> float:
    """Matmul FLOPs (2 x matmul parameters per token) + attention (4 * D * L per token and layer)."""
    d, layers = model.embed_dim, model.num_layers
    n = np.array([len(p) + 2 for p in proteins], dtype=np.float64)
    return float((n * 2 * layers * 12 * d * d + 4 * d * layers * n * n).sum())


@contextmanager
def tanh_gelu() -> Iterator[None]:
    """F.gelu computes the tanh approximation inside (DeepSpeed's fused inference kernels do)."""
    exact = F.gelu
    F.gelu = lambda x, approximate="none": exact(x, approximate="tanh")
    try:
        yield
    finally:
        F.gelu = exact


def fidelity_proteins() -> list[str]:
    lengths = sorted({1, 5, 10, 45, 50, 60, 166, 400, 1022, *np.geomspace(6, 1020, 30).astype(int).tolist()})
    rng = np.random.default_rng(11)
    return ["".join(rng.choice(AMINO, n)) for n in lengths]


def row(section: str, config: str, n: int, tokens: int, seconds: float, flops: float, ceiling: float,
        peak: float, **extra: Any) -> dict:
    r = {"section": section, "config": config, "items": n, "tokens": tokens, "seconds": seconds,
         "tokens_per_s": tokens / seconds, "mfu": flops / seconds / (ceiling * 1e12), "peak_gib": peak, **extra}
    print(json.dumps(r), flush=True)
    return r


# --------------------------------------------------------------------------- sections

def fidelity(enc: Any, fid: list[str], ref: np.ndarray) -> dict[str, Any]:
    """Cosine per sequence against the fp32 reference: min, median, how many below 0.999."""
    cos = cosine(enc.embed(fid), ref)
    return {"cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
            "below_0999": int((cos < 0.999).sum()), "fidelity_n": len(fid)}


def esm2_3b(ds: Any, ctx: dict) -> list[dict]:
    device, smoke, ceiling = ctx["device"], ctx["smoke"], ctx["ceiling"]
    layers, dim, heads = (2, 64, 4) if smoke else (36, 2560, 40)
    prec = "bf16" if smoke else "fp16"
    torch.manual_seed(0)
    with torch.device(device):
        fp32 = ESM2(layers, dim, heads).eval().requires_grad_(False)
    ctx["esm2_3b_fp32"] = fp32
    fid = fidelity_proteins()
    ref = ESM2Encoder(fp32, name="ref", device=device, precision="fp32", max_tokens=4096).embed(fid)
    budget = 2048 if smoke else 65536
    packed = dict(attention="masked", compile_layers=False) if smoke else {}

    def make(engine: str) -> Any:
        model = copy.deepcopy(fp32).cast(device, {"fp16": torch.float16, "bf16": torch.bfloat16}[prec])
        enc = PackedESM2Encoder(model, name="esm2-3b-random", device=device, precision=prec,
                                max_tokens=budget, **packed)
        return wrap_encoder(ds, enc) if engine == "deepspeed" else enc

    data = random_proteins(60, 166, 40 if smoke else 4000, seed=1)
    tokens = sum(len(p) + 2 for p in data)
    encs = {"native": make("native"), "deepspeed": make("deepspeed")}
    warm = {}
    for name, enc in encs.items():
        t0 = time.perf_counter()
        enc.embed(data)
        warm[name] = time.perf_counter() - t0
    runs = time_interleaved(encs, data, 1 if smoke else 3)
    rows = []
    for name, enc in encs.items():
        sec, peak, times = runs[name]
        rows.append(row("esm2_3b", f"{name} packed {prec}", len(data), tokens, sec, esm2_flops(fp32, data),
                        ceiling, peak, runs_s=times, warmup_s=warm[name], **fidelity(enc, fid, ref)))
    del encs
    # Proxy for DeepSpeed's injected MLP kernel: the same fp16 padded maths with tanh-GELU.
    half = copy.deepcopy(fp32).cast(device, {"fp16": torch.float16, "bf16": torch.bfloat16}[prec])
    padded = ESM2Encoder(half, name="tanh", device=device, precision=prec, max_tokens=16384)
    exact = cosine(padded.embed(fid), ref)
    with tanh_gelu():
        approx = cosine(padded.embed(fid), ref)
    rows.append({"section": "esm2_3b", "config": f"padded {prec}: exact GELU vs tanh-GELU (fidelity only)",
                 "cos_min_exact": float(exact.min()), "cos_min_tanh": float(approx.min()),
                 "cos_median_tanh": float(np.median(approx)), "below_0999_tanh": int((approx < 0.999).sum())})
    print(json.dumps(rows[-1]), flush=True)
    del half, padded
    return rows


def dnabert_s(ds: Any, ctx: dict) -> list[dict]:
    device, smoke, ceiling = ctx["device"], ctx["smoke"], ctx["ceiling"]
    size = dict(layers=2, hidden=64, heads=4, intermediate=128, vocab_size=256) if smoke else {}
    prec = "bf16" if smoke else "fp16"
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, weights = load_dnabert_parts(str(write_random_dnabert_dir(Path(tmp) / "d", seed=0, **size)))
    data = random_dna(60 if smoke else 16000, 499, 2)
    lengths = np.array([len(e.ids) for e in tok.encode_batch(data)])
    fid = data[:50 if smoke else 2000]
    ref = DNABERTEncoder(copy.deepcopy(model), tok, name="ref", weights=weights, device=str(device),
                         precision="fp32", max_tokens=16384).embed(fid)
    kw = dict(attention="dense", compile=False, max_tokens=1024) if smoke else {}

    def make(engine: str) -> Any:
        enc = PackedDNABERTEncoder(copy.deepcopy(model), tok, name="dnabert-s-random", weights=weights,
                                   device=str(device), precision=prec, **kw)
        return wrap_encoder(ds, enc) if engine == "deepspeed" else enc

    encs = {"native": make("native"), "deepspeed": make("deepspeed")}
    for enc in encs.values():
        enc.embed(data[:2000])
    runs = time_interleaved(encs, data, 1 if smoke else 3)
    rows = []
    for name, enc in encs.items():
        sec, peak, times = runs[name]
        rows.append(row("dnabert_s", f"{name} packed {prec}", len(data), int(lengths.sum()), sec,
                        dnabert_flops(model.cfg, lengths), ceiling, peak, runs_s=times,
                        **fidelity(enc, fid, ref)))
    return rows


def _zero3_encoder(engine: Any, model: ESM2, **kwargs: Any) -> ESM2Encoder:
    """A padded ESM2Encoder run by a ZeRO-3 engine, without an fp32 fallback (no fp32 copy of an
    offloaded model)."""
    def refuse() -> ESM2:
        raise RuntimeError("non-finite fp16 vectors: no fp32 copy of an offloaded model")
    enc = ESM2Encoder(model, **kwargs)
    enc.with_engine("deepspeed-zero3", lambda module, run: engine)
    enc.fp32 = Fp32Weights(model, enc.precision, enc.device, refuse)
    return enc


def offload_3b(ds: Any, ctx: dict) -> list[dict]:
    """Does offload pay for a model that fits? ZeRO-3 CPU offload vs resident weights, same padded path."""
    device, smoke, ceiling = ctx["device"], ctx["smoke"], ctx["ceiling"]
    fp32 = ctx.pop("esm2_3b_fp32")
    prec = "bf16" if smoke else "fp16"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[prec]
    data = random_proteins(60, 166, 40 if smoke else 1500, seed=3)
    tokens = sum(len(p) + 2 for p in data)
    budgets = (1024, 4096) if smoke else (16384, 65536)
    rows = []
    resident = copy.deepcopy(fp32).cast(device, dtype)
    for budget in budgets:
        enc = ESM2Encoder(resident, name="3b", device=device, precision=prec, max_tokens=budget)
        enc.embed(data[:64])
        sec, _, peak = timed(enc.embed, data)
        rows.append(row("offload_3b", f"native padded {prec} {budget}-tok (weights resident)", len(data),
                        tokens, sec, esm2_flops(fp32, data), ceiling, peak))
    del resident, enc
    cpu_model = copy.deepcopy(fp32).cast(torch.device("cpu"), dtype)
    del fp32
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    init_single_process_group(ds, device)
    config = zero3_config("cpu", params_per_layer=esm2_params_per_layer(cpu_model.embed_dim),
                          pin_memory=device.type == "cuda")
    engine = zero3_engine(ds, cpu_model, config)
    for budget in budgets:
        enc = _zero3_encoder(engine, cpu_model, name="3b", device=device, precision=prec, max_tokens=budget)
        enc.embed(data[:64])
        sec, _, peak = timed(enc.embed, data)
        rows.append(row("offload_3b", f"deepspeed ZeRO-3 cpu offload {prec} {budget}-tok", len(data), tokens,
                        sec, esm2_flops(cpu_model, data), ceiling, peak,
                        nonfinite_batches=enc.stats["nonfinite_recomputed_batches"]))
    engine.destroy() if hasattr(engine, "destroy") else None
    return rows


def esm2_15b(ds: Any, ctx: dict, cap_gib: float) -> list[dict]:
    """ESM-2 15B under ZeRO-3 CPU offload on a card capped below the model's fp16 size."""
    shape = (3, 128, 4) if ctx["smoke"] else (48, 5120, 40)
    budgets = (1024, 4096) if ctx["smoke"] else (16384, 32768)
    return zero_offload_run(ds, ctx, "esm2_15b", shape, "cpu", budgets, cap_gib, proteins=600)


def esm2_3b_nvme(ds: Any, ctx: dict) -> list[dict]:
    """ESM-2 3B under ZeRO-3 NVMe offload (weights streamed from a local disk for every batch)."""
    shape = (3, 128, 4) if ctx["smoke"] else (36, 2560, 40)
    budgets = (4096,) if ctx["smoke"] else (65536,)
    with tempfile.TemporaryDirectory(prefix="virnuc-nvme-") as nvme:
        return zero_offload_run(ds, ctx, "esm2_3b_nvme", shape, "nvme", budgets, None, proteins=800,
                                nvme_path=nvme)


def zero_offload_run(ds: Any, ctx: dict, section: str, shape: tuple[int, int, int], offload: str,
                     budgets: tuple[int, ...], cap_gib: float | None, *, proteins: int,
                     nvme_path: str | None = None) -> list[dict]:
    device, smoke, ceiling = ctx["device"], ctx["smoke"], ctx["ceiling"]
    layers, dim, heads = shape
    params = layers * esm2_params_per_layer(dim) + 33 * dim + 2 * dim
    info: dict[str, Any] = {"section": section, "offload": offload, "params": params,
                            "weights_gib_fp16": params * 2 / 2**30}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        info["allocated_before_gib"] = torch.cuda.memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(device).total_memory
        info["card_total_gib"] = total / 2**30
        info["cap_gib"] = cap_gib
        torch.cuda.set_per_process_memory_fraction((cap_gib * 2**30 if cap_gib else total) / total)
    init_single_process_group(ds, device)
    on_gpu = device.type == "cuda"
    # zero.Init casts as it builds; DeepSpeed's own fp16 mode stays off (it would recast the module).
    config = zero3_config(offload, params_per_layer=esm2_params_per_layer(dim), pin_memory=on_gpu,
                          nvme_path=nvme_path)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with ds.zero.Init(config_dict_or_path=config, remote_device=offload, pin_memory=on_gpu,
                      dtype=torch.half if on_gpu else torch.bfloat16):
        model = ESM2(layers, dim, heads)
    engine = zero3_engine(ds, model, config)
    info["build_s"] = time.perf_counter() - t0
    print(json.dumps(info), flush=True)
    prec = "fp16" if on_gpu else "bf16"
    data = random_proteins(60, 166, 24 if smoke else proteins, seed=4)
    tokens = sum(len(p) + 2 for p in data)
    rows = [info]
    for budget in budgets:
        enc = _zero3_encoder(engine, model, name=f"{section}-random", device=device, precision=prec,
                             max_tokens=budget)
        enc.embed(data[:16])
        sec, out, peak = timed(enc.embed, data)
        rows.append(row(section, f"deepspeed ZeRO-3 {offload} offload {prec} {budget}-tok", len(data), tokens,
                        sec, esm2_flops(model, data), ceiling, peak, finite=bool(np.isfinite(out).all()),
                        nonfinite_batches=enc.stats["nonfinite_recomputed_batches"]))
    if on_gpu:
        info["max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        torch.cuda.set_per_process_memory_fraction(1.0)
    engine.destroy() if hasattr(engine, "destroy") else None
    return rows


def pipeline(ds: Any, ctx: dict) -> list[dict]:
    """The demo run through the CLI (Dask, one worker on this card), native vs deepspeed: same frames,
    cosine of every stored vector (tiny random models: this checks integration, not speed)."""
    import os
    import subprocess
    import sys

    from virnuc_hpc.outputs import store

    root = Path(__file__).resolve().parent.parent
    on_gpu = ctx["device"].type == "cuda"
    rows, feats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VIRNUC_HPC_CACHE": str(Path(tmp) / "cache"), "PYTHONUNBUFFERED": "1"}
        for engine in ("native", "deepspeed"):
            out = Path(tmp) / engine
            cmd = [sys.executable, "-m", "virnuc_hpc.cli", "embed", str(root / "examples" / "demo.fasta"),
                   "-o", str(out), "--preset", "demo", "--no-progress", "--bag-size", "8", "--workers", "1",
                   "--engine", engine, "--device", "cuda" if on_gpu else "cpu",
                   "--precision", "fp16" if on_gpu else "fp32"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
            if proc.returncode:
                raise RuntimeError(f"{engine} pipeline failed: {proc.stderr[-1500:]}")
            with store.open_features(out) as data:
                feats[engine] = (list(data.frame.values), data.features.values.astype(np.float64))
            rows.append({"section": "pipeline", "config": f"demo CLI, 1 worker, {engine}",
                         "wall_s": time.perf_counter() - t0, "frames": len(feats[engine][0])})
    cos = cosine(feats["deepspeed"][1], feats["native"][1])
    rows.append({"section": "pipeline", "config": "deepspeed vs native vectors",
                 "same_frames": feats["deepspeed"][0] == feats["native"][0], "cos_min": float(cos.min())})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


# --------------------------------------------------------------------------- output

def markdown(result: dict) -> str:
    lines = [f"# Engines on {result['card']}", "",
             f"torch {result['torch']}, deepspeed {result['deepspeed']}; bf16 8192^3 matmul ceiling "
             f"{result['ceiling_tflops']:.1f} TFLOP/s (same process). Random weights. Peak = max GPU memory "
             "allocated during the timed call, weights included. Fidelity: cosine per item vs the same "
             "weights in fp32 (ESM-2: padded reference path).", "",
             "| section | config | items | tokens/s | MFU | peak GiB | cos min | < 0.999 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "tokens_per_s" in r:
            cos = f"{r['cos_min']:.6f}" if "cos_min" in r else "-"
            below = f"{r['below_0999']}/{r['fidelity_n']}" if "below_0999" in r else "-"
            lines.append(f"| {r['section']} | {r['config']} | {r['items']} | {r['tokens_per_s']:,.0f} | "
                         f"{r['mfu']:.3f} | {r['peak_gib']:.1f} | {cos} | {below} |")
    lines.append("")
    for r in result["rows"]:
        if "tokens_per_s" not in r:
            lines.append("- " + ", ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}"
                                          for k, v in r.items()))
    for name, err in result["errors"].items():
        lines.append(f"- {name} FAILED: {err}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models: checks the script only")
    parser.add_argument("--cap-gib", type=float, default=20.0, help="usable GPU memory for the 15B run")
    parser.add_argument("--name", default="engines", help="results file stem (a partial run: another name)")
    parser.add_argument("--sections", nargs="*",
                        default=["esm2_3b", "offload_3b", "esm2_15b", "dnabert_s", "pipeline"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cpu" if args.smoke else "cuda")
    ds = import_deepspeed(device)
    ceiling = 1.0
    if not args.smoke:
        from common import matmul_ceiling  # needs a GPU
        ceiling = matmul_ceiling()
    card = card_slug() if torch.cuda.is_available() else "smoke-cpu"
    result: dict[str, Any] = {"card": torch.cuda.get_device_name() if not args.smoke else "cpu (smoke)",
                              "torch": torch.__version__, "deepspeed": ds.__version__,
                              "ceiling_tflops": ceiling, "rows": [], "errors": {}}
    print(f"card {result['card']}; ceiling {ceiling:.1f} TFLOP/s", flush=True)
    ctx = {"device": device, "smoke": args.smoke, "ceiling": ceiling}
    sections = {"esm2_3b": esm2_3b, "dnabert_s": dnabert_s, "offload_3b": offload_3b,
                "esm2_15b": lambda d, c: esm2_15b(d, c, args.cap_gib), "esm2_3b_nvme": esm2_3b_nvme,
                "pipeline": pipeline}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            result["rows"] += sections[name](ds, ctx)
        except Exception as exc:  # keep the other sections' numbers
            traceback.print_exc()
            result["errors"][name] = f"{type(exc).__name__}: {exc}"[:600]
        print(f"section {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        gc.collect()
        (args.out_dir / f"{args.name}-{card}.json").write_text(json.dumps(result, indent=2))
        (args.out_dir / f"{args.name}-{card}.md").write_text(markdown(result))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
