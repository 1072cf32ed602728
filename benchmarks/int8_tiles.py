"""Which tile the int8 GEMM should use at each packed length, and whether fc2 should quantise its input
inside the GEMM (#18: the rule in virnuc_hpc/encoders/int8_triton.py comes from this run).

    python benchmarks/int8_tiles.py [--lengths 64,...,65536]

For ESM-2 3B's four linear layers (as precision int8 runs them) at every power-of-two packed length,
times every candidate tile on one card, in one run, and prints the best tile, the rule's pick
(``pick_tile``) and its time relative to the best. Then, per length, the two ways to feed fc2 (and
out_proj) their int8 input:
  pass     the separate quantisation kernel (TorchInductor, as the compiled layer graph fuses it)
           followed by the int8 GEMM
  fused    the fp16 activation straight into the GEMM, quantised per tile as it is loaded
           (int8_linear_scaled); out_proj then still needs its row maxima (a reduction kernel)
Writes int8_tiles-<card>.json|md under --out-dir. Random values: a GEMM's speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import card_slug
from int8_gemm_probe import LAYERS, timed
from virnuc_hpc.encoders.int8 import absmax_scale, quantize_rows, quantize_scaled
from virnuc_hpc.encoders.int8_triton import Tile, int8_gemm, pick_tile

HERE = Path(__file__).resolve().parent
INT8_TILES = [Tile(128, 128, 128, 4), Tile(128, 128, 128, 5), Tile(128, 256, 128, 3), Tile(128, 256, 128, 4),
              Tile(256, 128, 128, 3), Tile(64, 128, 128, 4, 4), Tile(64, 256, 128, 4, 4)]
FP_TILES = [Tile(128, 128, 128, 3), Tile(128, 128, 64, 5), Tile(128, 256, 64, 4), Tile(128, 256, 64, 3),
            Tile(256, 128, 64, 3), Tile(64, 128, 128, 4, 4)]


def name(t: Tile) -> str:
    return f"{t.block_m}x{t.block_n}x{t.block_k} s{t.stages} w{t.warps}"


def time_tile(run, tile: Tile) -> float:
    """Seconds per call, or inf where the tile does not fit the card (shared memory)."""
    try:
        return timed(lambda: run(tile))
    except Exception as exc:  # noqa: BLE001 - triton's OutOfResources and friends: the tile cannot run here
        print(f"  {name(tile)}: {type(exc).__name__}", flush=True)
        return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=",".join(str(1 << n) for n in range(6, 17)))
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    dev, card = torch.device("cuda"), torch.cuda.get_device_name(0)
    torch.manual_seed(0)
    quant_pass = torch.compile(lambda x, s: quantize_scaled(x, s), dynamic=True)
    quant_rows = torch.compile(quantize_rows, dynamic=True)
    row_scale = torch.compile(lambda x: absmax_scale(x.float().abs().amax(dim=1)), dynamic=True)

    rows, feeds, started = [], [], time.perf_counter()
    for M in (int(t) for t in args.lengths.split(",")):
        for layer, (K, N, gelu) in LAYERS.items():
            x = torch.randn(M, K, device=dev, dtype=torch.float16)
            w8, sw = quantize_rows(torch.randn(N, K, device=dev, dtype=torch.float16))
            bias = torch.randn(N, device=dev, dtype=torch.float16) * 0.01
            a8, sa = quantize_rows(x)
            absmax = gelu != "none"   # fc1 records its row maxima for fc2
            for fp_input, tiles in ((False, INT8_TILES), (True, FP_TILES if layer in ("fc2", "out") else [])):
                a = x if fp_input else a8
                times = {name(t): time_tile(lambda t: int8_gemm(a, sa, w8, sw, bias, gelu, absmax, t), t)
                         for t in tiles}
                if not times:
                    continue
                best = min(times, key=times.get)
                picked = name(pick_tile(M, fp_input))
                row = {"M": M, "layer": layer, "fp_input": fp_input, "times_s": times, "best": best,
                       "picked": picked, "picked_vs_best": times[picked] / times[best]}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
            if layer in ("fc2", "out"):
                s = absmax_scale(x.float().abs().amax(dim=1))
                passes = ((lambda: int8_gemm(quant_pass(x, s), s, w8, sw, bias, "none")) if layer == "fc2"
                          else (lambda: int8_gemm(*quant_rows(x), w8, sw, bias, "none")))
                fused = ((lambda: int8_gemm(x, s, w8, sw, bias, "none")) if layer == "fc2"
                         else (lambda: int8_gemm(x, row_scale(x), w8, sw, bias, "none")))
                feed = {"M": M, "layer": layer, "pass_s": timed(passes), "fused_s": timed(fused)}
                feed["fused_vs_pass"] = feed["pass_s"] / feed["fused_s"]
                feeds.append(feed)
                print(json.dumps(feed), flush=True)
            del x, w8, a8
            torch.cuda.empty_cache()

    payload = {"benchmark": "int8_tiles", "card": card, "rows": rows, "feeds": feeds,
               "seconds": time.perf_counter() - started, "note": "random values; ESM-2 3B's linear layers"}
    slug = card_slug(card)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"int8_tiles-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# int8 GEMM tiles on {card}: best candidate and the rule's pick per packed length", "",
             "| tokens | layer | A | best tile | best ms | rule's tile | rule / best time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']} | {r['layer']} | {'fp16' if r['fp_input'] else 'int8'} | {r['best']} | "
                     f"{r['times_s'][r['best']] * 1e3:.3f} | {r['picked']} | {r['picked_vs_best']:.3f} |")
    lines += ["", "Feeding fc2 and out_proj: a separate quantisation kernel + int8 GEMM (pass) against the fp16 "
              "activation quantised inside the GEMM (fused), each with the rule's tile.", "",
              "| tokens | layer | pass ms | fused ms | pass / fused |", "|---|---|---|---|---|"]
    lines += [f"| {f['M']} | {f['layer']} | {f['pass_s'] * 1e3:.3f} | {f['fused_s'] * 1e3:.3f} | "
              f"{f['fused_vs_pass']:.2f}x |" for f in feeds]
    (args.out_dir / f"int8_tiles-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
