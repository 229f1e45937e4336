"""Pre-seeding a joining replica from a peer's snapshot, before it joins its Raft group.

pysyncobj makes a node a voter the moment the leader adds it, and then ships it
the leader's whole snapshot and log. Instead, a node given a `joining` slot of a
partition first fetches a current replica's snapshot file
(`PeerService.FetchSnapshot`), checks it (the file's checksum, the ledger
snapshot's own checksum, the partition), and installs it as its replica's
`snapshot`, so that the replica loads it on its first tick. Only then does the
node report the slot `seeded` in the cluster map, and only a seeded slot is
added to the Raft group by the leader (node/membership/reconciler.py): the new member then
needs the log after the snapshot only.

The installed snapshot keeps the peer's last two log entries (the Raft log
continues from them) but not its archive position: the event archive is seeded
afterwards by node/archive/seeding.py, as after a snapshot installed from the
leader. Its member list is the group's current replicas in the cluster map,
without this node (pysyncobj takes its peers from the snapshot's members).

Serving reads the file through ONE open file object: snapshot writers write a
temporary file and rename it over `snapshot`, so the open inode is always one
complete snapshot, even if a newer one replaces the name meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc

from ledger.state import SnapshotError, StateMachine
from node.cluster_map import LEAVING, VOTER, ClusterMap
from node.raft import snapshot_file
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Bytes per FetchSnapshot message: far below the 64 MiB node-to-node limit."""
FETCH_TIMEOUT_S = 300.0
"""Bound on one whole snapshot download (a large partition's file takes a while)."""


class NoPeerAnswered(Exception):
    """No current replica could be asked for its snapshot (all unreachable or failing)."""


@dataclass(frozen=True, slots=True)
class Preseeded:
    partition: int
    peer: str
    raft_index: int
    position: int


def has_local_state(partition_dir: Path) -> bool:
    """True when the replica already has a snapshot or a journal: never overwrite those."""
    return (partition_dir / "snapshot").exists() or (partition_dir / "journal").exists()


async def serve_snapshot(source: BinaryIO) -> AsyncIterator[pb.SnapshotChunk]:
    """The chunks of one open snapshot file, in order (the serving side of FetchSnapshot)."""
    total_bytes = os.fstat(source.fileno()).st_size
    offset = 0
    while offset < total_bytes:
        data = await asyncio.to_thread(source.read, CHUNK_BYTES)
        assert data, "an open snapshot file never shrinks (writers replace, never truncate)"
        yield pb.SnapshotChunk(data=data, offset=offset, total_bytes=total_bytes)
        offset += len(data)


async def download(stub: wallet_pb2_grpc.PeerServiceStub, partition: int,
                   metadata: tuple[tuple[str, str], ...],
                   timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """A peer's whole snapshot file; ValueError when the chunks do not add up."""
    parts: list[bytes] = []
    received = 0
    total_bytes: int | None = None
    call = stub.FetchSnapshot(pb.FetchSnapshotRequest(partition=partition), timeout=timeout_s,
                              metadata=metadata)
    async for chunk in call:
        if chunk.offset != received or (total_bytes is not None
                                        and chunk.total_bytes != total_bytes):
            raise ValueError(f"snapshot chunk at offset {chunk.offset}, expected {received}")
        total_bytes = chunk.total_bytes
        parts.append(chunk.data)
        received += len(chunk.data)
    if total_bytes is None or received != total_bytes:
        raise ValueError(f"snapshot ended after {received} of {total_bytes} bytes")
    return b"".join(parts)


def install(partition_dir: Path, partition: int, data: bytes, origin: str,
            members: tuple[str, ...], fsync: bool) -> tuple[int, int]:
    """Check a fetched snapshot file and install it as the replica's `snapshot`.

    Raises SnapshotFileCorrupt / SnapshotError / ValueError on a bad file (nothing
    is written then). Returns (the Raft log index, the ledger position) it holds.
    """
    meta, ledger_snapshot = snapshot_file.decode(origin, data)
    restored = StateMachine.restore(ledger_snapshot)
    if restored.partition != partition:
        raise ValueError(f"{origin}: a snapshot of partition {restored.partition}, "
                         f"not {partition}")
    ours = snapshot_file.RaftMeta(meta.last_entry, meta.prev_entry, tuple(sorted(members)))
    partition_dir.mkdir(parents=True, exist_ok=True)
    writing = partition_dir / "snapshot.writing"
    snapshot_file.write(str(writing), ours, ledger_snapshot, fsync=fsync)
    os.replace(writing, partition_dir / "snapshot")
    if fsync:
        snapshot_file.fsync_directory(str(partition_dir))
        snapshot_file.fsync_directory(str(partition_dir.parent))
    return int(meta.last_entry[1]), restored.position


@dataclass(frozen=True)
class Preseeder:
    """Pre-seeds this node's joining partition replicas (called by the reconciler)."""

    node_id: str
    data_dir: Path
    channel: Callable[[str], grpc.aio.Channel]
    peer_metadata: tuple[tuple[str, str], ...]
    fsync: bool = True

    def partition_dir(self, partition: int) -> Path:
        return self.data_dir / f"partition-{partition}"

    async def prepare(self, partition: int, cluster_map: ClusterMap) -> Preseeded | None:
        """Make the replica ready to start: a peer's snapshot installed, or None when there
        is nothing to install (local state already there, or the replicas that answered
        have no snapshot: the replica then starts empty and the leader sends it its log,
        or its own snapshot, as pysyncobj does).

        Raises NoPeerAnswered when no current replica answered at all: try again later."""
        partition_dir = self.partition_dir(partition)
        if has_local_state(partition_dir):
            return None
        slots = cluster_map.slots(partition)
        sources = ([s.node_id for s in slots if s.state == VOTER]
                   + [s.node_id for s in slots if s.state == LEAVING])
        sources = [n for n in sources if n != self.node_id]
        members = tuple(cluster_map.raft_address(partition, n) for n in sources)
        without_snapshot = 0
        for node_id in sources:
            stub = wallet_pb2_grpc.PeerServiceStub(
                self.channel(cluster_map.node(node_id).grpc_address))
            try:
                data = await download(stub, partition, self.peer_metadata)
                raft_index, position = await asyncio.to_thread(
                    install, partition_dir, partition, data, f"{node_id}'s snapshot",
                    members, self.fsync)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    without_snapshot += 1
                log.info("fetching a peer's snapshot failed", extra={
                    "partition": partition, "peer": node_id, "status": exc.code().name})
                continue
            except (snapshot_file.SnapshotFileCorrupt, SnapshotError, ValueError) as exc:
                log.warning("a peer's snapshot was refused", extra={
                    "partition": partition, "peer": node_id, "reason": str(exc)})
                continue
            seeded = Preseeded(partition, node_id, raft_index, position)
            log.info("pre-seeded a joining replica from a peer's snapshot", extra={
                "partition": partition, "peer": node_id, "raft_index": raft_index,
                "position": position, "bytes": len(data)})
            return seeded
        if without_snapshot:
            # Starting empty is what pysyncobj does anyway (the leader then ships its
            # snapshot or its log): safe, only slower. Not worth waiting for a peer that
            # may never come back (a dead node being replaced).
            log.info("no reachable replica has a snapshot: the joining replica starts empty",
                     extra={"partition": partition, "without_snapshot": without_snapshot})
            return None
        raise NoPeerAnswered(f"partition {partition}: no current replica served its snapshot")
