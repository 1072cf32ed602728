"""Chunking, six-frame translation and FASTA input against the compat spec (sections 1-2).

The reference functions below are deliberately plain transcriptions of the spec text (loops,
a literal codon dict), independent of the vectorised code under test; random inputs are
compared against them, and the spec's worked examples are checked with hand-derived values.
"""

from __future__ import annotations

import gzip
import math
import random
from pathlib import Path
from typing import NamedTuple

import pytest

from virnuc_hpc.reads.chunking import chunk_bounds, chunk_sequence
from virnuc_hpc.reads.fasta import (
    BINARY,
    DUPLICATE_ID,
    EMPTY_FILE,
    EMPTY_ID,
    EMPTY_SEQUENCE,
    INVALID_CHAR,
    TEXT_BEFORE_HEADER,
    UNREADABLE,
    FastaError,
    Problem,
    Record,
)
from virnuc_hpc.testing.loading import load_records, read_fasta, validate
from virnuc_hpc.reads.frames import FrameTable, frames_for_records, six_frames

# ----------------------------------------------------------------------------- reference

CODON_TABLE = {
    "TTT": "F", "TTC": "F", "TTA": "L", "TTG": "L", "TCT": "S", "TCC": "S", "TCA": "S", "TCG": "S",
    "TAT": "Y", "TAC": "Y", "TAA": "*", "TAG": "*", "TGT": "C", "TGC": "C", "TGA": "*", "TGG": "W",
    "CTT": "L", "CTC": "L", "CTA": "L", "CTG": "L", "CCT": "P", "CCC": "P", "CCA": "P", "CCG": "P",
    "CAT": "H", "CAC": "H", "CAA": "Q", "CAG": "Q", "CGT": "R", "CGC": "R", "CGA": "R", "CGG": "R",
    "ATT": "I", "ATC": "I", "ATA": "I", "ATG": "M", "ACT": "T", "ACC": "T", "ACA": "T", "ACG": "T",
    "AAT": "N", "AAC": "N", "AAA": "K", "AAG": "K", "AGT": "S", "AGC": "S", "AGA": "R", "AGG": "R",
    "GTT": "V", "GTC": "V", "GTA": "V", "GTG": "V", "GCT": "A", "GCC": "A", "GCA": "A", "GCG": "A",
    "GAT": "D", "GAC": "D", "GAA": "E", "GAG": "E", "GGT": "G", "GGC": "G", "GGA": "G", "GGG": "G",
}
COMPLEMENT = {"A": "T", "T": "A", "C": "G", "G": "C", "a": "t", "t": "a", "c": "g", "g": "c"}


def ref_chunks(seq_id: str, seq: str, c: int) -> list[tuple[str, str]]:
    """Spec section 1, step by step, with the explicit list of back-shifts."""
    L = len(seq)
    if L == 0:
        return []
    if L <= c:
        return [(f"{seq_id}_chunk_1", seq)]
    n = math.ceil(L / c)
    R = n * c - L
    base = R // n
    k = R - base * (n - 1)
    shifts = [base + 1] * k + [base] * max(0, n - 1 - k) + [0]
    out = []
    for i in range(n):
        start = i * c - sum(shifts[:i])
        end = min(start + c, L)
        out.append((f"{seq_id}_chunk_{i + 1}", seq[start:end]))
    return out


def ref_revcomp(seq: str) -> str:
    return "".join(COMPLEMENT.get(ch, ch) for ch in reversed(seq))


def ref_translate(seq: str) -> str:
    protein = ""
    for i in range(0, len(seq) - 2, 3):
        codon = seq[i : i + 3]
        if codon in CODON_TABLE:  # quirk: any other codon is silently dropped
            protein += CODON_TABLE[codon]
    return protein


def ref_six_frames(chunk_id: str, chunk: str) -> list[tuple[str, str, str]]:
    """Spec section 2: (frame id, protein, nucleotide) of the kept frames, F1..R3."""
    upper = chunk.upper()
    rc = ref_revcomp(upper)
    kept = []
    for name, source, offset in (("F1", upper, 0), ("F2", upper, 1), ("F3", upper, 2),
                                 ("R1", rc, 0), ("R2", rc, 1), ("R3", rc, 2)):
        protein = ref_translate(source[offset:])
        if protein and "*" not in protein:
            kept.append((chunk_id + name, protein, source[offset : offset + 3 * len(protein) + 1]))
    return kept


class Read(NamedTuple):
    id: str
    seq: str


def ref_frame_table(reads: list[Read], c: int) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("frame_id", "chunk_id", "read_id", "protein", "nucleotide",
                                             "read_ids", "read_n_chunks", "chunks_without_frames")}
    for read in reads:
        chunks = ref_chunks(read.id, read.seq, c)
        cols["read_ids"].append(read.id)
        cols["read_n_chunks"].append(len(chunks))
        for chunk_id, chunk in chunks:
            frames = ref_six_frames(chunk_id, chunk)
            if not frames:
                cols["chunks_without_frames"].append(chunk_id)
            for frame_id, protein, nucleotide in frames:
                cols["frame_id"].append(frame_id)
                cols["chunk_id"].append(chunk_id)
                cols["read_id"].append(read.id)
                cols["protein"].append(protein)
                cols["nucleotide"].append(nucleotide)
    return cols


# ----------------------------------------------------------------------------- random inputs

NON_STOP = [codon for codon, aa in CODON_TABLE.items() if aa != "*"]
ODD = "NnRYKMSWBDHVUuacgt"


def random_seq(rng: random.Random, length: int) -> str:
    """Mostly ORF-like sequences (so frames get kept), with N/IUPAC/U/lowercase sprinkled in."""
    mode = rng.randrange(6)
    if mode == 0:
        seq = "".join(rng.choices("ACGT", k=length))
    else:
        seq = "".join(rng.choices(NON_STOP, k=length // 3 + 1))[:length]
        if mode == 2:
            seq = ref_revcomp(seq)
    chars = list(seq)
    if mode in (3, 4, 5) and length:
        for _ in range(rng.randrange(1, 4 + length // 200)):
            chars[rng.randrange(length)] = rng.choice(ODD)
    if mode == 4 and length > 3:
        a = rng.randrange(length)
        chars[a : a + 400] = [ch.lower() for ch in chars[a : a + 400]]
    if mode == 5 and length >= 3:  # a stop codon near the end (terminal-stop rejection)
        at = length - 3 - rng.randrange(min(3, length - 2))
        chars[at : at + 3] = rng.choice(["TAA", "TAG", "TGA", "tga"])
    return "".join(chars)


@pytest.fixture(scope="module")
def random_reads() -> list[Read]:
    """One read of every length 0..5000, plus short ones where off-by-one errors live."""
    rng = random.Random(20240607)
    lengths = list(range(5001)) + [rng.randrange(0, 12) for _ in range(2000)]
    rng.shuffle(lengths)
    return [Read(f"read{i}", random_seq(rng, n)) for i, n in enumerate(lengths)]


def first_difference(actual: list, expected: list) -> str:
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a != e:
            return f"first difference at {i}: {a!r} != {e!r}"
    return f"lengths differ: {len(actual)} != {len(expected)}"


def assert_table_matches(table: FrameTable, expected: dict[str, list]) -> None:
    for name, column in expected.items():
        got = list(getattr(table, name))
        assert got == column, f"{name}: {first_difference(got, column)}"


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(
    ("length", "c", "bounds"),
    [
        (501, 500, [(0, 500), (250, 501)]),
        (600, 500, [(0, 500), (299, 600)]),
        (1001, 500, [(0, 500), (333, 833), (666, 1001)]),
        (1499, 500, [(0, 500), (499, 999), (999, 1499)]),
        (301, 300, [(0, 300), (150, 301)]),
        (700, 300, [(0, 300), (233, 533), (466, 700)]),
        (500, 500, [(0, 500)]),
        (1, 300, [(0, 1)]),
        (0, 300, []),
    ],
)
def test_chunk_bounds_worked_examples(length: int, c: int, bounds: list[tuple[int, int]]) -> None:
    assert chunk_bounds(length, c) == bounds


def test_chunk_bounds_8995_gives_30_chunks_of_300() -> None:
    bounds = chunk_bounds(8995, 300)
    assert len(bounds) == 30
    assert all(end - start == 300 for start, end in bounds)
    assert bounds[0][0] == 0 and bounds[-1][1] == 8995


@pytest.mark.parametrize("c", [300, 500])
def test_chunk_sequence_matches_reference_for_every_length(c: int) -> None:
    rng = random.Random(c)
    full = "".join(rng.choices("ACGTNacgt", k=20 * c + 2))
    for length in range(len(full) + 1):
        seq = full[:length]
        got = chunk_sequence("r", seq, c)
        assert got == ref_chunks("r", seq, c), length
        # Structural facts that hold whatever the arithmetic: full coverage, no chunk over c.
        if length:
            bounds = chunk_bounds(length, c)
            assert len(bounds) == math.ceil(length / c)
            assert bounds[0][0] == 0 and bounds[-1][1] == length
            assert all(0 < end - start <= c for start, end in bounds)
            assert all(b[0] <= a[1] for a, b in zip(bounds, bounds[1:]))


def test_chunk_sequence_keeps_case_and_ids() -> None:
    assert chunk_sequence("x", "acgtN", 300) == [("x_chunk_1", "acgtN")]
    assert [cid for cid, _ in chunk_sequence("x", "A" * 700, 300)] == ["x_chunk_1", "x_chunk_2", "x_chunk_3"]
    assert chunk_sequence("x", "", 300) == []


def test_chunk_bounds_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_bounds(10, 0)
    with pytest.raises(ValueError):
        chunk_bounds(-1, 300)


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize(("c", "batch_bases"), [(300, 1 << 21), (500, 5000)])
def test_frames_for_records_matches_reference(random_reads: list[Read], c: int, batch_bases: int) -> None:
    expected = ref_frame_table(random_reads, c)
    table = frames_for_records(random_reads, c, batch_bases=batch_bases)
    assert_table_matches(table, expected)
    # The comparison must not be vacuous: many frames kept, quirky codons among them.
    assert len(table) > 5000
    assert len(table.chunks_without_frames) > 100
    assert any(set(nt) - set("ACGT") for nt in table.nucleotide)
    assert 0 in table.read_n_chunks.tolist()


@pytest.mark.parametrize("batch_bases", [1 << 20, 3000])
def test_frames_for_records_short_read_groups_match_reference(batch_bases: int) -> None:
    # Groups of reads that are all 1..c bases take the one-chunk-per-read path; a long or an
    # empty read puts its group on the per-read path. Both must give the reference table.
    rng = random.Random(11)
    reads = [Read(f"s{i}", random_seq(rng, rng.randrange(1, 301))) for i in range(3000)]
    reads[2500:2500] = [Read("long", random_seq(rng, 1700)), Read("empty", "")]
    expected = ref_frame_table(reads, 300)
    assert_table_matches(frames_for_records(reads, 300, batch_bases=batch_bases), expected)
    assert_table_matches(frames_for_records(iter(reads), 300, batch_bases=batch_bases), expected)
    assert len(expected["frame_id"]) > 1000 and expected["chunks_without_frames"]


def test_six_frames_matches_reference(random_reads: list[Read]) -> None:
    checked = 0
    for read in random_reads[::7]:
        for chunk_id, chunk in ref_chunks(read.id, read.seq, 500):
            frames = six_frames(chunk_id, chunk)
            assert [(f.id, f.protein, f.nucleotide) for f in frames] == ref_six_frames(chunk_id, chunk)
            assert all(f.chunk_id == chunk_id and f.read_id == read.id for f in frames)
            checked += len(frames)
    assert checked > 500


def test_six_frames_with_non_ascii_matches_reference() -> None:
    for seq in ["ATGßAAAéGGG", "atgaaaÄcccggg", "ﬁATGAAA"]:  # upper() may change the length
        frames = six_frames("q_chunk_1", seq)
        assert [(f.id, f.protein, f.nucleotide) for f in frames] == ref_six_frames("q_chunk_1", seq)


def test_500bp_chunk_gives_166_aa_and_499_or_498_nt() -> None:
    # GCC repeats have no stop codon in any of the six frames, so all six are kept.
    chunk = "GCC" * 166 + "GC"
    assert len(chunk) == 500
    frames = six_frames("c_chunk_1", chunk)
    assert [f.id[-2:] for f in frames] == ["F1", "F2", "F3", "R1", "R2", "R3"]
    assert [len(f.protein) for f in frames] == [166] * 6
    assert [len(f.nucleotide) for f in frames] == [499, 499, 498, 499, 499, 498]
    # Hand-translated: GCC -> A, CCG -> P, CGC -> R; reverse complement GCGGC... -> A, R, G.
    assert [f.protein[:3] for f in frames] == ["AAA", "PPP", "RRR", "AAA", "RRR", "GGG"]
    assert frames[0].nucleotide == chunk[:499]
    assert frames[2].nucleotide == chunk[2:500]


def test_frame_id_example_read7_chunk_3R2() -> None:
    table = frames_for_records([Read("read7", "GCC" * 333 + "GC")], 500)  # 1001 bp -> 3 chunks
    assert list(table.read_n_chunks) == [3]
    assert "read7_chunk_3R2" in table.frame_id
    assert table.frame_id[:6] == [f"read7_chunk_1{n}" for n in ("F1", "F2", "F3", "R1", "R2", "R3")]


def test_quirks_by_hand() -> None:
    # A codon holding N is dropped, not X; nucleotide is 3P+1 bases from the frame start.
    f1 = six_frames("r_chunk_1", "ATGNNNAAA")[0]
    assert (f1.id, f1.protein, f1.nucleotide) == ("r_chunk_1F1", "MK", "ATGNNNA")
    # Lower case is upper-cased first; a terminal stop rejects the frame.
    # F1 = MK* and F2 = * are rejected; F3 GAA ATA, reverse complement TTATTTCAT.
    proteins = {f.id[-2:]: f.protein for f in six_frames("r_chunk_1", "atgaaataa")}
    assert proteins == {"F3": "EI", "R1": "LFH", "R2": "YF", "R3": "IS"}
    # Reverse complement keeps non-ACGT characters as they are: AAARAAA -> TTTRTTT.
    r1 = [f for f in six_frames("r_chunk_1", "aaaraaa") if f.id.endswith("R1")][0]
    assert (r1.protein, r1.nucleotide) == ("F", "TTTR")
    # U is not T: AUG is dropped, so nothing is left.
    assert six_frames("r_chunk_1", "AUG") == []


def test_frames_for_records_reports_chunks_without_frames() -> None:
    # "a" has a stop in all six frames: TAA at offsets 0, 4, 8 (phases 0, 1, 2) and TTA
    # (reverse complement TAA) at 12, 16, 20, i.e. reverse offsets 8, 4, 0.
    reads = [Read("a", "TAAGTAAGTAAGTTAGTTAGTTA"), Read("b", ""), Read("c", "ATGAAA"),
             Read("d", "AC"), Read("e", "NNNNNNNNN")]
    table = frames_for_records(reads, 300)
    assert table.read_ids == ["a", "b", "c", "d", "e"]
    assert list(table.read_n_chunks) == [1, 0, 1, 1, 1]
    assert table.chunks_without_frames == ["a_chunk_1", "d_chunk_1", "e_chunk_1"]
    # ATGAAA: F1 MK, F2 TGA stop, F3 GAA E; reverse complement TTTCAT: R1 FH, R2 F, R3 S.
    assert table.frame_id == ["c_chunk_1F1", "c_chunk_1F3", "c_chunk_1R1", "c_chunk_1R2", "c_chunk_1R3"]
    assert table.protein == ["MK", "E", "FH", "F", "S"]
    assert table.nucleotide == ["ATGAAA", "GAAA", "TTTCAT", "TTCA", "TCAT"]
    assert table.read_id == ["c"] * 5 and table.chunk_id == ["c_chunk_1"] * 5
    assert [f.id for f in table.frames()] == table.frame_id


def test_frames_for_records_rejects_bad_chunk_size() -> None:
    with pytest.raises(ValueError):
        frames_for_records([Read("a", "ACGT")], 0)


# ----------------------------------------------------------------------------- FASTA


def ref_fasta(path: Path) -> list[tuple[str, str, int]]:
    """Biopython's SimpleFastaParser + SeqIO id rule, on a text-mode file: (id, seq, header line)."""
    out = []
    title, lines, header_line = None, [], 0
    with open(path, encoding="ascii") as handle:  # universal newlines, as the original read it
        for number, line in enumerate(handle, start=1):
            if line[0] == ">":
                if title is not None:
                    out.append((title, "".join(lines).replace(" ", "").replace("\r", ""), header_line))
                title, lines, header_line = line[1:].rstrip(), [], number
            elif title is not None:
                lines.append(line.rstrip())
    if title is not None:
        out.append((title, "".join(lines).replace(" ", "").replace("\r", ""), header_line))
    return [(t.split(None, 1)[0] if t.split() else "", s, n) for t, s, n in out]


def messy_fasta(rng: random.Random, n_records: int) -> bytes:
    """Valid-but-ugly FASTA: mixed line endings, blank lines, spaces, tabs, descriptions."""
    newline = rng.choice(["\n", "\r\n", "MIXED"])
    out = ["\n" * rng.randrange(3)]
    for i in range(n_records):
        header = rng.choice([f"r{i}", f"r{i} some description", f" r{i}\tdesc  ", f"r{i}\t"])
        out.append(">" + header + "\n")
        length = rng.choice([0, 1, 59, 60, 61, rng.randrange(500)])
        seq = "".join(rng.choices("ACGTNacgtnRYU", k=length))
        width = rng.choice([1, 7, 60, 80, 1000])
        for j in range(0, length, width):
            piece = seq[j : j + width]
            if rng.random() < 0.1:
                piece = piece[: len(piece) // 2] + " " + piece[len(piece) // 2 :]
            if rng.random() < 0.1:
                piece += rng.choice([" ", "\t", " \t ", "\x0c"])
            out.append(piece + "\n")
        if rng.random() < 0.2:
            out.append("\n")
    text = "".join(out)
    if rng.random() < 0.3:
        text = text.rstrip("\n")  # no newline at the end
    if newline == "MIXED":
        text = "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in text.split("\n"))
    else:
        text = text.replace("\n", newline)
    return text.encode("ascii")


def write(path: Path, data: bytes | str, *, gz: bool = False) -> Path:
    data = data.encode("ascii") if isinstance(data, str) else data
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 64, 4096, 1 << 23])
def test_read_fasta_matches_biopython_reference(tmp_path: Path, block_size: int) -> None:
    rng = random.Random(block_size)
    for k in range(15):
        path = write(tmp_path / f"messy{k}.fa", messy_fasta(rng, rng.randrange(1, 40)), gz=k % 3 == 0)
        plain = tmp_path / f"plain{k}.fa"
        plain.write_bytes(gzip.decompress(path.read_bytes()) if k % 3 == 0 else path.read_bytes())
        got = [(r.id, r.seq, r.line) for r in read_fasta(path, block_size=block_size)]
        assert got == ref_fasta(plain)
        assert all(r.path == str(path) for r in read_fasta(path))


def test_lowercase_crlf_blank_lines_and_description(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", "\r\n\r\n>r1 Homo sapiens chr1\r\nacgt\r\n\r\nNNac\r\n>r2\tx y\r\nGG\r\n")
    assert list(read_fasta(path)) == [Record("r1", "acgtNNac", str(path), 3), Record("r2", "GG", str(path), 7)]
    assert [r.id for r in load_records([path], skip_invalid=False).records] == ["r1", "r2"]


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    text = ">r1\nACGT\n>r2\nTTTT\n"
    gz_without_suffix = write(tmp_path / "reads.txt", text, gz=True)
    plain_with_gz_suffix = write(tmp_path / "reads.fa.gz", text)
    expected = [("r1", "ACGT"), ("r2", "TTTT")]
    assert [(r.id, r.seq) for r in read_fasta(gz_without_suffix)] == expected
    assert [(r.id, r.seq) for r in read_fasta(plain_with_gz_suffix)] == expected


def test_very_long_record_on_many_lines(tmp_path: Path) -> None:
    rng = random.Random(5)
    genome = "".join(rng.choices("ACGTacgtN", k=5_000_000))
    lines = [genome[i : i + 60] for i in range(0, len(genome), 60)]
    path = write(tmp_path / "genome.fa", ">chr1 big\n" + "\n".join(lines) + "\n>tail\nAC\n", gz=True)
    for block_size in (1 << 23, 100_003):
        records = list(read_fasta(path, block_size=block_size))
        assert [r.id for r in records] == ["chr1", "tail"]
        assert records[0].seq == genome
        assert records[1].line == 1 + len(lines) + 1
    loaded = load_records(path, skip_invalid=False)
    assert len(loaded.records[0].seq) == 5_000_000 and loaded.skipped == []


def test_problem_str_format() -> None:
    problem = Problem("reads.fa", 12, "r3", EMPTY_SEQUENCE, "empty sequence")
    assert str(problem) == "reads.fa:12: record 'r3': empty sequence"
    assert str(Problem("reads.fa", None, None, EMPTY_FILE, "empty file")) == "reads.fa: empty file"


@pytest.mark.parametrize(
    ("data", "kind", "line"),
    [
        (b"", EMPTY_FILE, None),
        (b"\n  \n\t\n", EMPTY_FILE, None),
        (b"hello\n>r1\nACGT\n", TEXT_BEFORE_HEADER, 1),
        (b"\n\nACGT\n>r1\nACGT\n", TEXT_BEFORE_HEADER, 3),
        (b">r1\nACGT\nAC\x00GT\n", BINARY, 3),
        (b">caf\xc3\xa9 r1\nACGT\n", BINARY, 1),
        (b">r1\nACGT\n\x07\n", BINARY, 3),
        (b"BZh91AY&SY\x00\x01", UNREADABLE, None),
    ],
)
def test_structural_problems_always_raise(tmp_path: Path, data: bytes, kind: str, line: int | None) -> None:
    path = write(tmp_path / "bad.fa", data)
    for call in (lambda: list(read_fasta(path)),
                 lambda: load_records([path], skip_invalid=False),
                 lambda: load_records([path], skip_invalid=True)):
        with pytest.raises(FastaError) as caught:
            call()
        assert [(p.kind, p.line, p.path) for p in caught.value.problems] == [(kind, line, str(path))]
        assert str(path) in str(caught.value)
    assert [p.kind for p in validate([path])] == [kind]


def test_empty_gzip_and_broken_gzip_are_refused(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.fa.gz", b"", gz=True)
    truncated = write(tmp_path / "cut.fa.gz", gzip.compress(b">r1\nACGT\n" * 1000)[:-30])
    garbage = write(tmp_path / "junk.fa.gz", b"\x1f\x8bnot really gzip at all")
    missing = tmp_path / "missing.fa"
    assert [p.kind for p in validate([empty, truncated, garbage, missing])] == [
        EMPTY_FILE, UNREADABLE, UNREADABLE, UNREADABLE]
    with pytest.raises(FastaError, match="missing.fa"):
        load_records([missing], skip_invalid=True)


def test_read_fasta_streams_records_before_a_late_error(tmp_path: Path) -> None:
    path = write(tmp_path / "late.fa", b">r1\nACGT\n>r2\nAC\x00\n")
    stream = read_fasta(path, block_size=8)
    assert next(stream).id == "r1"
    with pytest.raises(FastaError, match="binary"):
        next(stream)


def test_invalid_characters_report_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "reads.fa", ">r1\r\nACGT\r\nAC1T\r\n>r2\nAC-T*\n>r3\nAC GT\tA\n>ok\nacgtnRYKMSWBDHVu\n")
    with pytest.raises(FastaError) as caught:
        load_records([path], skip_invalid=False)
    problems = caught.value.problems
    assert [(p.record, p.kind, p.line) for p in problems] == [
        ("r1", INVALID_CHAR, 3), ("r2", INVALID_CHAR, 5), ("r3", INVALID_CHAR, 7)]
    assert "'1' at line 3, column 3" in problems[0].message
    assert "'-' at line 5, column 3 (and 1 more)" in problems[1].message
    assert "'\\t' at line 7, column 6" in problems[2].message  # the space before it is not counted as bad
    assert f"{path}:3: record 'r1': invalid character '1'" in str(caught.value)


def test_record_problems_listed_together_or_skipped(tmp_path: Path) -> None:
    a = write(tmp_path / "a.fa", ">r1\nACGT\n>empty\n>\nACGT\n>r2\nAC\n")
    b = write(tmp_path / "b.fa", ">r9\nGG\n>r1 again\nTTTT\n>r2\nCC\n")
    with pytest.raises(FastaError) as caught:
        load_records([a, b], skip_invalid=False)
    got = [(p.path, p.line, p.record, p.kind) for p in caught.value.problems]
    assert got == [
        (str(a), 3, "empty", EMPTY_SEQUENCE),
        (str(a), 4, None, EMPTY_ID),
        (str(b), 3, "r1", DUPLICATE_ID),
        (str(b), 5, "r2", DUPLICATE_ID),
    ]
    message = str(caught.value)
    assert f"{b}:3: record 'r1': duplicate id, first seen at {a}:1" in message
    assert f"first seen at {a}:6" in message

    result = load_records([a, b], skip_invalid=True)
    assert [(r.id, r.seq, r.path, r.line) for r in result.records] == [
        ("r1", "ACGT", str(a), 1), ("r2", "AC", str(a), 6), ("r9", "GG", str(b), 1)]
    assert result.skipped == caught.value.problems
    assert validate([a, b]) == caught.value.problems


def test_the_same_file_twice_is_all_duplicates(tmp_path: Path) -> None:
    a = write(tmp_path / "a.fa", ">r1\nACGT\n>r2\nAC\n")
    assert [(p.kind, p.record) for p in validate([a, a])] == [(DUPLICATE_ID, "r1"), (DUPLICATE_ID, "r2")]


def test_error_message_is_capped_but_problems_are_complete(tmp_path: Path) -> None:
    path = write(tmp_path / "many.fa", "".join(f">e{i}\n" for i in range(60)))
    with pytest.raises(FastaError) as caught:
        load_records(path, skip_invalid=False)
    assert len(caught.value.problems) == 60
    message = str(caught.value)
    assert message.startswith("60 problems")
    assert "record 'e49'" in message and "record 'e50'" not in message
    assert message.rstrip().endswith("... and 10 more")


def test_validate_reports_everything_without_raising(tmp_path: Path) -> None:
    good = write(tmp_path / "good.fa", ">r1\nACGT\n")
    preamble = write(tmp_path / "pre.fa", "junk line\n>r2\nAC!T\n>r1\nAA\n")
    problems = validate([good, preamble])
    assert [(p.path, p.line, p.kind) for p in problems] == [
        (str(preamble), 1, TEXT_BEFORE_HEADER), (str(preamble), 3, INVALID_CHAR), (str(preamble), 4, DUPLICATE_ID)]
