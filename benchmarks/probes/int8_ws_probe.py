"""Probe: does a warp-specialised, epilogue-subtiled or host-descriptor int8 GEMM beat ours on Hopper?

    python benchmarks/probes/int8_ws_probe.py [--tokens 65536]

Variants of ours (int8_triton.int8_gemm, TMA descriptors made on the device) on ESM-2 3B's four
layer shapes: descriptors made on the host ("host", the kernel before), the same kernel again
("dev", a control), warp-specialised ("ws"), the epilogue in two column halves ("sub"), both, and
a fast division in fc1's GELU ("fastdiv"). Each variant is timed over back-to-back calls, the
variants taking turns; prints ours/variant speed per shape and each variant's max difference
from ours (the int32 products are exact, so 0 is expected).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from virnuc_hpc.encoders.int8_triton import GELU_CODES, int8_gemm  # noqa: E402


@triton.jit
def _epilogue(acc, sa, rm, rn, M, N, sw_ptr, bias_ptr, absmax_ptr, GELU: tl.constexpr,
              ROW_ABSMAX: tl.constexpr, FASTDIV: tl.constexpr):
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    c = acc.to(tl.float32) * sa[:, None] * sw[None, :] + bias[None, :]
    if GELU == 1:
        d = 1.0 + tl.exp(-1.5957691216057308 * (c + 0.044715 * c * c * c))
        if FASTDIV:
            c = libdevice.fast_dividef(c, d)
        else:
            c = c / d
    elif GELU == 2:
        c = 0.5 * c * (1.0 + tl.math.erf(c * 0.7071067811865476))
    if ROW_ABSMAX:
        inside = (rm[:, None] < M) & (rn[None, :] < N)
        tl.atomic_max(absmax_ptr + rm, tl.max(tl.where(inside, tl.abs(c), 0.0), axis=1), mask=rm < M)
    return c


@triton.jit
def _gemm_probe(a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, bias_ptr, absmax_ptr, M, N, K,
                NUM_SMS: tl.constexpr, GELU: tl.constexpr, ROW_ABSMAX: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                WS: tl.constexpr, SUBTILE: tl.constexpr, FLATTEN: tl.constexpr, FASTDIV: tl.constexpr,
                HOST: tl.constexpr):
    if HOST:  # descriptors made on the host (TensorDescriptor), passed in place of the pointers
        a_desc, w_desc, c_desc = a_ptr, w_ptr, c_ptr
    else:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    if HOST:
        pass
    elif SUBTILE:
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1],
                                           block_shape=[BLOCK_M, BLOCK_N // 2])
    else:
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    start = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    in_group = GROUP_M * num_n
    for tile in tl.range(start, num_m * num_n, NUM_SMS, flatten=FLATTEN, warp_specialize=WS):
        first_m = (tile // in_group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % in_group) % size_m
        pid_n = (tile % in_group) // size_m
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(k_tiles):
            a = a_desc.load([off_m, k * BLOCK_K])
            w = w_desc.load([off_n, k * BLOCK_K])
            acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
        rm = off_m + tl.arange(0, BLOCK_M)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        if SUBTILE:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            rn0 = off_n + tl.arange(0, BLOCK_N // 2)
            c0 = _epilogue(acc0, sa, rm, rn0, M, N, sw_ptr, bias_ptr, absmax_ptr, GELU, ROW_ABSMAX, FASTDIV)
            c_desc.store([off_m, off_n], c0.to(c_desc.dtype))
            rn1 = rn0 + BLOCK_N // 2
            c1 = _epilogue(acc1, sa, rm, rn1, M, N, sw_ptr, bias_ptr, absmax_ptr, GELU, ROW_ABSMAX, FASTDIV)
            c_desc.store([off_m, off_n + BLOCK_N // 2], c1.to(c_desc.dtype))
        else:
            rn = off_n + tl.arange(0, BLOCK_N)
            c = _epilogue(acc, sa, rm, rn, M, N, sw_ptr, bias_ptr, absmax_ptr, GELU, ROW_ABSMAX, FASTDIV)
            c_desc.store([off_m, off_n], c.to(c_desc.dtype))


def probe_gemm(a, sa, w, sw, bias, gelu, row_absmax, *, ws=False, sub=False, fastdiv=False, host=False,
               stages=3, bm=128, bn=256, bk=128):
    M, K = a.shape
    N = w.shape[0]
    c = torch.empty((M, N), device=a.device, dtype=bias.dtype)
    absmax = torch.zeros(M if row_absmax else 1, device=a.device, dtype=torch.float32)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    grid = (min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)),)
    operands = ((TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
                 TensorDescriptor.from_tensor(c, [bm, bn])) if host else (a, w, c))
    _gemm_probe[grid](*operands, sa, sw, bias, absmax, M, N, K, NUM_SMS=sms, GELU=GELU_CODES[gelu],
                      ROW_ABSMAX=row_absmax, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, WS=ws,
                      SUBTILE=sub, FLATTEN=not ws, FASTDIV=fastdiv, HOST=host, num_stages=stages, num_warps=8)
    return c, (absmax if row_absmax else None)


def interleaved_ms(fns: dict, rounds: int = 7, calls: int = 10) -> dict[str, float]:
    """Per-call ms of each fn: the median over `rounds` of `calls` back-to-back calls (so host work
    overlaps the GPU's, as inside a layer), the fns taking turns within each round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(calls):
                fn()
            e.record()
            e.synchronize()
            times[name].append(s.elapsed_time(e) / calls)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    D, M = 2560, args.tokens
    shapes = {"qkv": (3 * D, D, "none", False), "out": (D, D, "none", False),
              "fc1+gelu": (4 * D, D, "tanh", True), "fc2": (D, 4 * D, "none", False)}
    variants = {"host": dict(host=True), "dev": dict(), "ws": dict(ws=True), "dev+sub": dict(sub=True),
                "ws+sub": dict(ws=True, sub=True)}
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for layer, (N, K, gelu, absmax) in shapes.items():
        a = torch.randint(-127, 128, (M, K), device="cuda", dtype=torch.int8, generator=g)
        w = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8, generator=g)
        sa = torch.rand(M, device="cuda", generator=g) * 1e-4
        sw = torch.rand(N, device="cuda", generator=g) * 1e-3
        bias = torch.randn(N, device="cuda", generator=g).half()
        ref, ref_max = int8_gemm(a, sa, w, sw, bias, gelu, row_absmax=absmax)
        todo = dict(variants)
        if gelu == "tanh":
            todo["dev+fastdiv"] = dict(fastdiv=True)
        fns = {"ours": lambda: int8_gemm(a, sa, w, sw, bias, gelu, row_absmax=absmax)}
        row = {"layer": layer}
        for name, kw in todo.items():
            try:
                out, out_max = probe_gemm(a, sa, w, sw, bias, gelu, absmax, **kw)
                diff = (out.float() - ref.float()).abs().max().item()
                if absmax:
                    diff = max(diff, (out_max - ref_max).abs().max().item())
                row[name] = {"max_diff": diff}
                fns[name] = lambda kw=kw: probe_gemm(a, sa, w, sw, bias, gelu, absmax, **kw)
            except Exception as exc:  # a variant Triton cannot build here
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        ms = interleaved_ms(fns)
        flops = 2 * M * N * K
        row.update(ours_ms=ms["ours"], ours_tops=flops / ms["ours"] / 1e9)
        for name in fns:
            if name != "ours":
                row[name].update(ms=ms[name], speed_vs_ours=ms["ours"] / ms[name])
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = sorted({k for r in rows for k in r if isinstance(r[k], dict)})
    print(f"\n| layer | ours ms | ours TOPS | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for r in rows:
        cells = [(f"{r[n]['speed_vs_ours']:.3f}x d={r[n]['max_diff']:.2g}" if "ms" in r.get(n, {}) else
                  ("err" if n in r else "-")) for n in names]
        print(f"| {r['layer']} | {r['ours_ms']:.3f} | {r['ours_tops']:.0f} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"card": torch.cuda.get_device_name(), "tokens": M, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
