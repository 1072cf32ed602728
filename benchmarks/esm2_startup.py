"""ESM-2 3B cold start on a worker, phase by phase: sequential (load both encoders, then compile at
ESM-2's first batch) against compile_ahead (ESM-2 compiles on placeholder weights in a thread while
its weights are copied and DNABERT-S loads).

    python benchmarks/esm2_startup.py [--precision int8] [--results DIR] [--tag TAG]

Each variant runs in a fresh process with an empty compile cache (a node's first run). Printed per
phase: seconds, and dynamo's count of compiled graphs after it (a warm-up that compiles again after
compile_ahead shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))


def child(path: str, dnabert_path: str, precision: str, ahead: bool) -> dict:
    """One cold start in this process, in a worker's order: {phase: [seconds, graphs compiled so far]}."""
    t = time.perf_counter()
    phases: dict[str, list[float]] = {}

    def mark(name: str) -> None:
        nonlocal t
        torch.cuda.synchronize()
        now = time.perf_counter()
        phases[name] = [now - t, counters["stats"]["unique_graphs"]]
        t = now

    import torch
    from torch._dynamo.utils import counters

    from virnuc_hpc.devices import activation_precision, dtype_of
    from virnuc_hpc.encoders import load_dnabert
    from virnuc_hpc.encoders.esm2 import build_esm2_model, read_esm2_checkpoint
    from virnuc_hpc.encoders.esm2_packed import MIN_BUCKET, PackedESM2Encoder, compile_ahead
    torch.empty(0, device="cuda")
    mark("imports")
    dev = torch.device("cuda")
    dtype = dtype_of(activation_precision(precision, dev))
    cfg, state, inv_freq = read_esm2_checkpoint(path)
    mark("read_checkpoint")
    compiling = (compile_ahead(cfg, state, device=dev, dtype=dtype, precision=precision, gelu_epilogue=True)
                 if ahead else None)
    model = build_esm2_model(path, cfg, state, inv_freq, device=dev, dtype=dtype)
    mark("build_model")
    enc = PackedESM2Encoder(model, name="esm2", device=dev, precision=precision, gelu_epilogue=True,
                            graphs=compiling)
    mark("encoder_init")
    dnabert = load_dnabert(dnabert_path, device="cuda", precision=precision)
    mark("dnabert_load")
    enc.embed(["A" * 48] * (MIN_BUCKET // 50))  # waits for the graphs compiling ahead
    mark("esm2_warm_up_small")
    enc.embed(["A" * 48] * (enc.token_budget // 50))
    mark("esm2_warm_up_budget")
    dnabert.warm_up()
    mark("dnabert_warm_up")
    enc.embed(["A" * 48] * (enc.token_budget // 50))
    mark("esm2_steady_budget_batch")
    return {"precision": precision, "compile_ahead": ahead, "budget": enc.token_budget, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnuc-cli"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--child", nargs=4, metavar=("ESM2", "DNABERT", "PRECISION", "AHEAD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        esm2, dnabert, precision, ahead = args.child
        print("RESULT " + json.dumps(child(esm2, dnabert, precision, ahead == "1")), flush=True)
        return
    from pipeline_scaling import make_models
    from input_scaling import device_name
    models = make_models(args.workdir / "models")
    runs = []
    for ahead in (False, True):
        cache = Path(tempfile.mkdtemp(prefix="virnuc-startup-cache-"))
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", models["esm2"], models["dnabert"], args.precision,
                               "1" if ahead else "0"],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        shutil.rmtree(cache, ignore_errors=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        run = {**json.loads(lines[-1][7:]), "process_wall_s": wall}
        runs.append(run)
        print(json.dumps(run), flush=True)
    card = device_name()
    slug = card.lower().replace(" ", "-") + (f"-{args.tag}" if args.tag else "")
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "esm2_startup", "card": card, "note": "random weights; cold compile cache", "runs": runs}
    (args.results / f"esm2_startup-{slug}.json").write_text(json.dumps(payload, indent=2) + "\n")
    names = list(runs[0]["phases"])
    lines = [f"# esm2_startup on {card}: ESM-2 3B, precision {args.precision}, cold compile cache", "",
             "| phase | " + " | ".join("compile ahead" if r["compile_ahead"] else "sequential" for r in runs)
             + " |", "|---" * (1 + len(runs)) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{r['phases'][n][0]:.2f} s ({r['phases'][n][1]:.0f} graphs)"
                                              for r in runs) + " |")
    lines.append("| process wall | " + " | ".join(f"{r['process_wall_s']:.1f} s" for r in runs) + " |")
    (args.results / f"esm2_startup-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
