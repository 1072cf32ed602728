"""Which tile the int8 GEMM should use, and how fast the standalone activation quantisation runs
(#18: the choices in virnuc_hpc/encoders/int8_triton.py come from this run).

    python benchmarks/probes/int8_tiles.py [--lengths 64,...,65536]

For ESM-2 3B's four linear layers (as precision int8 runs them) at every power-of-two packed length,
times every candidate tile on one card, in one run, and prints the best tile and the time of ours
(``TILE``) relative to it. Then, per length, the two activations that no LayerNorm kernel quantises
(fc1's output before fc2, its scales known from fc1's epilogue; the attention output before
out_proj, scales found by a row reduction), quantised
  inductor  by TorchInductor's kernel for int8.quantize_rows / quantize_scaled (compiled, dynamic)
  ours      by int8.quantize (our Triton kernel)
with their bandwidth against a device-to-device copy of the same tensor. Writes
int8_tiles-<card>.json|md under --out-dir. Random values: a GEMM's speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py
from common import card_slug  # noqa: E402
from int8_gemm_probe import LAYERS, timed  # noqa: E402  (this folder is on sys.path)
from virnuc_hpc.encoders.int8 import absmax_scale, quantize, quantize_rows, quantize_scaled  # noqa: E402
from virnuc_hpc.encoders.int8_triton import TILE, Tile, int8_gemm  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results"  # benchmarks/results
TILES = [Tile(128, 128, 128, 4), Tile(128, 128, 128, 5), TILE, Tile(256, 128, 128, 3), Tile(64, 128, 128, 4, 4),
         Tile(64, 256, 128, 4, 4), Tile(128, 256, 64, 4)]


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
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    dev, card = torch.device("cuda"), torch.cuda.get_device_name(0)
    torch.manual_seed(0)
    inductor_scaled = torch.compile(quantize_scaled, dynamic=True)
    inductor_rows = torch.compile(quantize_rows, dynamic=True)

    rows, feeds, started = [], [], time.perf_counter()
    for M in (int(t) for t in args.lengths.split(",")):
        for layer, (K, N, gelu) in LAYERS.items():
            x = torch.randn(M, K, device=dev, dtype=torch.float16)
            w8, sw = quantize_rows(torch.randn(N, K, device=dev, dtype=torch.float16))
            bias = torch.randn(N, device=dev, dtype=torch.float16) * 0.01
            a8, sa = quantize_rows(x)
            absmax = gelu != "none"   # fc1 records its row maxima for fc2
            times = {name(t): time_tile(lambda t: int8_gemm(a8, sa, w8, sw, bias, gelu, absmax, t), t)
                     for t in TILES}
            best = min(times, key=times.get)
            row = {"M": M, "layer": layer, "times_s": times, "best": best, "ours": name(TILE),
                   "ours_vs_best": times[name(TILE)] / times[best]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
            if layer in ("fc2", "out"):   # their inputs: fc1's output (10240 wide), the attention output
                s = absmax_scale(x.float().abs().amax(dim=1))
                run = ({"inductor": lambda: inductor_scaled(x, s), "ours": lambda: quantize(x, s)} if layer == "fc2"
                       else {"inductor": lambda: inductor_rows(x), "ours": lambda: quantize(x)})
                theirs = run["inductor"]() if layer == "fc2" else run["inductor"]()[0]
                moved = x.numel() * 3   # fp16 in, int8 out
                feed = {"M": M, "input_of": layer, "width": K, "copy_GBps": 2 * x.numel() * 2 / timed(x.clone) / 1e9,
                        "values_differing": int((theirs != run["ours"]()[0]).sum())}
                for how, fn in run.items():
                    feed[f"{how}_s"] = timed(fn)
                    feed[f"{how}_GBps"] = moved / feed[f"{how}_s"] / 1e9
                feed["ours_vs_inductor"] = feed["inductor_s"] / feed["ours_s"]
                feeds.append(feed)
                print(json.dumps(feed), flush=True)
            del x, w8, a8
            torch.cuda.empty_cache()

    payload = {"benchmark": "int8_tiles", "card": card, "rows": rows, "feeds": feeds,
               "seconds": time.perf_counter() - started, "note": "random values; ESM-2 3B's linear layers"}
    slug = card_slug(card)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"int8_tiles-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# int8 GEMM tiles on {card}: the best of {len(TILES)} candidates and ours per packed length", "",
             "| tokens | layer | best tile | best ms | ours / best time |", "|---|---|---|---|---|"]
    lines += [f"| {r['M']} | {r['layer']} | {r['best']} | {r['times_s'][r['best']] * 1e3:.3f} | {r['ours_vs_best']:.3f} |"
              for r in rows]
    lines += ["", f"Ours: {name(TILE)}. Summed over a layer's four GEMMs, ours / best per length: "
              + ", ".join(f"{M}: {sum(r['times_s'][name(TILE)] for r in rows if r['M'] == M) / sum(r['times_s'][r['best']] for r in rows if r['M'] == M):.3f}"
                          for M in sorted({r['M'] for r in rows})) + ".",
              "", "The standalone quantisations (fp16 in, int8 out; GB/s counts 3 bytes per element), against a "
              "device copy of the same tensor:", "",
              "| tokens | input of | width | inductor ms | ours ms | ours / inductor speed | inductor GB/s | ours GB/s | copy GB/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {f['M']} | {f['input_of']} | {f['width']} | {f['inductor_s'] * 1e3:.3f} | {f['ours_s'] * 1e3:.3f} | "
              f"{f['ours_vs_inductor']:.2f}x | {f['inductor_GBps']:,.0f} | {f['ours_GBps']:,.0f} | {f['copy_GBps']:,.0f} |"
              for f in feeds]
    (args.out_dir / f"int8_tiles-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
