"""One partition replica in-process (a single-node Raft group): snapshots, compaction, restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj import FAIL_REASON

from ledger import commands as c
from ledger.codec import encode_entry
from ledger.results import EntryResult
from node.raft import journal as journal_patch
from node.raft import snapshot_file, wire
from node.raft.journal import DurableJournal
from node.raft.replica import PartitionReplica, RaftSettings
from tests.cluster_harness import allocate_ports, wait_until
from tests.support import tx

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""


@pytest.fixture(autouse=True)
def durable_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    import pysyncobj.syncobj

    monkeypatch.setattr(pysyncobj.syncobj, "createJournal", pysyncobj.syncobj.createJournal)
    journal_patch.install()
    wire.install()


class Replica:
    """A started single-node replica and a synchronous way to propose to it."""

    def __init__(self, data_dir: Path, port: int) -> None:
        address = f"127.0.0.1:{port}"
        self.replica = PartitionReplica(
            partition=0, self_address=address, peer_addresses=[], bind_address=address,
            data_dir=str(data_dir), secret="test-secret-0123456789", settings=RaftSettings())
        self.replica.start()
        wait_until(self.replica.is_leader, "the single node to lead")

    def propose(self, *commands: c.Command) -> EntryResult:
        done = threading.Event()
        answer: list[tuple[EntryResult | None, int]] = []

        def callback(result: EntryResult | None, error: int) -> None:
            answer.append((result, error))
            done.set()

        self.replica.propose(encode_entry(c.Entry(1, commands)), callback)
        assert done.wait(timeout=30), "no answer from the replica"
        result, error = answer[0]
        assert error == FAIL_REASON.SUCCESS and result is not None, error
        return result

    def state_hash(self) -> str:
        with self.replica.lock:
            return self.replica.state.state_hash()

    def position(self) -> int:
        with self.replica.lock:
            return self.replica.state.position

    def close(self) -> None:
        self.replica.destroy()


@pytest.fixture
def port() -> int:
    return allocate_ports(1)


@pytest.fixture
def opened(tmp_path: Path, port: int) -> Iterator[Replica]:
    replica = Replica(tmp_path / "p0", port)
    try:
        yield replica
    finally:
        replica.close()


def fund(replica: Replica, transfers: int) -> None:
    replica.propose(c.CreateAccount("a", "USD", 2, tx()), c.CreateAccount("b", "USD", 2, tx()),
                    c.Deposit("a", 10**9, "USD", tx()))
    for _ in range(transfers):
        replica.propose(c.Transfer("a", "b", 1, "USD", tx()))


def test_a_restart_replays_the_journal_to_the_same_state(tmp_path: Path, port: int) -> None:
    first = Replica(tmp_path / "p0", port)
    fund(first, 30)
    expected = (first.position(), first.state_hash())
    first.close()
    second = Replica(tmp_path / "p0", port)
    try:
        wait_until(lambda: (second.position(), second.state_hash()) == expected,
                   "the journal to replay")
    finally:
        second.close()


def test_a_restart_after_compaction_restores_the_snapshot_and_the_rest(
    tmp_path: Path, port: int,
) -> None:
    first = Replica(tmp_path / "p0", port)
    fund(first, 20)
    first.replica.force_snapshot()
    wait_until(lambda: first.replica.last_snapshot_position > 0, "a snapshot")
    wait_until(lambda: len(first.replica.journal) < 10, "the journal to be trimmed")
    fund(first, 0)
    first.propose(c.Transfer("a", "b", 5, "USD", tx()))
    expected = (first.position(), first.state_hash())
    first.close()
    second = Replica(tmp_path / "p0", port)
    try:
        wait_until(lambda: (second.position(), second.state_hash()) == expected,
                   "snapshot + journal to restore the state")
    finally:
        second.close()


def test_a_crash_between_writing_a_snapshot_and_trimming_the_journal_loses_nothing(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The library's own loader cleared the journal in this window and lost every entry
    # after the snapshot: here the trim never happens, as if the process died first.
    first = Replica(tmp_path / "p0", port)
    fund(first, 20)
    with monkeypatch.context() as patch:
        patch.setattr(DurableJournal, "deleteEntriesTo", lambda self, entry_to: None)
        first.replica.force_snapshot()
        wait_until(lambda: first.replica.last_snapshot_position > 0, "a snapshot")
        for _ in range(25):
            first.propose(c.Transfer("a", "b", 1, "USD", tx()))
        expected = (first.position(), first.state_hash())
        first.close()
    assert snapshot_file.read(str(tmp_path / "p0" / "snapshot"))[0].last_entry[1] > 0
    second = Replica(tmp_path / "p0", port)
    try:
        wait_until(lambda: (second.position(), second.state_hash()) == expected,
                   "every entry after the snapshot to be replayed")
    finally:
        second.close()


def test_a_damaged_snapshot_refuses_to_open(tmp_path: Path, port: int) -> None:
    first = Replica(tmp_path / "p0", port)
    fund(first, 5)
    first.replica.force_snapshot()
    wait_until(lambda: first.replica.last_snapshot_position > 0, "a snapshot")
    first.close()
    snapshot = tmp_path / "p0" / "snapshot"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01
    snapshot.write_bytes(bytes(data))
    with pytest.raises(snapshot_file.SnapshotFileCorrupt, match="damaged"):
        Replica(tmp_path / "p0", port)


def test_reads_and_proposals_see_one_entry_at_a_time(opened: Replica) -> None:
    fund(opened, 3)
    result = opened.propose(c.Barrier(), c.Barrier())
    assert result.position == opened.position()


def test_a_snapshot_file_round_trips_with_the_archive_chain_head() -> None:
    meta = snapshot_file.RaftMeta((b"cmd", 7, 2), (b"prev", 6, 2), ("127.0.0.1:1",), 41,
                                  bytes(range(32)))
    decoded, ledger_bytes = snapshot_file.decode("x", snapshot_file.encode(meta, b"ledger"))
    assert (decoded, ledger_bytes) == (meta, b"ledger")


def test_a_restart_refuses_an_archive_that_lost_what_the_snapshot_saw(
    tmp_path: Path, port: int,
) -> None:
    first = Replica(tmp_path / "p0", port)
    fund(first, 5)
    first.replica.force_snapshot()
    wait_until(lambda: first.replica.last_snapshot_position > 0, "a snapshot")
    first.close()
    for segment in (tmp_path / "p0" / "archive").iterdir():
        segment.unlink()
    meta, _ = snapshot_file.read(str(tmp_path / "p0" / "snapshot"))
    assert meta.archive_position > 0
    replica = PartitionReplica.__new__(PartitionReplica)
    replica.partition = 0
    from node.archive.event_archive import EventArchive
    replica.archive = EventArchive(str(tmp_path / "p0" / "archive"), 0)
    with pytest.raises(ValueError, match="archive records were lost"):
        replica._check_archive_against(meta)
