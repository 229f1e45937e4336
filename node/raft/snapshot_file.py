"""The on-disk snapshot of one partition replica: Raft metadata plus the ledger snapshot.

pysyncobj's own dump is gzip(pickle) and a damaged one is silently ignored
(the node then serves EMPTY state). Ours is checksummed, written to a
temporary file and fsynced before the library renames it into place, and a
damaged one stops the node with a message naming the file.

Layout: magic, u32 length + Raft metadata (the last two applied log entries,
the cluster's member addresses, and the event archive's position and chain
head at the snapshot, so a restart can check that the archive still holds the
same history), u64 length + ledger snapshot
(`StateMachine.snapshot()`, itself checksummed), BLAKE2b-256 of everything before.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

MAGIC = b"RWDUMP\x00\x02"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">QQI")
_CHECKSUM_BYTES = 32

LogEntry = tuple[bytes, int, int]
"""A pysyncobj journal entry: (command bytes, log index, term)."""


class SnapshotFileCorrupt(Exception):
    """A snapshot file that fails its checks; the replica must not start from it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"snapshot file {path} is damaged ({reason}); refusing to start this replica "
            "rather than serve empty or wrong balances. Restore the file from a backup, or "
            "replace the node (docs/operations.md)"
        )
        self.path = path


@dataclass(frozen=True, slots=True)
class RaftMeta:
    last_entry: LogEntry
    prev_entry: LogEntry
    members: tuple[str, ...]
    archive_position: int = 0
    archive_chain_head: bytes = bytes(32)


def _encode_entry(entry: LogEntry) -> bytes:
    command, idx, term = entry
    return _ENTRY_HEAD.pack(idx, term, len(command)) + bytes(command)


def encode(meta: RaftMeta, ledger_snapshot: bytes) -> bytes:
    members = b"".join(
        _U32.pack(len(raw)) + raw for raw in (m.encode("utf-8") for m in meta.members)
    )
    if len(meta.archive_chain_head) != 32:
        raise ValueError("archive_chain_head must be 32 bytes")
    meta_bytes = (
        _encode_entry(meta.last_entry) + _encode_entry(meta.prev_entry)
        + _U32.pack(len(meta.members)) + members
        + _U64.pack(meta.archive_position) + meta.archive_chain_head
    )
    body = MAGIC + _U32.pack(len(meta_bytes)) + meta_bytes + _U64.pack(len(ledger_snapshot)) + (
        ledger_snapshot
    )
    return body + hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest()


def decode(path: str, data: bytes) -> tuple[RaftMeta, bytes]:
    if len(data) < len(MAGIC) + _CHECKSUM_BYTES or not data.startswith(MAGIC):
        raise SnapshotFileCorrupt(path, "bad magic or too short")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest() != checksum:
        raise SnapshotFileCorrupt(path, "checksum mismatch")
    try:
        offset = len(MAGIC)
        (meta_len,) = _U32.unpack_from(body, offset)
        offset += 4
        meta_end = offset + meta_len
        entries: list[LogEntry] = []
        for _ in range(2):
            idx, term, size = _ENTRY_HEAD.unpack_from(body, offset)
            offset += _ENTRY_HEAD.size
            entries.append((body[offset : offset + size], idx, term))
            offset += size
        (count,) = _U32.unpack_from(body, offset)
        offset += 4
        members = []
        for _ in range(count):
            (size,) = _U32.unpack_from(body, offset)
            offset += 4
            members.append(body[offset : offset + size].decode("utf-8"))
            offset += size
        (archive_position,) = _U64.unpack_from(body, offset)
        offset += 8
        archive_chain_head = body[offset : offset + 32]
        offset += 32
        if offset != meta_end:
            raise ValueError("metadata length mismatch")
        (ledger_len,) = _U64.unpack_from(body, offset)
        offset += 8
        ledger = body[offset : offset + ledger_len]
        if offset + ledger_len != len(body):
            raise ValueError("ledger snapshot length mismatch")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise SnapshotFileCorrupt(path, f"does not parse: {exc}") from None
    return RaftMeta(entries[0], entries[1], tuple(members), archive_position,
                    archive_chain_head), ledger


def write(path: str, meta: RaftMeta, ledger_snapshot: bytes, fsync: bool = True) -> None:
    """Write `path` completely and (by default) durably; the caller renames it into place."""
    with open(path, "wb") as out:
        out.write(encode(meta, ledger_snapshot))
        out.flush()
        if fsync:
            os.fsync(out.fileno())


def read(path: str) -> tuple[RaftMeta, bytes]:
    with open(path, "rb") as source:
        return decode(path, source.read())


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
