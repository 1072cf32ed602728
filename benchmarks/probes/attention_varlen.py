"""Packed variable-length attention kernels on short proteins: which is fastest for ESM-2 3B shapes.

ESM-2 3B on 150-bp reads attends within 47-52-token proteins packed into ~64k-token batches (40
heads of 64). Varlen flash attention (FA2) runs a 128x128 tile per protein and head, mostly empty
at these lengths (8.5% of ESM-2's kernel time on an H100, results/esm2_variants-*). Candidates with
the same packed (T, H, hd) layout and cu_seqlens: xformers-style memory-efficient attention (64-row
tiles) and cuDNN's ragged attention. Each is checked against FA2 (max |diff|) and timed.

    python benchmarks/probes/attention_varlen.py [--tokens 65536]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py
from common import card_slug  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results"  # benchmarks/results


def flash(q, k, v, cu, n):
    from torch.nn.attention.varlen import varlen_attn
    return varlen_attn(q, k, v, cu, cu, n, n)


def efficient(q, k, v, cu, n):
    out = torch.ops.aten._efficient_attention_forward(q[None], k[None], v[None], None, cu, cu, n, n,
                                                      0.0, 0)[0]
    return out[0]


def cudnn(q, k, v, cu, n):
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, n, n, False)[0]


KERNELS = {"flash (varlen_attn)": flash, "efficient (cu_seqlens)": efficient, "cudnn (ragged)": cudnn}


def timed(fn, *args, reps: int = 50) -> float:
    for _ in range(5):
        fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn(*args)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--lengths", default="47,52", help="packed sizes (aa + BOS/EOS) lo,hi")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    lo, hi = map(int, args.lengths.split(","))
    rng = np.random.default_rng(0)
    sizes = rng.integers(lo, hi + 1, size=args.tokens // lo)
    sizes = sizes[np.cumsum(sizes) <= args.tokens]
    total = int(sizes.sum())
    cu = torch.tensor(np.concatenate(([0], np.cumsum(sizes))), dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(total, 40, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    ref = flash(q, k, v, cu, hi)
    rows = []
    for name, fn in KERNELS.items():
        try:
            out = fn(q, k, v, cu, hi)
            row = {"kernel": name, "ms": timed(fn, q, k, v, cu, hi),
                   "max_abs_diff_vs_flash": float((out.float() - ref.float()).abs().max())}
        except Exception as exc:  # a backend this build or card lacks
            row = {"kernel": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    card = torch.cuda.get_device_name()
    payload = {"card": card, "torch": torch.__version__, "tokens": total, "proteins": len(sizes),
               "sizes": [lo, hi], "heads": 40, "head_dim": 64, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"attention_varlen-{card_slug(card)}.json").write_text(json.dumps(payload, indent=2) + "\n")
    base = rows[0].get("ms")
    for r in rows:
        if "ms" in r:
            print(f"{r['kernel']:<24} {r['ms']:.3f} ms  x{base / r['ms']:.2f}  max|diff| {r['max_abs_diff_vs_flash']:.1e}")
        else:
            print(f"{r['kernel']:<24} {r['error']}")


if __name__ == "__main__":
    main()
