"""Read one row's values of a float32 Parquet column page by page, straight into a numpy buffer.

Why: pyarrow decodes a nested column (``bold`` is ``list<fixed_size_list<float32, V>>``, one row
per run) one record at a time, and one record is a whole run, so decoding a run holds its values,
its repetition and definition levels (two int16 per value) and the growing buffers at once: about
4x the run at its peak, measured on 7.6- and 23-MB runs. pyarrow also writes a whole record as
one data page, so even a decompressed page is the size of the run. This reader streams each page
(zstd, gzip and brotli pages are standard streams) and copies the row's values, 1 MB at a time,
into the caller's array: besides it, only a chunk and the decompressor's window are held.

What is read: the leaf column's data pages (Parquet format, ``PageHeader`` in Thrift's compact
protocol), v1 or v2, values ``PLAIN`` or ``BYTE_STREAM_SPLIT`` encoded, with any codec
:class:`pyarrow.Codec` decompresses (zstd, snappy, gzip, brotli, lz4 raw) or none. Levels are
skipped, not decoded: a page whose value bytes do not equal 4 bytes per level (a null, an empty
list, or a padded page) cannot be indexed by position and raises :class:`UnsupportedLayout`, as
does a dictionary-encoded column; callers then read the column with pyarrow instead
(:func:`wav2brain.data.hf_layout.read_bold`). Every page header and size is checked against the
file, so a truncated or corrupted shard raises a ValueError naming it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

PAGE_DATA, PAGE_INDEX, PAGE_DICTIONARY, PAGE_DATA_V2 = 0, 1, 2, 3
ENCODING_PLAIN, ENCODING_RLE, ENCODING_BYTE_STREAM_SPLIT = 0, 3, 9
CODECS = {
    "UNCOMPRESSED": None,
    "ZSTD": "zstd",
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "LZ4_RAW": "lz4_raw",
}
"""Parquet codec names (``ColumnChunkMetaData.compression``) and their :class:`pyarrow.Codec`."""

STREAMED_CODECS = frozenset({"zstd", "gzip", "brotli"})
"""Codecs whose Parquet pages are standard streams, decompressed in chunks of
:data:`CHUNK_BYTES` (pyarrow writes a whole run as one page: its decompressed copy alone would be
the size of the run)."""

CHUNK_BYTES = 2**20
"""Bytes decompressed and copied at a time."""

MAX_HEADER_BYTES = 2**16
"""A page header longer than this is taken as corruption (real ones are under 100 bytes
without statistics, a few hundred with)."""


class UnsupportedLayout(Exception):
    """The column chunk is valid Parquet but not a layout this reader indexes by position."""


class _Compact:
    """Minimal reader of Thrift's compact protocol over a bytes buffer (``PageHeader`` only)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise EOFError
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            value = self.byte()
            result |= (value & 0x7F) << shift
            if not value & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("varint too long")

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def skip(self, kind: int) -> None:
        """Skip one value of compact type ``kind``."""
        if kind in (1, 2):  # booleans carry their value in the type
            return
        if kind == 3:
            self.byte()
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            length = self.varint()  # before the addition: ``pos += varint()`` reads pos first
            self.pos += length
        elif kind in (9, 10):
            header = self.byte()
            size, element = header >> 4, header & 0x0F
            size = self.varint() if size == 15 else size
            for _ in range(size):
                self.byte() if element in (1, 2) else self.skip(element)
        elif kind == 11:
            size = self.varint()
            types = self.byte() if size else 0
            for _ in range(size):
                self.skip(types >> 4)
                self.skip(types & 0x0F)
        elif kind == 12:
            self.struct({})
        else:
            raise ValueError(f"unknown Thrift compact type {kind}")

    def struct(self, wanted: dict) -> dict:
        """Read a struct; ``wanted`` maps field ids to None (an int) or a nested ``wanted``."""
        values, field_id = {}, 0
        while True:
            header = self.byte()
            if header == 0:
                return values
            delta, kind = header >> 4, header & 0x0F
            field_id = field_id + delta if delta else self.zigzag()
            if field_id in wanted and kind in (1, 2):
                values[field_id] = kind == 1
            elif field_id in wanted and kind in (4, 5, 6):
                values[field_id] = self.zigzag()
            elif field_id in wanted and kind == 12 and wanted[field_id] is not None:
                values[field_id] = self.struct(wanted[field_id])
            else:
                self.skip(kind)


_DATA_V1 = {1: None, 2: None, 3: None, 4: None}  # num_values, encoding, def/rep level encodings
_DATA_V2 = {1: None, 2: None, 3: None, 4: None, 5: None, 6: None, 7: None}
_PAGE_HEADER = {1: None, 2: None, 3: None, 5: _DATA_V1, 8: _DATA_V2}


@dataclass(frozen=True)
class _Page:
    kind: int
    uncompressed: int
    compressed: int
    header: dict


def _read_header(handle: BinaryIO, path: Path, offset: int) -> tuple[_Page, int]:
    """The page header at ``offset`` and the offset of its body."""
    handle.seek(offset)
    data = handle.read(MAX_HEADER_BYTES)
    reader = _Compact(data)
    try:
        fields = reader.struct(_PAGE_HEADER)
    except (EOFError, ValueError) as error:
        raise ValueError(
            f"{path}: unreadable Parquet page header at byte {offset} (truncated or corrupted "
            f"shard: {error or 'end of file'})"
        ) from None
    if not {1, 2, 3} <= set(fields):
        raise ValueError(f"{path}: Parquet page header at byte {offset} lacks its sizes")
    sub = fields.get(8 if fields[1] == PAGE_DATA_V2 else 5, {})
    return _Page(fields[1], fields[2], fields[3], sub), offset + reader.pos


def _pages(handle: BinaryIO, path: Path, start: int, end: int) -> Iterator[tuple[_Page, int]]:
    """Every page header of the column chunk ``[start, end)`` with the offset of its body."""
    offset = start
    while offset < end:
        page, body = _read_header(handle, path, offset)
        if page.compressed < 0 or body + page.compressed > end:
            raise ValueError(
                f"{path}: Parquet page at byte {offset} runs past its column chunk (ends at "
                f"{body + page.compressed}, chunk ends at {end}): truncated or corrupted shard"
            )
        yield page, body
        offset = body + page.compressed


class _Window(io.RawIOBase):
    """Bytes ``[start, start + size)`` of an open file as a raw stream (a page's body)."""

    def __init__(self, handle: BinaryIO, start: int, size: int) -> None:
        super().__init__()
        self.handle, self.position, self.left = handle, start, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[: self.left]
        if not len(view):
            return 0
        self.handle.seek(self.position)
        count = self.handle.readinto(view) or 0
        self.position += count
        self.left -= count
        return count


def _read(stream, n: int, path: Path) -> bytes:
    """Exactly ``n`` bytes of ``stream``; a short read is a truncated shard."""
    data = stream.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: a Parquet page ends early (truncated or corrupted shard)")
    return data


def _page_values(handle: BinaryIO, page: _Page, body: int, codec: str | None, levels, path: Path):
    """A stream positioned at a data page's values (levels skipped) and the number of values.

    The decompressed page is streamed (:data:`STREAMED_CODECS`), so only a chunk of it is held;
    other codecs decompress the page at once.
    """
    import pyarrow as pa

    def values_stream(window: _Window, size: int):
        if codec is None:
            return window
        if codec in STREAMED_CODECS:
            return pa.CompressedInputStream(pa.PythonFile(window, mode="r"), codec)
        raw = _read(window, window.left, path)
        return pa.BufferReader(pa.Codec(codec).decompress(raw, size))

    if page.kind == PAGE_DATA_V2:
        n_levels, n_nulls, encoding = (page.header.get(i, 0) for i in (1, 2, 4))
        if n_nulls:
            raise UnsupportedLayout(f"{n_nulls} nulls in a page")
        skip = page.header.get(5, 0) + page.header.get(6, 0)
        window = _Window(handle, body + skip, page.compressed - skip)
        size = page.uncompressed - skip
        stream = window if not page.header.get(7, True) else values_stream(window, size)
    else:
        n_levels, encoding = page.header.get(1, 0), page.header.get(2)
        stream = values_stream(_Window(handle, body, page.compressed), page.uncompressed)
        size = page.uncompressed
        for present, level_encoding in zip(
            levels, (page.header.get(4), page.header.get(3)), strict=True
        ):
            if not present:
                continue
            if level_encoding != ENCODING_RLE:
                raise UnsupportedLayout(f"levels encoded as {level_encoding}")
            length = int.from_bytes(_read(stream, 4, path), "little")
            _read(stream, length, path)
            size -= 4 + length
    if encoding not in (ENCODING_PLAIN, ENCODING_BYTE_STREAM_SPLIT):
        raise UnsupportedLayout(f"values encoded as {encoding}")
    if size != 4 * n_levels:
        raise UnsupportedLayout(f"{size} value bytes for {n_levels} levels")
    return stream, encoding, n_levels


def _copy(stream, n: int, destination: np.ndarray, path: Path) -> None:
    """Read ``n`` bytes of ``stream`` into the uint8 view ``destination`` (or drop them: None)."""
    done = 0
    while done < n:
        count = min(CHUNK_BYTES, n - done)
        data = np.frombuffer(_read(stream, count, path), dtype=np.uint8)
        if destination is not None:
            destination[done : done + count] = data
        done += count


def _copy_values(stream, encoding: int, n_values: int, lo: int, out_bytes, path: Path) -> None:
    """Values ``lo .. lo + len(out_bytes) // 4`` of a page's ``n_values`` into ``out_bytes``."""
    take = len(out_bytes) // 4
    if encoding == ENCODING_PLAIN:
        _copy(stream, 4 * lo, None, path)
        _copy(stream, 4 * take, out_bytes, path)
        return
    columns = out_bytes.reshape(take, 4)
    for k in range(4):  # BYTE_STREAM_SPLIT: byte k of every value, then byte k + 1
        _copy(stream, lo, None, path)
        _copy(stream, take, columns[:, k], path)
        if k < 3:
            _copy(stream, n_values - lo - take, None, path)


def read_float32_row(path: Path, column: str, row: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (float32, C-contiguous) with the leaf values of ``column`` in row ``row``.

    Parameters
    ----------
    path : Path
        Parquet file.
    column : str
        Top-level column name; its single leaf must be FLOAT (float32).
    row : int
        Row index in the file.
    out : np.ndarray
        Destination, ``out.size`` values: every value of that row, none of the others.

    Raises
    ------
    UnsupportedLayout
        Valid Parquet this reader does not index by position (see the module docstring).
    ValueError
        The file is not readable Parquet, or the row holds another number of values than
        ``out.size``; the message names the file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    schema = metadata.schema
    leaves = [i for i in range(len(schema)) if schema.column(i).path.split(".")[0] == column]
    if len(leaves) != 1 or schema.column(leaves[0]).physical_type != "FLOAT":
        raise UnsupportedLayout(f"column {column!r} is not a single float32 leaf")
    leaf = schema.column(leaves[0])
    levels = (leaf.max_repetition_level > 0, leaf.max_definition_level > 0)
    if row < 0 or row >= metadata.num_rows:
        raise ValueError(f"{path}: row {row} out of range ({metadata.num_rows} rows)")
    flat = out.reshape(-1)
    first = row
    for group_index in range(metadata.num_row_groups):
        group = metadata.row_group(group_index)
        if first < group.num_rows:
            break
        first -= group.num_rows
    chunk = group.column(leaves[0])
    if chunk.compression not in CODECS:
        raise UnsupportedLayout(f"codec {chunk.compression}")
    if chunk.has_dictionary_page or (chunk.is_stats_set and chunk.statistics.null_count):
        raise UnsupportedLayout("dictionary pages or nulls")
    codec = CODECS[chunk.compression]
    out_bytes = flat.view(np.uint8)
    if chunk.num_values != group.num_rows * flat.size:
        if group.num_rows > 1:
            raise UnsupportedLayout("rows of different sizes in one row group")
        raise ValueError(
            f"{path} row {row}: column {column!r} holds {chunk.num_values} values, expected "
            f"{flat.size}"
        )
    skip = first * flat.size  # values of the rows before ``row`` in its row group
    start, end = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size
    filled = seen = 0
    with path.open("rb") as handle:
        for page, body in _pages(handle, path, start, end):
            if page.kind == PAGE_DICTIONARY:
                raise UnsupportedLayout("dictionary page")
            if page.kind not in (PAGE_DATA, PAGE_DATA_V2):
                continue
            n_levels = page.header.get(1, 0)
            if seen + n_levels <= skip:  # wholly before the row: not even decompressed
                seen += n_levels
                continue
            stream, encoding, n_values = _page_values(handle, page, body, codec, levels, path)
            lo = max(skip - seen, 0)
            take = min(n_values - lo, flat.size - filled)
            _copy_values(
                stream, encoding, n_values, lo, out_bytes[4 * filled : 4 * (filled + take)], path
            )
            filled += take
            seen += n_values
            if filled == flat.size:
                break
    if filled != flat.size:
        raise ValueError(
            f"{path} row {row}: the pages of column {column!r} hold {filled} of its "
            f"{flat.size} values: truncated or corrupted shard"
        )
    return out
