"""A durable, checksummed Raft journal for pysyncobj 0.3.17 (replaces its `FileJournal`).

pysyncobj's own journal is an mmap that is never fsynced, has no checksums, a
uint32 file offset (4 GiB limit), a `.meta` file (term, vote, commit index)
written without fsync, and a log compaction that rewrites the journal in place
(a crash mid-rewrite loses entries). `DurableJournal` keeps the same interface
and the same in-memory view (a list of `(command, idx, term)` tuples) with
these guarantees:

- Appends are plain file writes; `sync()` makes every pending append durable
  with one fsync (group commit), then rewrites the header's sync mark (the
  last log index made durable) and fsyncs it. The node calls it before any
  Raft message leaves, so no entry is acknowledged before it is on disk and
  covered by the mark. The second fsync is the price of telling, on open, a
  torn write from a shortened file (bench/RESULTS.md has its measured cost).
- Every record carries a CRC-32. On open, a torn final record after the sync
  mark (the tail of a write that was never synced, hence never acknowledged)
  is cut off with a warning; damage anywhere else raises `JournalCorrupt`:
  the node refuses to start rather than replay a wrong or shortened log. So
  does a journal whose intact records end before the sync mark
  (`_check_sync_mark`) or before the commit index its meta file records, or
  whose meta file is missing or older than its records (`_check_covers_meta`).
- A failed append, fsync or meta write is reported to `node.fail_stop`, which
  ends the node process (a leader that cannot write must not go on leading).
- Removing entries from the front (`deleteEntriesTo`, log compaction) and
  `clear()` write a complete new file and rename it over the journal, so a
  crash leaves either the old complete journal or the new one, never a mix.
  Removing entries from the back (`deleteEntriesFrom`) truncates and fsyncs.
- Term and vote are durable (file and directory fsynced) before
  `setCurrentTerm` returns: Raft sends the vote right after it. The commit
  index is persisted lazily (at most once a second, like pysyncobj), always
  after the records it covers are synced.
- A failed fsync is not retried (after a failed fsync the kernel may report
  the next one as successful although the data is gone): the journal turns
  fail-stop and every later write or sync raises `JournalFailed`. The process
  must restart, which re-reads and re-checks the files.
- `fsync=False` skips every fsync (for benchmarks only: a power loss then
  loses acknowledged entries and votes); everything else stays the same.

On-disk format (all integers little-endian):

    <path>          header (512 bytes, one sector):
                             b"RWJOURNAL" | u8 0 | u16 format version (2) | u32 crc32(those 12)
                             | sync mark: u64 log index | u32 crc32(those 8 bytes) | zero padding
                             The sync mark is rewritten in place by `sync()`: every
                             record up to that log index was fsynced (0: none).
                             Format 1 (a 16-byte header without the mark) is read,
                             then rewritten in format 2.
                    records: u32 payload length | u32 crc32(payload) | payload
                             payload = u64 log index | u64 term | command bytes
                    Record log indexes are consecutive (each one is the previous + 1).
    <path>.meta     b"RWJOURNAL-META <version> <crc32 of body, 8 hex digits>\\n" + body,
                    body = UTF-8 JSON {"current_term": int, "raft_commit_index": int,
                                       "voted_for_node_id": str | null}
    <path>.compact.tmp, <path>.meta.tmp
                    transient; a leftover one (crash before its rename) is deleted on open.

Not thread-safe: pysyncobj calls the journal from its tick thread only; call
`sync()` from that thread too. Durability calls assume Linux (on macOS `fsync`
does not flush the drive cache).

`install()` makes pysyncobj create this journal; it is pinned to pysyncobj
0.3.17 because it relies on exactly the journal methods that version calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, Final, SupportsIndex, overload

import pysyncobj.journal
import pysyncobj.syncobj
import pysyncobj.version

from node import fail_stop
from node.durable_io import datasync, pwrite_all, rest_is_zero

log = logging.getLogger(__name__)

SUPPORTED_PYSYNCOBJ_VERSION: Final = "0.3.17"
"""The pysyncobj release whose journal usage this module was checked against."""

JOURNAL_MAGIC: Final = b"RWJOURNAL"
JOURNAL_FORMAT_VERSION: Final = 2
LEGACY_JOURNAL_FORMAT_VERSION: Final = 1
"""Format 1 has no sync mark; it is read, then rewritten in format 2 on open."""
META_MAGIC: Final = b"RWJOURNAL-META"
META_FORMAT_VERSION: Final = 1

META_SUFFIX: Final = ".meta"
META_TMP_SUFFIX: Final = ".meta.tmp"
COMPACT_TMP_SUFFIX: Final = ".compact.tmp"

MAX_COMMAND_BYTES: Final = 1 << 30
"""Largest command accepted; a longer length field on disk is treated as damage."""

_HEADER_BODY = struct.Struct("<9sBH")
_HEADER_CRC = struct.Struct("<I")
_IDENTITY_BYTES: Final = _HEADER_BODY.size + _HEADER_CRC.size
LEGACY_HEADER_BYTES: Final = _IDENTITY_BYTES
_SYNC_MARK = struct.Struct("<QI")  # synced-through log index, crc32 of those 8 bytes
_SYNC_MARK_OFFSET_BYTES: Final = _IDENTITY_BYTES
HEADER_BYTES: Final = 512
"""Format 2's header fills one disk sector, so that rewriting the sync mark in place
touches no record byte (sector writes are atomic on the drives databases run on)."""
_RECORD_PREFIX = struct.Struct("<II")  # payload length, crc32(payload)
_RECORD_IDS = struct.Struct("<QQ")  # log index, term
_MIN_PAYLOAD_BYTES: Final = _RECORD_IDS.size
_MAX_PAYLOAD_BYTES: Final = _RECORD_IDS.size + MAX_COMMAND_BYTES
_U64_MAX: Final = (1 << 64) - 1
_WRITE_BATCH_BYTES: Final = 1 << 20

JournalEntry = tuple[bytes, int, int]
"""One Raft log entry as pysyncobj sees it: (command bytes, log index, term)."""



class JournalCorrupt(Exception):
    """A journal or meta file failed its checks; the node must not start from it.

    Starting anyway would replay a wrong or shortened log, or forget a vote,
    which can break Raft's safety for the whole cluster.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"journal file {path} is corrupt at byte offset {offset}: {reason}. "
            "Refusing to start this node: running on would replay a wrong or incomplete "
            "Raft log or forget a vote. Do not wipe the data and restart under the same "
            "node id: replace the node (remove it, then add a node under a NEW id; "
            "docs/operations.md, \"Replacing a node\"), or restore the whole data dir from "
            "a backup taken while the node was stopped, and only if the node has not run "
            "since that backup"
        )
        self.path = path
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.offset, self.reason))


class JournalFailed(RuntimeError):
    """An earlier write or fsync failed, so what is on disk is unknown.

    The journal refuses further writes and syncs instead of retrying (a retried
    fsync can report success for data the kernel already dropped). Restart the
    process: opening the journal again re-reads and re-checks the files.
    """


def _encode_record(command: bytes, idx: int, term: int) -> bytes:
    payload = _RECORD_IDS.pack(idx, term) + command
    return _RECORD_PREFIX.pack(len(payload), zlib.crc32(payload)) + payload


def _encode_header(synced_through_idx: int) -> bytes:
    body = _HEADER_BODY.pack(JOURNAL_MAGIC, 0, JOURNAL_FORMAT_VERSION)
    identity = body + _HEADER_CRC.pack(zlib.crc32(body))
    return (identity + _encode_sync_mark(synced_through_idx)).ljust(HEADER_BYTES, b"\0")


def _encode_sync_mark(synced_through_idx: int) -> bytes:
    index_bytes = synced_through_idx.to_bytes(8, "little")
    return _SYNC_MARK.pack(synced_through_idx, zlib.crc32(index_bytes))


def _encode_meta(current_term: int, voted_for_node_id: str | None, commit_index: int) -> bytes:
    body = json.dumps(
        {
            "current_term": current_term,
            "raft_commit_index": commit_index,
            "voted_for_node_id": voted_for_node_id,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    head = b"%s %d %08x\n" % (META_MAGIC, META_FORMAT_VERSION, zlib.crc32(body))
    return head + body


def _is_plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_meta(path: str, raw: bytes) -> tuple[int, str | None, int]:
    """(current term, voted-for node id, commit index) from a meta file, or JournalCorrupt."""
    newline = raw.find(b"\n")
    head = raw[:newline] if newline >= 0 else raw
    parts = head.split(b" ")
    if newline < 0 or len(parts) != 3 or parts[0] != META_MAGIC:
        raise JournalCorrupt(path, 0, "not a RaftWallet journal meta file (bad header line)")
    if parts[1] != str(META_FORMAT_VERSION).encode():
        raise JournalCorrupt(path, 0, f"unsupported meta format version {parts[1]!r}")
    body_offset = newline + 1
    body = raw[body_offset:]
    try:
        stored_crc = int(parts[2], 16)
    except ValueError:
        raise JournalCorrupt(path, 0, "unreadable checksum in the header line") from None
    if len(parts[2]) != 8 or stored_crc != zlib.crc32(body):
        raise JournalCorrupt(path, body_offset, "meta checksum mismatch")
    try:
        fields = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise JournalCorrupt(path, body_offset, "meta body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise JournalCorrupt(path, body_offset, "meta body is not a JSON object")
    term = fields.get("current_term")
    voted_for = fields.get("voted_for_node_id")
    commit_index = fields.get("raft_commit_index")
    if isinstance(term, bool) or not isinstance(term, int) or term < 0:
        raise JournalCorrupt(path, body_offset, f"bad current_term {term!r}")
    if voted_for is not None and not isinstance(voted_for, str):
        raise JournalCorrupt(path, body_offset, f"bad voted_for_node_id {voted_for!r}")
    if isinstance(commit_index, bool) or not isinstance(commit_index, int) or commit_index < 0:
        raise JournalCorrupt(path, body_offset, f"bad raft_commit_index {commit_index!r}")
    return term, voted_for, commit_index


def _check_u64(name: str, value: int) -> int:
    if not _is_plain_int(value) or not 0 <= value <= _U64_MAX:
        raise ValueError(f"{name} must be an int in [0, 2**64), got {value!r}")
    return value


class _TornTail(Exception):
    """Internal: the file ends in a record that was never completely written."""

    def __init__(self, offset_bytes: int, reason: str) -> None:
        super().__init__(reason)
        self.offset_bytes = offset_bytes
        self.reason = reason


class DurableJournal(pysyncobj.journal.Journal):  # type: ignore[misc]
    """pysyncobj's journal interface over an append-only, checksummed, fsynced file.

    See the module docstring for the format and the guarantees. `path` is the
    journal file; its meta file is `path + ".meta"` in the same directory.
    Raises `JournalCorrupt` when either file fails its checks.
    """

    observe_fsync_s: Callable[[float], object] | None = None
    """Called with the duration of each group commit's fsyncs, records and sync mark
    together (node.metrics sets it)."""

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = os.fspath(path)
        self.meta_path = self.path + META_SUFFIX
        self.fsync_enabled = fsync
        self._directory = os.path.dirname(os.path.abspath(self.path))
        self._entries: list[JournalEntry] = []
        self._record_offsets_bytes: list[int] = []
        self._end_offset_bytes = HEADER_BYTES
        self._synced_through_idx = 0
        """The sync mark as stored: every record up to this log index was fsynced."""
        self._legacy_format = False
        self._dirty = False
        self._failure: str | None = None
        self._fd: int | None = None
        self._remove_leftover_tmp_files()
        self._current_term, self._voted_for_node_id, self._commit_index = self._load_meta()
        self._meta_unsaved = False
        if os.path.exists(self.path):
            self._fd = self._open_existing()
            if self._legacy_format:
                log.info("journal %s: rewriting it in format %d (adds the sync mark)",
                         self.path, JOURNAL_FORMAT_VERSION)
                self._rewrite(self._entries)
        else:
            if os.path.exists(self.meta_path):
                raise JournalCorrupt(
                    self.path, 0,
                    f"the journal file is missing but its meta file {self.meta_path} exists "
                    "(the log was deleted); a node that lost its log must not vote or count "
                    "towards a quorum. Remove the meta file too only if this node is being "
                    "rebuilt as an empty member",
                )
            self._fd, self._record_offsets_bytes, self._end_offset_bytes = (
                self._write_replacement([])
            )
            self._fsync_directory("directory fsync after creating the journal")

    def __repr__(self) -> str:
        return f"DurableJournal({self.path!r}, entries={len(self._entries)})"

    # -- status ------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True while some appended records are not yet fsynced (`sync()` clears it)."""
        return self._dirty

    @property
    def size_bytes(self) -> int:
        """Size of the journal file in bytes (header plus all records)."""
        return self._end_offset_bytes

    # -- the log -------------------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append one entry. Written at once, durable after the next `sync()`.

        Raises ValueError unless `idx` is the last index + 1 (an empty journal
        takes any index): a gap written here would make the journal refuse to
        open later.
        """
        self._check_writable()
        if not isinstance(command, bytes | bytearray | memoryview):
            raise TypeError(f"command must be bytes, got {type(command).__name__}")
        data = bytes(command)
        _check_u64("idx", idx)
        _check_u64("term", term)
        if len(data) > MAX_COMMAND_BYTES:
            raise ValueError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES} bytes")
        if self._entries and idx != self._entries[-1][1] + 1:
            raise ValueError(
                f"log index {idx} does not follow the last journal index {self._entries[-1][1]}"
            )
        fd = self._writable_fd()
        record = _encode_record(data, idx, term)
        offset_bytes = self._end_offset_bytes
        try:
            pwrite_all(fd, record, offset_bytes)
        except OSError as exc:
            try:
                os.ftruncate(fd, offset_bytes)  # leave no partial record behind
            except OSError as truncate_exc:
                self._fail("removing a partially written record", truncate_exc)
                raise
            # A full disk or an I/O error: the entry is not in the log, and the next
            # one would not be either. Fail-stop (a leader must not keep heartbeating).
            self._fail("appending a record", exc)
            raise
        self._entries.append((data, idx, term))
        self._record_offsets_bytes.append(offset_bytes)
        self._end_offset_bytes = offset_bytes + len(record)
        self._dirty = True

    def sync(self) -> None:
        """Make every appended record durable (one fsync for all pending appends).

        Call before anything acknowledges an appended entry. Cheap when not dirty.
        """
        if not self._dirty:
            return
        fd = self._writable_fd()
        started_s = time.perf_counter()
        self._datasync(fd, "fsync of the journal")
        # Only now, with the records durable, may the mark say so; it is made
        # durable too before anything acknowledges them (see `_check_sync_mark`).
        self._store_sync_mark(fd, self._entries[-1][1] if self._entries else 0)
        if self.fsync_enabled and self.observe_fsync_s is not None:
            self.observe_fsync_s(time.perf_counter() - started_s)
        self._dirty = False

    def flush(self) -> None:
        """Same as `sync()`: pysyncobj's name for it."""
        self.sync()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop entries at list positions >= `entryFrom` (a leader overwrote our tail).

        Truncates the file and fsyncs before returning (pending appends included).
        """
        self._check_writable()
        _, kept_count, _ = slice(None, entryFrom).indices(len(self._entries))
        if kept_count >= len(self._entries):
            return
        fd = self._writable_fd()
        cut_offset_bytes = self._record_offsets_bytes[kept_count]
        # Lower the mark before the records go: a crash in between leaves a mark
        # that is below the log's end (harmless), never one past it (refused).
        kept_last_idx = self._entries[kept_count - 1][1] if kept_count else 0
        if self._synced_through_idx > kept_last_idx:
            self._store_sync_mark(fd, kept_last_idx)
        try:
            os.ftruncate(fd, cut_offset_bytes)
        except OSError as exc:
            self._fail("truncating the journal", exc)
            raise
        del self._entries[kept_count:]
        del self._record_offsets_bytes[kept_count:]
        self._end_offset_bytes = cut_offset_bytes
        self._dirty = True
        self.sync()

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop entries at list positions < `entryTo` (log compaction after a snapshot).

        Writes the kept entries to a new file and renames it over the journal:
        a crash at any point leaves either the old or the new complete journal.
        The directory is fsynced before the rename too, so the snapshot that
        made this compaction possible (renamed into the same directory just
        before) is durable before the entries it replaces disappear.
        """
        self._check_writable()
        dropped_count, _, _ = slice(entryTo, None).indices(len(self._entries))
        if dropped_count == 0:
            return
        self._rewrite(self._entries[dropped_count:])

    def clear(self) -> None:
        """Remove every entry, crash-safely (an empty journal is renamed into place)."""
        self._check_writable()
        self._rewrite([])

    @overload
    def __getitem__(self, item: SupportsIndex) -> JournalEntry: ...

    @overload
    def __getitem__(self, item: slice) -> list[JournalEntry]: ...

    def __getitem__(self, item: SupportsIndex | slice) -> JournalEntry | list[JournalEntry]:
        """List indexing and slicing over `(command, idx, term)` tuples."""
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    # -- Raft metadata ---------------------------------------------------------------

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        """Store term and vote durably (file and directory fsynced) before returning.

        Raft sends the vote right after this call; a vote that a restart forgets
        would let this node vote twice in one term.
        """
        self._check_writable()
        _check_u64("term", term)
        if votedForNodeId is not None and not isinstance(votedForNodeId, str):
            raise TypeError(f"votedForNodeId must be str or None, got {votedForNodeId!r}")
        if (
            term == self._current_term
            and votedForNodeId == self._voted_for_node_id
            and not self._meta_unsaved
        ):
            return
        self._store_meta(term, votedForNodeId, self._commit_index)
        self._current_term = term
        self._voted_for_node_id = votedForNodeId
        self._meta_unsaved = False

    def getCurrentTerm(self) -> int:
        return self._current_term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for_node_id

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        """Remember the commit index; persisted lazily by `onOneSecondTimer` and `_destroy`.

        Losing the latest value in a crash is harmless (it is re-learned from
        the leader); it only delays re-applying the log after a restart.
        """
        _check_u64("raftCommitIndex", raftCommitIndex)
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._meta_unsaved = True

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def onOneSecondTimer(self) -> None:
        """Persist a changed commit index (lazily: at most once a second)."""
        if self._fd is None or not self._meta_unsaved:
            return
        self._store_meta(self._current_term, self._voted_for_node_id, self._commit_index)
        self._meta_unsaved = False

    # -- lifecycle -------------------------------------------------------------------

    def _destroy(self) -> None:
        """Sync pending records, persist the commit index, close the file. Idempotent."""
        if self._fd is None:
            return
        try:
            if self._failure is None:
                self.sync()
                if self._meta_unsaved:
                    self._store_meta(
                        self._current_term, self._voted_for_node_id, self._commit_index
                    )
                    self._meta_unsaved = False
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    # -- internals -------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise JournalFailed(
                f"journal {self.path} is unusable after an earlier failure ({self._failure}); "
                "restart the process"
            )
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")

    def _writable_fd(self) -> int:
        self._check_writable()
        assert self._fd is not None
        return self._fd

    def _fail(self, what: str, exc: OSError) -> None:
        """Turn fail-stop: the on-disk state is unknown after `exc`."""
        self._failure = f"{what}: {exc}"
        log.critical(
            "journal %s: %s failed (%s); refusing further writes, the process must restart",
            self.path, what, exc,
        )
        fail_stop.storage_failed(f"journal {self.path}: {what}: {exc}")

    def _datasync(self, fd: int, what: str) -> None:
        if not self.fsync_enabled:
            return
        try:
            datasync(fd)
        except OSError as exc:
            self._fail(what, exc)
            raise

    def _store_sync_mark(self, fd: int, synced_through_idx: int) -> None:
        """Rewrite the header's sync mark in place and make it durable."""
        if synced_through_idx == self._synced_through_idx:
            return
        try:
            pwrite_all(fd, _encode_sync_mark(synced_through_idx), _SYNC_MARK_OFFSET_BYTES)
        except OSError as exc:
            self._fail("writing the sync mark", exc)
            raise
        self._datasync(fd, "fsync of the sync mark")
        self._synced_through_idx = synced_through_idx

    def _fsync(self, fd: int, what: str) -> None:
        if not self.fsync_enabled:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fail(what, exc)
            raise

    def _fsync_directory(self, what: str) -> None:
        """Make renames and new names in the journal's directory durable."""
        if not self.fsync_enabled:
            return
        try:
            dir_fd = os.open(self._directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._fail(what, exc)
            raise

    def _remove_leftover_tmp_files(self) -> None:
        """A tmp file left by a crash before its rename: the real file is intact."""
        compact_tmp = self.path + COMPACT_TMP_SUFFIX
        if os.path.exists(compact_tmp):
            log.warning(
                "journal %s: removing %s left by an interrupted compaction or clear; "
                "the journal itself is intact (the rename never happened)",
                self.path, compact_tmp,
            )
            os.unlink(compact_tmp)
        meta_tmp = self.path + META_TMP_SUFFIX
        if os.path.exists(meta_tmp):
            log.info("journal %s: removing %s left by an interrupted meta write",
                     self.path, meta_tmp)
            os.unlink(meta_tmp)

    def _load_meta(self) -> tuple[int, str | None, int]:
        """(term, vote, commit index); the defaults when the meta file does not exist."""
        try:
            with open(self.meta_path, "rb") as meta_file:
                raw = meta_file.read()
        except FileNotFoundError:
            return 0, None, 1
        return _decode_meta(self.meta_path, raw)

    def _store_meta(self, term: int, voted_for: str | None, commit_index: int) -> None:
        """Replace the meta file atomically: tmp file, fsync, rename, fsync directory.

        Syncs the log first, so a stored commit index never covers records that
        are not on disk.
        """
        self.sync()
        self._check_writable()
        tmp_path = self.path + META_TMP_SUFFIX
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pwrite_all(fd, _encode_meta(term, voted_for, commit_index), 0)
                if self.fsync_enabled:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_path, self.meta_path)
        except OSError as exc:
            # pysyncobj has already moved on to the new term/vote in memory; the
            # node must not run with a state it could not persist.
            self._fail("writing the meta file", exc)
            raise
        self._fsync_directory("directory fsync after writing the meta file")

    def _open_existing(self) -> int:
        fd = os.open(self.path, os.O_RDWR)
        try:
            file_size_bytes = os.fstat(fd).st_size
            with open(fd, "rb", closefd=False) as reader:
                try:
                    self._read_records(reader, file_size_bytes)
                    torn = None
                except _TornTail as tail:
                    torn = tail
            self._check_covers_meta()  # before cutting anything off
            self._check_sync_mark(torn)
            if torn is not None:
                self._truncate_torn_tail(fd, file_size_bytes, torn)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_sync_mark(self, torn: _TornTail | None) -> None:
        """The intact records must reach the header's sync mark.

        `sync()` fsyncs appended records, then rewrites the mark (the last log
        index it made durable) and fsyncs it, and returns only then: nothing
        acknowledges a record (a follower's reply, the leader's own vote for
        its commit) before the mark covers it. So every record after the mark
        was never acknowledged, and every record up to the mark was durable:
        a journal whose intact records end before the mark was shortened or
        damaged, whether its end looks like a torn write or not.
        """
        last_intact_idx = self._entries[-1][1] if self._entries else 0
        if self._synced_through_idx <= last_intact_idx:
            return
        where = "a damaged final record" if torn is not None else "the end of the file"
        self._refuse_open(
            torn.offset_bytes if torn is not None else self._end_offset_bytes,
            f"the intact records end at log index {last_intact_idx} ({where}) but the "
            f"header's sync mark says records through log index {self._synced_through_idx} "
            "were synced (and may have been acknowledged): durable records are missing or "
            "damaged; the file was shortened or changed after it was written",
        )

    def _check_covers_meta(self) -> None:
        """The log must hold every entry the meta file says this node has seen.

        The meta file's commit index is stored only after the records it covers
        were fsynced (`_store_meta` syncs first), and term and vote are stored
        before any vote or acknowledgement leaves. So a journal that ends before
        the stored commit index, or that holds entries of a later term than any
        stored term, or entries of any term without a meta file, lost records
        that were durable: a shortened or replaced file, never a torn write.
        Such a replica must not vote (it could elect a leader without
        acknowledged entries), so it refuses to start.
        """
        if not self._entries:
            return
        last_idx, last_term = self._entries[-1][1], self._entries[-1][2]
        if not os.path.exists(self.meta_path):
            if last_term > 0:
                self._refuse_open(
                    0, f"the meta file {self.meta_path} is missing (the journal holds entries "
                    f"of term {last_term}, so it existed): this node's vote and commit index "
                    "are lost")
            return
        if last_term > self._current_term:
            self._refuse_open(
                0, f"the journal holds entries of term {last_term} but its meta file records "
                f"term {self._current_term}: the meta file is older than the log (replaced)")
        if self._commit_index > last_idx:
            self._refuse_open(
                self._end_offset_bytes,
                f"the journal ends at log index {last_idx} but its meta file records commit "
                f"index {self._commit_index}: records that were durable (and acknowledged) "
                "are missing; the file was shortened")

    def _refuse_open(self, offset_bytes: int, reason: str) -> None:
        raise JournalCorrupt(self.path, offset_bytes, reason)

    def _truncate_torn_tail(self, fd: int, file_size_bytes: int, torn: _TornTail) -> None:
        """Cut off a final record that fails its checks, if it can only be unacknowledged.

        Why a torn final record can be cut: records are appended with one write
        each and acknowledged (a follower's reply, the leader's own commit) only
        after the fsync that covers them and the fsync of the sync mark that
        says so. A crash mid-write or before those fsyncs leaves at most the
        records after the last stored sync mark damaged or missing, and only at
        the end of the file. Those were never acknowledged. What makes it safe
        to believe that here: the intact records before the cut must reach the
        sync mark (`_check_sync_mark`) and the commit index stored in the meta
        file (`_check_covers_meta`), both checked first, and the replica checks
        the event archive's last log index against the journal
        (node/raft/replica_guard.py). A cut that would remove a record any of them
        knows about refuses to start instead. A journal of format 1 (no sync
        mark) is checked against the meta file and the archive only, then
        rewritten in format 2.
        """
        log.warning(
            "journal %s: cutting off a torn final record at byte offset %d (%s): "
            "%d bytes that were never synced, hence never acknowledged",
            self.path, torn.offset_bytes, torn.reason, file_size_bytes - torn.offset_bytes,
        )
        os.ftruncate(fd, torn.offset_bytes)
        if self.fsync_enabled:
            datasync(fd)
        self._end_offset_bytes = torn.offset_bytes

    def _read_records(self, reader: BinaryIO, file_size_bytes: int) -> None:
        """Load every record into memory; raises `_TornTail` or `JournalCorrupt`.

        Entries read before a torn tail stay loaded.
        """
        offset_bytes = self._check_header(reader.read(HEADER_BYTES))
        reader.seek(offset_bytes)
        self._end_offset_bytes = offset_bytes
        previous_idx: int | None = None
        while offset_bytes < file_size_bytes:
            remaining_bytes = file_size_bytes - offset_bytes
            if remaining_bytes < _RECORD_PREFIX.size:
                raise _TornTail(offset_bytes, f"only {remaining_bytes} bytes of a record header")
            prefix = reader.read(_RECORD_PREFIX.size)
            payload_bytes, stored_crc = _RECORD_PREFIX.unpack(prefix)
            if not _MIN_PAYLOAD_BYTES <= payload_bytes <= _MAX_PAYLOAD_BYTES:
                if prefix == bytes(len(prefix)) and rest_is_zero(reader):
                    # The file size reached the disk but its last blocks did not:
                    # some filesystems show such never-synced blocks as zeros.
                    raise _TornTail(offset_bytes, "zero-filled tail")
                raise JournalCorrupt(
                    self.path, offset_bytes, f"impossible record length {payload_bytes}"
                )
            end_offset_bytes = offset_bytes + _RECORD_PREFIX.size + payload_bytes
            if end_offset_bytes > file_size_bytes:
                raise _TornTail(
                    offset_bytes,
                    f"record length runs {end_offset_bytes - file_size_bytes} bytes past the "
                    "end of the file",
                )
            payload = reader.read(payload_bytes)
            if len(payload) != payload_bytes:
                raise JournalCorrupt(self.path, offset_bytes, "file shrank while being read")
            if zlib.crc32(payload) != stored_crc:
                if end_offset_bytes == file_size_bytes:
                    raise _TornTail(offset_bytes, "checksum mismatch in the final record")
                raise JournalCorrupt(
                    self.path, offset_bytes,
                    f"record checksum mismatch, with {file_size_bytes - end_offset_bytes} "
                    "bytes of records after it",
                )
            idx, term = _RECORD_IDS.unpack_from(payload)
            if previous_idx is not None and idx != previous_idx + 1:
                raise JournalCorrupt(
                    self.path, offset_bytes,
                    f"log index {idx} follows {previous_idx} (expected {previous_idx + 1})",
                )
            self._entries.append((payload[_RECORD_IDS.size:], idx, term))
            self._record_offsets_bytes.append(offset_bytes)
            self._end_offset_bytes = end_offset_bytes
            previous_idx = idx
            offset_bytes = end_offset_bytes

    def _check_header(self, header: bytes) -> int:
        """Check the header, load the sync mark; returns the offset of the first record."""
        if header.startswith(b"PYSYNCOBJ"):
            raise JournalCorrupt(
                self.path, 0,
                "this is pysyncobj's own FileJournal format, which DurableJournal does not read",
            )
        if len(header) < _IDENTITY_BYTES:
            raise JournalCorrupt(self.path, 0, f"shorter than the {_IDENTITY_BYTES}-byte header")
        body = header[:_HEADER_BODY.size]
        (stored_crc,) = _HEADER_CRC.unpack_from(header, _HEADER_BODY.size)
        magic, _reserved, version = _HEADER_BODY.unpack(body)
        if magic != JOURNAL_MAGIC:
            raise JournalCorrupt(self.path, 0, "not a RaftWallet journal (bad magic)")
        if zlib.crc32(body) != stored_crc:
            raise JournalCorrupt(self.path, 0, "header checksum mismatch")
        if version == LEGACY_JOURNAL_FORMAT_VERSION:
            self._legacy_format = True
            return LEGACY_HEADER_BYTES
        if version != JOURNAL_FORMAT_VERSION:
            raise JournalCorrupt(self.path, 0, f"unsupported journal format version {version}")
        if len(header) < HEADER_BYTES:
            raise JournalCorrupt(self.path, 0, f"shorter than the {HEADER_BYTES}-byte header")
        synced_through_idx, mark_crc = _SYNC_MARK.unpack_from(header, _SYNC_MARK_OFFSET_BYTES)
        if zlib.crc32(synced_through_idx.to_bytes(8, "little")) != mark_crc:
            raise JournalCorrupt(self.path, _SYNC_MARK_OFFSET_BYTES, "sync mark checksum mismatch")
        self._synced_through_idx = synced_through_idx
        return HEADER_BYTES

    def _rewrite(self, kept: list[JournalEntry]) -> None:
        """Replace the journal with one holding exactly `kept` (see `deleteEntriesTo`)."""
        fd, offsets_bytes, end_offset_bytes = self._write_replacement(kept)
        old_fd, self._fd = self._fd, fd
        self._entries = list(kept)
        self._record_offsets_bytes = offsets_bytes
        self._end_offset_bytes = end_offset_bytes
        self._synced_through_idx = kept[-1][1] if kept else 0
        self._legacy_format = False
        self._dirty = False
        if old_fd is not None:
            os.close(old_fd)
        self._fsync_directory("directory fsync after replacing the journal")

    def _write_replacement(self, entries: list[JournalEntry]) -> tuple[int, list[int], int]:
        """Write a complete journal to the tmp file and rename it over `path`.

        Returns (open fd of the new journal, record offsets, end offset). On any
        failure before the rename, the tmp file is removed and `path` is untouched.
        """
        tmp_path = self.path + COMPACT_TMP_SUFFIX
        fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            batch = [_encode_header(entries[-1][1] if entries else 0)]
            batch_bytes = HEADER_BYTES
            written_bytes = 0
            offsets_bytes: list[int] = []
            for command, idx, term in entries:
                record = _encode_record(command, idx, term)
                offsets_bytes.append(written_bytes + batch_bytes)
                batch.append(record)
                batch_bytes += len(record)
                if batch_bytes >= _WRITE_BATCH_BYTES:
                    pwrite_all(fd, b"".join(batch), written_bytes)
                    written_bytes += batch_bytes
                    batch, batch_bytes = [], 0
            pwrite_all(fd, b"".join(batch), written_bytes)
            end_offset_bytes = written_bytes + batch_bytes
            self._fsync(fd, "fsync of the new journal file")
            # Before the rename: makes durable the snapshot renamed into this
            # directory just before a compaction, and the tmp file's own name.
            self._fsync_directory("directory fsync before replacing the journal")
            os.replace(tmp_path, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return fd, offsets_bytes, end_offset_bytes


def pysyncobj_version_supported() -> bool:
    """True when the installed pysyncobj is the release this module was checked against."""
    return str(pysyncobj.version.VERSION) == SUPPORTED_PYSYNCOBJ_VERSION


def install(fsync: bool = True) -> None:
    """Make pysyncobj's SyncObj create a `DurableJournal` for `journalFile`.

    Patches `pysyncobj.syncobj.createJournal` (SyncObj looks it up there):
    a path gives `DurableJournal(path, fsync)`, None gives pysyncobj's
    `MemoryJournal()`. Call before creating any SyncObj. Raises RuntimeError
    for any pysyncobj other than 0.3.17, whose journal calls were checked.
    """
    if not pysyncobj_version_supported():
        raise RuntimeError(
            f"node.raft.journal.install() supports pysyncobj {SUPPORTED_PYSYNCOBJ_VERSION} only, "
            f"found {pysyncobj.version.VERSION}: the patch relies on exactly the journal "
            "methods that version calls. Re-read pysyncobj/syncobj.py's use of the journal, "
            "then update SUPPORTED_PYSYNCOBJ_VERSION and tests/test_journal.py"
        )

    def create_journal(journalFile: str | None = None) -> Any:
        if journalFile is None:
            return pysyncobj.journal.MemoryJournal()
        return DurableJournal(journalFile, fsync)

    pysyncobj.syncobj.createJournal = create_journal
