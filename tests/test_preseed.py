"""Pre-seeding a joining replica from a peer's snapshot before it joins its Raft group.

Without processes: what `node.membership.preseed` installs, what it refuses, and that a group's
leader adds a slot to the Raft group only once the map shows it seeded. With real
node processes: a peer serves its snapshot file only to the cluster's nodes, and a
replica added after a compaction loads a peer's snapshot before it becomes a member,
so the leader never has to ship it one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest

from ledger import commands as c
from ledger.state import StateMachine
from node.cluster_map import JOINING, SEEDED, ClusterMap, Slot, bootstrap_map
from node.config import ClusterConfig, local_cluster_config
from node.membership.preseed import Preseeder, has_local_state, install
from node.membership.reconciler import MapCache, Membership
from node.raft import snapshot_file
from node.security.auth import PEER_TOKEN_METADATA_KEY, peer_token
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc
from tests.cluster_harness import LocalCluster, converged, wait_until
from tests.test_archive_seed import (
    add_replica_on_n4,
    join_n4,
    replay_matches,
    transfer,
)
from tests.test_cluster_faults import PARTITIONS, open_funded_pair

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PEER_ADDRESSES = ("127.0.0.1:7001", "127.0.0.1:7002")


def unit_config(partitions: int = 1) -> ClusterConfig:
    """Three nodes on made-up ports (nothing listens: no process in these tests)."""
    ports = iter(range(20_000, 30_000))

    def allocate(count: int) -> int:
        first = next(ports)
        for _ in range(count - 1):
            next(ports)
        return first

    return local_cluster_config("unit", 3, partitions, allocate)


def peer_snapshot_file(partition: int = 0) -> bytes:
    """A peer's snapshot file of a small ledger, with the peer's own archive facts."""
    state = StateMachine(partition)
    state.apply_entry(c.Entry(1_000, (c.CreateAccount("alice", "USD", 2, bytes(16)),)), 1)
    meta = snapshot_file.RaftMeta((b"last", 9, 2), (b"prev", 8, 2),
                                  ("127.0.0.1:7000", "127.0.0.1:7001"),
                                  archive_position=1, archive_chain_head=bytes(range(32)))
    return snapshot_file.encode(meta, state.snapshot())


def test_install_keeps_the_log_position_and_takes_the_members_from_the_map(
    tmp_path: Path,
) -> None:
    partition_dir = tmp_path / "partition-0"
    raft_index, position = install(partition_dir, 0, peer_snapshot_file(), "n1's snapshot",
                                   PEER_ADDRESSES, fsync=False)
    meta, ledger_snapshot = snapshot_file.read(str(partition_dir / "snapshot"))
    assert (raft_index, position) == (9, 1)
    assert (meta.last_entry, meta.prev_entry) == ((b"last", 9, 2), (b"prev", 8, 2))
    assert meta.members == PEER_ADDRESSES
    assert StateMachine.restore(ledger_snapshot).position == 1


def test_install_drops_the_peers_archive_position(tmp_path: Path) -> None:
    install(tmp_path / "partition-0", 0, peer_snapshot_file(), "n1's snapshot",
            PEER_ADDRESSES, fsync=False)
    meta, _ = snapshot_file.read(str(tmp_path / "partition-0" / "snapshot"))
    assert (meta.archive_position, meta.archive_chain_head) == (0, bytes(32))


def test_a_damaged_snapshot_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    data = bytearray(peer_snapshot_file())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(snapshot_file.SnapshotFileCorrupt, match="checksum mismatch"):
        install(tmp_path / "partition-0", 0, bytes(data), "n1's snapshot", PEER_ADDRESSES,
                fsync=False)
    assert not has_local_state(tmp_path / "partition-0")


def test_a_snapshot_of_another_partition_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partition 1, not 0"):
        install(tmp_path / "partition-0", 0, peer_snapshot_file(partition=1), "n1's snapshot",
                PEER_ADDRESSES, fsync=False)
    assert not has_local_state(tmp_path / "partition-0")


def test_a_replica_with_local_state_is_never_overwritten(tmp_path: Path) -> None:
    partition_dir = tmp_path / "partition-0"
    partition_dir.mkdir()
    (partition_dir / "journal").write_bytes(b"")
    asked: list[str] = []

    def channel(address: str) -> grpc.aio.Channel:
        asked.append(address)
        raise AssertionError("no peer may be asked")

    preseeder = Preseeder("n3", tmp_path, channel, ())
    cluster_map = bootstrap_map(unit_config())
    assert asyncio.run(preseeder.prepare(0, cluster_map)) is None
    assert asked == []


# -- the leader adds only a seeded slot -------------------------------------------------


@dataclasses.dataclass
class FakeSyncObj:
    added: list[str] = dataclasses.field(default_factory=list)

    def addNodeToCluster(self, address: str, callback: Callable[[Any, int], None]) -> None:
        self.added.append(address)


@dataclasses.dataclass
class FakeLeader:
    """A group's leader replica whose Raft group has the map's voters as members."""

    address: str
    members: tuple[str, ...]
    syncobj: FakeSyncObj = dataclasses.field(default_factory=FakeSyncObj)

    def is_leader(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"commit_idx": 10, **{f"partner_node_status_server_{m}": 2
                                     for m in self.members if m != self.address}}

    def call_on_tick(self, call: Callable[[], None]) -> None:
        call()


def map_with_n3_adding(state: Literal["joining", "seeded"]) -> ClusterMap:
    cluster_map = bootstrap_map(dataclasses.replace(unit_config(), placement=(("n1", "n2"),)))
    groups = ((Slot("n1"), Slot("n2"), Slot("n3", state)), *cluster_map.groups[1:])
    return dataclasses.replace(cluster_map, groups=groups)


def raft_additions(tmp_path: Path, state: Literal["joining", "seeded"]) -> list[str]:
    """What the leader of partition 0 (on n1) adds to its Raft group, n3's slot in `state`."""
    cluster_map = map_with_n3_adding(state)
    leader = FakeLeader(cluster_map.raft_address(0, "n1"),
                        tuple(cluster_map.raft_address(0, n) for n in ("n1", "n2")))
    host = type("Host", (), {"node_id": "n1", "config": None})()
    membership = Membership(host, unit_config(), MapCache(tmp_path / "map.json", cluster_map),
                            lambda: None, "i", ())
    asyncio.run(membership._lead_membership(0, leader))
    return leader.syncobj.added


def test_the_leader_does_not_add_a_joining_slot_still_being_pre_seeded(tmp_path: Path) -> None:
    assert raft_additions(tmp_path, JOINING) == []


def test_the_leader_adds_a_seeded_slot_to_the_raft_group(tmp_path: Path) -> None:
    assert raft_additions(tmp_path, SEEDED) == [map_with_n3_adding(SEEDED).raft_address(0, "n3")]


# -- real node processes ----------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def peer(cluster: LocalCluster, node_id: str) -> wallet_pb2_grpc.PeerServiceStub:
    return wallet_pb2_grpc.PeerServiceStub(cluster.channel(node_id))


def snapshot_everywhere(cluster: LocalCluster, partition: int, transfers: int) -> int:
    """`transfers` transfers on `partition`, then a snapshot on every replica of it; the
    lowest position any replica's snapshot holds."""
    payer, payee = open_funded_pair(cluster, partition, f"pre{uuid.uuid4().hex[:6]}")
    for _ in range(transfers):
        transfer(cluster, payer, payee)
    wait_until(lambda: converged(cluster), "replicas to agree")
    for node in cluster.config.nodes:
        cluster.admin(node.id).Snapshot(pb.SnapshotRequest(partition=partition), timeout=30)

    def snapshot_positions() -> list[int]:
        return [p.last_snapshot_position for node in cluster.config.nodes
                for p in cluster.admin(node.id).ClusterStatus(
                    pb.ClusterStatusRequest(local_only=True), timeout=5).partitions
                if p.partition == partition]

    wait_until(lambda: min(snapshot_positions()) >= transfers, "every replica's snapshot")
    return min(snapshot_positions())


def test_a_peer_serves_its_snapshot_file_only_to_the_clusters_nodes(
    cluster: LocalCluster,
) -> None:
    snapshot_everywhere(cluster, 0, transfers=5)
    with pytest.raises(grpc.RpcError) as refused:
        list(peer(cluster, "n2").FetchSnapshot(pb.FetchSnapshotRequest(partition=0),
                                               timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = ((PEER_TOKEN_METADATA_KEY, peer_token(cluster.config.secret)),)
    chunks = list(peer(cluster, "n2").FetchSnapshot(pb.FetchSnapshotRequest(partition=0),
                                                    timeout=10, metadata=token))
    data = b"".join(chunk.data for chunk in chunks)
    assert chunks and all(chunk.total_bytes == len(data) for chunk in chunks)
    on_disk = (cluster.node_dir("n2") / "partition-0" / "snapshot").read_bytes()
    assert data == on_disk
    snapshot_file.decode("served", data)  # checksummed and complete


def test_a_replica_added_after_a_compaction_loads_a_peers_snapshot_before_joining(
    cluster: LocalCluster,
) -> None:
    snapshot_position = snapshot_everywhere(cluster, 0, transfers=200)
    join_n4(cluster)
    add_replica_on_n4(cluster, 0)  # waits until n4 is a caught-up voter
    wait_until(lambda: converged(cluster), "every replica at the same position and hash")
    lines = [line for line in cluster.log("n4").splitlines() if " partition=0" in line]
    preseeded = [i for i, line in enumerate(lines) if "pre-seeded a joining replica" in line]
    loaded = [i for i, line in enumerate(lines) if "snapshot loaded" in line]
    assert len(preseeded) == 1, "n4 pre-seeds its replica once, from a peer"
    position = re.search(r" position=(\d+)", lines[preseeded[0]])
    assert position is not None and int(position.group(1)) >= snapshot_position
    # Exactly one snapshot loaded, after the pre-seeding: the leader, which adds n4 to
    # the Raft group only once the map shows it seeded, never had to ship it one.
    assert len(loaded) == 1 and loaded[0] > preseeded[0]
    wait_until(lambda: replay_matches(cluster, "n4", 0),
               "n4's archive to be seeded and replay to its state")
