"""AdminService: the cluster as this node (and, on request, its peers) sees it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from ledger import commands as c
from ledger.money import format_amount
from ledger.results import Code
from ledger.routing import partition_of
from node import api, cluster_map
from node.api import ApiError
from node.archive.replay_cli import Bound, replay_partition
from node.cluster_map import META, VOTER, ClusterMap
from node.config import HOST, NODE_ID, NodeConfig
from node.host import NodeHost, deadline_of
from node.membership.reconciler import Membership
from node.raft.replica import PartitionReplica
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

log = logging.getLogger(__name__)

PEER_STATUS_TIMEOUT_S = 1.0


def local_partition_status(host: NodeHost, partition: int) -> pb.PartitionStatus:
    replica = host.replicas[partition]
    status: dict[str, Any] = replica.status()
    leader = status.get("leader")
    leader_address = str(leader.id) if leader is not None else ""
    leader_node = host.config.node_by_raft_address(leader_address) if leader_address else None
    with replica.lock:
        state = replica.state
        in_flight = sum(t.in_flight_minor for t in state.totals.values())
        outbox_depth = len(state.outbox)
        position = state.position
        state_hash = state.state_hash()
        totals = [pb.CurrencyTotals(
            currency=currency, balance_minor=str(t.balance_minor),
            in_flight_minor=str(t.in_flight_minor), deposited_minor=str(t.deposited_minor),
            withdrawn_minor=str(t.withdrawn_minor), credited_in_minor=str(t.credited_in_minor),
            settled_out_minor=str(t.settled_out_minor))
            for currency, t in sorted(state.totals.items())]
        settled_to = [pb.PairTotal(partition=q, currency=cur, amount_minor=str(amount))
                      for q, outgoing in sorted(state.outgoing.items())
                      for cur, amount in sorted(outgoing.settled_minor.items())]
        credited_from = [pb.PairTotal(partition=p, currency=cur, amount_minor=str(amount))
                         for p, incoming in sorted(state.incoming.items())
                         for cur, amount in sorted(incoming.credited_minor.items())]
    commit_index = int(status.get("commit_idx", 0))
    replicas = []
    for node_id in host.config.replicas_of(partition):
        node = host.config.node(node_id)
        address = node.raft_address(partition)
        if node_id == host.node_id:
            match_index = int(status.get("last_applied", 0))
        else:
            match_index = int(status.get(f"match_idx_server_{address}", 0))
        replicas.append(pb.ReplicaStatus(node_id=node_id, match_index=match_index,
                                         lag=max(0, commit_index - match_index)))
    return pb.PartitionStatus(
        partition=partition, reported_by=host.node_id,
        reporter_is_leader=replica.is_leader(),
        leader_node_id=leader_node.id if leader_node is not None else "",
        leader_address=leader_node.grpc_address if leader_node is not None else "",
        term=int(status.get("raft_term", 0)), commit_index=commit_index,
        applied_position=position, replicas=replicas,
        money_in_flight=format_amount(in_flight, 0), outbox_depth=outbox_depth,
        last_snapshot_position=replica.last_snapshot_position, state_hash=state_hash,
        totals=totals, settled_to=settled_to, credited_from=credited_from)


def verify_replica(replica: PartitionReplica, replay: bool = True,
                   chain_position: int = 0) -> pb.PartitionVerdict:
    """Live state hash at a position == the hash of a replay of the archive to it?

    Also reports the position and state hash, and the archive's chain hash at
    `chain_position` (when asked and known), for comparison with the peers.
    """
    with replica.lock:
        position, live_hash = replica.state.position, replica.state.state_hash()
    verdict = pb.PartitionVerdict(partition=replica.partition, replicas_agree=True,
                                  position=position, state_hash=live_hash)
    if chain_position:
        verdict.chain_position = chain_position
        verdict.chain_hash = _chain_hash_at(replica, chain_position)
    if not replay:
        verdict.replay_matches = True
        verdict.detail = f"position {position}: live {live_hash[:16]} (replay skipped)"
        return verdict
    if replica.archive_lagging:
        verdict.replay_matches = False
        verdict.detail = ("archive lags the state (snapshot installed from the leader); "
                          "re-seed it from a peer")
        return verdict
    try:
        replayed = replay_partition(replica.archive.directory, replica.partition,
                                    Bound(position=position))
    except Exception as exc:
        verdict.replay_matches = False
        verdict.detail = f"replay failed: {exc}"
        return verdict
    replay_hash = replayed.state.state_hash()
    verdict.replay_matches = (replay_hash == live_hash and replayed.state.position == position
                              and replayed.results_mismatches == 0)
    verdict.detail = (f"position {position}: live {live_hash[:16]}, replay {replay_hash[:16]}"
                      + ("" if replayed.results_mismatches == 0
                         else f", {replayed.results_mismatches} results differ"))
    return verdict


def _chain_hash_at(replica: PartitionReplica, position: int) -> str:
    """Hex hash of the archive record at `position`, or "" when this archive cannot tell."""
    archive = replica.archive
    if replica.archive_lagging or archive.last_position < position:
        return ""
    for record in archive.records(from_position=position, until_position=position):
        return record.hash.hex()
    return ""


class AdminService(wallet_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def _local(self) -> list[pb.PartitionStatus]:
        return [local_partition_status(self.host, p) for p in sorted(self.host.replicas)]

    async def _peer(self, node_id: str) -> pb.ClusterStatusResponse | None:
        address = self.host.config.node(node_id).grpc_address
        stub = wallet_pb2_grpc.AdminServiceStub(self.host.channel(address))
        try:
            response: pb.ClusterStatusResponse = await stub.ClusterStatus(
                pb.ClusterStatusRequest(local_only=True), timeout=PEER_STATUS_TIMEOUT_S)
            return response
        except grpc.aio.AioRpcError:
            return None

    @api.rpc_handler
    async def ClusterStatus(self, request: pb.ClusterStatusRequest,
                            context: grpc.aio.ServicerContext) -> pb.ClusterStatusResponse:
        config = self.host.config
        views: dict[str, list[pb.PartitionStatus] | None] = {self.host.node_id: self._local()}
        membership = self.host.membership
        differences = set(membership.differences) if membership is not None else set()
        if not request.local_only:
            peers = [n.id for n in config.nodes if n.id != self.host.node_id]
            answers = await asyncio.gather(*(self._peer(n) for n in peers))
            for node_id, answer in zip(peers, answers, strict=True):
                views[node_id] = list(answer.partitions) if answer is not None else None
                if answer is not None:
                    differences.update(answer.membership_differences)
        best: dict[int, pb.PartitionStatus] = {}
        for partitions in views.values():
            for partition_view in partitions or ():
                current = best.get(partition_view.partition)
                if current is None or (partition_view.reporter_is_leader
                                       and not current.reporter_is_leader):
                    best[partition_view.partition] = partition_view
        nodes = []
        for node in config.nodes:
            node_view = views.get(node.id)
            hosted = sorted(config.partitions_of(node.id))
            leader_of = sorted(p.partition for p in (node_view or ()) if p.reporter_is_leader)
            nodes.append(pb.NodeStatus(node_id=node.id, address=node.grpc_address,
                                       up=node_view is not None, partitions=hosted,
                                       leader_of=leader_of))
        return pb.ClusterStatusResponse(
            partition_count=config.partition_count,
            partitions=[best[p] for p in sorted(best)], nodes=nodes,
            map_version=membership.map.version if membership is not None else 0,
            membership_differences=sorted(differences))

    @api.rpc_handler
    async def Snapshot(self, request: pb.SnapshotRequest,
                       context: grpc.aio.ServicerContext) -> pb.SnapshotResponse:
        replica = self.host.replicas.get(request.partition)
        if replica is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "PARTITION_NOT_HOSTED",
                           f"partition: {request.partition} has no replica on this node")
        replica.force_snapshot()
        with replica.lock:
            position = replica.state.position
        return pb.SnapshotResponse(position=position)

    @api.rpc_handler
    async def ForceFailTransfer(self, request: pb.ForceFailTransferRequest,
                                context: grpc.aio.ServicerContext,
                                ) -> pb.ForceFailTransferResponse:
        from_account = api.check_account_id(request.from_account, "from_account")
        # An existing transfer's id: a nil one from before nil ids were refused is allowed.
        transaction_id = api.parse_uuid(request.transaction_id, "transaction_id",
                                        nil_allowed=True)
        config = self.host.config
        source = partition_of(from_account, config.partition_count)
        if not self.host.hosts(source):
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "PARTITION_NOT_HOSTED",
                           f"from_account: partition {source} has no replica on this node; "
                           f"ask one of {', '.join(config.replicas_of(source))}")
        replica = self.host.replicas[source]
        with replica.lock:
            entry = replica.state.outbox.get((from_account, transaction_id))
        if entry is None:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_FLIGHT",
                           f"transaction_id: transfer {request.transaction_id} from "
                           f"{from_account!r} is not in flight (unknown, or already final)")
        destination = entry.destination_partition
        if not self.host.hosts(destination):
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "PARTITION_NOT_HOSTED",
                           f"the destination partition {destination} has no replica on this "
                           f"node; ask one of {', '.join(config.replicas_of(destination))}")
        (outcome,) = await self.host.execute(destination, [c.AbortCredit(source, entry.sequence)],
                                             deadline_of(context))
        if isinstance(outcome, ApiError):
            raise outcome
        code = outcome.result.code
        if code is Code.STALE_CREDIT:
            code = Code.OK  # resolved at the source meanwhile: the credit had happened
        log.warning("transfer force-failed by an operator", extra={
            "partition": source, "destination": destination, "sequence": entry.sequence,
            "destination_outcome": code.name})
        return pb.ForceFailTransferResponse(destination_outcome=code.name,
                                            destination_partition=destination,
                                            sequence=entry.sequence)

    # -- membership (docs/operations.md) -------------------------------------------

    def _membership(self) -> Membership:
        membership = self.host.membership
        if membership is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "STARTING", "the node is starting")
        return membership

    @api.rpc_handler
    async def AddNode(self, request: pb.AddNodeRequest,
                      context: grpc.aio.ServicerContext) -> pb.ChangeClusterMapResponse:
        node = checked_node(request)
        version = await self._membership().propose(cluster_map.node_command("add_node",
                                                                            node=node))
        return pb.ChangeClusterMapResponse(
            map_version=version,
            detail=f"node {node.id} registered; start it with `walletctl node start "
                   f"--node-id {node.id} --join ...`, then move replicas onto it")

    @api.rpc_handler
    async def RemoveNode(self, request: pb.RemoveNodeRequest,
                         context: grpc.aio.ServicerContext) -> pb.ChangeClusterMapResponse:
        node_id = checked_node_id(request.node_id, "node_id")
        version = await self._membership().propose({"op": "remove_node", "node_id": node_id})
        return pb.ChangeClusterMapResponse(map_version=version,
                                           detail=f"node {node_id} removed from the map")

    @api.rpc_handler
    async def AddReplica(self, request: pb.AddReplicaRequest,
                         context: grpc.aio.ServicerContext) -> pb.AddReplicaResponse:
        group = META if request.metadata_group else int(request.partition)
        node_id = checked_node_id(request.node_id, "node_id")
        version = await self._membership().propose(
            {"op": "add_replica", "group": group, "node_id": node_id})
        return pb.AddReplicaResponse(map_version=version)

    @api.rpc_handler
    async def RemoveReplica(self, request: pb.RemoveReplicaRequest,
                            context: grpc.aio.ServicerContext) -> pb.RemoveReplicaResponse:
        group = META if request.metadata_group else int(request.partition)
        node_id = checked_node_id(request.node_id, "node_id")
        version = await self._membership().propose(
            {"op": "remove_replica", "group": group, "node_id": node_id})
        return pb.RemoveReplicaResponse(map_version=version)

    @api.rpc_handler
    async def RebalanceLeaders(self, request: pb.RebalanceLeadersRequest,
                               context: grpc.aio.ServicerContext,
                               ) -> pb.ChangeClusterMapResponse:
        membership = self._membership()
        leaders = balanced_leaders(membership.map)
        version = await membership.propose({"op": "set_preferred_leaders",
                                            "leaders": {str(p): n for p, n in leaders.items()}})
        per_node: dict[str, int] = {}
        for node_id in leaders.values():
            per_node[node_id] = per_node.get(node_id, 0) + 1
        spread = ", ".join(f"{n}: {k}" for n, k in sorted(per_node.items()))
        return pb.ChangeClusterMapResponse(
            map_version=version,
            detail=f"preferred leaders set ({spread}); leaders move to them within "
                   "about a minute")

    @api.rpc_handler
    async def Verify(self, request: pb.VerifyRequest,
                     context: grpc.aio.ServicerContext) -> pb.VerifyResponse:
        """Replay each local replica's archive from position 0 and compare with its state."""
        verdicts = [await asyncio.to_thread(verify_replica, self.host.replicas[p],
                                            not request.skip_replay,
                                            request.chain_hash_at.get(p, 0))
                    for p in sorted(self.host.replicas)]
        return pb.VerifyResponse(ok=all(v.replay_matches for v in verdicts),
                                 partitions=verdicts)


def checked_node_id(text: str, field: str) -> str:
    if not NODE_ID.fullmatch(text):
        raise api.invalid(field, f"{text[:40]!r} is not a node id (1 to 32 of a-z, 0-9, '-')")
    return text


def checked_node(request: pb.AddNodeRequest) -> NodeConfig:
    node_id = checked_node_id(request.node_id, "node_id")
    if not HOST.fullmatch(request.host):
        raise api.invalid("host", f"{request.host[:60]!r} is not a host name or IPv4 address")
    for field in ("grpc_port", "raft_port_base"):
        if not 1 <= getattr(request, field) <= 65535:
            raise api.invalid(field, "must be a port number 1..65535")
    if request.metrics_port > 65535:
        raise api.invalid("metrics_port", "must be a port number 1..65535 (0: none)")
    return NodeConfig(node_id, request.host, request.grpc_port, request.raft_port_base,
                      request.metrics_port or None)


def balanced_leaders(current: ClusterMap) -> dict[int, str]:
    """A preferred leader per partition, spreading leaders evenly over the nodes.

    Greedy in partition order: each partition goes to the voter with the fewest
    leaders so far, ties broken by the current preference order (so a balanced
    cluster keeps its leaders where they are).
    """
    counts: dict[str, int] = {n.id: 0 for n in current.nodes}
    chosen: dict[int, str] = {}
    for partition in range(current.partition_count):
        voters = [s.node_id for s in current.slots(partition) if s.state == VOTER]
        if not voters:
            continue
        best = min(voters, key=lambda n: (counts[n], voters.index(n)))
        counts[best] += 1
        chosen[partition] = best
    return chosen


__all__ = ["AdminService", "api", "balanced_leaders", "local_partition_status"]
