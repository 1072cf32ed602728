"""Bytes per frame of every `--features` mode, with the real encoders' widths (768 + 2560).

    python benchmarks/features_bytes.py --reads 100000

Storage size depends on the format, the ids and the table parts, not on the GPU or on how the
vectors were computed: this runs the workers' own steps (parse, translate, the bag's table parts,
`store.write_bag`) on synthetic 150-bp reads, with random unit-scale vectors of the real widths in
place of the embeddings, for float32 / float16 / none, plain and gzip. It prints bytes per frame and
the ratio to float32, and the cosine between the float16 and float32 vectors as read back through
`virnuc_hpc.open_features` (lazily, then computed). Real embeddings compress a little better than
random numbers under gzip; the plain modes are exact. Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from input_scaling import synthetic_fastq_gz  # noqa: E402


def write_run(path: Path, outdir: Path, mode: str, compression: str, bag_records: int) -> int:
    from virnuc_hpc.outputs import store
    from virnuc_hpc.reads.bags import plan_bags
    from virnuc_hpc.reads.frames import frames_for_records
    from virnuc_hpc.reads.samples import samples_from_paths
    from virnuc_hpc.outputs.tables import bag_tables
    from virnuc_hpc.runtime.worker import BagRules, parse_bag

    shutil.rmtree(outdir, ignore_errors=True)
    store.check_writable(outdir)
    (sample,) = samples_from_paths([str(path)])
    rules = BagRules(chunk_size=300, skip_invalid=False, classify=True, features=mode, compression=compression)
    frames_total = 0
    for bag in plan_bags(list(sample.files), lambda f: bag_records, "key"):
        records, valid, problems = parse_bag(bag, rules)
        table = frames_for_records([r for r, ok in zip(records, valid) if ok], 300)
        rng = np.random.default_rng(bag.index)
        dna = rng.standard_normal((len(table), 768), dtype=np.float32)
        esm = rng.standard_normal((len(table), 2560), dtype=np.float32)
        proba = rng.random((len(table), 2), dtype=np.float32)
        parts, counts = bag_tables(bag.index, records, valid, problems, table, proba, True)
        position = {r.id: i for i, r in enumerate(records) if valid[i]}
        frames = SimpleNamespace(frame_id=table.frame_id, chunk_id=table.chunk_id, read_id=table.read_id,
                                 record=[bag.ref.first_record + position[r] for r in table.read_id])
        store.write_bag(outdir, bag.ref, frames, dna, esm, proba, {}, features=mode, compression=compression,
                        tables=parts, counts=counts)
        frames_total += len(table)
    store.write_json(outdir / store.RUN_JSON, {})
    return frames_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--bag-records", type=int, default=25_000, help="as --bag-size 20000 gives for 150-bp reads")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnuc-features-bytes"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    from virnuc_hpc import open_features
    from virnuc_hpc.outputs import store

    args.workdir.mkdir(parents=True, exist_ok=True)
    reads = args.workdir / f"reads-{args.reads}.fastq.gz"
    if not reads.exists():
        synthetic_fastq_gz(reads, args.reads)
    rows, vectors = [], {}
    for mode in store.FEATURE_MODES:
        for compression in ("none", "gzip"):
            out = args.workdir / f"{mode}-{compression}"
            t0 = time.perf_counter()
            frames = write_run(reads, out, mode, compression, args.bag_records)
            size = sum(p.stat().st_size for p in store.bag_files(out))
            rows.append({"features": mode, "compression": compression, "frames": frames,
                         "bytes_per_frame": size / frames, "write_s": time.perf_counter() - t0})
            if compression == "none" and mode != "none":
                with open_features(out) as ds:
                    vectors[mode] = ds["features"].astype("float32").values
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["bytes_per_frame"]
    for r in rows:
        r["ratio_to_float32"] = r["bytes_per_frame"] / base
    a, b = vectors["float32"], vectors["float16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    payload = {"benchmark": "features_bytes", "reads": args.reads, "rows": rows,
               "float16_cosine_min": float(cos.min()), "float16_cosine_median": float(np.median(cos))}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "features_bytes.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# features_bytes: {args.reads:,} synthetic 150-bp reads, real widths (768 + 2560)", "",
             "| features | compression | bytes/frame | vs float32 |", "|---|---|---|---|"]
    lines += [f"| {r['features']} | {r['compression']} | {r['bytes_per_frame']:,.0f} | {r['ratio_to_float32']:.3f} |"
              for r in rows]
    lines += ["", f"float16 vs float32 vectors read back: cosine min {payload['float16_cosine_min']:.7f}, "
                  f"median {payload['float16_cosine_median']:.7f}."]
    (args.results / "features_bytes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
