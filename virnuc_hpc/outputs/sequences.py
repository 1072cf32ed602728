"""The sequences a run leaves: viral.fna per sample, and VirNucPro's frame files (--write-frames).

Why from the bags: each worker holds its bag's input text, so it keeps the records the finish
will need (the ones it called virus; every valid record of a mate file, whose pair's call is known
only at the end) as a table part of the bag file. The finish then concatenates those parts in
input order: no second pass over an input that may be 100 GB of gzip. docs/outputs.md states the
formats, names and the VirNucPro rules the frame files follow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.read_rows import read_rows
from virnuc_hpc.outputs.atomic import AtomicStream
from virnuc_hpc.reads.fasta import Record, record_id
from virnuc_hpc.reads.reading import FASTQ, Block, sniff
from virnuc_hpc.reads.samples import Sample, mate_read_id

log = logging.getLogger("virnuc_hpc")

VIRAL_FORMATS = ("fasta", "fastq")
FRAME_NUCLEOTIDE, FRAME_PROTEIN = store.FRAME_SUFFIXES


# --- in the worker: what a bag keeps ---------------------------------------------------------

def kept_records(block: Block, records: Sequence[Record]) -> str:
    """The input text of ``records`` (all from ``block``), one record after the other, in a form
    the finish can write either way: ``>title`` and the sequence for FASTA input, the four lines
    (``+`` bare) for FASTQ. The title is the header line as in the input (id and description);
    the sequence is the one classified (a FASTA record's lines joined, case kept)."""
    if not records:
        return ""
    lines = block.data.split(b"\n")
    out: list[str] = []
    fastq = block.fmt == FASTQ
    for record in records:
        at = record.line - block.first_line
        title = lines[at].decode("utf-8", "replace").rstrip()
        if mate_read_id(record_id(title[1:]), block.file.id_suffix) != record.id:
            raise RuntimeError(f"{record.path}:{record.line}: header {title[:80]!r} is not the line of "
                               f"record {record.id!r}")  # the line arithmetic is wrong: a bug
        if fastq:
            quality = lines[at + 3].rstrip(b"\r\n").decode("ascii", "replace")
            out.append(f"{title}\n{record.seq}\n+\n{quality}\n")
        else:
            out.append(f"{title}\n{record.seq}\n")
    return "".join(out)


def frame_parts(frame_ids: Sequence[str], nucleotides: Sequence[str], proteins: Sequence[str]) -> dict[str, str]:
    """A bag's share of VirNucPro's two frame files, in the original's layout: ``>frame id`` then
    the sequence on one line, every kept frame in input order."""
    return {"nucleotide": "".join(f">{f}\n{s}\n" for f, s in zip(frame_ids, nucleotides)),
            "protein": "".join(f">{f}\n{s}\n" for f, s in zip(frame_ids, proteins))}


# --- at the end (on the client) ----------------------------------------------------------------

@dataclass(frozen=True)
class SequenceOptions:
    """What the run was asked to write besides the tables."""

    viral_format: str = "fasta"   # fastq: FASTQ out where the sample's input is FASTQ
    compressed: bool = False      # gzip (the run's ``compression: gzip``)
    write_frames: bool = False

    @classmethod
    def of(cls, config: Any) -> SequenceOptions:
        return cls(viral_format=config.viral_format, compressed=config.compression == "gzip",
                   write_frames=config.write_frames)


def _records(text: str) -> Iterator[tuple[str, list[str]]]:
    """(read id, lines) of each record of a bag's "viral" part (``kept_records``' text)."""
    lines = text.split("\n")[:-1]
    i = 0
    while i < len(lines):
        size = 4 if lines[i].startswith("@") else 2
        yield record_id(lines[i][1:]), lines[i:i + size]
        i += size


def _as_text(lines: list[str], fastq: bool) -> str:
    if fastq:
        return "\n".join(lines) + "\n"
    return f">{lines[0][1:]}\n{lines[1]}\n"


def frame_file_stem(path: str) -> str:
    """The original's stem: the file name cut at its first ``.fa`` (``reads.fasta`` -> ``reads``,
    ``reads.fastq.gz`` -> ``reads``, ``reads.fq`` stays ``reads.fq``); written beside our tables."""
    return Path(path).name.split(".fa")[0]


class SampleSequences:
    """Writes one sample's sequence files from its bag files (``refs`` in input order) into ``folder``."""

    def __init__(self, outdir: Path, folder: Path, sample: Sample, refs: list[Any], options: SequenceOptions,
                 dropped: dict[int, set[str]] | None = None) -> None:
        self.outdir, self.folder, self.sample, self.refs, self.options = outdir, folder, sample, refs, options
        self.dropped = dropped or {}

    def _parts(self, ref: Any, *names: str) -> dict[str, str]:
        return store.read_bag_tables(store.bag_path(self.outdir, ref), names).parts

    def _fastq_out(self, paths: Sequence[str]) -> bool:
        """FASTQ out when asked for and every input of these is FASTQ (else FASTA, said once)."""
        if self.options.viral_format != "fastq":
            return False
        fasta = [p for p in paths if sniff(p) != FASTQ]
        if fasta:
            log.warning("warning: sample %s: --viral-format fastq, but %s is FASTA: its viral reads "
                        "are written as FASTA", self.sample.name, fasta[0])
        return not fasta

    def _open(self, stem: str, fastq: bool, opened: list[AtomicStream]) -> AtomicStream:
        name = stem + (".fastq" if fastq else ".fna") + (".gz" if self.options.compressed else "")
        out = AtomicStream(self.folder / name, self.options.compressed)
        opened.append(out)
        return out

    def write(self, *, classify: bool, pairs_written: bool) -> list[str]:
        """Write the files; returns their names (relative to ``folder``). With a mate file whose
        pairs.tsv was written, viral_1/viral_2 hold both mates of every pair called virus."""
        opened: list[AtomicStream] = []
        try:
            if classify:
                mates = sorted({ref.mate for ref in self.refs if ref.mate is not None})
                if mates and pairs_written:
                    self._write_pairs(opened)
                elif mates:  # pairs.tsv was not written: each mate file by its own reads' calls
                    for mate in mates:
                        self._write_viral([r for r in self.refs if r.mate == mate], f"viral_{mate}", opened)
                else:
                    self._write_viral(self.refs, "viral", opened)
            if self.options.write_frames:
                self._write_frames(opened)
            for out in opened:
                out.commit()
        except BaseException:
            for out in opened:
                out.discard()
            raise
        return [out.path.name for out in opened]

    def _write_viral(self, refs: list[Any], stem: str, opened: list[AtomicStream]) -> None:
        """Every record its own read's call made virus, in input order (a mate file's bags keep every
        valid record: their own calls, from the bag's reads.tsv rows, pick them here)."""
        fastq = self._fastq_out(list(dict.fromkeys(r.path for r in refs)))
        out = self._open(stem, fastq, opened)
        for ref in refs:
            dropped = self.dropped.get(ref.index, set())
            if ref.mate is None:
                chosen = (lines for rid, lines in _records(self._parts(ref, "viral")["viral"])
                          if rid not in dropped)
            else:
                chosen = (lines for rid, call, lines in self._mate_records(ref)
                          if call == "virus" and rid not in dropped)
            out.write("".join(_as_text(lines, fastq) for lines in chosen))

    def _mate_records(self, ref: Any) -> Iterator[tuple[str, str, list[str]]]:
        """(read id as in reads.tsv, the read's call, its lines) of every valid record of a mate
        file's bag."""
        parts = self._parts(ref, "viral", "reads")
        rows = list(read_rows(parts["reads"]))
        records = list(_records(parts["viral"]))
        if len(rows) != len(records):
            raise RuntimeError(f"{ref.name}: {len(rows)} reads but {len(records)} kept records")
        for row, (_rid, lines) in zip(rows, records):
            yield row.read_id, row.call, lines

    def _write_pairs(self, opened: list[AtomicStream]) -> None:
        """viral_1 and viral_2: both mates of every pair with a mate called virus (pairs.tsv's
        rule), mates zipped in file order as pairs.tsv zips them."""
        by_mate = {m: [r for r in self.refs if r.mate == m] for m in (1, 2)}
        fastq = self._fastq_out([by_mate[1][0].path, by_mate[2][0].path])
        outs = {m: self._open(f"viral_{m}", fastq, opened) for m in (1, 2)}

        def stream(refs: list[Any]) -> Iterator[tuple[str, str, list[str]]]:
            for ref in refs:
                yield from self._mate_records(ref)

        pending: dict[int, list[str]] = {1: [], 2: []}
        for (_, call_1, one), (_, call_2, two) in zip(stream(by_mate[1]), stream(by_mate[2]), strict=True):
            if "virus" in (call_1, call_2):
                pending[1].append(_as_text(one, fastq))
                pending[2].append(_as_text(two, fastq))
                if len(pending[1]) >= 4096:
                    for m in (1, 2):
                        outs[m].write("".join(pending[m]))
                        pending[m] = []
        for m in (1, 2):
            outs[m].write("".join(pending[m]))

    def _write_frames(self, opened: list[AtomicStream]) -> None:
        """VirNucPro's two frame files per input file: every kept frame, in input order."""
        paths = list(dict.fromkeys(ref.path for ref in self.refs))
        stems: dict[str, str] = {}
        for path in paths:
            stem, n = frame_file_stem(path), 2
            while stem in stems.values():  # two inputs of one sample with one stem
                stem = f"{frame_file_stem(path)}_{n}"
                n += 1
            if stem != frame_file_stem(path):
                log.warning("warning: sample %s: the frame files of %s are named %s* (%s* is taken by "
                            "another input of the sample)", self.sample.name, path, stem, frame_file_stem(path))
            stems[path] = stem
        for path in paths:
            nucleotide = AtomicStream(self.folder / (stems[path] + FRAME_NUCLEOTIDE), False)
            opened.append(nucleotide)
            protein = AtomicStream(self.folder / (stems[path] + FRAME_PROTEIN), False)
            opened.append(protein)
            for ref in (r for r in self.refs if r.path == path):
                parts = self._parts(ref, *store.FRAME_PARTS)
                dropped = self.dropped.get(ref.index)
                if dropped:
                    _frame_ids, read_ids = store.read_bag_frames(store.bag_path(self.outdir, ref))
                    for name in store.FRAME_PARTS:
                        pairs = parts[name].split("\n")[:-1]
                        parts[name] = "".join(f"{pairs[2 * i]}\n{pairs[2 * i + 1]}\n"
                                              for i, rid in enumerate(read_ids) if rid not in dropped)
                nucleotide.write(parts["nucleotide"])
                protein.write(parts["protein"])
