"""Careless and hostile inputs: compressed files with something after their streams, one file given
twice under other names, sample names no filesystem takes, and a file that grows while it is read.

Every file is real; predict runs are real CLI or in-process runs on real Dask clusters with the
random-weight demo models."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import random
import time
from pathlib import Path

import pytest

from conftest import DEMO, DEMO_FASTA, assert_nothing_finished, cli
from virnuc_hpc.config import load_config
from virnuc_hpc.errors import SampleError
from virnuc_hpc.reads.fasta import UNREADABLE, FastaError
from virnuc_hpc.testing.loading import load_records
from virnuc_hpc.reads.reading import ReadDigest, iter_blocks, open_binary
from virnuc_hpc.reads.samples import (
    InputFile,
    is_safe_name,
    name_problem,
    read_samplesheet,
    samples_from_paths,
)
from virnuc_hpc.runtime.validate import validate_samples

try:
    from compression import zstd  # Python >= 3.14
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # installed with xopen

COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress, "zstd": zstd.compress}
FORMATS = list(COMPRESS)


def fastq(rng: random.Random, n: int, prefix: str) -> bytes:
    reads = ("".join(rng.choice("ACGT") for _ in range(rng.randint(20, 90))) for _ in range(n))
    return "".join(f"@{prefix}{i}\n{seq}\n+\n{'I' * len(seq)}\n" for i, seq in enumerate(reads)).encode()


def records_in(path: Path) -> int:
    return sum(block.n_records for block in iter_blocks(InputFile(str(path), "s", None), 64))


# ----------------------------------------------------------------------------- compressed streams


@pytest.mark.parametrize("how", FORMATS)
def test_concatenated_streams_read_whole_and_anything_else_after_them_is_refused(tmp_path: Path, how: str):
    """One rule for every format: whole streams (zero padding between or after them allowed) read
    whole; a garbage tail or a truncated later stream is UNREADABLE, naming the file."""
    rng = random.Random(how)
    first, second = fastq(rng, 300, "a"), fastq(rng, 200, "b")
    one, two = COMPRESS[how](first), COMPRESS[how](second)
    files = {
        "two": one + two,
        "padded": one + bytes(16) + two + bytes(5),
        "garbage": one + b"GARBAGE AFTER THE STREAM" * 3,
        "zeros-garbage": one + bytes(8) + b"G",
        "truncated": one + two[: len(two) // 2],
        "cut-header": one + two[:3],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.dat"  # no extension says what it is
        paths[name].write_bytes(data)
    for name in ("two", "padded"):
        with open_binary(str(paths[name])) as stream:
            assert stream.read() == first + second, name
        assert records_in(paths[name]) == 500
        assert validate_samples(samples_from_paths([str(paths[name])]), parallel=False) == []
    for name in ("garbage", "zeros-garbage", "truncated", "cut-header"):
        path = str(paths[name])
        with pytest.raises(FastaError) as caught:
            records_in(paths[name])
        assert [(p.kind, p.path) for p in caught.value.problems] == [(UNREADABLE, path)], name
        assert path in str(caught.value)
        problems = validate_samples(samples_from_paths([path]), parallel=False)
        assert [(p.kind, p.path) for p in problems] == [(UNREADABLE, path)], name


def test_validate_names_every_file_with_a_bad_tail(tmp_path: Path):
    """`virnuc-hpc validate` reads on past an unreadable file: each one is named, exit 2."""
    rng = random.Random(5)
    data = fastq(rng, 50, "r")
    bad, good = [], []
    for how, compress in COMPRESS.items():
        packed = compress(data)
        for name, content in ((f"{how}-tail", packed + b"\x01junk"), (f"{how}-cut", packed + packed[:-4]),
                              (f"{how}-two", packed + compress(fastq(rng, 5, "s")))):
            path = tmp_path / f"{name}.fq"
            path.write_bytes(content)
            (good if name.endswith("-two") else bad).append(str(path))
    proc = cli("validate", *good, *bad, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for path in bad:
        assert f"{path}: cannot read file" in proc.stderr
    assert not any(path in proc.stderr for path in good)
    assert f"{len(bad)} problem(s) found" in proc.stderr
    proc = cli("validate", *good, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("how", FORMATS)
def test_predict_refuses_a_garbage_tail(tmp_path: Path, demo_cache: Path, how: str):
    """Exit 2, one message naming the file, no final tables (one worker: the run stops at planning)."""
    records = load_records([DEMO_FASTA], skip_invalid=False).records
    text = "".join(f"@{r.id}\n{r.seq}\n+\n{'I' * len(r.seq)}\n" for r in records).encode()
    path = tmp_path / "reads.fq"
    path.write_bytes(COMPRESS[how](text) + b"trailing bytes that are no stream")
    outdir = tmp_path / "out"
    proc = cli("predict", str(path), "-o", str(outdir), *DEMO, "--workers", "1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("virnuc-hpc: error:") == 1 and f"{path}: cannot read file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_finished(outdir)


# ----------------------------------------------------------------------------- one file, one sample


def test_one_file_by_any_path_is_one_file(tmp_path: Path):
    reads = tmp_path / "a.fq"
    reads.write_text("@r1\nACGT\n+\nIIII\n")
    (tmp_path / "sub").mkdir()
    os.link(reads, tmp_path / "hard.fq")
    os.symlink(reads, tmp_path / "soft.fq")
    for other in (tmp_path / "hard.fq", tmp_path / "soft.fq", tmp_path / "sub" / ".." / "a.fq"):
        with pytest.raises(SampleError, match="the same input file is given twice") as caught:
            samples_from_paths([str(reads), str(other)])
        assert "hard link, a symlink or another spelling" in str(caught.value)
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample\tfile\nA\ta.fq\nB\thard.fq\n")
    with pytest.raises(SampleError, match=r":3: file .*hard.fq' is already listed at line 2 \(as .*a.fq'"):
        read_samplesheet(str(sheet))
    outdir = tmp_path / "out"
    proc = cli("predict", str(reads), str(tmp_path / "hard.fq"), "-o", str(outdir), *DEMO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("virnuc-hpc: error:") == 1 and "given twice" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not outdir.exists()


@pytest.mark.parametrize("name", [
    "a/b", "a\\b", "a:b", "a*b", "a?b", 'a"b', "a<b", "a>b", "a|b", "a b", "a\x01b", "a\x7fb", "ünï",
    ".", "..", ".hidden", "-starts-like-an-option", "ends-with-dot.", "CON", "nul", "com1.reads", "Lpt9",
    "x" * 201,
])
def test_unsafe_sample_names_are_refused(name: str):
    assert name_problem(name) is not None and not is_safe_name(name)


def test_safe_sample_names_are_accepted():
    for name in ("S1", "s_1.trimmed", "_x", "9", "x" * 200, "CONSOLE", "com10", "a-b.c_d"):
        assert name_problem(name) is None, name


def test_sample_names_are_checked_up_front(tmp_path: Path):
    """A 300-character name is refused before anything is computed (it used to fail at the very
    end, making OUTDIR/samples/<name>); so are bad characters and names equal but for case."""
    import virnuc_hpc
    import virnuc_hpc.runtime.pipeline  # noqa: F401  (imported before the clock starts)

    for name in ("a.fq", "b.fq"):
        (tmp_path / name).write_text("@r1\nACGT\n+\nIIII\n")
    config = load_config(preset="demo", overrides={"bag_size": 8, "progress": False})
    cases = {"x" * 300: "300 bytes long", "a:b": "not a safe directory name", "a b": "not a safe directory name",
             "AUX": "device name"}
    for name, words in cases.items():
        sheet = tmp_path / "sheet.tsv"
        sheet.write_text(f"sample\tfile\n{name}\ta.fq\n")
        started = time.perf_counter()
        with pytest.raises(SampleError, match=words):
            virnuc_hpc.predict([], tmp_path / "out", config=config, samplesheet=sheet)
        assert time.perf_counter() - started < 1.0
        assert not (tmp_path / "out").exists()
    sheet.write_text("sample\tfile\nS1\ta.fq\ns1\tb.fq\n")
    with pytest.raises(SampleError, match=r":3: sample names 'S1' and 's1' differ only in case"):
        read_samplesheet(str(sheet))
    (tmp_path / "A.fq").write_text("@r1\nACGT\n+\nIIII\n")
    with pytest.raises(SampleError, match="one folder on a case-insensitive filesystem"):
        samples_from_paths([str(tmp_path / "a.fq"), str(tmp_path / "A.fq")])
    sheet.write_text(f"sample\tfile\n{'y' * 300}\ta.fq\n")
    proc = cli("predict", "--samplesheet", str(sheet), "-o", str(tmp_path / "out"), *DEMO, timeout=60)
    assert proc.returncode == 2 and "300 bytes long" in proc.stderr, proc.stderr
    assert proc.stderr.count("virnuc-hpc: error:") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- provenance


@pytest.mark.parametrize("how", ["plain", "gzip"])
def test_a_file_that_grows_while_read_is_recorded_as_read(tmp_path: Path, how: str):
    """The digest covers exactly the bytes the blocks were cut from: appended ones too where the
    reader got to them (plain text is read as it is cut; gzip's reader may have read ahead)."""
    rng = random.Random(7)
    start, more = fastq(rng, 400, "a"), fastq(rng, 300, "b")
    pack = (lambda d: d) if how == "plain" else gzip.compress
    path = tmp_path / "grows.fq"
    path.write_bytes(pack(start))
    digest = ReadDigest()
    blocks = []
    for block in iter_blocks(InputFile(str(path), "s", None), 50, read_size=4096, digest=digest):
        if not blocks:
            with open(path, "ab") as grow:  # the file grows once its first block is out
                grow.write(pack(more))
        blocks.append(block)
    content = path.read_bytes()
    read = content[: digest.size]
    assert digest.sha256 == hashlib.sha256(read).hexdigest()
    text = b"".join(b.data for b in blocks)
    assert text == (read if how == "plain" else gzip.decompress(read))
    assert sum(b.n_records for b in blocks) == text.count(b"\n") // 4
    if how == "plain":
        assert digest.size == len(content) and text == start + more


def test_run_json_describes_the_bytes_that_were_classified(tmp_path: Path, client,
                                                           monkeypatch: pytest.MonkeyPatch):
    """A bzip2 input of two streams gets a third appended while its bags are cut: every read of
    the three streams is classified, and run.json's size and sha256 are those of all three."""
    import virnuc_hpc
    from virnuc_hpc.reads import bags

    records = load_records([DEMO_FASTA], skip_invalid=False).records
    text = [f"@{r.id}\n{r.seq}\n+\n{'I' * len(r.seq)}\n".encode() for r in records]
    thirds = [b"".join(text[i::3]) for i in range(3)]
    path = tmp_path / "reads.fq.bz2"
    path.write_bytes(bz2.compress(thirds[0]) + bz2.compress(thirds[1]))
    read_blocks = bags.iter_blocks

    def growing(file, per_block, **kwargs):
        """The run's own read (the one with a digest) appends the third stream after its first block."""
        for number, block in enumerate(read_blocks(file, per_block, **kwargs)):
            if number == 0 and kwargs.get("digest") is not None:
                with open(path, "ab") as grow:
                    grow.write(bz2.compress(thirds[2]))
            yield block

    monkeypatch.setattr(bags, "iter_blocks", growing)
    config = load_config(preset="demo", overrides={"bag_size": 8, "progress": False})
    result = virnuc_hpc.predict([path], tmp_path / "out", config=config, client=client)
    content = path.read_bytes()
    run = json.loads((result.outdir / "run.json").read_text())
    assert [(i["size"], i["sha256"]) for i in run["inputs"]] == [(len(content), hashlib.sha256(content).hexdigest())]
    assert run["counts"]["reads"] == len(records)
    rows = [line for line in (result.outdir / "reads.tsv").read_text().splitlines() if not line.startswith("#")][1:]
    assert sorted(row.split("\t")[0] for row in rows) == sorted(r.id for r in records)
