"""Which int8 GEMM to build ESM-2's int8 precision on (#18: measure before choosing).

    python benchmarks/int8_gemm_probe.py [--tokens 65536]

ESM-2 3B's linear layers (q/k/v/out 2560x2560, fc1 2560->10240, fc2 10240->2560) at a packed batch of
``--tokens`` tokens, on one card, in one run:
  fp16        torch.matmul (cuBLAS), the baseline the encoder runs today
  int_mm      torch._int_mm (cuBLAS int8, int32 out) plus the dequantisation (row and column scales,
              bias) as separate torch ops
  triton      our Triton kernel: int8 x int8 -> int32 accumulators, dequantised (row scale x column
              scale + bias) in the epilogue, fp16 out
and the per-token activation quantisation on its own (torch ops, unfused), to size what fusing it
into the LayerNorm/GELU before each GEMM must save. Ceilings measured in the same run: fp16 and int8
(torch._int_mm) 8192^3. Prints ratios to fp16; writes int8_gemm_probe-<card>.json|md under --out-dir.
Random values: the speed of a GEMM does not depend on them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

HERE = Path(__file__).resolve().parent
LAYERS = {"qkv_out (x4)": (2560, 2560), "fc1": (2560, 10240), "fc2": (10240, 2560)}  # (K, N)


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
             for m, n, k, s, w in [(128, 128, 128, 4, 8), (128, 256, 128, 3, 8), (256, 128, 128, 3, 8),
                                   (128, 128, 64, 4, 4), (128, 256, 64, 4, 8), (64, 128, 128, 4, 4)]],
    key=["M", "N", "K"])
@triton.jit
def int8_gemm_kernel(a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, bias_ptr, M, N, K,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C[m, n] = (sum_k A[m, k] W[n, k]) * sa[m] * sw[n] + bias[n]; A (M, K), W (N, K) int8, C fp16."""
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
    a_ptrs = a_ptr + rm[:, None] * K + rk[None, :]
    w_ptrs = w_ptr + rn[None, :] * K + rk[:, None]  # a (BLOCK_K, BLOCK_N) tile, K contiguous
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
    bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0)
    c = acc.to(tl.float32) * sa[:, None] * sw[None, :] + bias[None, :]
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], c.to(tl.float16), mask=(rm[:, None] < M) & (rn[None, :] < N))


def int8_linear(a: torch.Tensor, sa: torch.Tensor, w: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    (M, K), N = a.shape, w.shape[0]
    c = torch.empty(M, N, device=a.device, dtype=torch.float16)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    int8_gemm_kernel[grid](a, w, c, sa, sw, bias, M, N, K)
    return c


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 (the unfused torch form): values and fp32 scales."""
    scale = x.abs().amax(dim=-1).float().clamp_min(1e-8) / 127.0
    return (x.float() / scale[:, None]).round().clamp_(-127, 127).to(torch.int8), scale


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
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(0)
    torch.manual_seed(0)

    big = 8192
    x16 = torch.randn(big, big, device=dev, dtype=torch.float16)
    x8 = torch.randint(-127, 128, (big, big), device=dev, dtype=torch.int8)
    ceiling = {"fp16": 2 * big**3 / timed(lambda: x16 @ x16) / 1e12,
               "int8": 2 * big**3 / timed(lambda: torch._int_mm(x8, x8.t())) / 1e12}
    del x16, x8

    rows, M = [], args.tokens
    for name, (K, N) in LAYERS.items():
        x = torch.randn(M, K, device=dev, dtype=torch.float16)
        w16 = torch.randn(N, K, device=dev, dtype=torch.float16) / K**0.5
        bias = torch.randn(N, device=dev, dtype=torch.float32) * 0.01
        w8, sw = quantize_rows(w16)
        a8, sa = quantize_rows(x)
        ref = x.float() @ w16.float().t() + bias  # fidelity of the int8 product to fp32
        cos = torch.nn.functional.cosine_similarity(int8_linear(a8, sa, w8, sw, bias).float(), ref, dim=1)
        del ref
        flop = 2 * M * K * N
        t16 = timed(lambda: torch.addmm(bias.half(), x, w16.t()))
        tint = timed(lambda: (torch._int_mm(a8, w8.t()).float() * sa[:, None] * sw[None, :] + bias).half())
        ttri = timed(lambda: int8_linear(a8, sa, w8, sw, bias))
        tq = timed(lambda: quantize_rows(x))
        row = {"layer": name, "M": M, "K": K, "N": N, "fp16_s": t16, "int_mm_dequant_s": tint, "triton_s": ttri,
               "quantize_activations_s": tq, "triton_vs_fp16": t16 / ttri, "int_mm_vs_fp16": t16 / tint,
               "triton_plus_unfused_quant_vs_fp16": t16 / (ttri + tq),
               "fp16_tflops": flop / t16 / 1e12, "triton_tops": flop / ttri / 1e12,
               "cosine_min": cos.min().item(), "cosine_median": cos.median().item(),
               "best_config": str(int8_gemm_kernel.best_config)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del x, w16, w8, a8
        torch.cuda.empty_cache()

    def per_layer(key: str, r: dict) -> float:
        return r[key] * (4 if r["layer"].startswith("qkv") else 1)

    totals = {k: sum(per_layer(k, r) for r in rows) for k in ("fp16_s", "int_mm_dequant_s", "triton_s",
                                                               "quantize_activations_s")}
    payload = {"benchmark": "int8_gemm_probe", "card": card, "tokens": M, "ceilings_tflops": ceiling,
               "rows": rows, "layer_totals_s": totals,
               "note": "random values; one ESM-2 3B layer's linear work (q, k, v, out counted 4x)"}
    slug = card.lower().replace(" ", "-")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"int8_gemm_probe-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# int8 GEMM probe on {card}: ESM-2 3B linear layers at {M:,} tokens", "",
             f"Ceilings in this run (8192^3): fp16 {ceiling['fp16']:,.0f} TFLOP/s, int8 (torch._int_mm) "
             f"{ceiling['int8']:,.0f} TOP/s. Random values.", "",
             "| layer | fp16 ms | _int_mm + dequant ms | Triton int8 ms | quantise acts ms | Triton / fp16 speed | "
             "with unfused quant | cos min |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['fp16_s'] * 1e3:.2f} | {r['int_mm_dequant_s'] * 1e3:.2f} | "
                     f"{r['triton_s'] * 1e3:.2f} | {r['quantize_activations_s'] * 1e3:.2f} | "
                     f"{r['triton_vs_fp16']:.2f}x | {r['triton_plus_unfused_quant_vs_fp16']:.2f}x | "
                     f"{r['cosine_min']:.5f} |")
    t = totals
    lines += ["", f"One layer's linear work: fp16 {t['fp16_s'] * 1e3:.1f} ms; Triton int8 {t['triton_s'] * 1e3:.1f} ms "
              f"({t['fp16_s'] / t['triton_s']:.2f}x); plus unfused activation quantisation "
              f"{t['quantize_activations_s'] * 1e3:.1f} ms ({t['fp16_s'] / (t['triton_s'] + t['quantize_activations_s']):.2f}x); "
              f"torch._int_mm + dequant {t['int_mm_dequant_s'] * 1e3:.1f} ms ({t['fp16_s'] / t['int_mm_dequant_s']:.2f}x)."]
    (args.out_dir / f"int8_gemm_probe-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
