"""PeerService: what the nodes of a cluster ask of each other, never clients.

Credits sent by another partition's saga driver (`ApplyCredits`), cluster map
changes for this node's metadata leader (`ProposeMapChange`), and the archive
records and snapshot files that seed a new replica (`FetchArchive`,
`FetchSnapshot`). Every call must show the peer token (node.security.auth).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator

import grpc

from ledger import commands as c
from node.archive import seeding
from node.archive.event_archive import ArchiveCorrupt
from node.host import NodeHost
from node.membership import preseed
from node.membership.reconciler import status_of_refusal
from node.raft.replica import PartitionReplica
from node.saga.driver import STEP_TIMEOUT_S, credit_outcomes
from node.security.auth import PEER_TOKEN_METADATA_KEY, peer_token
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc


class PeerService(wallet_pb2_grpc.PeerServiceServicer):  # type: ignore[misc]
    """Applies credits sent by the saga driver of another partition's leader."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self._token = peer_token(host.config.secret) if host.config.secret else ""

    async def _check_peer(self, context: grpc.aio.ServicerContext) -> None:
        presented = dict(context.invocation_metadata() or ()).get(PEER_TOKEN_METADATA_KEY, "")
        if self._token and not hmac.compare_digest(str(presented), self._token):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "PeerService is for the cluster's own nodes")

    async def _local_replica(self, partition: int,
                             context: grpc.aio.ServicerContext) -> PartitionReplica:
        """This node's replica of `partition`, for a peer (NOT_FOUND when there is none)."""
        await self._check_peer(context)
        replica = self.host.replicas.get(partition)
        if replica is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"partition: {partition} has no replica on this node")
            raise AssertionError("unreachable")
        return replica

    async def ProposeMapChange(self, request: pb.ProposeMapChangeRequest,
                               context: grpc.aio.ServicerContext,
                               ) -> pb.ChangeClusterMapResponse:
        """A cluster map command from another node, for this node's metadata leader."""
        await self._check_peer(context)
        membership = self.host.membership
        result = (None if membership is None
                  else await membership.propose_local_or_fail(request.command_json.encode()))
        if result is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "this node does not lead the metadata group")
            raise AssertionError("unreachable")
        applied, kind, message, version = result
        if not applied:
            await context.abort(status_of_refusal(kind), message)
        return pb.ChangeClusterMapResponse(map_version=version)

    async def ApplyCredits(self, request: pb.ApplyCreditsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ApplyCreditsResponse:
        await self._check_peer(context)
        destination = request.destination_partition
        if not self.host.hosts(destination):
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"partition {destination} has no replica on this node")
        credits = [c.CreditForTransfer(request.source_partition, x.sequence, x.from_account,
                                       x.to_account, x.amount_minor, x.currency,
                                       x.transaction_id, request.source_resolved_through)
                   for x in request.credits]
        remaining_s = context.time_remaining() or STEP_TIMEOUT_S
        outcomes = await self.host.execute(destination, credits,
                                           time.monotonic() + max(0.0, remaining_s - 0.05))
        known = credit_outcomes(credits, outcomes)
        return pb.ApplyCreditsResponse(codes=[int(known.get(x.sequence, 0)) for x in credits])

    async def FetchArchive(self, request: pb.FetchArchiveRequest,
                           context: grpc.aio.ServicerContext) -> pb.FetchArchiveResponse:
        """Raw records of this node's archive, for seeding another replica's (archive.seeding)."""
        replica = await self._local_replica(request.partition, context)
        if request.from_position < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "from_position: archive positions start at 1")
        try:
            return await asyncio.to_thread(
                seeding.fetch_archive_response, replica.archive,
                replica.archive_lagging, request.from_position, request.max_records)
        except seeding.ArchiveUnavailable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ArchiveCorrupt as exc:
            await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
        raise AssertionError("unreachable")

    async def FetchSnapshot(self, request: pb.FetchSnapshotRequest,
                            context: grpc.aio.ServicerContext,
                            ) -> AsyncIterator[pb.SnapshotChunk]:
        """This node's latest snapshot file of a partition, for pre-seeding
        (node/membership/preseed.py).

        The file is opened once: writers rename a complete file over it, so the open
        inode stays one whole snapshot however long the transfer takes.
        """
        replica = await self._local_replica(request.partition, context)
        try:
            source = open(replica.snapshot_path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"partition {request.partition} has no snapshot on this node yet")
            raise AssertionError("unreachable") from None
        with source:
            async for chunk in preseed.serve_snapshot(source):
                yield chunk
