"""The event archive (node.archive.event_archive) and the results encoding (ledger.results_codec).

`archived_workload` is also used by tests/test_replay_cli.py: it drives a live
StateMachine with a random workload and archives every applied entry the way a
replica does, remembering what the live state looked like after each one.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import node.archive.event_archive
from ledger import commands as c
from ledger.codec import decode_entry, encode_entry
from ledger.results import Code, Result, result
from ledger.results_codec import (
    RESULTS_VERSION,
    ResultsDecodeError,
    decode_results,
    encode_results,
)
from ledger.state import StateMachine
from node.archive.event_archive import (
    GENESIS_HASH,
    HEADER_BYTES,
    INDEX_EVERY_RECORDS,
    ArchiveCorrupt,
    ArchiveFailed,
    ArchiveRecord,
    EventArchive,
    read_archive,
    segment_name,
    verify_archive,
)

OpenArchive = Callable[..., EventArchive]
_PREFIX = struct.Struct("<II")


@pytest.fixture
def archive_dir(tmp_path: Path) -> str:
    return str(tmp_path / "partition-0" / "archive")


@pytest.fixture
def open_archive(archive_dir: str) -> Iterator[OpenArchive]:
    """Opens archives (on `archive_dir` by default, partition 0) and closes them all at the end."""
    opened: list[EventArchive] = []

    def _open(directory: str | None = None, partition: int = 0, fsync: bool = False,
              segment_bytes_max: int = 64 * 2**20) -> EventArchive:
        archive = EventArchive(directory or archive_dir, partition, fsync=fsync,
                               segment_bytes_max=segment_bytes_max)
        opened.append(archive)
        return archive

    yield _open
    for archive in opened:
        archive.close()


def _entry_blob(position: int) -> bytes:
    return f"entry {position} ".encode() * (1 + position % 7)


def _fill(archive: EventArchive, last: int, first: int = 1) -> None:
    for position in range(first, last + 1):
        assert archive.append(position, 10 * position, 1 + position // 100, 1_000 + position,
                              _entry_blob(position), bytes((1, 1 + position % 21)))


def _record_offsets(path: str) -> list[int]:
    """Byte offsets of the records of a segment file, read through their length fields."""
    data = Path(path).read_bytes()
    offsets, offset = [], HEADER_BYTES
    while offset < len(data):
        offsets.append(offset)
        offset += _PREFIX.size + _PREFIX.unpack_from(data, offset)[0]
    return offsets


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as segment:
        segment.seek(offset)
        byte = segment.read(1)[0]
        segment.seek(offset)
        segment.write(bytes((byte ^ 0x40,)))


# -- the results encoding ----------------------------------------------------------------


def test_results_round_trip_every_code_and_flag() -> None:
    results = tuple(result(code, replayed) for code in Code for replayed in (False, True))
    blob = encode_results(results)
    assert len(blob) == 1 + len(results)
    assert blob[0] == RESULTS_VERSION
    assert decode_results(blob) == results
    assert decode_results(encode_results(())) == ()


def test_results_decoding_refuses_unknown_versions_and_codes() -> None:
    with pytest.raises(ResultsDecodeError, match="version 2"):
        decode_results(bytes((2, 1)))
    with pytest.raises(ResultsDecodeError, match="result 1 has unknown code byte 0x7f"):
        decode_results(bytes((RESULTS_VERSION, 1, 0x7F)))
    with pytest.raises(ResultsDecodeError, match="empty"):
        decode_results(b"")


def test_results_encoding_refuses_a_code_that_does_not_fit() -> None:
    class Wide:
        code = 200
        replayed = False

    with pytest.raises(ValueError, match="200"):
        encode_results((Wide(),))  # type: ignore[arg-type]


# -- appending and reopening ----------------------------------------------------------------


def test_append_then_reopen_gives_back_every_record(open_archive: OpenArchive) -> None:
    archive = open_archive()
    _fill(archive, 40)
    head = archive.chain_head
    archive.close()

    reopened = open_archive()
    assert reopened.last_position == 40
    assert reopened.last_log_index == 400
    assert reopened.chain_head == head
    records = list(reopened.records())
    assert [r.position for r in records] == list(range(1, 41))
    seventh = records[6]
    assert (seventh.log_index, seventh.term, seventh.stamp_ms) == (70, 1, 1_007)
    assert seventh.entry_blob == _entry_blob(7)
    assert seventh.results_blob == bytes((1, 8))
    assert records[-1].hash.hex() == head


def test_an_already_archived_position_is_skipped(open_archive: OpenArchive,
                                                 archive_dir: str) -> None:
    archive = open_archive()
    _fill(archive, 3)
    head, size = archive.chain_head, os.path.getsize(archive.segment_paths[-1])
    assert archive.append(2, 20, 1, 1_002, b"something else", b"\x01") is False
    assert (archive.last_position, archive.chain_head) == (3, head)
    archive.close()
    assert os.path.getsize(os.path.join(archive_dir, segment_name(1))) == size

    restarted = open_archive()  # the journal re-applies entries after the snapshot
    assert restarted.append(3, 30, 1, 1_003, _entry_blob(3), b"\x01\x04") is False
    assert restarted.append(4, 40, 1, 1_004, _entry_blob(4), b"\x01\x05") is True
    assert restarted.last_position == 4


def test_a_gap_is_refused_and_writes_nothing(open_archive: OpenArchive) -> None:
    archive = open_archive()
    with pytest.raises(ValueError, match="gap"):
        archive.append(2, 1, 1, 1, b"entry", b"\x01")
    _fill(archive, 2)
    head = archive.chain_head
    with pytest.raises(ValueError, match="position 4 leaves a gap after the last archived "
                                         "position 2"):
        archive.append(4, 40, 1, 1, b"entry", b"\x01")
    assert (archive.last_position, archive.chain_head) == (2, head)
    assert [r.position for r in archive.records()] == [1, 2]


def test_log_indexes_must_increase(open_archive: OpenArchive) -> None:
    archive = open_archive()
    _fill(archive, 2)
    with pytest.raises(ValueError, match="log index 20 of position 3 is not above"):
        archive.append(3, 20, 1, 1, b"entry", b"\x01")
    assert archive.last_position == 2


def test_out_of_range_values_are_refused(open_archive: OpenArchive) -> None:
    archive = open_archive()
    with pytest.raises(ValueError, match="position"):
        archive.append(0, 1, 1, 1, b"", b"")
    with pytest.raises(ValueError, match="stamp_ms"):
        archive.append(1, 1, 1, 2**63, b"", b"")
    with pytest.raises(TypeError, match="entry_blob"):
        archive.append(1, 1, 1, 1, "text", b"")  # type: ignore[arg-type]
    assert archive.last_position == 0


# -- the hash chain -------------------------------------------------------------------------


def test_the_chain_links_every_record_to_the_previous_one(open_archive: OpenArchive,
                                                          archive_dir: str) -> None:
    archive = open_archive()
    assert archive.chain_head == GENESIS_HASH.hex()
    heads = []
    for position in range(1, 6):
        _fill(archive, position, first=position)
        heads.append(archive.chain_head)
    assert len(set(heads)) == 5
    records = list(archive.records())
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    archive.close()
    assert verify_archive(archive_dir) == (5, heads[-1])


def test_the_same_history_gives_the_same_head_and_another_one_does_not(
        open_archive: OpenArchive, tmp_path: Path) -> None:
    first, second, third = (open_archive(str(tmp_path / name)) for name in "abc")
    _fill(first, 10)
    _fill(second, 10)
    _fill(third, 9)
    third.append(10, 100, 1, 1_010, _entry_blob(10), b"\x01\x02")  # another result
    assert first.chain_head == second.chain_head != third.chain_head


def test_verify_archive_of_an_empty_archive(archive_dir: str) -> None:
    os.makedirs(archive_dir)
    assert verify_archive(archive_dir) == (0, "0" * 64)


# -- recovery after a crash ------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["in the header", "in the payload", "zero-filled"])
def test_a_torn_final_record_is_cut_off(open_archive: OpenArchive, archive_dir: str,
                                        caplog: pytest.LogCaptureFixture, cut: str) -> None:
    archive = open_archive()
    _fill(archive, 6)
    path = archive.segment_paths[-1]
    archive.close()
    last_offset = _record_offsets(path)[-1]
    good_head = verify_archive(archive_dir)
    with open(path, "r+b") as segment:  # turn record 6 into a write that never completed
        if cut == "zero-filled":
            segment.seek(last_offset)
            segment.write(bytes(os.path.getsize(path) - last_offset))
        else:
            segment.truncate(last_offset + (3 if cut == "in the header" else 30))

    with caplog.at_level(logging.WARNING, logger="node.archive.event_archive"):
        reopened = open_archive()
    assert reopened.last_position == 5
    assert os.path.getsize(path) == last_offset
    assert "torn final record" in caplog.text and path in caplog.text
    assert reopened.chain_head != good_head[1]
    assert reopened.append(6, 60, 1, 1_006, _entry_blob(6), bytes((1, 7)))  # re-archived
    reopened.close()
    assert verify_archive(archive_dir) == good_head


def test_a_segment_whose_creation_never_completed_is_removed(open_archive: OpenArchive,
                                                             archive_dir: str) -> None:
    archive = open_archive()
    _fill(archive, 3)
    archive.close()
    torn = os.path.join(archive_dir, segment_name(4))
    Path(torn).write_bytes(bytes(10))
    reopened = open_archive()
    assert not os.path.exists(torn)
    assert reopened.last_position == 3
    _fill(reopened, 4, first=4)


def test_read_archive_stops_at_a_torn_tail_without_repairing_it(
        open_archive: OpenArchive, archive_dir: str) -> None:
    archive = open_archive()
    _fill(archive, 4)
    path = archive.segment_paths[-1]
    archive.close()
    with open(path, "ab") as segment:
        segment.write(b"\x50\x00\x00\x00\x01")
    size = os.path.getsize(path)
    assert [r.position for r in read_archive(archive_dir)] == [1, 2, 3, 4]
    assert os.path.getsize(path) == size


# -- damage anywhere else ------------------------------------------------------------------


def _many_segments(open_archive: OpenArchive, records: int = 30) -> list[str]:
    archive = open_archive(segment_bytes_max=300)  # two or three records per segment
    _fill(archive, records)
    paths = list(archive.segment_paths)
    archive.close()
    assert len(paths) >= 5
    return paths


def test_a_flipped_byte_in_a_middle_segment_stops_the_node(open_archive: OpenArchive) -> None:
    paths = _many_segments(open_archive)
    middle = paths[len(paths) // 2]
    first_record = _record_offsets(middle)[0]
    _flip_byte(middle, first_record + _PREFIX.size + 50)

    with pytest.raises(ArchiveCorrupt) as caught:
        open_archive()
    assert (caught.value.path, caught.value.offset) == (middle, first_record)
    message = str(caught.value)
    assert middle in message and f"byte offset {first_record}" in message
    assert "checksum mismatch" in message and "Refusing to start this node" in message


def test_a_damaged_last_record_of_a_middle_segment_is_not_a_torn_tail(
        open_archive: OpenArchive) -> None:
    paths = _many_segments(open_archive)
    middle = paths[1]
    last_record = _record_offsets(middle)[-1]
    _flip_byte(middle, last_record + _PREFIX.size + 40)
    with pytest.raises(ArchiveCorrupt, match="not the last") as caught:
        open_archive()
    assert (caught.value.path, caught.value.offset) == (middle, last_record)


def test_a_flipped_byte_in_a_middle_record_of_the_last_segment_stops_the_node(
        open_archive: OpenArchive, archive_dir: str) -> None:
    archive = open_archive()
    _fill(archive, 8)
    path = archive.segment_paths[-1]
    archive.close()
    third = _record_offsets(path)[2]
    _flip_byte(path, third + _PREFIX.size + 70)
    size = os.path.getsize(path)

    with pytest.raises(ArchiveCorrupt) as caught:
        open_archive()
    assert (caught.value.path, caught.value.offset) == (path, third)
    assert os.path.getsize(path) == size  # nothing was "repaired"
    with pytest.raises(ArchiveCorrupt):
        verify_archive(archive_dir)


def _rewrite_record(path: str, offset: int, change: Callable[[bytes], bytes]) -> None:
    """Replace one record's payload with `change(payload)` and a matching checksum."""
    data = bytearray(Path(path).read_bytes())
    length = _PREFIX.unpack_from(data, offset)[0]
    start = offset + _PREFIX.size
    payload = change(bytes(data[start:start + length]))
    assert len(payload) == length
    data[offset:start + length] = _PREFIX.pack(length, zlib.crc32(payload)) + payload
    Path(path).write_bytes(bytes(data))


def test_a_broken_chain_link_with_a_valid_checksum_stops_the_node(
        open_archive: OpenArchive) -> None:
    archive = open_archive()
    _fill(archive, 5)
    path = archive.segment_paths[-1]
    archive.close()
    fourth = _record_offsets(path)[3]
    _rewrite_record(path, fourth, lambda payload: bytes(32) + payload[32:])
    with pytest.raises(ArchiveCorrupt, match="broken hash chain: position 4") as caught:
        open_archive()
    assert caught.value.offset == fourth


def test_a_rewritten_record_breaks_the_link_of_the_next_one(open_archive: OpenArchive) -> None:
    archive = open_archive()
    _fill(archive, 5)
    path = archive.segment_paths[-1]
    archive.close()
    offsets = _record_offsets(path)
    # A forger recomputes record 2's checksum after changing its entry: record 3's link breaks.
    _rewrite_record(path, offsets[1], lambda payload: payload[:-3] + b"XXX")
    with pytest.raises(ArchiveCorrupt, match="broken hash chain: position 3") as caught:
        open_archive()
    assert caught.value.offset == offsets[2]


def test_a_missing_segment_is_a_position_gap(open_archive: OpenArchive) -> None:
    paths = _many_segments(open_archive)
    os.unlink(paths[2])
    with pytest.raises(ArchiveCorrupt, match="position gap") as caught:
        open_archive()
    assert caught.value.path == paths[3]


def test_an_impossible_length_stops_the_node(open_archive: OpenArchive) -> None:
    archive = open_archive()
    _fill(archive, 5)
    path = archive.segment_paths[-1]
    archive.close()
    second = _record_offsets(path)[1]
    with open(path, "r+b") as segment:
        segment.seek(second)
        segment.write(struct.pack("<I", 3))
    with pytest.raises(ArchiveCorrupt, match="impossible record length 3"):
        open_archive()


def test_an_archive_of_another_partition_is_refused(open_archive: OpenArchive) -> None:
    archive = open_archive(partition=1)
    _fill(archive, 2)
    archive.close()
    with pytest.raises(ArchiveCorrupt, match="segment of partition 1, expected partition 2"):
        open_archive(partition=2)


# -- segments, the index and seeking --------------------------------------------------------


def test_segments_roll_and_are_named_by_their_first_position(open_archive: OpenArchive,
                                                             archive_dir: str) -> None:
    paths = _many_segments(open_archive)
    firsts = [int(os.path.basename(p)[len("segment-"):-len(".rwa")]) for p in paths]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    assert all(os.path.getsize(p) <= 300 for p in paths)
    records = list(read_archive(archive_dir))
    assert [r.position for r in records] == list(range(1, 31))


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(
        open_archive: OpenArchive) -> None:
    archive = open_archive(segment_bytes_max=200)
    _fill(archive, 1)
    archive.append(2, 20, 1, 1, b"x" * 1_000, b"\x01")
    _fill(archive, 3, first=3)
    assert len(archive.segment_paths) == 3
    assert [len(r.entry_blob) for r in archive.records(2, 2)] == [1_000]


@pytest.mark.parametrize(("start", "until", "expected"), [
    (1, None, (1, 3000)), (0, 3, (1, 3)), (1024, 1030, (1024, 1030)), (1025, 1025, (1025, 1025)),
    (2049, 2100, (2049, 2100)), (2999, None, (2999, 3000)), (2990, 5000, (2990, 3000)),
    (3001, None, None), (20, 10, None),
])
def test_records_yields_exactly_the_asked_range(
        open_archive: OpenArchive, start: int, until: int | None,
        expected: tuple[int, int] | None) -> None:
    archive = open_archive(segment_bytes_max=16_384)
    _fill(archive, 3000)
    positions = [r.position for r in archive.records(start, until)]
    wanted = [] if expected is None else list(range(expected[0], expected[1] + 1))
    assert positions == wanted


def test_records_seeks_with_the_sparse_index(open_archive: OpenArchive,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    archive = open_archive(segment_bytes_max=16_384)
    _fill(archive, 3000)
    everything = {r.position: r for r in archive.records()}
    archive.close()
    reopened = open_archive(segment_bytes_max=16_384)  # the index is rebuilt on open
    checked: list[int] = []
    real_follow = node.archive.event_archive._follow

    def counting_follow(*args: object) -> object:
        checked.append(1)
        return real_follow(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(node.archive.event_archive, "_follow", counting_follow)
    assert list(reopened.records(2500, 2502)) == [everything[p] for p in (2500, 2501, 2502)]
    assert 0 < len(checked) < INDEX_EVERY_RECORDS


def test_records_yields_what_was_archived_when_it_was_called(open_archive: OpenArchive) -> None:
    archive = open_archive(segment_bytes_max=300)
    _fill(archive, 10)
    records = archive.records()
    _fill(archive, 20, first=11)
    assert [r.position for r in records] == list(range(1, 11))


def test_read_archive_gives_the_writers_records(open_archive: OpenArchive,
                                                archive_dir: str) -> None:
    archive = open_archive(segment_bytes_max=1_000)
    _fill(archive, 50)
    assert list(read_archive(archive_dir, partition=0)) == list(archive.records())


# -- durability --------------------------------------------------------------------------


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_sync_makes_all_pending_appends_durable_with_one_fsync(
        open_archive: OpenArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = open_archive(fsync=True)
    _fill(archive, 1)
    archive.sync()
    calls = _count_fsyncs(monkeypatch)
    _fill(archive, 20, first=2)
    assert archive.dirty and calls == []
    archive.sync()
    assert not archive.dirty and len(calls) == 1
    archive.sync()
    assert len(calls) == 1


def test_without_fsync_nothing_is_ever_fsynced(open_archive: OpenArchive,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_fsyncs(monkeypatch)
    archive = open_archive(fsync=False, segment_bytes_max=300)
    _fill(archive, 20)
    archive.sync()
    archive.close()
    assert calls == [] and not archive.dirty


def test_a_failed_fsync_makes_the_archive_fail_stop(open_archive: OpenArchive,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    archive = open_archive(fsync=True)
    _fill(archive, 1)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError):
        archive.sync()
    with pytest.raises(ArchiveFailed, match="restart the process"):
        _fill(archive, 2, first=2)


def test_archive_corrupt_pickles() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(ArchiveCorrupt("/x/segment", 28, "bad")))
    assert (error.path, error.offset, error.reason) == ("/x/segment", 28, "bad")


# -- replaying an archived workload --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Live:
    """What the live state machine looked like right after one entry."""

    position: int
    stamp_ms: int
    state_hash: str
    balances: dict[str, tuple[int, int, str]]  # account -> (minor units, exponent, currency)
    results: tuple[Result, ...]


def _random_commands(rng: random.Random, state: StateMachine, names: list[str],
                     ids: list[bytes]) -> list[c.Command]:
    commands: list[c.Command] = []
    other = state.partition + 1
    for _ in range(rng.randint(1, 12)):
        a, b = rng.sample(names, 2)
        amount = rng.randint(1, 40_000)
        transaction_id = rng.choice(ids)
        roll = rng.random()
        if roll < 0.45:
            commands.append(c.Transfer(a, b, amount, "USD", transaction_id))
        elif roll < 0.55:
            commands.append(c.Withdraw(a, amount, "USD", transaction_id))
        elif roll < 0.65:
            commands.append(c.Deposit(a, amount, "USD", transaction_id))
        elif roll < 0.8:
            commands.append(c.DebitForTransfer(a, f"far-{b}", amount, "USD", transaction_id,
                                               other))
        elif roll < 0.9:
            commands.append(c.CreditForTransfer(other, rng.randint(1, 60), "far", b, amount,
                                                "USD", transaction_id, rng.randint(0, 20)))
        elif roll < 0.95:
            commands.append(c.CreateAccount(f"new-{rng.randint(0, 30)}", "EUR", 2,
                                            rng.randbytes(16)))
        else:
            commands.append(c.Transfer(a, "nobody", amount, "USD", rng.randbytes(16)))
    for key in list(state.outbox)[: rng.randint(0, 4)]:
        commands.append(c.ResolveTransfer(key[0], key[1], rng.random() < 0.7,
                                          int(Code.ACCOUNT_NOT_FOUND)))
    if rng.random() < 0.05:
        commands.append(c.PruneDedup(state.last_stamp_ms - 20_000))
    if rng.random() < 0.05:
        commands.append(c.LeaderStart(rng.randint(1, 5), "node-b"))
    return commands


def archived_workload(archive: EventArchive, seed: int, entries: int,
                      first_stamp_ms: int = 1_767_225_600_000) -> list[Live]:
    """Apply a random workload to a live StateMachine, archiving every entry like a replica.

    Returns the live state after each entry (index 0: before any). Log indexes
    skip numbers now and then (entries that are not ledger entries), stamps
    sometimes go backwards (a leader with a slow clock: the archive keeps the
    state's monotonic stamp), and terms grow.
    """
    rng = random.Random(seed)
    state = StateMachine(archive.partition)
    names = [f"acct-{i:02d}" for i in range(12)]
    ids = [rng.randbytes(16) for _ in range(150)]
    history = [Live(0, 0, state.state_hash(), {}, ())]
    log_index, term, stamp_ms = 0, 1, first_stamp_ms
    batches: list[list[c.Command]] = [
        [c.CreateAccount(n, "USD", 2, rng.randbytes(16)) for n in names],
        [c.Deposit(n, rng.randint(10_000, 1_000_000), "USD", rng.randbytes(16)) for n in names],
    ]
    for number in range(entries):
        commands = batches[number] if number < len(batches) else _random_commands(
            rng, state, names, ids)
        log_index += rng.choice((1, 1, 1, 2, 3))
        term += rng.random() < 0.05
        stamp_ms += rng.choice((0, 250, 1_000, 60_000, -500))
        entry = c.Entry(stamp_ms, tuple(commands))
        outcome = state.apply_entry(entry, log_index)
        assert outcome is not None
        assert archive.append(outcome.position, log_index, term, outcome.stamp_ms,
                              encode_entry(entry), encode_results(outcome.results))
        balances = {
            account_id: (account.balance_minor, account.exponent, account.currency)
            for account_id, account in state.accounts.items()
        }
        history.append(Live(outcome.position, outcome.stamp_ms, state.state_hash(), balances,
                            outcome.results))
    state.check_invariants()
    return history


def _replayed(records: Iterator[ArchiveRecord], partition: int) -> StateMachine:
    state = StateMachine(partition)
    for record in records:
        outcome = state.apply_entry(decode_entry(record.entry_blob), record.log_index)
        assert outcome is not None and outcome.position == record.position
    return state


def test_replaying_the_archive_reaches_the_live_state(open_archive: OpenArchive,
                                                      archive_dir: str) -> None:
    archive = open_archive(partition=3, segment_bytes_max=4_096)
    history = archived_workload(archive, seed=11, entries=300)
    live = history[-1]
    assert len(archive.segment_paths) > 3

    assert _replayed(archive.records(), 3).state_hash() == live.state_hash
    archive.close()
    assert _replayed(read_archive(archive_dir, 3), 3).state_hash() == live.state_hash
    middle = history[150]
    assert _replayed(open_archive(partition=3, segment_bytes_max=4_096).records(
        until_position=150), 3).state_hash() == middle.state_hash
    results = {r.position: decode_results(r.results_blob) for r in read_archive(archive_dir)}
    assert all(results[h.position] == h.results for h in history[1:])


def test_the_workload_is_deterministic(tmp_path: Path) -> None:
    heads = []
    for name in ("a", "b"):
        with EventArchive(str(tmp_path / name), 0, fsync=False) as archive:
            archived_workload(archive, seed=5, entries=60)
            heads.append(archive.chain_head)
    assert heads[0] == heads[1]
