"""Which int8 GEMM to build ESM-2's int8 precision on (#18: measure before choosing).

    python benchmarks/probes/int8_gemm_probe.py [--tokens 65536,4096]

ESM-2 3B's linear layers as precision int8 runs them (q/k/v as one 2560->7680 GEMM, out 2560->2560,
fc1 2560->10240 with GELU in the epilogue, fc2 10240->2560) at packed batches of ``--tokens`` tokens,
on one card, in one run:
  fp16        cuBLAS as the fp16 encoder runs it (torch.addmm; fc1 with cuBLASLt's GELU epilogue)
  int_mm      torch._int_mm (cuBLAS int8, int32 out) plus the dequantisation as torch ops
  tiled       a Triton int8 kernel with one program per output tile (defined here: the first try)
  ours        virnuc_hpc.encoders.int8_triton.int8_gemm: persistent, TMA loads and stores
Both Triton kernels dequantise (row scale x column scale + bias, GELU) in their epilogue; fc1 is
timed with the tanh GELU (the default) and, for ours, the erf GELU (exact_gelu). Ceilings in the same
run: fp16 (cuBLAS) and int8 (torch._int_mm and ours) at 8192^3. Prints ratios to fp16; writes
int8_gemm_probe-<card>.json|md under --out-dir. Random values: a GEMM's speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from virnuc_hpc.encoders.esm2_packed import linear_gelu_tanh
from virnuc_hpc.encoders.int8 import dequantize, quantize_rows
from virnuc_hpc.encoders.int8_triton import int8_gemm

RESULTS = Path(__file__).resolve().parent.parent / "results"  # benchmarks/results
LAYERS = {"qkv": (2560, 7680, "none"), "out": (2560, 2560, "none"), "fc1+gelu": (2560, 10240, "tanh"),
          "fc2": (10240, 2560, "none")}  # (K, N, GELU)


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=s, num_warps=w)
             for m, n, s, w in [(256, 128, 3, 8), (128, 256, 3, 8), (128, 128, 4, 8), (64, 128, 4, 4)]],
    key=["M", "N", "K"])
@triton.jit
def tiled_kernel(a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, bias_ptr, M, N, K, GELU: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """One program per output tile, pointer loads: the kernel ours replaced."""
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
    w_ptrs = w_ptr + rn[None, :].to(tl.int64) * K + rk[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < left), other=0)
        w = tl.load(w_ptrs, mask=(rk[:, None] < left) & (rn[None, :] < N), other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    c = acc.to(tl.float32) * sa[:, None] * sw[None, :] + bias[None, :]
    if GELU:
        c = c / (1.0 + tl.exp(-1.5957691216057308 * (c + 0.044715 * c * c * c)))
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], c.to(tl.float16), mask=(rm[:, None] < M) & (rn[None, :] < N))


def tiled(a, sa, w, sw, bias, gelu: str) -> torch.Tensor:
    (M, K), N = a.shape, w.shape[0]
    c = torch.empty(M, N, device=a.device, dtype=torch.float16)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    tiled_kernel[grid](a, w, c, sa, sw, bias, M, N, K, GELU=gelu != "none")
    return c


def ours(a, sa, w, sw, bias, gelu: str) -> torch.Tensor:
    return int8_gemm(a, sa, w, sw, bias, gelu)[0]


def timed(fn, reps: int = 20) -> float:
    """Seconds per call, CUDA events, after warm-up (autotuning included in the warm-up)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="65536,4096")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(0)
    torch.manual_seed(0)

    big = 8192
    x16 = torch.randn(big, big, device=dev, dtype=torch.float16)
    x8 = torch.randint(-127, 128, (big, big), device=dev, dtype=torch.int8)
    ones, zero = torch.ones(big, device=dev), torch.zeros(big, device=dev, dtype=torch.float16)
    ceiling = {"fp16": 2 * big**3 / timed(lambda: x16 @ x16) / 1e12,
               "int8_int_mm": 2 * big**3 / timed(lambda: torch._int_mm(x8, x8.t())) / 1e12,
               "int8_ours": 2 * big**3 / timed(lambda: ours(x8, ones, x8, ones, zero, "none")) / 1e12}
    print(json.dumps(ceiling), flush=True)
    del x16, x8

    rows = []
    for M in (int(t) for t in args.tokens.split(",")):
        for name, (K, N, gelu) in LAYERS.items():
            x = torch.randn(M, K, device=dev, dtype=torch.float16)
            w16 = torch.randn(N, K, device=dev, dtype=torch.float16) / K**0.5
            bias = torch.randn(N, device=dev, dtype=torch.float16) * 0.01
            w8, sw = quantize_rows(w16)
            a8, sa = quantize_rows(x)
            ref = x.float() @ w16.float().t() + bias.float()
            ref = F.gelu(ref, approximate="tanh") if gelu != "none" else ref
            got_tiled, got = tiled(a8, sa, w8, sw, bias, gelu), ours(a8, sa, w8, sw, bias, gelu)
            cos = F.cosine_similarity(got.float(), ref, dim=1)
            agree = (got_tiled.float() - got.float()).abs().max().item()
            del ref
            flop = 2 * M * K * N
            t16 = timed((lambda: linear_gelu_tanh(x, w16, bias)) if gelu != "none"
                        else (lambda: torch.addmm(bias, x, w16.t())))
            tint = timed(lambda: dequantize(torch._int_mm(a8, w8.t()), sa, sw, bias, gelu))
            ttile = timed(lambda: tiled(a8, sa, w8, sw, bias, gelu))
            tours = timed(lambda: ours(a8, sa, w8, sw, bias, gelu))
            terf = timed(lambda: ours(a8, sa, w8, sw, bias, "erf")) if gelu != "none" else None
            row = {"layer": name, "M": M, "K": K, "N": N, "fp16_s": t16, "int_mm_dequant_s": tint,
                   "tiled_s": ttile, "ours_s": tours, "ours_erf_gelu_s": terf, "tiled_vs_fp16": t16 / ttile,
                   "ours_vs_fp16": t16 / tours, "int_mm_vs_fp16": t16 / tint,
                   "fp16_tflops": flop / t16 / 1e12, "ours_tops": flop / tours / 1e12,
                   "tiled_tops": flop / ttile / 1e12, "cosine_min": cos.min().item(),
                   "tiled_vs_ours_max_abs": agree}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del x, w16, w8, a8
            torch.cuda.empty_cache()

    payload = {"benchmark": "int8_gemm_probe", "card": card, "ceilings_tops": ceiling, "rows": rows,
               "note": "random values; the layers of one ESM-2 3B layer as precision int8 runs them"}
    slug = card.lower().replace(" ", "-")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"int8_gemm_probe-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# int8 GEMM probe on {card}: ESM-2 3B's linear layers as precision int8 runs them", "",
             f"Ceilings in this run (8192^3): fp16 {ceiling['fp16']:,.0f} TFLOP/s; int8 torch._int_mm "
             f"{ceiling['int8_int_mm']:,.0f}, ours {ceiling['int8_ours']:,.0f} TOP/s. Random values.", "",
             "| tokens | layer | fp16 ms | _int_mm+dequant ms | tiled ms | ours ms | ours, erf GELU ms | "
             "tiled / fp16 | ours / fp16 | ours TOP/s | cos min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        erf = f"{r['ours_erf_gelu_s'] * 1e3:.3f}" if r["ours_erf_gelu_s"] else "-"
        lines.append(f"| {r['M']} | {r['layer']} | {r['fp16_s'] * 1e3:.3f} | {r['int_mm_dequant_s'] * 1e3:.3f} | "
                     f"{r['tiled_s'] * 1e3:.3f} | {r['ours_s'] * 1e3:.3f} | {erf} | {r['tiled_vs_fp16']:.2f}x | "
                     f"{r['ours_vs_fp16']:.2f}x | {r['ours_tops']:,.0f} | {r['cosine_min']:.5f} |")
    for M in sorted({r["M"] for r in rows}, reverse=True):
        per = [r for r in rows if r["M"] == M]
        f16, tile, own = (sum(r[k] for r in per) for k in ("fp16_s", "tiled_s", "ours_s"))
        lines += ["", f"{M:,} tokens, one layer's four GEMMs: fp16 {f16 * 1e3:.2f} ms, tiled {tile * 1e3:.2f} ms "
                  f"({f16 / tile:.2f}x), ours {own * 1e3:.2f} ms ({f16 / own:.2f}x)."]
    (args.out_dir / f"int8_gemm_probe-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
