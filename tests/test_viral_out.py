"""The sequences a run leaves: viral.fna (or .fastq, .gz) per sample and per mate file, and
VirNucPro's frame files (--write-frames), on real Dask workers with the random-weight demo models.

The expectations are built without the code under test: the inputs are read back by a few lines
here, and the frame files by a re-implementation of the original tool's own steps (its chunk
arithmetic as the compat rules state it, six-frame translation with a codon dictionary, its
slicing and its ``>id`` / sequence lines)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from types import SimpleNamespace

import h5netcdf
import numpy as np
import pytest

import virnuc_hpc
from conftest import DEMO_FASTA
from virnuc_hpc.config import load_config
from virnuc_hpc.outputs import store

STOPS = {"TAA", "TAG", "TGA"}
BASES = "TCAG"
AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {a + b + c: AMINO[16 * i + 4 * j + k] for i, a in enumerate(BASES) for j, b in enumerate(BASES)
               for k, c in enumerate(BASES)}
OPEN_CODONS = [c for c in CODON_TABLE if c not in STOPS]


# --- independent readers and the original's frame files -----------------------------------------

def read_fasta(text: str) -> list[tuple[str, str]]:
    """(header line after '>', sequence) per record: lines joined, whitespace dropped."""
    records: list[tuple[str, list[str]]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(">"):
            records.append((line[1:].rstrip(), []))
        elif records:
            records[-1][1].append("".join(line.split()))
    return [(head, "".join(body)) for head, body in records]


def read_fastq(text: str) -> list[tuple[str, str, str]]:
    lines = text.rstrip("\n").split("\n")
    return [(lines[i][1:], lines[i + 1], lines[i + 3]) for i in range(0, len(lines), 4)]


def original_chunks(seq: str, c: int) -> list[str]:
    """The chunks as the compat rules describe the original: a list of back-shifts, then starts."""
    n_len = len(seq)
    if n_len <= c:
        return [seq]
    n = -(-n_len // c)
    total = n * c - n_len
    base = total // n
    k = total - base * (n - 1)
    shifts = [base + 1] * k + [base] * max(0, n - 1 - k) + [0]
    chunks, start = [], 0
    for i in range(n):
        start = i * c - sum(shifts[:i])
        chunks.append(seq[start:min(start + c, n_len)])
    return chunks


def original_frames(chunk_id: str, chunk: str) -> list[tuple[str, str, str]]:
    """identify_seq of the original, prediction mode, with its `protein != ''` filter."""
    seq = chunk.upper()
    rev = seq.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]

    def translate(s: str, frame: int) -> str:
        return "".join(CODON_TABLE.get(s[i:i + 3], "") for i in range(frame, len(s) - 2, 3))

    out = []
    for num, protein in enumerate([translate(seq, f) for f in range(3)] + [translate(rev, f) for f in range(3)],
                                  start=1):
        if "*" in protein or protein == "":
            continue
        n = 3 * len(protein)
        if num <= 3:
            out.append((f"{chunk_id}F{num}", seq[num - 1:num + n], protein))
        else:
            out.append((f"{chunk_id}R{num - 3}", rev[num - 3 - 1:num - 3 + n], protein))
    return out


def original_frame_files(records: list[tuple[str, str]], c: int) -> tuple[str, str]:
    nucleotide, protein = [], []
    for head, seq in records:
        rid = head.split()[0]
        for i, chunk in enumerate(original_chunks(seq, c)):
            for fid, nt, aa in original_frames(f"{rid}_chunk_{i + 1}", chunk):
                nucleotide.append(f">{fid}\n{nt}\n")
                protein.append(f">{fid}\n{aa}\n")
    return "".join(nucleotide), "".join(protein)


def reads_rows(folder: Path) -> list[dict[str, str]]:
    lines = [line for line in (folder / store.READS).read_text().splitlines() if not line.startswith("#")]
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


# --- inputs ----------------------------------------------------------------------------------------

def open_frame(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(OPEN_CODONS) for _ in range(length // 3 + 1))[:length]


def revcomp(seq: str) -> str:
    return seq.translate(str.maketrans("ACGT", "TGCA"))[::-1]


def mixed_fasta(path: Path) -> None:
    """The demo reads (CRLF, lower case, wrapped lines, IUPAC codes) and reads that stress the
    frame rules: several chunks, an open frame on the reverse strand only, runs of N, all N."""
    rng = random.Random(11)
    n_runs = open_frame(rng, 640)
    n_runs = n_runs[:100] + "N" * 12 + n_runs[112:400] + "NNNNNNN" + n_runs[407:]
    extra = [(">long_fwd an open frame over four chunks", open_frame(rng, 1150), 70),
             (">rev_only the reverse strand's frame", revcomp(open_frame(rng, 700)), 0),
             (">n_runs with\ttab and ünïcödé in the description", n_runs, 60),
             (">all_n", "N" * 400, 0),
             (">short_lower", open_frame(rng, 180).lower(), 0)]
    text = DEMO_FASTA.read_bytes().decode()
    for head, seq, wrap in extra:
        lines = [seq[i:i + wrap] for i in range(0, len(seq), wrap)] if wrap else [seq]
        text += head + "\n" + "\n".join(lines) + "\n"
    path.write_bytes(text.encode())


def fastq_text(records: list[tuple[str, str]], rng: random.Random) -> str:
    return "".join(f"@{head}\n{seq}\n+\n{''.join(rng.choice('5?II#') for _ in seq)}\n" for head, seq in records)


# ``client``: the session's shared cluster (tests/conftest.py)


def _predict(client, inputs, outdir: Path, **options):
    return virnuc_hpc.predict(inputs, outdir, client=client, config=load_config(preset="demo"),
                              progress=False, log_interval=0, bag_size=32, **options)


@pytest.fixture(scope="module")
def fasta_run(client, demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sample of mixed FASTA through predict --write-frames."""
    root = tmp_path_factory.mktemp("viral-fasta")
    mixed_fasta(root / "mixed.fasta")
    _predict(client, [root / "mixed.fasta"], root / "out", write_frames=True)
    return root


@pytest.fixture(scope="module")
def fastq_runs(client, demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A single FASTQ sample and a paired one, with --viral-format fastq and gzip; then the same
    OUTDIR again with FASTA out (every bag reused, only the finish runs again)."""
    root = tmp_path_factory.mktemp("viral-fastq")
    rng = random.Random(5)
    single = [(head, seq) for head, seq in read_fasta(DEMO_FASTA.read_text()) if seq][:40]
    (root / "single.fq.gz").write_bytes(gzip.compress(fastq_text(single, rng).encode()))
    ones, twos = [], []
    for i in range(48):
        one = open_frame(rng, rng.choice([150, 250, 320])) if i % 3 else "".join(rng.choices("ACGT", k=150))
        two = revcomp(open_frame(rng, rng.choice([150, 250])))
        ones.append((f"p{i}/1 mate one", one))
        twos.append((f"p{i} mate two", two))  # no /2 in the file: the mate rule adds it to the id
    (root / "pair_R1.fastq").write_text(fastq_text(ones, rng))
    (root / "pair_R2.fastq").write_text(fastq_text(twos, rng))
    sheet = root / "sheet.tsv"
    sheet.write_text("sample\tfastq_1\tfastq_2\n"
                     f"single\t{root / 'single.fq.gz'}\t\n"
                     f"pair\t{root / 'pair_R1.fastq'}\t{root / 'pair_R2.fastq'}\n")
    out = root / "out"
    _predict(client, [], out, samplesheet=sheet, viral_format="fastq", compression="gzip")
    first = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("viral*")}
    _predict(client, [], out, samplesheet=sheet, compression="gzip")
    run = json.loads((out / store.RUN_JSON).read_text())
    return {"root": root, "out": out, "fastq_out": first, "run": run}


# --- viral.fna ---------------------------------------------------------------------------------------

def test_viral_fna_holds_exactly_the_virus_reads_as_in_the_input(fasta_run: Path):
    out = fasta_run / "out"
    rows = reads_rows(out)
    calls = {r["call"] for r in rows}
    assert {"virus", "others"} <= calls, calls  # random weights: still a mix of calls to select from
    by_id = {head.split()[0]: (head, seq) for head, seq in read_fasta((fasta_run / "mixed.fasta").read_text())}
    want = "".join(">{}\n{}\n".format(*by_id[r["read_id"]]) for r in rows if r["call"] == "virus")
    got = (out / "viral.fna").read_text()
    assert got == want
    assert "\r" not in got and "synthetic read" in got  # descriptions kept, line ends LF


def test_reads_tsv_gives_the_best_virus_score_of_each_read(fasta_run: Path):
    out = fasta_run / "out"
    lines = [line.split("\t") for line in (out / store.PREDICTIONS).read_text().splitlines()[2:]]
    best: dict[str, np.float32] = {}
    for fid, _label, _p0, p1 in lines:
        rid = fid[:fid.rindex("_chunk_")]
        best[rid] = max(best.get(rid, np.float32(-1)), np.float32(p1))
    rows = reads_rows(out)
    header = (out / store.READS).read_text().splitlines()[1].split("\t")
    assert header[-1] == "virus_score" and header[:3] == ["read_id", "file", "length"]
    for r in rows:
        assert r["virus_score"] == (str(best[r["read_id"]]) if r["read_id"] in best else "-"), r
        if r["call"] == "virus":  # some chunk's best P(virus) beat its best P(others)
            assert np.float32(r["virus_score"]) >= np.float32(0.5), r


def test_write_frames_files_are_the_originals(fasta_run: Path):
    out = fasta_run / "out"
    nucleotide, protein = original_frame_files(read_fasta((fasta_run / "mixed.fasta").read_text()), 300)
    got_nt = (out / "mixed_identified_nucleotide.fa").read_bytes()
    got_aa = (out / "mixed_identified_protein.faa").read_bytes()
    assert got_nt == nucleotide.encode()
    assert got_aa == protein.encode()
    ids = got_nt.decode().splitlines()[::2]
    # the cases the rules are about are in there: a 4th chunk, reverse frames, N runs, upper case
    assert any("long_fwd_chunk_4" in i for i in ids)
    assert any(i.startswith(">rev_only") and i[-2] == "R" for i in ids)
    assert any(i.startswith(">n_runs_chunk_") for i in ids) and not any(i.startswith(">all_n") for i in ids)
    assert ">short_lower_chunk_1F1" in ids
    # the same frames, in the same order, as prediction_results.txt
    predicted = [line.split("\t")[0] for line in (out / store.PREDICTIONS).read_text().splitlines()[2:]]
    assert [i[1:] for i in ids] == predicted


# --- FASTQ, gzip, pairs --------------------------------------------------------------------------------

def test_fastq_in_gives_fastq_out_when_asked_and_fasta_otherwise(fastq_runs: dict):
    root, out, first = fastq_runs["root"], fastq_runs["out"], fastq_runs["fastq_out"]
    rows = reads_rows(out / "samples" / "single")
    records = {head.split()[0]: (head, seq, qual)
               for head, seq, qual in read_fastq(gzip.decompress((root / "single.fq.gz").read_bytes()).decode())}
    virus = [records[r["read_id"]] for r in rows if r["call"] == "virus"]
    assert virus and len(virus) < len(rows)
    assert gzip.decompress(first["samples/single/viral.fastq.gz"]).decode() == \
        "".join(f"@{h}\n{s}\n+\n{q}\n" for h, s, q in virus)
    again = out / "samples" / "single" / "viral.fna.gz"
    assert gzip.decompress(again.read_bytes()).decode() == "".join(f">{h}\n{s}\n" for h, s, _ in virus)
    assert not (out / "samples" / "single" / "viral.fastq.gz").exists()  # the earlier format is gone
    assert fastq_runs["run"]["bags"]["computed_now"] == 0  # the second pass reused every bag


def test_pairs_stay_together(fastq_runs: dict):
    root, out, first = fastq_runs["root"], fastq_runs["out"], fastq_runs["fastq_out"]
    folder = out / "samples" / "pair"
    pairs = [line.split("\t") for line in (folder / store.PAIRS).read_text().splitlines()
             if not line.startswith("#")][1:]
    virus = [p for p in pairs if p[3] == "virus"]
    assert virus and len(virus) < len(pairs)
    # the point of keeping pairs together: some virus pairs have a mate that is not virus itself
    assert any(p[1] != p[2] for p in virus)
    wanted = {p[0] for p in virus}
    for mate, name in ((1, "pair_R1.fastq"), (2, "pair_R2.fastq")):
        records = read_fastq((root / name).read_text())
        chosen = [(h, s, q) for h, s, q in records if h.split()[0].removesuffix(f"/{mate}") in wanted]
        assert len(chosen) == len(virus)
        assert gzip.decompress(first[f"samples/pair/viral_{mate}.fastq.gz"]).decode() == \
            "".join(f"@{h}\n{s}\n+\n{q}\n" for h, s, q in chosen)
        assert gzip.decompress((folder / f"viral_{mate}.fna.gz").read_bytes()).decode() == \
            "".join(f">{h}\n{s}\n" for h, s, _ in chosen)
    assert not (folder / "viral.fna.gz").exists()


def test_a_kept_bag_without_the_frame_parts_is_recomputed(fastq_runs: dict):
    """A resume with --write-frames cannot reuse bags made without it: their frames' sequences
    were never kept."""
    from virnuc_hpc.runtime.worker import BagRules

    out = fastq_runs["out"]
    path = store.bag_files(out)[0]
    with_frames = BagRules(chunk_size=300, skip_invalid=False, classify=True, write_frames=True).table_parts()
    without = BagRules(chunk_size=300, skip_invalid=False, classify=True).table_parts()

    with h5netcdf.File(path, "r") as f:
        ref = SimpleNamespace(name=path.stem, digest=f.attrs["bag_digest"])
    assert store.reusable_bag(out, ref, with_probability=True, parts=without) is not None
    assert store.reusable_bag(out, ref, with_probability=True, parts=with_frames) is None
