"""The event archive: the never-compacted, hash-chained history of one partition replica.

Raft log compaction throws old entries away; the archive keeps every APPLIED
entry forever, with its results, so that history can be read back and any past
state rebuilt offline (`node.archive.replay_cli`). Each replica appends to its own
archive under `<partition dir>/archive/`.

Guarantees:

- Positions are dense and start at 1: the record at position N is the N-th
  entry the ledger's `StateMachine` applied (its own `position` counter). Log
  indexes strictly increase. An append at an archived position is skipped (a
  restarted replica re-applies the journal after its snapshot); a gap or a
  non-increasing log index raises ValueError and writes nothing.
- Records are hash-chained: each one carries the BLAKE2b-256 of the previous
  record (the first one: 32 zero bytes), and its own hash is the BLAKE2b-256 of
  its payload, so `chain_head` pins the whole history. Replicas of a partition
  that archive from position 1 with the same entries (and the entries' own
  Raft terms) write identical records and reach the same chain head.
- Every record has a CRC-32. Appends are plain writes; `sync()` makes all
  pending appends durable with one fsync (group commit). A full segment is
  fsynced before the next one is created, and the directory is fsynced when a
  segment is created.
- Opening reads and checks every segment (checksums, positions, log indexes,
  hash links; cost proportional to the archive's size). A torn final record of
  the last segment (a write that was never synced) is cut off with a warning;
  any other damage raises `ArchiveCorrupt` and the node refuses to start.
  Should a cut-off record have been needed (its entry no longer in the Raft
  journal), the next append is a gap and raises: history is never silently
  shortened.
- A failed write or fsync makes the archive fail-stop (`ArchiveFailed`): on
  disk state is unknown, the process must restart and re-check the files.
- `fsync=False` never fsyncs (benchmarks and tests); everything else is equal.

On-disk format (integers little-endian), one file per segment,
`segment-<first position, 20 digits>.rwa`:

    header  b"RWARCHIVE" | u8 0 | u16 format version (1) | u32 partition
            | u64 first position | u32 crc32(previous 24 bytes)
    record  u32 payload length | u32 crc32(payload) | payload
    payload prev hash (32 bytes) | u64 position | u64 log index | u64 term
            | i64 stamp_ms | u32 entry length | entry blob | results blob
    hash of a record = BLAKE2b-256(payload)

A segment is rolled (a new file started) when the next record would take it
over `segment_bytes_max`; a single larger record gets a segment of its own.
A sparse index (every `INDEX_EVERY_RECORDS` positions and each segment's first
record: position -> segment, offset, previous hash) is rebuilt in memory on
open; `records(from_position)` seeks with it.

Threads: `append`, `sync` and `close` belong to one thread (the replica's tick
thread). `records()`, `last_position` and `chain_head` may be used from any
thread, concurrently with appends: `records()` yields what was archived when
it was called.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, Final, NamedTuple

from node import fail_stop
from node.durable_io import datasync, pwrite_all, rest_is_zero

log = logging.getLogger(__name__)

ARCHIVE_MAGIC: Final = b"RWARCHIVE"
ARCHIVE_FORMAT_VERSION: Final = 1
SEGMENT_SUFFIX: Final = ".rwa"
INDEX_EVERY_RECORDS: Final = 1024
"""The sparse index remembers the location of every record at position 1 + k * this."""
GENESIS_HASH: Final = bytes(32)
"""The previous hash carried by the record at position 1."""
MAX_BLOB_BYTES: Final = 1 << 30
"""Largest entry blob or results blob accepted; a longer length on disk is damage."""
DEFAULT_SEGMENT_BYTES_MAX: Final = 64 * 2**20

_SEGMENT_NAME_RE: Final = re.compile(r"segment-(\d{20})\.rwa")
_HEADER_BODY = struct.Struct("<9sBHIQ")  # magic, reserved, version, partition, first position
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES: Final = _HEADER_BODY.size + _HEADER_CRC.size
_RECORD_PREFIX = struct.Struct("<II")  # payload length, crc32(payload)
_RECORD_FIXED = struct.Struct("<32sQQQqI")  # prev hash, position, log index, term, stamp, len
_MIN_PAYLOAD_BYTES: Final = _RECORD_FIXED.size
_MAX_PAYLOAD_BYTES: Final = _RECORD_FIXED.size + 2 * MAX_BLOB_BYTES
_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_READ_BUFFER_BYTES: Final = 1 << 20


class ArchiveCorrupt(Exception):
    """An archive file failed its checks; the node refuses to start on it.

    Starting anyway would serve a wrong or shortened history and replay it to
    wrong balances.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"archive file {path} is corrupt at byte offset {offset}: {reason}. "
            "Refusing to start this node: its history would be wrong or incomplete. "
            "Restore the file from a backup or copy the archive of another replica of this "
            "partition (replicas write identical records), then start again"
        )
        self.path = path
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.offset, self.reason))


class ArchiveFailed(RuntimeError):
    """An earlier write or fsync failed: what is on disk is unknown, restart the process."""


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """One archived log entry, as applied: where, when, what, and what came of it."""

    position: int
    log_index: int
    term: int
    stamp_ms: int
    entry_blob: bytes
    results_blob: bytes
    prev_hash: bytes
    hash: bytes


def segment_name(first_position: int) -> str:
    """File name of the segment whose first record is at `first_position`."""
    return f"segment-{first_position:020d}{SEGMENT_SUFFIX}"


# -- encoding --------------------------------------------------------------------------


def _encode_header(partition: int, first_position: int) -> bytes:
    body = _HEADER_BODY.pack(ARCHIVE_MAGIC, 0, ARCHIVE_FORMAT_VERSION, partition, first_position)
    return body + _HEADER_CRC.pack(zlib.crc32(body))


def _encode_payload(prev_hash: bytes, position: int, log_index: int, term: int,
                    stamp_ms: int, entry_blob: bytes, results_blob: bytes) -> bytes:
    fixed = _RECORD_FIXED.pack(prev_hash, position, log_index, term, stamp_ms, len(entry_blob))
    return b"".join((fixed, entry_blob, results_blob))


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=32).digest()


def record_hash(record: ArchiveRecord) -> bytes:
    """The hash `record` must carry given its other fields (BLAKE2b-256 of its payload).

    For checking a record received from elsewhere (archive seeding) before it
    is appended: `EventArchive.append` of the same fields after a record whose
    hash is `record.prev_hash` writes exactly this record.
    """
    return _digest(_encode_payload(record.prev_hash, record.position, record.log_index,
                                   record.term, record.stamp_ms, record.entry_blob,
                                   record.results_blob))


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _check_blob(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    data = bytes(value)
    if len(data) > MAX_BLOB_BYTES:
        raise ValueError(f"{name} of {len(data)} bytes exceeds {MAX_BLOB_BYTES} bytes")
    return data


# -- reading and checking ----------------------------------------------------------------


class _TornTail(Exception):
    """Internal: the bytes from `offset` to the end were never completely written."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class _Link(NamedTuple):
    """What the next record must follow: the previous position, log index and hash."""

    position: int
    log_index: int
    head: bytes


_GENESIS_LINK: Final = _Link(0, 0, GENESIS_HASH)


class _Segment:
    """A segment file: its first position and the end offset of its complete records."""

    __slots__ = ("end", "first_position", "path")

    def __init__(self, path: str, first_position: int, end: int) -> None:
        self.path = path
        self.first_position = first_position
        self.end = end


class _IndexPoint(NamedTuple):
    position: int
    segment: int  # ordinal in the segment list
    offset: int
    before: _Link  # the link the record at `position` must follow


def _list_segments(directory: str) -> list[tuple[int, str]]:
    """(first position, path) of every segment file in `directory`, in position order."""
    found = []
    for name in os.listdir(directory):
        match = _SEGMENT_NAME_RE.fullmatch(name)
        if match is not None:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    found.sort()
    return found


def _read_header(path: str, reader: BinaryIO, first_position: int,
                 partition: int | None) -> int:
    """Check a segment header against its name (and `partition`); returns its partition."""
    header = reader.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise ArchiveCorrupt(path, 0, f"shorter than the {HEADER_BYTES}-byte segment header")
    body = header[:_HEADER_BODY.size]
    magic, _reserved, version, found_partition, found_first = _HEADER_BODY.unpack(body)
    (stored_crc,) = _HEADER_CRC.unpack_from(header, _HEADER_BODY.size)
    if magic != ARCHIVE_MAGIC:
        raise ArchiveCorrupt(path, 0, "not a RaftWallet archive segment (bad magic)")
    if zlib.crc32(body) != stored_crc:
        raise ArchiveCorrupt(path, 0, "segment header checksum mismatch")
    if version != ARCHIVE_FORMAT_VERSION:
        raise ArchiveCorrupt(path, 0, f"unsupported archive format version {version}")
    if found_first != first_position:
        raise ArchiveCorrupt(
            path, 0, f"header says first position {found_first}, the file name {first_position}"
        )
    if partition is not None and found_partition != partition:
        raise ArchiveCorrupt(
            path, 0, f"segment of partition {found_partition}, expected partition {partition}"
        )
    return int(found_partition)


def _is_torn_creation(path: str, file_size: int) -> bool:
    """A segment whose creation never completed: shorter than a header, or all zeros."""
    if file_size < HEADER_BYTES:
        return True
    with open(path, "rb") as reader:
        return rest_is_zero(reader)


def _payloads(reader: BinaryIO, path: str, offset: int,
              end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of each complete, checksummed record in [offset, end) of a segment.

    Raises `_TornTail` when the bytes from some offset to `end` are an
    incomplete final record, `ArchiveCorrupt` for damage followed by more data.
    """
    reader.seek(offset)
    while offset < end:
        remaining = end - offset
        if remaining < _RECORD_PREFIX.size:
            raise _TornTail(offset, f"only {remaining} bytes of a record header")
        prefix = reader.read(_RECORD_PREFIX.size)
        payload_bytes, stored_crc = _RECORD_PREFIX.unpack(prefix)
        if not _MIN_PAYLOAD_BYTES <= payload_bytes <= _MAX_PAYLOAD_BYTES:
            if prefix == bytes(len(prefix)) and rest_is_zero(reader):
                raise _TornTail(offset, "zero-filled tail")
            raise ArchiveCorrupt(path, offset, f"impossible record length {payload_bytes}")
        record_end = offset + _RECORD_PREFIX.size + payload_bytes
        if record_end > end:
            raise _TornTail(offset, f"record runs {record_end - end} bytes past the end")
        payload = reader.read(payload_bytes)
        if len(payload) != payload_bytes:
            raise ArchiveCorrupt(path, offset, "file shrank while being read")
        if zlib.crc32(payload) != stored_crc:
            if record_end == end:
                raise _TornTail(offset, "checksum mismatch in the final record")
            raise ArchiveCorrupt(
                path, offset,
                f"record checksum mismatch, with {end - record_end} bytes of records after it",
            )
        yield offset, payload
        offset = record_end


def _follow(path: str, offset: int, payload: bytes, before: _Link) -> _Link:
    """Check that `payload` is a well-formed record following `before`; returns its link."""
    prev_hash, position, log_index, _term, _stamp, entry_bytes = _RECORD_FIXED.unpack_from(
        payload
    )
    if entry_bytes > len(payload) - _RECORD_FIXED.size:
        raise ArchiveCorrupt(path, offset, f"entry length {entry_bytes} runs past its record")
    if position != before.position + 1:
        raise ArchiveCorrupt(
            path, offset,
            f"position gap: position {position} follows {before.position} "
            f"(expected {before.position + 1})",
        )
    if log_index <= before.log_index:
        raise ArchiveCorrupt(
            path, offset, f"log index {log_index} does not follow log index {before.log_index}"
        )
    if prev_hash != before.head:
        raise ArchiveCorrupt(
            path, offset,
            f"broken hash chain: position {position} names previous hash {prev_hash.hex()}, "
            f"the previous record hashes to {before.head.hex()}",
        )
    return _Link(position, log_index, _digest(payload))


def _record_of(payload: bytes, link: _Link) -> ArchiveRecord:
    prev_hash, position, log_index, term, stamp_ms, entry_bytes = _RECORD_FIXED.unpack_from(
        payload
    )
    split = _RECORD_FIXED.size + entry_bytes
    return ArchiveRecord(position, log_index, term, stamp_ms, payload[_RECORD_FIXED.size:split],
                         payload[split:], prev_hash, link.head)


class _Scanned(NamedTuple):
    segment: int  # ordinal in the segment list
    offset: int
    end: int
    payload: bytes
    before: _Link
    link: _Link


class _Scan:
    """Reads and checks a whole archive from genesis, segment by segment.

    After iterating, `segments` lists the segments with the end of their
    complete records, `partition` is the partition found in the headers and
    `torn` tells whether the last segment ended in a torn record
    (path, offset, reason) or was never completely created (offset -1).
    Every other problem raises `ArchiveCorrupt`.
    """

    def __init__(self, directory: str, partition: int | None) -> None:
        self.directory = directory
        self.partition = partition
        self.segments: list[_Segment] = []
        self.link = _GENESIS_LINK
        self.torn: tuple[str, int, str] | None = None

    def __iter__(self) -> Iterator[_Scanned]:
        listed = _list_segments(self.directory)
        for ordinal, (first_position, path) in enumerate(listed):
            is_last = ordinal == len(listed) - 1
            yield from self._segment(first_position, path, is_last)

    def _segment(self, first_position: int, path: str, is_last: bool) -> Iterator[_Scanned]:
        file_size = os.path.getsize(path)
        if is_last and _is_torn_creation(path, file_size):
            self.torn = (path, -1, "segment creation never completed")
            return
        if first_position != self.link.position + 1:
            raise ArchiveCorrupt(
                path, 0,
                f"position gap: segment starts at position {first_position}, the archive "
                f"before it ends at {self.link.position}",
            )
        with open(path, "rb", buffering=_READ_BUFFER_BYTES) as reader:
            self.partition = _read_header(path, reader, first_position, self.partition)
            segment = _Segment(path, first_position, HEADER_BYTES)
            ordinal = len(self.segments)
            self.segments.append(segment)
            try:
                for offset, payload in _payloads(reader, path, HEADER_BYTES, file_size):
                    before = self.link
                    self.link = _follow(path, offset, payload, before)
                    segment.end = offset + _RECORD_PREFIX.size + len(payload)
                    yield _Scanned(ordinal, offset, segment.end, payload, before, self.link)
            except _TornTail as torn:
                if not is_last:
                    raise ArchiveCorrupt(
                        path, torn.offset,
                        f"incomplete record in a segment that is not the last ({torn.reason})",
                    ) from None
                self.torn = (path, torn.offset, torn.reason)
        if segment.end == HEADER_BYTES and not is_last:
            raise ArchiveCorrupt(path, HEADER_BYTES, "a segment that is not the last is empty")


def read_archive(directory: str, partition: int | None = None) -> Iterator[ArchiveRecord]:
    """Every record of the archive in `directory`, checked as it is read. Never writes.

    Verifies checksums, dense positions from 1, increasing log indexes and the
    hash chain from genesis; damage raises `ArchiveCorrupt`. A torn final
    record of the last segment (a live writer's pending append, or a crash) ends
    the iteration with a warning. `partition`, when given, must match the
    segments' headers. Safe to run on a live node's archive.
    """
    scan = _Scan(os.fspath(directory), partition)
    for scanned in scan:
        yield _record_of(scanned.payload, scanned.link)
    if scan.torn is not None:
        path, offset, reason = scan.torn
        log.warning("archive %s: ignoring an incomplete final record at byte offset %d (%s)",
                    path, max(offset, 0), reason)


def verify_archive(directory: str, partition: int | None = None) -> tuple[int, str]:
    """Read and check the whole archive; returns (last position, chain head in hex).

    An empty archive gives (0, 64 zeros). Raises `ArchiveCorrupt` like `read_archive`.
    """
    last_position, head = 0, GENESIS_HASH
    for record in read_archive(directory, partition):
        last_position, head = record.position, record.hash
    return last_position, head.hex()


# -- the writer --------------------------------------------------------------------------


class EventArchive:
    """The append-only, hash-chained archive of one partition replica.

    See the module docstring for the format and the guarantees. Raises
    `ArchiveCorrupt` on open when a file fails its checks.
    """

    def __init__(self, directory: str, partition: int, fsync: bool = True,
                 segment_bytes_max: int = DEFAULT_SEGMENT_BYTES_MAX) -> None:
        _check_int("partition", partition, 0, _U32_MAX)
        _check_int("segment_bytes_max", segment_bytes_max, HEADER_BYTES + 1, _U64_MAX)
        self.directory = os.fspath(directory)
        self.partition = partition
        self.fsync_enabled = fsync
        self.segment_bytes_max = segment_bytes_max
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._index: list[_IndexPoint] = []
        self._index_positions: list[int] = []
        self._link = _GENESIS_LINK
        self._fd: int | None = None
        self._dirty = False
        self._failure: str | None = None
        self._closed = False
        self._make_directory()
        self._recover()

    def __repr__(self) -> str:
        return (f"EventArchive({self.directory!r}, partition={self.partition}, "
                f"last_position={self._link.position})")

    def __enter__(self) -> EventArchive:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- status ----------------------------------------------------------------------

    @property
    def last_position(self) -> int:
        """Position of the last archived record (0 when empty)."""
        return self._link.position

    @property
    def last_log_index(self) -> int:
        """Raft log index of the last archived record (0 when empty)."""
        return self._link.log_index

    @property
    def chain_head(self) -> str:
        """Hex BLAKE2b-256 of the last record (64 zeros when empty): pins all of history."""
        return self._link.head.hex()

    @property
    def dirty(self) -> bool:
        """True while some appends are not yet fsynced (`sync()` clears it)."""
        return self._dirty

    @property
    def segment_paths(self) -> tuple[str, ...]:
        """The segment files, oldest first."""
        with self._lock:
            return tuple(segment.path for segment in self._segments)

    # -- writing -----------------------------------------------------------------------

    def append(self, position: int, log_index: int, term: int, stamp_ms: int,
               entry_blob: bytes, results_blob: bytes) -> bool:
        """Archive the entry applied at `position`; False (nothing written) if archived already.

        Written at once, durable after the next `sync()`. Raises ValueError for
        a gap (`position > last_position + 1`), a log index not above the last
        one, or values out of range, and writes nothing then.
        """
        self._check_writable()
        _check_int("position", position, 1, _U64_MAX)
        if position <= self._link.position:
            return False
        if position != self._link.position + 1:
            raise ValueError(
                f"archive of partition {self.partition}: position {position} leaves a gap "
                f"after the last archived position {self._link.position}"
            )
        _check_int("log_index", log_index, 1, _U64_MAX)
        if log_index <= self._link.log_index:
            raise ValueError(
                f"archive of partition {self.partition}: log index {log_index} of position "
                f"{position} is not above the last archived log index {self._link.log_index}"
            )
        _check_int("term", term, 0, _U64_MAX)
        _check_int("stamp_ms", stamp_ms, _I64_MIN, _I64_MAX)
        payload = _encode_payload(self._link.head, position, log_index, term, stamp_ms,
                                  _check_blob("entry_blob", entry_blob),
                                  _check_blob("results_blob", results_blob))
        record = _RECORD_PREFIX.pack(len(payload), zlib.crc32(payload)) + payload
        segment = self._segment_for(position, len(record))
        self._write_record(segment, record)
        before = self._link
        link = _Link(position, log_index, _digest(payload))
        with self._lock:
            if (position - 1) % INDEX_EVERY_RECORDS == 0 or segment.end == HEADER_BYTES:
                self._add_index_point(position, len(self._segments) - 1, segment.end, before)
            segment.end += len(record)
            self._link = link
        self._dirty = True
        return True

    def sync(self) -> None:
        """Make every append durable with one fsync (none when `fsync=False`). Cheap when clean."""
        if not self._dirty:
            return
        self._check_writable()
        if self._fd is not None and self.fsync_enabled:
            try:
                datasync(self._fd)
            except OSError as exc:
                self._fail("fsync of the archive segment", exc)
                raise
        self._dirty = False

    def close(self) -> None:
        """Sync pending appends (unless failed) and close the segment file. Idempotent."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self.sync()
        finally:
            self._closed = True
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    # -- reading -------------------------------------------------------------------------

    def records(self, from_position: int = 1,
                until_position: int | None = None) -> Iterator[ArchiveRecord]:
        """Records from `from_position` to `until_position` (inclusive; default: the last).

        Seeks with the sparse index (reads at most `INDEX_EVERY_RECORDS - 1`
        records before `from_position`), re-checks checksums and hash links as
        it reads (`ArchiveCorrupt` on damage), and yields only what was archived
        when this method was called.
        """
        with self._lock:
            segments = [_Segment(s.path, s.first_position, s.end) for s in self._segments]
            last_position = self._link.position
            at = bisect.bisect_right(self._index_positions, max(from_position, 1)) - 1
            start = self._index[at] if at >= 0 else None
        until = last_position if until_position is None else min(until_position, last_position)
        return self._read(segments, start, max(from_position, 1), until)

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _read(segments: list[_Segment], start: _IndexPoint | None, from_position: int,
              until: int) -> Iterator[ArchiveRecord]:
        if start is None or from_position > until:
            return
        before, offset = start.before, start.offset
        for segment in segments[start.segment:]:
            with open(segment.path, "rb", buffering=_READ_BUFFER_BYTES) as reader:
                try:
                    for record_offset, payload in _payloads(reader, segment.path, offset,
                                                            segment.end):
                        before = _follow(segment.path, record_offset, payload, before)
                        if before.position >= from_position:
                            yield _record_of(payload, before)
                        if before.position >= until:
                            return
                except _TornTail as torn:
                    raise ArchiveCorrupt(segment.path, torn.offset,
                                         f"archived record unreadable ({torn.reason})") from None
            offset = HEADER_BYTES

    def _add_index_point(self, position: int, segment: int, offset: int, before: _Link) -> None:
        self._index.append(_IndexPoint(position, segment, offset, before))
        self._index_positions.append(position)

    def _make_directory(self) -> None:
        if os.path.isdir(self.directory):
            return
        os.makedirs(self.directory, exist_ok=True)
        self._fsync_directory(os.path.dirname(os.path.abspath(self.directory)),
                              "directory fsync after creating the archive directory")

    def _recover(self) -> None:
        """Read and check every segment, rebuild the index, repair a torn tail."""
        scan = _Scan(self.directory, self.partition)
        for scanned in scan:
            position = scanned.link.position
            if (position - 1) % INDEX_EVERY_RECORDS == 0 or scanned.offset == HEADER_BYTES:
                self._add_index_point(position, scanned.segment, scanned.offset, scanned.before)
        self._segments = scan.segments
        self._link = scan.link
        if scan.torn is not None:
            self._repair(scan, *scan.torn)
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_RDWR)

    def _repair(self, scan: _Scan, path: str, offset: int, reason: str) -> None:
        size = os.path.getsize(path)
        if offset < 0:
            log.warning("archive %s: removing segment %s whose creation never completed "
                        "(%d bytes, no record)", self.directory, path, size)
            os.unlink(path)
            self._fsync_directory(self.directory, "directory fsync after removing a segment")
            return
        log.warning(
            "archive %s: cutting off a torn final record at byte offset %d of %s (%s): %d bytes "
            "that were never synced; the replica re-archives the entry from its journal",
            self.directory, offset, path, reason, size - offset,
        )
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, offset)
            if self.fsync_enabled:
                datasync(fd)
        finally:
            os.close(fd)
        scan.segments[-1].end = offset

    def _segment_for(self, position: int, record_bytes: int) -> _Segment:
        """The segment the next record goes to, rolling to a new one when this one is full."""
        if self._segments:
            current = self._segments[-1]
            has_records = current.end > HEADER_BYTES
            if not has_records or current.end + record_bytes <= self.segment_bytes_max:
                return current
            self._seal_current()
        return self._create_segment(position)

    def _seal_current(self) -> None:
        """Make the full segment durable before any record goes to the next one."""
        fd, self._fd = self._fd, None
        assert fd is not None
        try:
            if self.fsync_enabled:
                datasync(fd)
        except OSError as exc:
            self._fail("fsync of a full archive segment", exc)
            raise
        finally:
            os.close(fd)

    def _create_segment(self, first_position: int) -> _Segment:
        path = os.path.join(self.directory, segment_name(first_position))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            self._fail("creating an archive segment", exc)
            raise
        try:
            pwrite_all(fd, _encode_header(self.partition, first_position), 0)
            if self.fsync_enabled:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self._fail("writing an archive segment header", exc)
            raise
        self._fd = fd
        segment = _Segment(path, first_position, HEADER_BYTES)
        with self._lock:
            self._segments.append(segment)
        self._fsync_directory(self.directory, "directory fsync after creating a segment")
        return segment

    def _write_record(self, segment: _Segment, record: bytes) -> None:
        fd = self._fd
        assert fd is not None
        try:
            pwrite_all(fd, record, segment.end)
        except OSError as exc:
            try:
                os.ftruncate(fd, segment.end)  # leave no partial record behind
            except OSError as truncate_exc:
                self._fail("removing a partially written record", truncate_exc)
                raise
            self._fail("appending a record", exc)
            raise

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise ArchiveFailed(
                f"archive {self.directory} is unusable after an earlier failure "
                f"({self._failure}); restart the process"
            )
        if self._closed:
            raise ValueError(f"archive {self.directory} is closed")

    def _fail(self, what: str, exc: OSError) -> None:
        self._failure = f"{what}: {exc}"
        log.critical("archive %s: %s failed (%s); refusing further writes, the process must "
                     "restart", self.directory, what, exc)
        fail_stop.storage_failed(f"archive {self.directory}: {what}: {exc}")

    def _fsync_directory(self, directory: str, what: str) -> None:
        if not self.fsync_enabled:
            return
        try:
            dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._fail(what, exc)
            raise
