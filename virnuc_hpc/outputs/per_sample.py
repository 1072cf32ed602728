"""Each sample's finished outputs from its bags: the tables (tables.py), the sequence files
(sequences.py), and samples.tsv summing up a run of several samples.

Why a module of its own: where each sample's files go (OUTDIR's top for one sample, samples/<name>/
for several) is a decision about the whole run, made once here, above the per-table writers.
"""

from __future__ import annotations

from pathlib import Path

from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.sequences import SampleSequences, SequenceOptions
from virnuc_hpc.outputs.tables import SampleTables, new_tmpdir, remove_tmpdir
from virnuc_hpc.reads.bags import BagRef
from virnuc_hpc.reads.samples import Sample


def write_tables(outdir: Path, samples: list[Sample], refs: list[BagRef], *, classify: bool,
                 skip_invalid: bool, random_weights: bool, stage: Path,
                 sequences: SequenceOptions | None = None) -> tuple[dict[str, int], list[str]]:
    """Each sample's tables and sequence files (viral.fna, --write-frames) from its bags, written
    into ``stage`` (a folder in OUTDIR) with the layout they will have in OUTDIR: in its top for one
    sample, else in samples/<name>/ with samples.tsv summing them up. Returns the counts and the
    file names, relative to OUTDIR."""
    comment = store.RANDOM_WEIGHTS_WARNING if random_weights else None
    tmpdir = new_tmpdir(stage)
    single = len(samples) == 1
    totals: dict[str, int] = {}
    written: list[str] = []
    rows = []
    try:
        for sample in samples:
            folder = stage if single else stage / store.SAMPLES_DIR / sample.name
            folder.mkdir(parents=True, exist_ok=True)
            mine = [r for r in refs if r.sample == sample.name]
            tables = SampleTables(outdir, folder, mine, classify=classify, skip_invalid=skip_invalid,
                                  comment=comment, tmpdir=tmpdir)
            counts, names = tables.write()
            pairs = None
            if sample.paired:
                by_mate: dict[int, list[BagRef]] = {}
                for ref in mine:
                    by_mate.setdefault(ref.mate or 0, []).append(ref)
                pairs = tables.pairs(by_mate)
                names += [pairs] if pairs else []
            names += SampleSequences(outdir, folder, sample, mine, sequences or SequenceOptions(),
                                     tables.dropped).write(classify=classify, pairs_written=pairs is not None)
            prefix = "" if single else f"{store.SAMPLES_DIR}/{sample.name}/"
            written += [prefix + n for n in names]
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            rows.append({"sample": sample.name, **counts})
        if not single:
            keys = list(rows[0].keys())
            text = store.format_columns(keys, [[row.get(k, "-") for row in rows] for k in keys], comment)
            store.write_text_atomic(stage / store.SAMPLES_TSV, text)
            written.append(store.SAMPLES_TSV)
    finally:
        remove_tmpdir(tmpdir)
    return totals, written
