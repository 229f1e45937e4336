"""Seeding a replica's event archive from its peers (node/archive/seeding.py, docs/history.md).

The first tests drive the seeder against in-process fake peers (real gRPC
servers on 127.0.0.1 serving `PeerService.FetchArchive` from real archives);
the last ones run real node processes: a fourth node's replica installs the
leader's snapshot, and its archive ends up serving the full history, replaying
to the live state, and byte-identical to another replica's.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from ledger import commands as c
from ledger.codec import encode_entry
from ledger.results_codec import encode_results
from ledger.state import StateMachine
from node.archive import seeding
from node.archive.event_archive import EventArchive, read_archive
from node.archive.seeding import (
    ArchiveUnavailable,
    PartitionSeeder,
    PeerArchiveSource,
    RecordSource,
    SeedMismatch,
    fetch_archive_response,
)
from node.config import dump_cluster_config
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc
from tests.cluster_harness import LocalCluster, converged, wait_until
from tests.test_cluster_faults import PARTITIONS, TransferStream, open_funded_pair
from tests.test_membership import cluster_map, register_node, walletctl

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

ENTRIES = 40
SEED_ROUNDS_MAX = 100


# -- in-process: the seeder against fake peers ------------------------------------------


def ledger_entries(count: int) -> list[c.Entry]:
    """Two accounts, a deposit, then 1.00 transfers: `count` entries in all, the same
    entries on every call (ids derived from their index)."""
    def id_of(index: int) -> bytes:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"seed-test-{index}").bytes

    setup = (c.CreateAccount("a", "USD", 2, id_of(-1)), c.CreateAccount("b", "USD", 2, id_of(-2)),
             c.Deposit("a", 1_000_000, "USD", id_of(-3)))
    entries = [c.Entry(1_000, setup)]
    for index in range(1, count):
        entries.append(c.Entry(1_000 + index, (c.Transfer("a", "b", 100, "USD", id_of(index)),)))
    return entries


def apply_all(directory: Path, entries: Sequence[c.Entry],
              archived_through: int) -> tuple[StateMachine, EventArchive]:
    """A partition state that applied `entries`, and an archive of the first ones."""
    state = StateMachine(0)
    archive = EventArchive(str(directory), 0, fsync=False)
    for log_index, entry in enumerate(entries, start=1):
        applied = state.apply_entry(entry, log_index)
        assert applied is not None
        if applied.position <= archived_through:
            archive.append(applied.position, log_index, 1, applied.stamp_ms,
                           encode_entry(entry), encode_results(applied.results))
    return state, archive


@dataclass
class FakeReplica:
    """A replica as the seeder sees it; its 'tick thread' runs each call at once."""

    archive: EventArchive
    state: StateMachine
    partition: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    archive_lagging: bool = True

    def call_on_tick(self, call: Callable[[], None]) -> None:
        call()


class FakePeer(wallet_pb2_grpc.PeerServiceServicer):  # type: ignore[misc]
    """Serves FetchArchive from an archive; flips a byte of one record's entry if told to."""

    def __init__(self, archive: EventArchive, corrupt_position: int | None = None) -> None:
        self.archive = archive
        self.corrupt_position = corrupt_position
        self.calls = 0
        self.max_records_asked = 0

    async def FetchArchive(self, request: pb.FetchArchiveRequest,
                           context: grpc.aio.ServicerContext) -> pb.FetchArchiveResponse:
        self.calls += 1
        self.max_records_asked = max(self.max_records_asked, request.max_records)
        response = fetch_archive_response(self.archive, False, request.from_position,
                                          request.max_records)
        for record in response.records:
            if record.position == self.corrupt_position:
                blob = bytearray(record.entry_blob)
                blob[len(blob) // 2] ^= 0x01
                record.entry_blob = bytes(blob)
        return response


async def seed(target: FakeReplica, peers: Sequence[FakePeer]) -> PartitionSeeder:
    """Run a seeder over the fake peers until it hands over (or SEED_ROUNDS_MAX rounds)."""
    servers, sources = [], []
    try:
        for index, peer in enumerate(peers):
            server = grpc.aio.server()
            wallet_pb2_grpc.add_PeerServiceServicer_to_server(peer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            sources.append(PeerArchiveSource(f"peer{index}", channel, ()))
        seeder = PartitionSeeder(target)
        source_list: list[RecordSource] = list(sources)
        for _ in range(SEED_ROUNDS_MAX):
            if await seeder.step(source_list):
                break
        return seeder
    finally:
        for server in servers:
            await server.stop(None)


def hashes(archive: EventArchive) -> list[bytes]:
    return [record.hash for record in archive.records()]


@pytest.fixture
def peer_archive(tmp_path: Path) -> Iterator[EventArchive]:
    _, archive = apply_all(tmp_path / "peer", ledger_entries(ENTRIES), ENTRIES)
    yield archive
    archive.close()


def replica_behind(tmp_path: Path, archived_through: int,
                   applied: int = ENTRIES) -> FakeReplica:
    state, archive = apply_all(tmp_path / "replica", ledger_entries(ENTRIES)[:applied],
                               archived_through)
    return FakeReplica(archive, state)


def test_a_new_replica_is_seeded_from_position_1_byte_for_byte(
    tmp_path: Path, peer_archive: EventArchive,
) -> None:
    target = replica_behind(tmp_path, archived_through=0)
    asyncio.run(seed(target, [FakePeer(peer_archive)]))
    assert not target.archive_lagging
    assert hashes(target.archive) == hashes(peer_archive)


def test_an_archive_with_a_gap_is_seeded_from_its_own_end(
    tmp_path: Path, peer_archive: EventArchive,
) -> None:
    target = replica_behind(tmp_path, archived_through=7)
    own = hashes(target.archive)
    seeder = asyncio.run(seed(target, [FakePeer(peer_archive)]))
    assert not target.archive_lagging
    assert hashes(target.archive)[:7] == own
    assert hashes(target.archive) == hashes(peer_archive)
    assert seeder.appended == ENTRIES - 7


def test_a_long_gap_is_seeded_in_bounded_batches(
    tmp_path: Path, peer_archive: EventArchive, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seeding, "SEED_BATCH_RECORDS_MAX", 8)
    monkeypatch.setattr(seeding, "SEED_PENDING_RECORDS_MAX", 12)
    target = replica_behind(tmp_path, archived_through=2)
    peer = FakePeer(peer_archive)
    asyncio.run(seed(target, [peer]))
    assert not target.archive_lagging
    assert hashes(target.archive) == hashes(peer_archive)
    assert peer.calls >= (ENTRIES - 2) // 8 and peer.max_records_asked == 8


def test_a_corrupted_record_is_refused_and_another_peer_is_asked(
    tmp_path: Path, peer_archive: EventArchive,
) -> None:
    target = replica_behind(tmp_path, archived_through=0)
    corrupting, honest = FakePeer(peer_archive, corrupt_position=12), FakePeer(peer_archive)
    seeder = asyncio.run(seed(target, [corrupting, honest]))
    assert seeder.refused_batches >= 1 and corrupting.calls >= 1 and honest.calls >= 1
    assert not target.archive_lagging
    assert hashes(target.archive) == hashes(peer_archive)


def test_nothing_from_a_corrupted_record_on_is_appended(
    tmp_path: Path, peer_archive: EventArchive,
) -> None:
    target = replica_behind(tmp_path, archived_through=0)
    seeder = asyncio.run(seed(target, [FakePeer(peer_archive, corrupt_position=12)]))
    assert seeder.refused_batches >= 1
    assert target.archive_lagging
    assert target.archive.last_position == 11
    assert hashes(target.archive) == hashes(peer_archive)[:11]


def test_records_beyond_the_applied_position_are_not_appended(
    tmp_path: Path, peer_archive: EventArchive,
) -> None:
    target = replica_behind(tmp_path, archived_through=3, applied=ENTRIES - 5)
    asyncio.run(seed(target, [FakePeer(peer_archive)]))
    assert not target.archive_lagging
    assert target.archive.last_position == ENTRIES - 5
    assert hashes(target.archive) == hashes(peer_archive)[:ENTRIES - 5]


def test_an_archive_that_does_not_replay_to_the_live_state_is_not_handed_over(
    tmp_path: Path, peer_archive: EventArchive,
) -> None:
    # The live state applied another last entry than the peer archived at that position.
    entries = ledger_entries(ENTRIES)
    entries[-1] = c.Entry(entries[-1].stamp_ms, (c.Transfer("a", "b", 999, "USD",
                                                            uuid.uuid4().bytes),))
    state, archive = apply_all(tmp_path / "replica", entries, 0)
    target = FakeReplica(archive, state)
    with pytest.raises(SeedMismatch):
        asyncio.run(seed(target, [FakePeer(peer_archive)]))
    assert target.archive_lagging
    assert target.archive.last_position < ENTRIES  # the disputed record is not archived


def test_fetch_refuses_positions_past_the_end_of_a_lagging_archive(
    peer_archive: EventArchive,
) -> None:
    with pytest.raises(ArchiveUnavailable):
        fetch_archive_response(peer_archive, True, ENTRIES + 1, 0)
    served = fetch_archive_response(peer_archive, True, ENTRIES - 1, 0)
    assert [r.position for r in served.records] == [ENTRIES - 1, ENTRIES]


def test_fetch_answers_at_most_the_records_asked_for(peer_archive: EventArchive) -> None:
    served = fetch_archive_response(peer_archive, False, 5, 3)
    assert [r.position for r in served.records] == [5, 6, 7]
    assert served.last_position == ENTRIES
    assert fetch_archive_response(peer_archive, False, ENTRIES + 1, 3).records == []


# -- real node processes ------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def transfer(cluster: LocalCluster, payer: str, payee: str, node_id: str = "n2") -> str:
    transaction_id = str(uuid.uuid4())
    response = cluster.wallet(node_id).Transfer(pb.TransferRequest(
        from_account=payer, to_account=payee, amount="1.00", currency="USD",
        transaction_id=transaction_id), timeout=30)
    assert response.status == pb.SUCCEEDED
    return transaction_id


def history_on(cluster: LocalCluster, node_id: str, account: str) -> list[str] | None:
    """The account's transfer ids as `node_id`'s own replica serves them; None while that
    replica cannot serve history (archive not seeded yet: HISTORY_UNAVAILABLE)."""
    ids: list[str] = []
    token = ""
    while True:
        try:
            page = cluster.wallet(node_id).ListTransfers(pb.ListTransfersRequest(
                account_id=account, limit=1000, page_token=token), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            raise
        ids.extend(t.transaction_id for t in page.transfers)
        token = page.next_page_token
        if not token:
            return ids


def replay_matches(cluster: LocalCluster, node_id: str, partition: int) -> bool:
    verdicts = cluster.admin(node_id).Verify(pb.VerifyRequest(), timeout=60).partitions
    return any(v.partition == partition and v.replay_matches for v in verdicts)


def compacted_history(cluster: LocalCluster, partition: int,
                      prefix: str) -> tuple[str, str, list[str]]:
    """Transfers, then a log compaction on every replica: a replica added now must
    install the leader's snapshot. Returns the payer, the payee and the transfer ids."""
    payer, payee = open_funded_pair(cluster, partition, prefix)
    sent = [transfer(cluster, payer, payee) for _ in range(10)]
    wait_until(lambda: converged(cluster), "replicas to agree")
    for node in cluster.config.nodes:
        cluster.admin(node.id).Snapshot(pb.SnapshotRequest(partition=partition), timeout=30)
    wait_until(lambda: all((cluster.node_dir(n.id) / f"partition-{partition}" / "snapshot")
                           .exists() for n in cluster.config.nodes), "the snapshots")
    return payer, payee, sent


def join_n4(cluster: LocalCluster) -> None:
    wait_until(lambda: len(cluster_map(cluster, "n2")["incarnations"]) == 3,  # type: ignore[arg-type]
               "the cluster map to be bootstrapped (every node's first start recorded)")
    register_node(cluster, "n4")
    cluster.start("n4", extra_args=("--join",))
    cluster.wait_serving("n4")


def add_replica_on_n4(cluster: LocalCluster, partition: int) -> None:
    added = walletctl(cluster, "replica", "add", "--partition", str(partition), "--node", "n4")
    assert added.returncode == 0, added.stdout + added.stderr


def test_a_replica_added_after_a_compaction_is_seeded_while_transfers_flow(
    cluster: LocalCluster,
) -> None:
    payer, payee, sent = compacted_history(cluster, 0, "seed")
    join_n4(cluster)
    with TransferStream(cluster, payer, payee) as stream:
        stream.wait_for(3)
        add_replica_on_n4(cluster, 0)
        wait_until(lambda: history_on(cluster, "n4", payer) is not None,
                   "n4's replica to serve history")
        stream.wait_for(len(stream.acknowledged) + 5)  # archived live after the hand-over
    assert "snapshot loaded" in cluster.log("n4") and "archive seeded" in cluster.log("n4")
    wait_until(lambda: converged(cluster), "every replica at the same position and hash")
    seeded = history_on(cluster, "n4", payer)
    assert seeded is not None and seeded == history_on(cluster, "n2", payer)
    assert seeded[:len(sent)] == sent
    assert set(stream.acknowledged) <= set(seeded)
    assert replay_matches(cluster, "n4", 0)


def test_a_seeded_archive_is_byte_identical_and_survives_a_restart(
    cluster: LocalCluster,
) -> None:
    payer, payee, sent = compacted_history(cluster, 1, "ident")
    join_n4(cluster)
    add_replica_on_n4(cluster, 1)
    wait_until(lambda: history_on(cluster, "n4", payer) == sent,
               "n4 to serve the payer's whole history")
    sent.append(transfer(cluster, payer, payee))
    wait_until(lambda: converged(cluster), "every replica at the same position and hash")
    # Its next snapshot carries the archive's position again, checked on restart.
    cluster.admin("n4").Snapshot(pb.SnapshotRequest(partition=1), timeout=30)
    wait_until(lambda: "snapshot written" in cluster.log("n4"), "n4's own snapshot")
    cluster.kill("n4", signal.SIGTERM)
    # A plain start needs the node in the cluster file (as an operator would add it).
    cluster.config_path.write_text(dump_cluster_config(cluster.config), encoding="utf-8")
    cluster.start("n4")
    cluster.wait_serving("n4")
    wait_until(lambda: history_on(cluster, "n4", payer) == sent,
               "the restarted n4 to serve the whole history")
    assert replay_matches(cluster, "n4", 1)
    cluster.stop_all()
    seeded = [r.hash for r in read_archive(str(cluster.node_dir("n4") / "partition-1"
                                               / "archive"), 1)]
    other = [r.hash for r in read_archive(str(cluster.node_dir("n2") / "partition-1"
                                              / "archive"), 1)]
    assert seeded and seeded == other
