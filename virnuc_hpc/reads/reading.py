"""Input files as consecutive blocks of whole records: cut cheaply here, parsed elsewhere.

Why this split: the client reads every input once, on one thread, and must keep many
workers fed, so it only decompresses and cuts (C-level byte counting, no per-record Python);
the workers parse and check each block (`validation.parse_block`, `validation.checked_block`). Each block knows the file line and record
number it starts at, so a worker's error message names the true file line.

Formats: FASTA or FASTQ (4-line records), plain or gzip/bzip2/xz/zstd, told by the first
bytes of the file, never by its name. Line ends: LF, CRLF or CR, as Python text mode
(which VirNucPro used) reads them. CRLF stays in the blocks (the parsers accept it); a read
buffer holding a lone CR (an old Mac file) is rewritten with LF, so that counting LF always
counts lines.

Compressed input is held to one rule in every format: a file is one or more whole streams
(gzip members, bzip2, xz or zstd streams) of the format its first bytes name, and zero bytes
between or after them are padding (as gzip has always allowed). Anything else after a stream,
or a stream cut short, is an error naming the file: never silently dropped, as Python's bz2 and
lzma readers drop trailing data they cannot decode.

A read can record what it took from the disk (`ReadDigest`): the count and sha256 of exactly the
bytes it consumed, hashed as they are read, so that provenance describes the bytes the run cut
its blocks from, even when the file grows or changes while it is read.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import numpy as np
from xopen import xopen

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover - depends on the Python version
    from backports import zstd

from virnuc_hpc.reads.fasta import (
    EMPTY_FILE,
    TEXT_BEFORE_HEADER,
    UNREADABLE,
    FastaError,
    Problem,
    binary_problem,
    first_junk,
)
from virnuc_hpc.reads.samples import InputFile

FASTA, FASTQ = "fasta", "fastq"
SNIFF_SIZE = 4096  # bytes read at a time while looking for the first header
# Gzip is decompressed in a helper thread (xopen threads=1): measured faster than in-line
# (threads=0) since the cutter runs meanwhile. Other formats decompress in-process.
GZIP_THREADS = 1
_MAGIC = ((b"\x1f\x8b", "gz", "gzip"), (b"BZh", "bz2", "bzip2"), (b"\xfd7zXZ\x00", "xz", "xz"),
          (b"\x28\xb5\x2f\xfd", "zst", "zstd"))
_NOT_SPACE = re.compile(rb"\S")
_LF = ord("\n")
_RAW_READ = 1 << 20  # compressed bytes handed to a bzip2/xz/zstd decompressor at a time
_HASH_AHEAD = 4  # raw reads queued for the hashing thread before the reader waits for it
__all__ = ["FASTA", "FASTQ", "Block", "ReadDigest", "iter_blocks", "open_binary", "sniff"]


@dataclass(slots=True)
class ReadDigest:
    """What one read of a file took from the disk: the byte count and sha256 of exactly those bytes.

    Filled in when the read's stream closes; `sha256` is None until then.
    """

    size: int = 0
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive whole records of one file, as raw (decompressed) text.

    `first_line` is the file line of the block's first line, `first_record` the 0-based
    number of its first record in the file. A FASTA file's first block also holds any
    blank lines before the first header; a FASTQ file's first and last blocks hold any
    blank lines at the start and at the end of the file.
    """

    file: InputFile
    fmt: str
    index: int
    first_record: int
    first_line: int
    n_records: int
    data: bytes


def open_binary(path: str, digest: ReadDigest | None = None) -> BinaryIO:
    """The decompressed bytes of a file; compression is told by content, not name.

    Any failure to open or decompress, now or on a later read, raises FastaError with one
    UNREADABLE Problem; so does anything after the last whole compressed stream but zero
    padding (see the module's rule). `digest`, when given, receives the size and sha256 of the
    bytes read from the disk once the stream is closed.
    """
    try:
        raw: BinaryIO = open(path, "rb")
    except Exception as error:
        raise _unreadable(path, error, None) from error
    try:
        magic = raw.read(6)
        raw.seek(0)
        kind = next(((fmt, name) for prefix, fmt, name in _MAGIC if magic.startswith(prefix)), None)
        source = raw if digest is None else cast(BinaryIO, _Tap(raw, digest))
        if kind is None:
            return cast(BinaryIO, _Checked(source, path, None, ()))
        if kind[0] == "gz":  # ISA-L's reader: whole members, zero padding, anything else refused
            stream = cast(BinaryIO, xopen(source, "rb", format="gz", threads=GZIP_THREADS))
        else:
            stream = cast(BinaryIO, _Streams(source, _DECOMPRESSORS[kind[0]], kind[1]))
        return cast(BinaryIO, _Checked(stream, path, kind[1], (source,)))
    except Exception as error:  # decompressors raise OSError, EOFError and their own errors
        raw.close()
        raise _unreadable(path, error, None) from error


def sniff(path: str) -> str:
    """FASTA or FASTQ, from the first non-blank byte of the decompressed file.

    Raises FastaError for an empty (or blank) file, text before the first header (at the line
    of that text), binary data or an unreadable file. Reads little: up to the first header.
    """
    line = 1
    with open_binary(path) as stream:
        for piece in _text_buffers(stream, SNIFF_SIZE):
            text = piece.lstrip()
            if not text:
                line += piece.count(b"\n")
                continue
            at = len(piece) - len(text)
            line += piece.count(b"\n", 0, at)
            line_start = piece.rfind(b"\n", 0, at) + 1
            if at == line_start and text[:1] in (b">", b"@"):
                return FASTA if text[:1] == b">" else FASTQ
            line_end = piece.find(b"\n", at)
            first = piece[line_start : None if line_end < 0 else line_end]
            junk = first_junk(first, lambda _line, _index: False)
            if junk >= 0:
                raise FastaError([binary_problem(path, first, junk, line, "FASTA or FASTQ")])
            message = "text before the first '>' or '@' header (is this a FASTA or FASTQ file?)"
            raise FastaError([Problem(path, line, None, TEXT_BEFORE_HEADER, message)])
    raise FastaError([Problem(path, None, None, EMPTY_FILE, "empty file: no FASTA or FASTQ records")])


def iter_blocks(file: InputFile, records_per_block: int, *, read_size: int = 1 << 22,
                fmt: str | None = None, digest: ReadDigest | None = None) -> Iterator[Block]:
    """Cut a file into blocks of `records_per_block` records (the last may hold fewer).

    The file is read once, `read_size` bytes at a time; memory stays near one block plus one
    read. `fmt` skips the sniff when the caller already knows the format. `digest` receives
    the size and sha256 of the bytes the blocks were cut from, once the last block is out.
    Raises FastaError (see `sniff`, and UNREADABLE for data that stops decompressing midway
    or does not end as the module's rule says).
    """
    if records_per_block < 1:
        raise ValueError(f"records_per_block must be >= 1, not {records_per_block}")
    fmt = fmt or sniff(file.path)
    cut = _fasta_blocks if fmt == FASTA else _fastq_blocks
    first_record, first_line = 0, 1
    with open_binary(file.path, digest) as stream:
        pieces = cut(_text_buffers(stream, read_size), records_per_block)
        for index, (n_records, n_lines, data) in enumerate(pieces):
            yield Block(file, fmt, index, first_record, first_line, n_records, data)
            first_record += n_records
            first_line += n_lines


# --------------------------------------------------------------------------- internals


class _Checked(io.RawIOBase):
    """A byte stream whose read errors become FastaError(UNREADABLE), named for the user.

    `below` are the streams under `stream` that closing it does not close (the raw file that a
    decompressor was handed), closed after it in order.
    """

    def __init__(self, stream: BinaryIO, path: str, compression: str | None,
                 below: tuple[BinaryIO, ...]) -> None:
        super().__init__()
        self._stream, self._path, self._compression, self._below = stream, path, compression, below

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._stream.read(-1 if size is None else size)
        except Exception as error:  # decompressors raise OSError, EOFError and their own errors
            raise _unreadable(self._path, error, self._compression) from error

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
                for stream in self._below:
                    stream.close()
            finally:
                super().close()


def _unreadable(path: str, error: BaseException, compression: str | None) -> FastaError:
    said = isinstance(error, _LaterStreamError)  # its message says what is wrong already
    hint = f" (corrupt or truncated {compression} data?)" if compression and not said else ""
    return FastaError([Problem(path, None, None, UNREADABLE, f"cannot read file: {error}{hint}")])


class _LaterStreamError(ValueError):
    """Bytes after a whole compressed stream that are neither padding nor a whole stream."""


def _zstd_decompressor() -> Any:
    # the largest window zstd allows, as the zstd tool's --long=31: files made with --long read too
    window = zstd.DecompressionParameter.window_log_max
    return zstd.ZstdDecompressor(options={window: window.bounds()[1]})


_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "bz2": bz2.BZ2Decompressor,
    "xz": lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ),
    "zst": _zstd_decompressor,
}


class _Streams(io.RawIOBase):
    """The decompressed bytes of one or more concatenated bzip2, xz or zstd streams.

    The module's rule, which gzip's reader keeps already: after a stream ends, only zero bytes
    (padding) and further whole streams of the same format may follow. Python's own readers stop
    quietly at the first bytes that do not decode, so a damaged file would pass as a short one.
    """

    def __init__(self, raw: BinaryIO, new: Callable[[], Any], name: str) -> None:
        super().__init__()
        self._raw, self._new, self._name = raw, new, name
        self._decompressor = new()
        self._read_bytes = 0  # compressed bytes taken from raw
        self._streams = 0  # whole streams decoded
        self._stream_at = 0  # offset of the stream being decoded
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return b"".join(iter(lambda: self.read(4 * _RAW_READ), b""))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._done or size == 0:
            return b""
        try:
            return self._decoded(size)
        except Exception as error:
            if not self._streams or isinstance(error, _LaterStreamError):
                raise
            raise _LaterStreamError(
                f"the bytes from offset {self._stream_at} on, after {self._streams} whole {self._name} "
                f"stream(s), are not a whole {self._name} stream (trailing garbage, or a damaged or "
                f"truncated later stream): {error}") from error

    def _decoded(self, size: int) -> bytes:
        while True:
            decompressor = self._decompressor
            if decompressor.eof:
                self._streams += 1
                start = self._next_stream(decompressor.unused_data)
                if start is None:
                    self._done = True
                    return b""
                decompressor = self._decompressor = self._new()
                data = decompressor.decompress(start, size)
            elif decompressor.needs_input:
                chunk = self._raw_read()
                if not chunk:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                data = decompressor.decompress(chunk, size)
            else:
                data = decompressor.decompress(b"", size)
            if data:
                return data

    def _raw_read(self) -> bytes:
        chunk = self._raw.read(_RAW_READ)
        self._read_bytes += len(chunk)
        return chunk

    def _next_stream(self, rest: bytes) -> bytes | None:
        """The first bytes of the next stream, zero padding skipped; None at the end of the file."""
        while not (start := rest.lstrip(b"\0")):
            rest = self._raw_read()
            if not rest:
                return None
        self._stream_at = self._read_bytes - len(start)
        return start

    def close(self) -> None:
        self._decompressor = None
        super().close()


class _Tap(io.RawIOBase):
    """A raw file that counts and hashes every byte read from it, into a ReadDigest on close.

    Hashing runs on a helper thread (hashlib releases the GIL), a few reads behind, so the
    reader does not wait for it.
    """

    def __init__(self, raw: BinaryIO, digest: ReadDigest) -> None:
        super().__init__()
        self._raw, self._digest = raw, digest
        self._hash = hashlib.sha256()
        self._size = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._feed(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="virnuc-input-sha256")
        self._pending.append(self._pool.submit(self._hash.update, data))
        while len(self._pending) > _HASH_AHEAD:
            self._pending.popleft().result()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._raw.close()
            while self._pending:
                self._pending.popleft().result()
            self._digest.size, self._digest.sha256 = self._size, self._hash.hexdigest()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            super().close()


def _text_buffers(stream: BinaryIO, read_size: int) -> Iterator[bytes]:
    """The stream in pieces of about read_size bytes, lone CRs made LF (CRLF kept).

    A CR ending a piece waits for the next piece, which may start with its LF.
    """
    carry = b""
    while piece := stream.read(read_size):
        if carry:
            piece, carry = carry + piece, b""
        if b"\r" in piece:
            if piece.endswith(b"\r"):
                piece, carry = piece[:-1], b"\r"
            crs = piece.count(b"\r")
            if crs and crs != piece.count(b"\r\n"):
                piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if piece:
            yield piece
    if carry:
        yield b"\n"


def _nth(data: bytes, sep: bytes, k: int, start: int) -> int:
    """Where the k-th (k >= 1) `sep` of data[start:] begins, or -1 if there are fewer.

    Strides are counted in C; only the stride holding the answer is searched, with numpy.
    `sep` is one or two bytes long (a two-byte sep across a stride end is kept whole).
    """
    stride = 1 << 16
    pos, size = start, len(data)
    while pos < size:
        end = min(pos + stride, size)
        if len(sep) == 2 and data[end - 1 : end + 1] == sep:
            end += 1
        found = data.count(sep, pos, end)
        if found >= k:
            view = np.frombuffer(data, np.uint8, count=end - pos, offset=pos)
            hits = view == sep[0]
            if len(sep) == 2:  # sep[0] followed by sep[1] within the stride
                hits[:-1] &= view[1:] == sep[1]
                hits[-1] = False
            return pos + int(np.flatnonzero(hits)[k - 1])
        k -= found
        pos = end
    return -1


def _count_lines(data: bytes) -> int:
    """Newlines in data; numpy counts bytes about three times faster than bytes.count."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == _LF))


def _newline_positions(data: bytes) -> np.ndarray:
    """Offsets of every LF in data: one numpy pass serves both counting lines and cutting."""
    return np.flatnonzero(np.frombuffer(data, np.uint8) == _LF)


def _fasta_blocks(buffers: Iterable[bytes], per_block: int) -> Iterator[tuple[int, int, bytes]]:
    """(records, lines, text) of FASTA blocks: a record begins at a line starting with '>'."""
    pending: list[bytes] = []
    begun = 0  # records begun in pending
    line_start = True  # the next byte begins a line
    for buf in buffers:
        pos = search = 0  # buf[pos:] is not in a block yet; look for headers from `search`
        if line_start and buf.startswith(b">"):
            if begun == per_block:
                yield _fasta_block(begun, pending)
                pending, begun = [], 0
            begun, search = begun + 1, 1
        headers = buf.count(b"\n>", search)
        if begun + headers <= per_block:
            begun += headers
        else:
            while (cut := _nth(buf, b"\n>", per_block - begun + 1, search)) >= 0:
                pending.append(buf[pos : cut + 1])
                yield _fasta_block(per_block, pending)
                pending, begun, pos, search = [], 1, cut + 1, cut + 2
            begun += buf.count(b"\n>", search)
        if pos < len(buf):
            pending.append(buf[pos:] if pos else buf)
        line_start = buf.endswith(b"\n")
    if pending:
        yield _fasta_block(begun, pending)


def _fasta_block(records: int, pieces: list[bytes]) -> tuple[int, int, bytes]:
    data = b"".join(pieces)
    return records, _count_lines(data), data


def _fastq_blocks(buffers: Iterable[bytes], per_block: int) -> Iterator[tuple[int, int, bytes]]:
    """(records, lines, text) of FASTQ blocks: 4 lines a record.

    Blank lines before the first record join the first block, blank lines after the last
    record join the last block: so finished blocks wait (`held`) until text follows them.
    Each buffer's newlines are located once, in numpy; cuts are look-ups.
    """
    lines_per_block = 4 * per_block
    pending: list[bytes] = []
    lines = 0  # newlines in pending
    goal: int | None = None  # newlines that complete the pending block; None before any text
    held: list[tuple[int, bytes]] = []  # (lines, text): a finished block, then any blank ones
    for buf in buffers:
        newline_at = _newline_positions(buf)
        newlines = len(newline_at)
        if goal is None:
            text = buf.lstrip()
            if not text:
                pending.append(buf)
                lines += newlines
                continue
            goal = lines + buf.count(b"\n", 0, len(buf) - len(text)) + lines_per_block
        rest = buf
        if lines + newlines < goal:
            pending.append(buf)
            lines += newlines
        else:
            pos = used = 0  # buf[pos:] is not in a block yet; `used` newlines of buf lie before pos
            while used + goal - lines <= newlines:
                cut = int(newline_at[used + goal - lines - 1])
                pending.append(buf[pos : cut + 1])
                block = b"".join(pending)
                if held and _NOT_SPACE.search(block):
                    yield from ((per_block, n, text) for n, text in held)
                    held = []
                held.append((goal, block))
                used += goal - lines
                pending, lines, goal, pos = [], 0, lines_per_block, cut + 1
            rest = buf[pos:]
            if rest:
                pending.append(rest)
                lines = newlines - used
        if held and _NOT_SPACE.search(rest):
            yield from ((per_block, n, text) for n, text in held)
            held = []
    tail = b"".join(pending)
    if held and not tail.strip():  # only blank lines follow: they end the last block
        data = b"".join(text for _, text in held) + tail
        yield _fastq_records(data), sum(n for n, _ in held) + lines, data
        return
    yield from ((per_block, n, text) for n, text in held)
    if tail:
        yield _fastq_records(tail), lines, tail


def _fastq_records(data: bytes) -> int:
    """Records in the file's last block: its lines with text, 4 a record (the last may be cut short)."""
    body = data.strip()
    return -(-(body.count(b"\n") + 1) // 4) if body else 0
