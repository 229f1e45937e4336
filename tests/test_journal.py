"""Behaviour of the durable Raft journal (node.raft.journal), one rule per test."""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pysyncobj.journal
import pysyncobj.syncobj
import pysyncobj.version
import pytest
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated

from node import durable_io, fail_stop
from node.raft import journal as journal_module
from node.raft.journal import (
    COMPACT_TMP_SUFFIX,
    HEADER_BYTES,
    DurableJournal,
    JournalCorrupt,
    JournalFailed,
    install,
    pysyncobj_version_supported,
)

OpenJournal = Callable[..., DurableJournal]

ENTRIES = [(b"noop", 1, 1), (b"deposit", 2, 1), (b"withdraw", 3, 2), (b"transfer", 4, 2)]


@pytest.fixture
def journal_path(tmp_path: Path) -> str:
    return str(tmp_path / "journal")


@pytest.fixture
def open_journal(journal_path: str) -> Iterator[OpenJournal]:
    """Opens journals (on `journal_path` unless told otherwise) and closes them all at the end."""
    opened: list[DurableJournal] = []

    def _open(path: str | None = None, fsync: bool = True) -> DurableJournal:
        journal = DurableJournal(path or journal_path, fsync)
        opened.append(journal)
        return journal

    yield _open
    for journal in opened:
        journal._destroy()


def _filled(open_journal: OpenJournal, entries: list[tuple[bytes, int, int]] = ENTRIES,
            ) -> DurableJournal:
    journal = open_journal()
    # As pysyncobj does: the term is stored (with the vote) before entries of that term.
    journal.setCurrentTerm(max((term for _, _, term in entries), default=0), None)
    for entry in entries:
        journal.add(*entry)
    journal._destroy()
    return journal


def _at_term(open_journal: OpenJournal, term: int) -> DurableJournal:
    """A journal whose stored term is `term`: pysyncobj stores it before entries of that term."""
    journal = open_journal()
    journal.setCurrentTerm(term, None)
    return journal


def _record(command: bytes, idx: int, term: int) -> bytes:
    """A record in the documented format, built independently of the module under test."""
    payload = struct.pack("<QQ", idx, term) + command
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _record_offset(position: int, entries: list[tuple[bytes, int, int]] = ENTRIES) -> int:
    return HEADER_BYTES + sum(len(_record(*entry)) for entry in entries[:position])


def _crashed_before_sync(open_journal: OpenJournal, synced: int = 3) -> DurableJournal:
    """ENTRIES on disk; the first `synced` were synced, the rest written when the process died.

    The process dies before `sync()`: the written records are in the file (as a
    power loss can leave them) but the header's sync mark does not cover them.
    """
    _filled(open_journal, ENTRIES[:synced])
    journal = open_journal()
    for entry in ENTRIES[synced:]:
        journal.add(*entry)
    _die(journal)
    return journal


def _die(journal: DurableJournal) -> None:
    """The process ends here: the file is closed with nothing more written or synced."""
    assert journal._fd is not None
    os.close(journal._fd)
    journal._fd = None


def _sync_mark(path: str) -> int:
    """The header's sync mark, read as documented (u64 at byte 16, then its CRC-32)."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    index, crc = struct.unpack_from("<QI", header, 16)
    assert zlib.crc32(struct.pack("<Q", index)) == crc
    return int(index)


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


# -- the log ----------------------------------------------------------------------


def test_added_entries_survive_reopen(open_journal: OpenJournal) -> None:
    _filled(open_journal)
    reopened = open_journal()
    assert reopened[:] == ENTRIES
    assert reopened.size_bytes == os.path.getsize(reopened.path)


def test_journal_indexes_and_slices_like_a_list(open_journal: OpenJournal) -> None:
    journal = open_journal()
    for entry in ENTRIES:
        journal.add(*entry)
    assert len(journal) == 4
    assert journal[0] == ENTRIES[0]
    assert journal[-1] == ENTRIES[-1]
    assert journal[1:3] == ENTRIES[1:3]
    assert journal[2:] == ENTRIES[2:]
    assert journal[2:100] == ENTRIES[2:]
    assert journal[5:] == []
    with pytest.raises(IndexError):
        journal[4]


def test_new_journal_starts_empty_with_default_metadata(open_journal: OpenJournal) -> None:
    journal = open_journal()
    assert len(journal) == 0
    assert journal.getCurrentTerm() == 0
    assert journal.getVotedForNodeId() is None
    assert journal.getRaftCommitIndex() == 1


def test_add_rejects_an_index_that_does_not_follow_the_last(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.add(b"a", 7, 1)
    with pytest.raises(ValueError, match="does not follow"):
        journal.add(b"b", 9, 1)
    assert journal[:] == [(b"a", 7, 1)]


def test_delete_entries_from_drops_the_tail_durably(open_journal: OpenJournal) -> None:
    journal = _at_term(open_journal, 3)
    for entry in ENTRIES:
        journal.add(*entry)
    journal.deleteEntriesFrom(2)
    assert not journal.dirty
    journal.add(b"new leader's entry", 3, 3)
    journal._destroy()
    assert open_journal()[:] == [*ENTRIES[:2], (b"new leader's entry", 3, 3)]


def test_delete_entries_to_keeps_later_entries_across_reopen(open_journal: OpenJournal) -> None:
    journal = _at_term(open_journal, 3)
    for entry in ENTRIES:
        journal.add(*entry)
    journal.deleteEntriesTo(2)
    assert journal[:] == ENTRIES[2:]
    journal.add(b"after compaction", 5, 2)
    journal._destroy()
    assert open_journal()[:] == [*ENTRIES[2:], (b"after compaction", 5, 2)]


def test_compaction_fsyncs_the_directory_before_the_rename(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    for entry in ENTRIES:
        journal.add(*entry)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    journal.deleteEntriesTo(2)
    assert events == ["fsync file", "fsync dir", "rename", "fsync dir"]


def test_clear_empties_the_journal_across_reopen(open_journal: OpenJournal) -> None:
    journal = _at_term(open_journal, 3)
    for entry in ENTRIES:
        journal.add(*entry)
    journal.clear()
    journal.add(b"snapshot prev", 10, 3)
    journal._destroy()
    assert open_journal()[:] == [(b"snapshot prev", 10, 3)]


def test_failed_rename_during_compaction_leaves_the_old_journal_intact(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = _at_term(open_journal, 3)
    for entry in ENTRIES:
        journal.add(*entry)

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        journal.deleteEntriesTo(2)
    monkeypatch.undo()
    assert journal[:] == ENTRIES
    assert not os.path.exists(journal.path + COMPACT_TMP_SUFFIX)
    journal._destroy()
    assert open_journal()[:] == ENTRIES


def test_leftover_compaction_tmp_file_is_ignored_and_removed(
    open_journal: OpenJournal, caplog: pytest.LogCaptureFixture
) -> None:
    journal = _filled(open_journal)
    tmp_path = journal.path + COMPACT_TMP_SUFFIX
    with open(tmp_path, "wb") as f:
        f.write(b"RWJOURNAL half-written compaction")
    with caplog.at_level(logging.WARNING, logger="node.raft.journal"):
        reopened = open_journal()
    assert reopened[:] == ENTRIES
    assert not os.path.exists(tmp_path)
    assert "interrupted compaction" in caplog.text


# -- damage on disk ---------------------------------------------------------------


def test_half_written_final_record_is_cut_off_on_open(
    open_journal: OpenJournal, caplog: pytest.LogCaptureFixture
) -> None:
    journal = _filled(open_journal)
    intact_size = os.path.getsize(journal.path)
    with open(journal.path, "ab") as f:
        f.write(_record(b"never synced", 5, 2)[:15])
    with caplog.at_level(logging.WARNING, logger="node.raft.journal"):
        reopened = open_journal()
    assert reopened[:] == ENTRIES
    assert os.path.getsize(reopened.path) == intact_size
    assert "torn final record" in caplog.text
    reopened.add(b"next", 5, 2)
    assert reopened[-1] == (b"next", 5, 2)


def test_a_flipped_byte_in_a_final_record_that_was_never_synced_cuts_it_off_on_open(
    open_journal: OpenJournal,
) -> None:
    journal = _crashed_before_sync(open_journal, synced=3)
    _flip_byte(journal.path, os.path.getsize(journal.path) - 1)
    reopened = open_journal()
    assert reopened[:] == ENTRIES[:-1]
    assert os.path.getsize(reopened.path) == _record_offset(3)


def test_a_flipped_byte_in_a_synced_final_record_refuses_to_open(
    open_journal: OpenJournal,
) -> None:
    journal = _filled(open_journal)
    _flip_byte(journal.path, os.path.getsize(journal.path) - 1)
    with pytest.raises(JournalCorrupt, match="sync mark says records through log index 4"):
        open_journal()


def test_sync_makes_the_records_durable_then_the_sync_mark_that_covers_them(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    for entry in ENTRIES:
        journal.add(*entry)
    calls: list[tuple[str, int]] = []
    real_datasync = durable_io.datasync

    def recording_datasync(fd: int) -> None:
        calls.append(("fsync", _sync_mark(journal.path)))
        real_datasync(fd)

    monkeypatch.setattr(journal_module, "datasync", recording_datasync)
    journal.sync()
    # First fsync: the records, with the old mark; second: the new mark.
    assert calls == [("fsync", 0), ("fsync", 4)]
    assert _sync_mark(journal.path) == 4


def test_a_crash_between_the_records_fsync_and_the_marks_leaves_the_tail_cuttable(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    _filled(open_journal, ENTRIES[:3])
    journal = open_journal()
    journal.add(*ENTRIES[3])

    def die_before_the_mark(fd: int, synced_through_idx: int) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(journal, "_store_sync_mark", die_before_the_mark)
    with pytest.raises(OSError, match="simulated crash"):
        journal.sync()  # record 4 is durable, but nothing was told so: never acknowledged
    _die(journal)
    os.truncate(journal.path, _record_offset(3) + 5)
    assert open_journal()[:] == ENTRIES[:3]


def test_a_journal_cut_on_a_record_boundary_after_the_commit_index_but_before_the_sync_mark_refuses(
    open_journal: OpenJournal,
) -> None:
    journal = _committed(open_journal, commit_index=2)
    os.truncate(journal.path, _record_offset(3))
    with pytest.raises(JournalCorrupt, match=r"intact records end at log index 3 \(the end of "
                                             r"the file\) but the header's sync mark says "
                                             "records through log index 4"):
        open_journal()


def test_dropping_the_tail_lowers_the_sync_mark_first(open_journal: OpenJournal) -> None:
    journal = _filled(open_journal)
    journal = open_journal()
    journal.deleteEntriesFrom(2)
    assert _sync_mark(journal.path) == 2
    journal.add(b"new leader's entry", 3, 3)
    _die(journal)  # never synced
    os.truncate(journal.path, os.path.getsize(journal.path) - 3)
    assert open_journal()[:] == ENTRIES[:2]


def test_compaction_writes_a_sync_mark_for_the_kept_entries(open_journal: OpenJournal) -> None:
    journal = _filled(open_journal)
    journal = open_journal()
    journal.deleteEntriesTo(2)
    assert _sync_mark(journal.path) == 4
    journal.clear()
    assert _sync_mark(journal.path) == 0


def test_a_damaged_sync_mark_refuses_to_open(open_journal: OpenJournal) -> None:
    journal = _filled(open_journal)
    _flip_byte(journal.path, 17)
    with pytest.raises(JournalCorrupt, match="sync mark checksum mismatch"):
        open_journal()


def test_a_format_1_journal_is_read_and_rewritten_with_a_sync_mark(
    open_journal: OpenJournal, journal_path: str
) -> None:
    _at_term(open_journal, 2)._destroy()
    body = struct.pack("<9sBH", b"RWJOURNAL", 0, 1)
    with open(journal_path, "wb") as f:
        f.write(body + struct.pack("<I", zlib.crc32(body)))
        for entry in ENTRIES:
            f.write(_record(*entry))
        f.write(_record(b"torn", 5, 2)[:7])  # format 1 knows no mark: a torn tail is cut
    journal = open_journal()
    assert journal[:] == ENTRIES
    assert _sync_mark(journal_path) == 4
    assert os.path.getsize(journal_path) == _record_offset(4)
    journal._destroy()
    assert open_journal()[:] == ENTRIES


def test_zero_filled_tail_is_cut_off_on_open(open_journal: OpenJournal) -> None:
    journal = _filled(open_journal)
    with open(journal.path, "ab") as f:
        f.write(bytes(4096))
    assert open_journal()[:] == ENTRIES


def _committed(open_journal: OpenJournal, commit_index: int) -> DurableJournal:
    """ENTRIES on disk, with `commit_index` stored in the meta file."""
    journal = _at_term(open_journal, 2)
    for entry in ENTRIES:
        journal.add(*entry)
    journal.setRaftCommitIndex(commit_index)
    journal.onOneSecondTimer()
    journal._destroy()
    return journal


def test_a_journal_cut_on_a_record_boundary_before_the_commit_index_refuses_to_open(
    open_journal: OpenJournal,
) -> None:
    journal = _committed(open_journal, commit_index=4)
    os.truncate(journal.path, _record_offset(2))
    with pytest.raises(JournalCorrupt, match="ends at log index 2 but its meta file records "
                                             "commit index 4"):
        open_journal()


def test_a_journal_cut_mid_record_before_the_commit_index_refuses_and_keeps_the_file(
    open_journal: OpenJournal,
) -> None:
    journal = _committed(open_journal, commit_index=4)
    cut_size = _record_offset(3) + 5
    os.truncate(journal.path, cut_size)
    with pytest.raises(JournalCorrupt, match="shortened"):
        open_journal()
    assert os.path.getsize(journal.path) == cut_size  # nothing cut off: kept for analysis


def test_a_torn_record_after_the_commit_index_that_was_never_synced_is_cut_off(
    open_journal: OpenJournal,
) -> None:
    journal = _crashed_before_sync(open_journal, synced=3)
    os.truncate(journal.path, _record_offset(3) + 5)
    assert open_journal()[:] == ENTRIES[:3]


def test_a_missing_meta_file_next_to_entries_of_a_later_term_refuses_to_open(
    open_journal: OpenJournal,
) -> None:
    journal = _committed(open_journal, commit_index=2)
    os.unlink(journal.meta_path)
    with pytest.raises(JournalCorrupt, match=r"meta file .* is missing"):
        open_journal()


def test_a_meta_file_older_than_the_log_refuses_to_open(open_journal: OpenJournal) -> None:
    journal = _at_term(open_journal, 1)
    journal._destroy()
    old_meta = Path(journal.meta_path).read_bytes()
    _committed(open_journal, commit_index=2)
    Path(journal.meta_path).write_bytes(old_meta)
    with pytest.raises(JournalCorrupt, match="entries of term 2 but its meta file records term 1"):
        open_journal()


def test_flipped_byte_in_a_middle_record_refuses_to_open_naming_the_offset(
    open_journal: OpenJournal,
) -> None:
    journal = _filled(open_journal)
    bad_offset = _record_offset(1)
    _flip_byte(journal.path, bad_offset + 8 + 16)  # first command byte of record 2
    with pytest.raises(JournalCorrupt) as caught:
        open_journal()
    assert caught.value.offset == bad_offset
    message = str(caught.value)
    assert journal.path in message
    assert f"byte offset {bad_offset}" in message
    assert "Refusing to start" in message


def test_impossible_length_in_a_middle_record_refuses_to_open(open_journal: OpenJournal) -> None:
    journal = _filled(open_journal)
    bad_offset = _record_offset(1)
    with open(journal.path, "r+b") as f:
        f.seek(bad_offset)
        f.write(struct.pack("<I", 3))
    with pytest.raises(JournalCorrupt, match="impossible record length") as caught:
        open_journal()
    assert caught.value.offset == bad_offset


def test_gap_in_log_indexes_refuses_to_open(open_journal: OpenJournal) -> None:
    journal = _filled(open_journal)
    with open(journal.path, "ab") as f:
        f.write(_record(b"skipped one", 6, 2))
    with pytest.raises(JournalCorrupt, match="log index 6 follows 4") as caught:
        open_journal()
    assert caught.value.offset == _record_offset(4)


def test_pysyncobj_file_journal_is_refused(open_journal: OpenJournal, journal_path: str) -> None:
    foreign = pysyncobj.journal.FileJournal(journal_path)
    foreign.add(b"x", 1, 1)
    foreign._destroy()
    with pytest.raises(JournalCorrupt, match="pysyncobj's own FileJournal"):
        open_journal()


def test_missing_journal_next_to_a_meta_file_refuses_to_open(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.setCurrentTerm(3, "127.0.0.1:4321")
    journal._destroy()
    os.unlink(journal.path)
    with pytest.raises(JournalCorrupt, match="journal file is missing"):
        open_journal()


# -- Raft metadata ----------------------------------------------------------------


def test_term_and_vote_survive_reopen(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.setCurrentTerm(5, "127.0.0.1:4321")
    journal._destroy()
    reopened = open_journal()
    assert reopened.getCurrentTerm() == 5
    assert reopened.getVotedForNodeId() == "127.0.0.1:4321"


def test_set_current_term_fsyncs_file_and_directory_before_returning(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    journal.setCurrentTerm(2, None)
    assert synced == ["file", "dir"]


def test_commit_index_is_persisted_lazily_by_the_one_second_timer(
    open_journal: OpenJournal,
) -> None:
    journal = _at_term(open_journal, 1)
    journal.add(b"a", 1, 1)
    journal.setRaftCommitIndex(1)
    journal.add(b"b", 2, 1)
    journal.setRaftCommitIndex(2)
    assert open_journal().getRaftCommitIndex() == 1  # not written yet
    journal.onOneSecondTimer()
    assert not journal.dirty  # the records it covers were synced first
    assert open_journal().getRaftCommitIndex() == 2


def test_corrupt_meta_file_refuses_to_open(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.setCurrentTerm(5, "127.0.0.1:4321")
    journal._destroy()
    with open(journal.meta_path, "r+b") as f:
        raw = f.read()
        f.seek(0)
        f.write(raw.replace(b"4321", b"4322"))
    with pytest.raises(JournalCorrupt, match="meta checksum mismatch") as caught:
        open_journal()
    assert caught.value.path == journal.meta_path


# -- group commit and fail-stop ---------------------------------------------------


def test_sync_clears_dirty(open_journal: OpenJournal) -> None:
    journal = open_journal()
    assert not journal.dirty
    journal.add(b"a", 1, 1)
    journal.add(b"b", 2, 1)
    assert journal.dirty
    journal.sync()
    assert not journal.dirty


def test_journal_without_fsync_never_calls_fsync(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(fd: int) -> None:
        raise AssertionError("fsync called although fsync=False")

    monkeypatch.setattr(os, "fsync", forbidden)
    monkeypatch.setattr(os, "fdatasync", forbidden)
    journal = open_journal(fsync=False)
    for entry in ENTRIES:
        journal.add(*entry)
    journal.sync()
    journal.deleteEntriesFrom(3)
    journal.deleteEntriesTo(1)
    journal.setCurrentTerm(4, None)
    journal._destroy()
    reopened = open_journal(fsync=False)
    assert reopened[:] == ENTRIES[1:3]
    assert reopened.getCurrentTerm() == 4


def test_failed_fsync_makes_the_journal_refuse_further_writes(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal()
    journal.add(b"a", 1, 1)

    def failing(fd: int) -> None:
        raise OSError(5, "simulated EIO")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="simulated EIO"):
        journal.sync()
    monkeypatch.undo()
    with pytest.raises(JournalFailed):
        journal.sync()
    with pytest.raises(JournalFailed):
        journal.add(b"b", 2, 1)


def test_a_failed_append_makes_the_journal_refuse_further_writes_and_reports_it(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[str] = []
    monkeypatch.setattr(fail_stop, "storage_failed", reported.append)
    journal = _at_term(open_journal, 1)
    journal.add(b"a", 1, 1)

    def disk_full(fd: int, data: bytes, offset: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "pwrite_all", disk_full)
    with pytest.raises(OSError, match="No space left"):
        journal.add(b"b", 2, 1)
    assert journal[:] == [(b"a", 1, 1)]
    assert len(reported) == 1 and "appending a record" in reported[0]
    with pytest.raises(JournalFailed):
        journal.add(b"b", 2, 1)


# -- installing into pysyncobj ----------------------------------------------------


def test_install_makes_pysyncobj_create_a_durable_journal(
    journal_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pysyncobj.syncobj, "createJournal", pysyncobj.syncobj.createJournal)
    assert pysyncobj_version_supported()
    install()
    journal = pysyncobj.syncobj.createJournal(journal_path)
    try:
        assert isinstance(journal, DurableJournal)
    finally:
        journal._destroy()
    assert isinstance(pysyncobj.syncobj.createJournal(None), pysyncobj.journal.MemoryJournal)


def test_install_refuses_an_unchecked_pysyncobj_version(monkeypatch: pytest.MonkeyPatch) -> None:
    original = pysyncobj.syncobj.createJournal
    monkeypatch.setattr(pysyncobj.syncobj, "createJournal", original)
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.3.18")
    assert not pysyncobj_version_supported()
    with pytest.raises(RuntimeError, match=r"supports pysyncobj 0\.3\.17 only, found 0\.3\.18"):
        install()
    assert pysyncobj.syncobj.createJournal is original


# -- integration with a real SyncObj ----------------------------------------------


class _Counter(SyncObjConsumer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    @replicated  # type: ignore[untyped-decorator]
    def add(self, amount: int) -> int:
        self.total += amount
        return self.total


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def _stop(node: Any) -> None:
    if hasattr(node, "destroy_synchronous"):
        node.destroy_synchronous()
    else:
        node.destroy()
        _wait_until(lambda: not node.tick_thread_alive(), "the tick thread to end")


def test_single_node_cluster_rebuilds_its_state_from_the_journal_after_restart(
    journal_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pysyncobj.syncobj, "createJournal", pysyncobj.syncobj.createJournal)
    install()
    address = f"127.0.0.1:{_free_port()}"

    def start(counter: _Counter) -> Any:
        conf = SyncObjConf(journalFile=journal_path, autoTick=True, appendEntriesUseBatch=False)
        return SyncObj(address, [], conf=conf, consumers=[counter])

    first = _Counter()
    node = start(first)
    try:
        assert isinstance(node._SyncObj__raftLog, DurableJournal)
        for amount in (5, 7, 30):
            first.add(amount, sync=True, timeout=15)
        assert first.total == 42
    finally:
        _stop(node)
    with open(journal_path, "rb") as f:
        assert f.read(9) == b"RWJOURNAL"

    second = _Counter()
    node = start(second)
    try:
        _wait_until(lambda: second.total == 42, "the journal to be re-applied")
        assert second.add(1, sync=True, timeout=15) == 43
    finally:
        _stop(node)
