"""Which input files make up which sample, from file names or from a samplesheet.

A sample is a set of reads classified together and reported under one name (a directory
name in the output, hence the strict spelling rule). Most runs give one file per sample;
paired-end data gives two files, mate 1 and mate 2, through a samplesheet.

Name rule, checked before anything is read or computed, so that a name is a folder name on
every filesystem (OUTDIR/samples/<name>/ is made at the very end of a run): 1 to 200 of the
characters A-Z a-z 0-9 . _ - (so no '/', '\\', ':', '*', '?', '"', '<', '>', '|', spaces, control
characters or non-ASCII letters), starting with a letter, a digit or '_' (a leading '.' hides
the folder and makes '.' and '..'; a leading '-' reads as an option to shell tools), not ending
with '.' (Windows drops it), and not a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9,
with or without an extension). 200 leaves room under the usual 255-byte limit for the names
made from a sample's (temporary siblings of its folder). Two names that differ only in case
are refused: they would be one folder on macOS and Windows.

One file is one file however it is reached: files are told apart by (device, inode), so a
hard link, a symlink or another spelling of a path listed already is refused.

Paired rule: each mate is classified as its own read. A read from a mate file keeps its id
with one trailing "/1" or "/2" removed (if present) and the file's suffix, "/1" or "/2",
appended; so "r1/1" and "r1" in the mate-1 file both become "r1/1", and the same read in the
mate-2 file becomes "r1/2": the two mates of a pair never clash within their sample.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from virnuc_hpc.errors import SampleError

COMPRESSION_EXTENSIONS = (".gz", ".bgz", ".bz2", ".xz", ".zst", ".zstd")
SEQUENCE_EXTENSIONS = (".fastq", ".fq", ".fasta", ".fa", ".fna", ".ffn", ".fas", ".fsa", ".seq")
MAX_NAME_LENGTH = 200
NAME_RULE = ("use 1 to 200 letters, digits, '.', '_' and '-', starting with a letter, a digit or '_', "
             "not ending with '.'")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?<!\.)")
_DEVICE_NAME = re.compile(r"(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file and the sample it belongs to; `path` is kept as the user gave it."""

    path: str
    sample: str
    mate: int | None  # 1 or 2 for the files of a paired sample, else None

    @property
    def id_suffix(self) -> str:
        """What a mate file appends to its read ids, so that mates do not clash."""
        return "" if self.mate is None else f"/{self.mate}"

    def read_id(self, raw_id: str) -> str:
        """The id a read of this file is reported under (see the paired rule above)."""
        return mate_read_id(raw_id, self.id_suffix)


@dataclass(frozen=True, slots=True)
class Sample:
    """A named group of input files whose reads are reported together."""

    name: str
    files: tuple[InputFile, ...]

    @property
    def paired(self) -> bool:
        return any(file.mate is not None for file in self.files)


def mate_read_id(raw_id: str, suffix: str) -> str:
    """Apply the paired rule; an empty id stays empty so that it is still reported as such."""
    if not suffix or not raw_id:
        return raw_id
    if raw_id.endswith(("/1", "/2")):
        raw_id = raw_id[:-2]
    return raw_id + suffix


def sample_name(path: str) -> str:
    """The file name without its compression and then its sequence extension.

    'reads_R1.fastq.gz' -> 'reads_R1'. Only one of each is removed, and case is ignored.
    """
    name = os.path.basename(path)
    for extensions in (COMPRESSION_EXTENSIONS, SEQUENCE_EXTENSIONS):
        lowered = name.lower()
        for extension in extensions:
            if lowered.endswith(extension) and len(name) > len(extension):
                name = name[: -len(extension)]
                break
    return name


def name_problem(name: str) -> str | None:
    """What keeps a sample name from being a folder name everywhere (the module's rule), or None."""
    if len(name.encode()) > MAX_NAME_LENGTH:
        return f"is {len(name.encode())} bytes long, more than the {MAX_NAME_LENGTH} a folder name can take"
    if not _SAFE_NAME.fullmatch(name):
        return f"is not a safe directory name ({NAME_RULE})"
    if _DEVICE_NAME.fullmatch(name):
        return "is a device name on Windows, not a safe directory name"
    return None


def is_safe_name(name: str) -> bool:
    """A sample name usable as a directory name on every filesystem (the module's rule)."""
    return name_problem(name) is None


def samples_from_paths(paths: Sequence[str]) -> list[Sample]:
    """One single-file sample per path, named after the file, in the order given."""
    by_name: dict[str, str] = {}  # case-folded name -> path
    by_file: dict[tuple[int, int] | str, str] = {}
    samples: list[Sample] = []
    for path in paths:
        if any(c in path for c in "\t\n\r"):
            raise SampleError(f"input file {path!r}: its path holds a tab or a line break, which the "
                              "tab-separated outputs cannot hold; rename it (or link it under another name)")
        key = file_key(path)
        if key in by_file:
            other = by_file[key]
            raise SampleError(f"{path}: the same input file is given twice ({other!r} and {path!r} are one "
                              "file, through a hard link, a symlink or another spelling of its path)")
        name = sample_name(path)
        problem = name_problem(name)
        if problem:
            raise SampleError(f"{path}: sample name {_shown(name)} (from the file name) {problem}; "
                              "name the sample in a --samplesheet instead")
        if name.casefold() in by_name:
            other = by_name[name.casefold()]
            clash = (f"sample name {name!r}" if sample_name(other) == name else
                     f"sample names {sample_name(other)!r} and {name!r}, one folder on a case-insensitive filesystem")
            raise SampleError(f"{other} and {path} both give {clash}; rename one, or list them in a --samplesheet")
        by_file[key] = by_name[name.casefold()] = path
        samples.append(Sample(name, (InputFile(path, name, None),)))
    return samples


def file_key(path: str) -> tuple[int, int] | str:
    """One key per file however it is reached: (device, inode), so that a hard link, a symlink
    and another spelling of a path are the same file; the absolute path where it cannot be stat'ed."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return os.path.abspath(path)
    return status.st_dev, status.st_ino


def _shown(name: str) -> str:
    """A name for a message: a very long one is cut (its length is in the message)."""
    return repr(name) if len(name) <= 60 else repr(name[:40]) + "..."


def read_samplesheet(path: str) -> list[Sample]:
    """Samples listed in a samplesheet, in first-appearance order, files in row order.

    Two layouts are understood, tab-separated (comma-separated when the name ends .csv),
    with a header row: `sample, file[, mate]`, one row per file; or nf-core's
    `sample, fastq_1[, fastq_2]`, where fastq_2 makes the row a mate-1/mate-2 pair.
    Relative file paths are relative to the samplesheet's directory.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            delimiter = "," if path.lower().endswith(".csv") else "\t"
            rows = list(csv.reader(handle, delimiter=delimiter))
    except (OSError, UnicodeDecodeError) as error:
        raise SampleError(f"{path}: cannot read samplesheet: {error}") from None
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise SampleError(f"{path}: empty samplesheet (a header row and one row per file are expected)")
    (header_line, header), body = numbered[0], numbered[1:]
    columns = {name.strip().lower(): i for i, name in enumerate(header)}
    entries = _sheet_entries(path, header_line, columns, body)
    if not entries:
        raise SampleError(f"{path}: the samplesheet lists no files")
    return _grouped(path, entries)


# --------------------------------------------------------------------------- internals

# One file named by a samplesheet row: (sheet line, sample, file path as resolved, mate).
_Entry = tuple[int, str, str, int | None]


def _sheet_entries(sheet: str, header_line: int, columns: dict[str, int],
                   body: list[tuple[int, list[str]]]) -> list[_Entry]:
    """Rows to entries, for whichever of the two layouts the header names."""
    if "sample" not in columns or not ({"file", "fastq_1"} & columns.keys()):
        raise SampleError(
            f"{sheet}:{header_line}: the header must name the columns 'sample' and 'file' "
            "(optionally 'mate'), or 'sample', 'fastq_1' and optionally 'fastq_2'"
        )
    nf_core = "file" not in columns
    base = os.path.dirname(sheet)
    entries: list[_Entry] = []

    def cell(row: list[str], name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    for line, row in body:
        name = cell(row, "sample")
        if not name:
            raise SampleError(f"{sheet}:{line}: empty sample name")
        problem = name_problem(name)
        if problem:
            raise SampleError(f"{sheet}:{line}: sample name {_shown(name)} {problem}")
        if nf_core:
            second = cell(row, "fastq_2")
            files = [(cell(row, "fastq_1"), 1 if second else None)] + ([(second, 2)] if second else [])
        else:
            files = [(cell(row, "file"), _mate(sheet, line, cell(row, "mate")))]
        for file, mate in files:
            entries.append((line, name, _resolved(sheet, line, base, file), mate))
    return entries


def _mate(sheet: str, line: int, text: str) -> int | None:
    if text in ("", "1", "2"):
        return int(text) if text else None
    raise SampleError(f"{sheet}:{line}: mate must be 1, 2 or empty, not {text!r}")


def _resolved(sheet: str, line: int, base: str, file: str) -> str:
    """A listed file's path, relative to the samplesheet's directory, checked to exist."""
    if not file:
        raise SampleError(f"{sheet}:{line}: empty file path")
    if any(char in file for char in "\t\r\n"):
        raise SampleError(f"{sheet}:{line}: file path {file!r} holds a tab or a line break")
    path = os.path.join(base, file)  # an absolute file path stays as it is
    if not os.path.isfile(path):
        raise SampleError(f"{sheet}:{line}: file {path!r} does not exist")
    return path


def _grouped(sheet: str, entries: list[_Entry]) -> list[Sample]:
    """Entries grouped into samples, checking files are listed once and mates come in pairs."""
    files: dict[str, list[InputFile]] = {}
    first_line: dict[str, int] = {}
    seen: dict[tuple[int, int] | str, tuple[int, str]] = {}  # file -> (line, path as listed)
    folded: dict[str, str] = {}  # case-folded sample name -> name
    for line, name, path, mate in entries:
        key = file_key(path)
        if key in seen:
            at, listed = seen[key]
            how = "" if listed == path else (f" (as {listed!r}: one file, through a hard link, a symlink "
                                              "or another spelling)")
            raise SampleError(f"{sheet}:{line}: file {path!r} is already listed at line {at}{how}")
        seen[key] = (line, path)
        if folded.setdefault(name.casefold(), name) != name:
            raise SampleError(f"{sheet}:{line}: sample names {folded[name.casefold()]!r} and {name!r} differ only "
                              "in case: one folder on a case-insensitive filesystem; rename one")
        first_line.setdefault(name, line)
        files.setdefault(name, []).append(InputFile(path, name, mate))
    for name, group in files.items():
        mates = [file.mate for file in group]
        if any(mate is not None for mate in mates) and sorted(mate or 0 for mate in mates) != [1, 2]:
            raise SampleError(
                f"{sheet}:{first_line[name]}: sample {name!r} must have exactly one mate-1 and one "
                f"mate-2 file when it has mates (found mates {', '.join(str(m or '-') for m in mates)})"
            )
    return [Sample(name, tuple(group)) for name, group in files.items()]
