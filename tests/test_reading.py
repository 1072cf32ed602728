"""Block-wise input: compression by content, exact cutting, parsing with true file lines, samples.

Every file is real and written under tmp_path. The reference parsers below are plain
line-by-line readings of the format rules, independent of the block cutter under test.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
from pathlib import Path

import pytest

try:
    from compression import zstd  # Python >= 3.14
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # installed with xopen

from virnuc_hpc.reads.fasta import (
    BINARY,
    DUPLICATE_ID,
    EMPTY_FILE,
    EMPTY_ID,
    EMPTY_SEQUENCE,
    INVALID_CHAR,
    MALFORMED,
    STRUCTURAL_KINDS,
    TEXT_BEFORE_HEADER,
    UNREADABLE,
    FastaError,
)
from virnuc_hpc.testing.loading import load_records, read_fasta, validate
from virnuc_hpc.reads.reading import FASTA, FASTQ, Block, iter_blocks, open_binary, sniff
from virnuc_hpc.reads.validation import check_records, id_line, parse_block, sorted_ids
from virnuc_hpc.reads.samples import (
    InputFile,
    Sample,
    SampleError,
    read_samplesheet,
    sample_name,
    samples_from_paths,
)

COMPRESSORS = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstd.compress,
}
# Names that lie about the content: detection must look at the bytes.
MISLEADING = {"plain": "reads.fq.gz", "gzip": "reads.txt", "bzip2": "reads.fastq.xz",
              "xz": "reads.zst", "zstd": "reads.fq.bz2"}
READ_SIZES = [1, 2, 3, 7, 64, 4096, 1 << 22]


# ----------------------------------------------------------------------------- references


def universal_lines(data: bytes) -> list[str]:
    """The file's lines as Python text mode gives them (CR, LF and CRLF end lines)."""
    text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def ref_fastq(data: bytes) -> list[tuple[str, str, int]]:
    """(id, sequence, header line) of well-formed 4-line FASTQ, blank lines at the ends allowed."""
    lines = universal_lines(data)
    i = next(i for i, line in enumerate(lines) if line.strip())
    out = []
    while i < len(lines) and lines[i].strip():  # a record starts at each line with text
        header, seq, plus, _qual = lines[i : i + 4]
        assert header.startswith("@") and plus.startswith("+")
        words = header[1:].split(None, 1)
        out.append((words[0] if words else "", seq, i + 1))
        i += 4
    assert not "".join(lines[i:]).strip()
    return out


def ref_fasta(data: bytes) -> list[tuple[str, str, int]]:
    """Biopython's FASTA reading on a text-mode file: (id, sequence, header line)."""
    out, title, seq, header_line = [], None, [], 0
    for number, line in enumerate(universal_lines(data), start=1):
        if line.startswith(">"):
            if title is not None:
                out.append((title, "".join(seq).replace(" ", ""), header_line))
            title, seq, header_line = line[1:].rstrip(), [], number
        elif title is not None:
            seq.append(line.rstrip())
    if title is not None:
        out.append((title, "".join(seq).replace(" ", ""), header_line))
    return [((t.split(None, 1) or [""])[0], s, n) for t, s, n in out]


# ----------------------------------------------------------------------------- inputs


def random_fastq(rng: random.Random, n: int, *, newline: str = "\n") -> bytes:
    """Valid FASTQ with descriptions, IUPAC and lowercase, '+' lines with and without the name."""
    out = ["\n" * rng.randrange(2)]
    for i in range(n):
        name = rng.choice([f"r{i}", f"r{i} desc {i}", f"r{i}\tlane=1"])
        seq = "".join(rng.choices("ACGTNacgtnRYKMSWBDHVU", k=rng.choice([0, 1, 2, 50, 150, rng.randrange(400)])))
        plus = rng.choice(["+", "+" + name])
        out.append(f"@{name}\n{seq}\n{plus}\n{'I' * len(seq)}\n")
    text = "".join(out) + "\n" * rng.choice([0, 0, 1, 2, 4, 9])
    if rng.random() < 0.3 and seq:  # no newline at the end (an empty last quality line needs one)
        text = text.rstrip("\n")
    return text.replace("\n", newline).encode("ascii")


def random_fasta(rng: random.Random, n: int, *, newline: str = "\n") -> bytes:
    """Valid-but-ugly FASTA: blank lines, wrapped lines, spaces, descriptions, '>' in descriptions."""
    out = ["\n" * rng.randrange(3)]
    for i in range(n):
        out.append(">" + rng.choice([f"r{i}", f"r{i} a>b", f" r{i}\tdesc  "]) + "\n")
        seq = "".join(rng.choices("ACGTNacgtRYU", k=rng.choice([0, 1, 60, 61, rng.randrange(500)])))
        width = rng.choice([1, 7, 60, 1000])
        out += [seq[j : j + width] + rng.choice(["", "", " "]) + "\n" for j in range(0, len(seq), width)]
        out.append("\n" * (rng.random() < 0.2))
    text = "".join(out)
    if rng.random() < 0.3:
        text = text.rstrip("\n")
    if newline == "MIXED":
        return "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in text.split("\n")).encode("ascii")
    return text.replace("\n", newline).encode("ascii")


def write(path: Path, data: bytes | str, compression: str = "plain") -> Path:
    data = data.encode("utf-8") if isinstance(data, str) else data
    path.write_bytes(COMPRESSORS[compression](data))
    return path


def got(records) -> list[tuple[str, str, int]]:
    return [(r.id, r.seq, r.line) for r in records]


def blocks_of(path: Path, per_block: int, read_size: int = 1 << 22, mate: int | None = None) -> list[Block]:
    return list(iter_blocks(InputFile(str(path), "s", mate), per_block, read_size=read_size))


def problems_of(data: bytes, tmp_path: Path, name: str = "bad.fq") -> list[tuple[str, int | None]]:
    return [(p.kind, p.line) for p in validate([write(tmp_path / name, data)])]


# ----------------------------------------------------------------------------- compression


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_fastq_in_every_compression_detected_by_content(tmp_path: Path, compression: str) -> None:
    data = random_fastq(random.Random(1), 300)
    path = write(tmp_path / MISLEADING[compression], data, compression)
    assert path.read_bytes() != data or compression == "plain"
    assert sniff(str(path)) == FASTQ
    with open_binary(str(path)) as stream:
        assert stream.read() == data
    loaded = load_records([path], skip_invalid=True)
    assert got(loaded.records) == [r for r in ref_fastq(data) if r[1]]
    assert len(loaded.records) > 200 and all(r.path == str(path) for r in loaded.records)


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_fasta_in_every_compression_detected_by_content(tmp_path: Path, compression: str) -> None:
    data = random_fasta(random.Random(2), 200)
    path = write(tmp_path / MISLEADING[compression].replace("fq", "fa"), data, compression)
    assert sniff(str(path)) == FASTA
    expected = ref_fasta(data)
    assert got(read_fasta(path)) == expected
    records = load_records([path], skip_invalid=True).records
    assert got(records) == [r for r in expected if r[1]]  # empty sequences are skipped


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz", "zstd"])
def test_truncated_and_corrupt_compressed_files_are_unreadable(tmp_path: Path, compression: str) -> None:
    packed = COMPRESSORS[compression](random_fastq(random.Random(3), 2000))
    cut = write(tmp_path / "cut.fq", packed[: len(packed) // 2])
    corrupt = write(tmp_path / "corrupt.fq", packed[:6] + b"\x00not really compressed" * 40)
    for path in (cut, corrupt):
        problems = validate([path])
        assert [(p.kind, p.line) for p in problems] == [(UNREADABLE, None)]
        assert compression in problems[0].message  # "corrupt or truncated <format> data?"
        with pytest.raises(FastaError, match=str(path.name)):
            load_records([path], skip_invalid=True)
        with pytest.raises(FastaError):
            list(iter_blocks(InputFile(str(path), "s", None), 10))


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.fq")
    with pytest.raises(FastaError) as caught:
        open_binary(missing)
    assert [(p.kind, p.path) for p in caught.value.problems] == [(UNREADABLE, missing)]
    with pytest.raises(FastaError, match="nope.fq"):
        sniff(missing)


# ----------------------------------------------------------------------------- sniff


@pytest.mark.parametrize(
    ("data", "kind", "line"),
    [
        (b"", EMPTY_FILE, None),
        (b"\n \r\n\t\n", EMPTY_FILE, None),
        (b"hello\n@r1\nACGT\n+\nIIII\n", TEXT_BEFORE_HEADER, 1),
        (b"\n\r\n  ACGT\n>r1\nACGT\n", TEXT_BEFORE_HEADER, 3),
        (b"\r\r\r text\r>r1\rACGT\r", TEXT_BEFORE_HEADER, 4),
        (b" >r1\nACGT\n", TEXT_BEFORE_HEADER, 1),  # a header must start its line
        (b"\n\x00\x01\x02binary", BINARY, 2),
        (b"PK\x03\x04\x14\x00\x00", BINARY, 1),
    ],
)
def test_sniff_refuses_what_is_not_fasta_or_fastq(tmp_path: Path, data: bytes, kind: str, line: int | None) -> None:
    path = write(tmp_path / "x.fq", data, "gzip")
    with pytest.raises(FastaError) as caught:
        sniff(str(path))
    assert [(p.kind, p.line, p.path) for p in caught.value.problems] == [(kind, line, str(path))]


def test_sniff_names_the_format_found_in_binary_data(tmp_path: Path) -> None:
    zipped = write(tmp_path / "reads.fa", b"PK\x03\x04\x14\x00\x00\x00")
    double = write(tmp_path / "reads.fq", gzip.compress(b"@r1\nACGT\n+\nIIII\n"), "gzip")
    for path, name in ((zipped, "zip"), (double, "gzip")):
        with pytest.raises(FastaError, match=f"looks like {name} data"):
            sniff(str(path))


def test_sniff_reads_past_many_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "x", b"\n" * 10_000 + b"@r1\nAC\n+\nII\n")
    assert sniff(str(path)) == FASTQ
    records = load_records([path], skip_invalid=False).records
    assert got(records) == [("r1", "AC", 10_001)]


# ----------------------------------------------------------------------------- cutting


def check_blocks(path: Path, data: bytes, per_block: int, read_size: int, fmt: str) -> list[Block]:
    """Blocks tile the file exactly: text, record numbers, line numbers and record counts."""
    blocks = blocks_of(path, per_block, read_size)
    assert b"".join(b.data for b in blocks) == data
    expected = (ref_fasta if fmt == FASTA else ref_fastq)(data)
    assert sum(b.n_records for b in blocks) == len(expected)
    assert all(b.n_records == per_block for b in blocks[:-1])
    assert 0 < blocks[-1].n_records <= per_block
    record, line = 0, 1
    for index, block in enumerate(blocks):
        assert (block.index, block.first_record, block.first_line, block.fmt) == (index, record, line, fmt)
        assert block.data.endswith(b"\n") or block is blocks[-1]
        record += block.n_records
        line += block.data.count(b"\n")
    parsed = [parse_block(b) for b in blocks]
    records = [r for p in parsed for r in p.records]
    assert got(records) == expected
    # Each block's first record is the file's record number first_record.
    for block, p in zip(blocks, parsed):
        assert got(p.records[:1]) == expected[block.first_record : block.first_record + 1]
    return blocks


@pytest.mark.parametrize("read_size", READ_SIZES)
def test_fastq_blocks_tile_the_file(tmp_path: Path, read_size: int) -> None:
    rng = random.Random(read_size)
    for k, newline in enumerate(["\n", "\r\n", "\n", "\r\n"]):
        data = random_fastq(rng, rng.randrange(1, 60), newline=newline)
        path = write(tmp_path / f"r{k}.fq", data, ["plain", "gzip"][k % 2])
        for per_block in (1, 2, 3, 5, 17, 1000):
            check_blocks(path, data, per_block, read_size, FASTQ)
        loaded = load_records([path], skip_invalid=True, block_size=read_size)
        assert got(loaded.records) == [r for r in ref_fastq(data) if r[1]]
        assert [p.kind for p in loaded.skipped] == [EMPTY_SEQUENCE] * sum(not r[1] for r in ref_fastq(data))


@pytest.mark.parametrize("read_size", READ_SIZES)
def test_fasta_blocks_tile_the_file(tmp_path: Path, read_size: int) -> None:
    rng = random.Random(100 + read_size)
    for k, newline in enumerate(["\n", "\r\n", "\n", "\r\n"]):
        data = random_fasta(rng, rng.randrange(1, 60), newline=newline)
        path = write(tmp_path / f"r{k}.fa", data, ["plain", "xz"][k % 2])
        for per_block in (1, 2, 3, 5, 17, 1000):
            blocks = check_blocks(path, data, per_block, read_size, FASTA)
            assert all(b.data.startswith(b">") for b in blocks[1:])
        assert got(read_fasta(path)) == ref_fasta(data)


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 64, 1 << 22])
def test_lone_cr_files_are_read_as_lines(tmp_path: Path, read_size: int) -> None:
    rng = random.Random(7)
    fastq = random_fastq(rng, 40, newline="\r")
    fasta = random_fasta(rng, 40, newline="MIXED")
    for name, data, fmt in (("mac.fq", fastq, FASTQ), ("mixed.fa", fasta, FASTA)):
        path = write(tmp_path / name, data)
        for per_block in (1, 3, 1000):
            blocks = blocks_of(path, per_block, read_size)
            joined = b"".join(b.data for b in blocks)
            # Rewritten to LF where a read held a lone CR, line for line the same text.
            assert universal_lines(joined) == universal_lines(data)
            expected = (ref_fasta if fmt == FASTA else ref_fastq)(data)
            assert got(r for b in blocks for r in parse_block(b).records) == expected
            line = 1
            for block in blocks:
                assert block.first_line == line
                line += len(universal_lines(block.data))
        assert got(load_records([path], skip_invalid=True, block_size=read_size).records) == [
            r for r in (ref_fasta if fmt == FASTA else ref_fastq)(data) if r[1]]


def test_crlf_split_across_reads_counts_one_line(tmp_path: Path) -> None:
    data = b">r1\r\nAC\r\n\r\n>r2\r\nGG\r\n"
    path = write(tmp_path / "a.fa", data)
    for read_size in (1, 2, 3, 4, 5):
        blocks = blocks_of(path, 1, read_size)
        assert [(b.first_line, b.n_records, b.data) for b in blocks] == [
            (1, 1, b">r1\r\nAC\r\n\r\n"), (4, 1, b">r2\r\nGG\r\n")]


def test_fastq_empty_last_record_keeps_its_empty_quality_line(tmp_path: Path) -> None:
    for tail in (b"", b"\n", b"\n\n\n\n\n"):
        path = write(tmp_path / "e.fq", b"@a\nAC\n+\nII\n@e\n\n+\n\n" + tail)
        for per_block in (1, 2):
            blocks = blocks_of(path, per_block)
            assert [b.n_records for b in blocks] == ([1, 1] if per_block == 1 else [2])
            parsed = [parse_block(b) for b in blocks]
            assert got(r for p in parsed for r in p.records) == [("a", "AC", 1), ("e", "", 5)]
            assert [(q.kind, q.line) for p in parsed for q in p.problems] == [(EMPTY_SEQUENCE, 5)]


def test_fastq_blank_lines_at_the_ends_join_the_first_and_last_block(tmp_path: Path) -> None:
    data = b"\n\n@a\nAC\n+\nII\n@b\nGG\n+\nII\n\n\n"
    path = write(tmp_path / "a.fq", data)
    for read_size in (1, 5, 1 << 22):
        blocks = blocks_of(path, 1, read_size)
        assert [(b.first_line, b.n_records, b.data) for b in blocks] == [
            (1, 1, b"\n\n@a\nAC\n+\nII\n"), (7, 1, b"@b\nGG\n+\nII\n\n\n")]
        assert got(r for b in blocks for r in parse_block(b).records) == [("a", "AC", 3), ("b", "GG", 7)]


def test_fasta_header_split_across_reads_and_gt_in_descriptions(tmp_path: Path) -> None:
    data = b">a x>y\nAC\n>b\n>c >d\nGT\n"
    path = write(tmp_path / "a.fa", data)
    for read_size in (1, 2, 3, 7):
        blocks = blocks_of(path, 2, read_size)
        assert [(b.n_records, b.first_record, b.first_line, b.data) for b in blocks] == [
            (2, 0, 1, b">a x>y\nAC\n>b\n"), (1, 2, 4, b">c >d\nGT\n")]


def test_iter_blocks_rejects_a_block_size_below_one(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">a\nAC\n")
    with pytest.raises(ValueError):
        next(iter_blocks(InputFile(str(path), "s", None), 0))


def test_cutter_keeps_up_with_a_large_fastq(tmp_path: Path) -> None:
    rng = random.Random(9)
    read = "".join(rng.choices("ACGT", k=150))
    data = "".join(f"@r{i} x\n{read}\n+\n{'I' * 150}\n" for i in range(100_000)).encode()
    path = write(tmp_path / "big.fq", data, "gzip")
    blocks = blocks_of(path, 4096)
    assert [b.n_records for b in blocks] == [4096] * 24 + [100_000 - 24 * 4096]
    assert blocks[-1].first_line == 1 + 4 * 4096 * 24
    assert parse_block(blocks[-1]).records[-1] == load_records([path], skip_invalid=False).records[-1]


# ----------------------------------------------------------------------------- parsing


def test_parse_block_returns_broken_records_and_marks_them(tmp_path: Path) -> None:
    data = b"@ok\nACGTN\n+\nIIIII\n@bad\nAC-T\n+\nIIII\n@\nAA\n+\nII\n@empty\n\n+\n\n@low iupac\nacgtRYKMSWBDHVu\n+\n" + b"I" * 15 + b"\n"
    path = write(tmp_path / "a.fq", data)
    parsed = parse_block(blocks_of(path, 100)[0])
    assert got(parsed.records) == [("ok", "ACGTN", 1), ("bad", "AC-T", 5), ("", "AA", 9), ("empty", "", 13),
                                   ("low", "acgtRYKMSWBDHVu", 17)]
    assert parsed.invalid == frozenset({1, 2, 3})
    assert [(p.kind, p.line, p.record) for p in parsed.problems] == [
        (INVALID_CHAR, 6, "bad"), (EMPTY_ID, 9, None), (EMPTY_SEQUENCE, 13, "empty")]
    assert "invalid character '-' at line 6, column 3;" in parsed.problems[0].message
    assert f"{path}:9: header has no id (nothing after '@')" == str(parsed.problems[1])


def test_fasta_parse_block_marks_invalid_records(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">a\nAC\n>b\nA*\n>c\n>d\nGG\n")
    blocks = blocks_of(path, 2)
    parsed = [parse_block(b) for b in blocks]
    assert [(got(p.records), p.invalid) for p in parsed] == [
        ([("a", "AC", 1), ("b", "A*", 3)], frozenset({1})), ([("c", "", 5), ("d", "GG", 6)], frozenset({0}))]
    assert [(p.kind, p.line) for p in parsed[0].problems + parsed[1].problems] == [
        (INVALID_CHAR, 4), (EMPTY_SEQUENCE, 5)]


def test_check_records_and_sorted_ids_of_a_block_with_repeats_and_problems(tmp_path: Path) -> None:
    a = write(tmp_path / "a.fq", "@r2\nAC\n+\nII\n@r1\nA!\n+\nII\n@r2\nGG\n+\nII\n@ x\nGG\n+\nII\n"
                                 "@\nGG\n+\nII\n@r10\nTT\n+\nII\n")
    parsed = parse_block(blocks_of(a, 10)[0])
    valid, located = check_records(parsed.records, parsed.problems, parsed.invalid)
    assert valid == [True, False, False, True, False, True]
    assert [(i, p.line, p.kind) for i, p in located] == [(1, 6, INVALID_CHAR), (2, 9, DUPLICATE_ID),
                                                           (4, 17, EMPTY_ID)]
    assert located[1][1].message == f"duplicate id, first seen at {a}:1"
    # The first occurrence of each id, sorted by id; the empty id has no line.
    assert sorted_ids(3, parsed.records, valid) == "".join(sorted([
        id_line("r2", 3, 0, 1, True), id_line("r1", 3, 1, 5, False), id_line("x", 3, 3, 13, True),
        id_line("r10", 3, 5, 21, True)]))
    clean = parse_block(blocks_of(write(tmp_path / "b.fq", "@b\nAC\n+\nII\n@a\nGG\n+\nII\n"), 10)[0])
    assert check_records(clean.records, clean.problems, clean.invalid) == ([True, True], [])


def test_parse_block_does_not_judge_duplicates_but_load_records_does(tmp_path: Path) -> None:
    a = write(tmp_path / "a.fq", "@r1\nAC\n+\nII\n@r1\nGG\n+\nII\n")
    b = write(tmp_path / "b.fa", ">r1 again\nTT\n")
    parsed = parse_block(blocks_of(a, 10)[0])
    assert parsed.problems == [] and parsed.invalid == frozenset()
    assert [(p.path, p.line, p.kind, p.message) for p in validate([a, b])] == [
        (str(a), 5, DUPLICATE_ID, f"duplicate id, first seen at {a}:1"),
        (str(b), 1, DUPLICATE_ID, f"duplicate id, first seen at {a}:1")]


@pytest.mark.parametrize(
    ("data", "line", "record", "words"),
    [
        (b"@r1\nAC\n+\nII\n>r2\nAC\n+\nII\n", 5, None, "expected to start with '@'"),
        (b"@r1\nAC\n+\nII\n@r2\nAC\nII\n@r3\nAC\n+\nII\n", 7, "r2", "expected to start with '+'"),
        (b"@r1\nAC\n+\nII\n@r2\nACG\n+\nII\n", 8, "r2", "qualities differ"),
        (b"@r1\nAC\n+\nII\n@r2\nACG\n", 5, "r2", "ends after 2 of its 4 lines"),
        (b"@r1\r\nAC\r\n+\r\nII\r\n@r2\r\nACG\r\n+\r\n", 5, "r2", "ends after 3 of its 4 lines"),
        # Blank lines inside the file: wherever the blocks are cut, the first one is reported.
        (b"@r1\nAC\n+\nII\n\n@r2\nAC\n+\nII\n", 5, None, "'@'|blank line between records"),
        (b"@r1\nAC\n+\nII\n\n\n\n\n@r2\nAC\n+\nII\n", 5, None, "'@'|blank line between records"),
        (b"@r1\nAC\n+\nII\n" + b"\n" * 8 + b"@r2\nAC\n+\nII\n", 5, None, "'@'|blank line between records"),
    ],
)
def test_malformed_fastq_is_reported_at_its_file_line(tmp_path: Path, data: bytes, line: int,
                                                      record: str | None, words: str) -> None:
    path = write(tmp_path / "bad.fq", b"@a\nA\n+\nI\n" * 5 + data, "bzip2")
    line += 20
    for read_size in (3, 1 << 22):
        for per_block in (1, 2, 1000):  # the error lies in a later block, or the only one
            problems = validate([path], block_size=read_size) if per_block == 1000 else [
                p for b in blocks_of(path, per_block, read_size) for p in parse_block(b).problems]
            malformed = [p for p in problems if p.kind == MALFORMED]
            assert [(p.line, p.record) for p in malformed][:1] == [(line, record)]
            assert any(phrase in malformed[0].message for phrase in words.split("|"))
    with pytest.raises(FastaError) as caught:
        load_records([path], skip_invalid=True)
    assert [(p.kind, p.line) for p in caught.value.problems] == [(MALFORMED, line)]
    assert MALFORMED in STRUCTURAL_KINDS


def test_utf8_in_header_descriptions_is_accepted(tmp_path: Path) -> None:
    fa = write(tmp_path / "a.fa", ">r1 café\nACGT\n>r2\tΔ virus\r\nGG\n".encode())
    fq = write(tmp_path / "a.fq", "@r1 café\nACGT\n+\nIIII\n@r2 ü\nGG\n+\nII\n".encode(), "gzip")
    assert got(read_fasta(fa)) == [("r1", "ACGT", 1), ("r2", "GG", 3)]
    assert got(load_records([fa, tmp_path / "a.fq"], skip_invalid=True).records) == [
        ("r1", "ACGT", 1), ("r2", "GG", 3)]  # the FASTQ ids repeat the FASTA ones
    assert got(load_records([fq], skip_invalid=False).records) == [("r1", "ACGT", 1), ("r2", "GG", 5)]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (">café\nACGT\n".encode(), 1),           # in the id
        (">r1\nACGT\n>r2 ok\nACÉT\n".encode(), 4),  # in a sequence
        (b">r1 bad\xff utf8\nACGT\n", 1),          # not UTF-8
        (b">r1 nul\x00here\nACGT\n", 1),           # control byte in a description
        ("@r1\nAC\n+\nII\n@r2 é\nAC\n+\nIé\n".encode(), 8),  # in a quality line
        ("@r1\nAC\n+\nII\n@r2é\nAC\n+\nII\n".encode(), 5),   # in a FASTQ id
        (b"@r1\nA\x00\n+\nII\n", 2),
    ],
)
def test_non_ascii_outside_descriptions_is_binary(tmp_path: Path, data: bytes, line: int) -> None:
    assert problems_of(data, tmp_path) == [(BINARY, line)]


def test_fastq_lowercase_iupac_and_invalid_chars(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fq", "@r1\nacgtRYKMSWBDHVNu\n+\nIIIIIIIIIIIIIIII\n@r2\nAC GT\n+\nIIIII\n", "xz")
    with pytest.raises(FastaError) as caught:
        load_records([path], skip_invalid=False)
    assert [(p.record, p.kind, p.line) for p in caught.value.problems] == [("r2", INVALID_CHAR, 6)]
    assert "' ' at line 6, column 3" in caught.value.problems[0].message
    loaded = load_records([path], skip_invalid=True)
    assert got(loaded.records) == [("r1", "acgtRYKMSWBDHVNu", 1)]


# ----------------------------------------------------------------------------- samples


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("reads_R1.fastq.gz", "reads_R1"),
        ("/data/run 1/s1.fq.zst", "s1"),
        ("s2.FASTA.BZ2", "s2"),
        ("s3.fna.xz", "s3"),
        ("s4.fa", "s4"),
        ("s5.txt.gz", "s5.txt"),
        ("s6.seq.zstd", "s6"),
        ("s7.fasta.fasta", "s7.fasta"),
        ("s8", "s8"),
    ],
)
def test_sample_name_strips_compression_then_sequence_extension(path: str, name: str) -> None:
    assert sample_name(path) == name


def test_samples_from_paths_one_per_file_in_order() -> None:
    samples = samples_from_paths(["b.fq.gz", "dir/a.fasta"])
    assert samples == [Sample("b", (InputFile("b.fq.gz", "b", None),)),
                       Sample("a", (InputFile("dir/a.fasta", "a", None),))]
    assert not samples[0].paired and samples[0].files[0].id_suffix == ""


def test_samples_from_paths_refuses_clashes_repeats_and_unsafe_names() -> None:
    with pytest.raises(SampleError, match=r"x/s1.fq and y/s1.fa.gz both give sample name 's1'.*samplesheet"):
        samples_from_paths(["x/s1.fq", "y/s1.fa.gz"])
    with pytest.raises(SampleError, match="same input file is given twice"):
        samples_from_paths(["a.fq", "./a.fq"])
    for bad in (".hidden.fq", "sp ace.fq", "ünï.fq"):
        with pytest.raises(SampleError, match="samplesheet"):
            samples_from_paths([bad])
    for bad in ("tab\t.fq", "dir\twith tab/reads.fq", "line\nbreak.fq"):  # TSV outputs cannot hold them
        with pytest.raises(SampleError, match="tab or a line break"):
            samples_from_paths([bad])


def reads(tmp_path: Path, *names: str) -> list[Path]:
    for name in names:
        write(tmp_path / name, "@r1\nAC\n+\nII\n")
    return [tmp_path / name for name in names]


def test_samplesheet_file_layout_with_mates_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    reads(tmp_path, "sub/a_1.fq", "sub/a_2.fq", "b.fq", "c.fq")
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text(f"sample\tfile\tmate\nA\tsub/a_1.fq\t1\nB\tb.fq\t\nA\tsub/a_2.fq\t2\n"
                     f"B\t{tmp_path / 'c.fq'}\n")
    samples = read_samplesheet(str(sheet))
    assert samples == [
        Sample("A", (InputFile(str(tmp_path / "sub/a_1.fq"), "A", 1), InputFile(str(tmp_path / "sub/a_2.fq"), "A", 2))),
        Sample("B", (InputFile(str(tmp_path / "b.fq"), "B", None), InputFile(str(tmp_path / "c.fq"), "B", None))),
    ]
    assert samples[0].paired and not samples[1].paired
    assert [f.id_suffix for f in samples[0].files] == ["/1", "/2"]


def test_samplesheet_nf_core_layout_csv(tmp_path: Path) -> None:
    reads(tmp_path, "p1.fq.gz", "p2.fq.gz", "single.fq")
    sheet = tmp_path / "samples.csv"
    sheet.write_text("sample,fastq_1,fastq_2\npair,p1.fq.gz,p2.fq.gz\nsolo,single.fq,\n")
    samples = read_samplesheet(str(sheet))
    assert [(s.name, [(Path(f.path).name, f.mate) for f in s.files]) for s in samples] == [
        ("pair", [("p1.fq.gz", 1), ("p2.fq.gz", 2)]), ("solo", [("single.fq", None)])]


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("name\tfile\nA\ta.fq\n", 1, "header must name the columns 'sample' and 'file'"),
        ("sample\tmate\nA\t1\n", 1, "header must name"),
        ("sample\tfile\n\ta.fq\n", 2, "empty sample name"),
        ("sample\tfile\n.hid\ta.fq\n", 2, "not a safe directory name"),
        ("sample\tfile\nA/B\ta.fq\n", 2, "not a safe directory name"),
        ("sample\tfile\nA\ta.fq\nB\ta.fq\n", 3, "already listed at line 2"),
        ("sample\tfile\nA\ta.fq\nB\t./a.fq\n", 3, "already listed at line 2"),
        ("sample\tfile\nA\tmissing.fq\n", 2, "does not exist"),
        ("sample\tfile\nA\t\n", 2, "empty file path"),
        ("sample\tfile\tmate\nA\ta.fq\t3\n", 2, "mate must be 1, 2 or empty"),
        ("sample\tfile\tmate\nA\ta.fq\t1\n", 2, "exactly one mate-1 and one mate-2"),
        ("sample\tfile\tmate\nA\ta.fq\t1\nA\tb.fq\t1\n", 2, "exactly one mate-1 and one mate-2"),
        ("sample\tfile\tmate\nA\ta.fq\t1\nA\tb.fq\t2\nA\tc.fq\t\n", 2, "exactly one mate-1 and one mate-2"),
        ('sample\tfile\nA\t"a\nb.fq"\n', 2, "tab or a line break"),
        ("sample\tfile\n", None, "lists no files"),
        ("", None, "empty samplesheet"),
    ],
)
def test_samplesheet_errors_say_where(tmp_path: Path, text: str, where: int | None, words: str) -> None:
    reads(tmp_path, "a.fq", "b.fq", "c.fq")
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text(text)
    with pytest.raises(SampleError) as caught:
        read_samplesheet(str(sheet))
    message = str(caught.value)
    assert words in message
    assert message.startswith(f"{sheet}:{where}: " if where else f"{sheet}: ")


def test_samplesheet_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="cannot read samplesheet"):
        read_samplesheet(str(tmp_path / "none.tsv"))


def test_paired_reads_get_mate_suffixes(tmp_path: Path) -> None:
    write(tmp_path / "s_R1.fq", "@r1/1 x\nAC\n+\nII\n@r2\nGG\n+\nII\n@\nTT\n+\nII\n", "gzip")
    write(tmp_path / "s_R2.fa", ">r1/2\nCA\n>r2\nCC\n>r3/12\nAA\n")
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tfastq_1\tfastq_2\ns\ts_R1.fq\ts_R2.fa\n")
    files = read_samplesheet(str(sheet))[0].files
    loaded = load_records(files, skip_invalid=True)
    assert [r.id for r in loaded.records] == ["r1/1", "r2/1", "r1/2", "r2/2", "r3/12/2"]
    assert [(p.kind, p.line) for p in loaded.skipped] == [(EMPTY_ID, 9)]  # an empty id stays empty
    # Without mates the same ids clash across the two files.
    assert [p.record for p in validate([f.path for f in files]) if p.kind == DUPLICATE_ID] == ["r2"]
    # A read given under both "r1/1" and "r1" in the mate-1 file is one id twice.
    write(tmp_path / "t_R1.fq", "@r1/1\nAC\n+\nII\n@r1\nGG\n+\nII\n")
    mate1 = InputFile(str(tmp_path / "t_R1.fq"), "t", 1)
    assert [(p.kind, p.record, p.line) for p in validate([mate1])] == [(DUPLICATE_ID, "r1/1", 5)]
    assert [r.id for b in iter_blocks(mate1, 1) for r in parse_block(b).records] == ["r1/1", "r1/1"]
