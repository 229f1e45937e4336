"""What a node process hosts: its partition replicas, their proposers, and links to peers.

`NodeHost.execute` is the one way a servicer changes state: it proposes
commands through the partition's group-commit queue and waits for their
results, retrying what was not applied (no leader yet) and what may have been
applied (the same command again: its dedup key makes that safe) until the
call's deadline. Requests for partitions this node does not host are
forwarded to a node that does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import grpc

from client.auth import open_aio_channel
from ledger import commands as c
from ledger.results import EntryResult
from node.api import ApiError
from node.archive.history import History
from node.cluster_map import META, ClusterMap
from node.config import ClusterConfig
from node.proposer import (
    Applied,
    NotApplied,
    Overloaded,
    ProposalError,
    Proposer,
    ProposerSettings,
)
from node.raft.metadata_group import MetadataGroup
from node.raft.replica import PartitionReplica
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2_grpc

if TYPE_CHECKING:
    from node.membership.reconciler import Membership

log = logging.getLogger(__name__)

RETRY_BACKOFF_S_MIN = 0.01
RETRY_BACKOFF_S_MAX = 0.25
DEADLINE_DEFAULT_S = 10.0
DEADLINE_MARGIN_S_MAX = 0.25
DEADLINE_MARGIN_FRACTION = 0.1
"""Answer before the caller's deadline by a tenth of it (at most 0.25 s), so that the
answer (e.g. PENDING) still arrives in time through a loaded gateway or network."""

CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 2**20),
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.so_reuseport", 0),
)

REQUEST_BYTES_MAX = 4 * 2**20
"""Largest request a node's gRPC server accepts (clients and peers alike); a larger one
is refused with RESOURCE_EXHAUSTED before any handler runs. It holds the largest valid
request with room to spare: a TransferBatch of TRANSFERS_PER_BATCH_MAX transfers whose
fields all have their longest allowed length is about 2.1 MiB, an ApplyCredits batch of
CREDITS_PER_BATCH_MAX credits under 1 MiB (tests/test_hostile_input.py checks it)."""

SERVER_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 2**20),
    ("grpc.max_receive_message_length", REQUEST_BYTES_MAX),
    ("grpc.so_reuseport", 0),
)
"""The gRPC server's options: requests are bounded; answers (pages of history) and the
node's own client channels (CHANNEL_OPTIONS) keep the larger bound."""


PROPOSAL_HOLD_S = 1.0
"""Proposals paused on a partition while its leadership is handed over."""


class GroupFactory(Protocol):
    def create(self, group: int, cluster_map: ClusterMap, joining: bool
               ) -> PartitionReplica | MetadataGroup | None: ...


@dataclass
class _PositionWaiters:
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


class NodeHost:
    def __init__(self, config: ClusterConfig, node_id: str,
                 replicas: dict[int, PartitionReplica], loop: asyncio.AbstractEventLoop,
                 proposer_settings: ProposerSettings) -> None:
        self.config = config
        """The cluster map laid over the cluster file (node.membership.reconciler swaps it on
        change)."""
        self.node_id = node_id
        self.replicas = replicas
        self.loop = loop
        self.proposer_settings = proposer_settings
        self.proposers = {p: Proposer(r, proposer_settings, loop) for p, r in replicas.items()}
        self.meta: MetadataGroup | None = None
        """This node's replica of the metadata group, when the map makes it a voter."""
        self.group_factory: GroupFactory | None = None
        """Creates replicas the cluster map assigns at run time (set by the server)."""
        self.membership: Membership | None = None
        """The cluster map and its changes (set by the server)."""
        self._position_waiters = {p: _PositionWaiters() for p in replicas}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = node_client_credentials(config)
        """What this node presents to the others: the cluster's tokens and, under TLS,
        its CA (and its certificate, with mTLS)."""
        self.histories: dict[int, History] = {}
        """Read models of the archives, built on the first history request."""
        self.applied_listeners: list[Callable[[int], None]] = []
        """Called on the loop with the partition after each applied entry."""

    def start(self) -> None:
        for proposer in self.proposers.values():
            proposer.start()

    async def stop(self) -> None:
        for proposer in self.proposers.values():
            await proposer.stop()
        for channel in self._channels.values():
            await channel.close()

    # -- membership -----------------------------------------------------------------

    def group(self, group: int) -> PartitionReplica | MetadataGroup | None:
        return self.meta if group == META else self.replicas.get(group)

    def add_replica(self, replica: PartitionReplica) -> None:
        """Start serving a replica created after the node started (loop thread)."""
        partition = replica.partition
        assert partition not in self.replicas, f"partition {partition} is already hosted"
        replica._on_applied = self.on_applied
        self._position_waiters[partition] = _PositionWaiters()
        proposer = Proposer(replica, self.proposer_settings, self.loop)
        self.replicas[partition] = replica
        self.proposers[partition] = proposer
        replica.start()
        proposer.start()

    async def start_group(self, group: int, cluster_map: ClusterMap, joining: bool) -> None:
        factory = self.group_factory
        assert factory is not None, "the server sets group_factory before serving"
        created = await asyncio.to_thread(factory.create, group, cluster_map, joining)
        if created is None:
            return  # nothing to host (a leaving replica that never started)
        if isinstance(created, MetadataGroup):
            assert self.meta is None, "the metadata group is hosted once"
            self.meta = created
            created.start()
        else:
            self.add_replica(created)

    async def stop_group(self, group: int, map_version: int) -> None:
        """Stop a replica the map no longer assigns here; its data dir is moved aside."""
        if group == META:
            meta, self.meta = self.meta, None
            if meta is None:
                return
            await asyncio.to_thread(meta.destroy)
            data_dir = meta.data_dir
        else:
            replica = self.replicas.pop(group)
            proposer = self.proposers.pop(group)
            self.histories.pop(group, None)
            await proposer.stop()
            await asyncio.to_thread(replica.destroy)
            data_dir = replica.data_dir
        if os.path.isdir(data_dir):
            os.replace(data_dir, f"{data_dir}.removed-v{map_version}")

    def hold_proposals(self, group: int, duration_s: float) -> None:
        proposer = self.proposers.get(group)
        if proposer is not None:
            proposer.hold(duration_s)

    def transfer_leadership(self, partition: int, to_address: str) -> None:
        """Hand a led partition to `to_address`, pausing proposals briefly: pysyncobj
        refuses unless the target has every entry, which a busy group never shows."""
        self.hold_proposals(partition, PROPOSAL_HOLD_S)
        self.replicas[partition].transfer_leadership(to_address)

    # -- applying ---------------------------------------------------------------

    def on_applied(self, replica: PartitionReplica, outcome: EntryResult) -> None:
        """Tick thread: wake readers waiting for a position."""
        try:
            self.loop.call_soon_threadsafe(self._release_waiters, replica.partition,
                                           outcome.position)
        except RuntimeError:
            pass  # loop closed: stopping

    def _release_waiters(self, partition: int, position: int) -> None:
        for listener in self.applied_listeners:
            listener(partition)
        box = self._position_waiters.get(partition)
        if box is None:
            return
        still = []
        for wanted, future in box.waiters:
            if wanted <= position:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((wanted, future))
        box.waiters = still

    async def wait_for_position(self, partition: int, position: int, deadline: float) -> None:
        replica = self.replicas[partition]
        with replica.lock:
            if replica.state.position >= position:
                return
        future: asyncio.Future[None] = self.loop.create_future()
        self._position_waiters[partition].waiters.append((position, future))
        try:
            await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "POSITION_NOT_REACHED",
                           f"partition {partition} did not reach position {position} "
                           "before the deadline") from None

    async def execute(self, partition: int, commands: Sequence[c.Command],
                      deadline: float) -> list[Applied | ApiError]:
        """Propose `commands` on `partition` and wait for each one's result until `deadline`.

        Commands whose outcome is still unknown at the deadline come back as an
        UNAVAILABLE ApiError telling the caller to retry with the same id.
        """
        proposer = self.proposers[partition]
        backoff_s = RETRY_BACKOFF_S_MIN
        last_failure = "NO_LEADER"
        while True:
            try:
                future = proposer.submit(commands)
            except Overloaded as exc:
                if last_failure == "OUTCOME_UNKNOWN":
                    break  # an earlier attempt may have applied: never say "nothing was"
                error = ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", str(exc))
                return [error] * len(commands)
            remaining_s = deadline - time.monotonic()
            try:
                placed = await asyncio.wait_for(future, timeout=max(0.0, remaining_s))
            except TimeoutError:
                # wait_for cancelled the request, but it may already sit in a proposed
                # entry: the outcome is unknown, never "nothing was applied".
                last_failure = "OUTCOME_UNKNOWN"
                break
            except NotApplied:
                if last_failure != "OUTCOME_UNKNOWN":  # sticky: an earlier attempt may apply
                    last_failure = "NO_LEADER"
            except ProposalError:
                last_failure = "OUTCOME_UNKNOWN"
            else:
                return [placed.applied(i) for i in range(len(commands))]
            # Not applied, or maybe applied: propose the same commands again. Their
            # dedup keys make a second application return the first outcome.
            if time.monotonic() + backoff_s >= deadline:
                break
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RETRY_BACKOFF_S_MAX)
        return [_unavailable(partition, last_failure)] * len(commands)

    # -- forwarding -------------------------------------------------------------------

    def hosts(self, partition: int) -> bool:
        return partition in self.replicas

    def wallet_stub_for(self, partition: int) -> list[wallet_pb2_grpc.WalletServiceStub]:
        """Stubs of nodes hosting `partition` (preferred leader first)."""
        return [wallet_pb2_grpc.WalletServiceStub(self.channel(self.config.node(n).grpc_address))
                for n in self.config.replicas_of(partition) if n != self.node_id]

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_aio_channel(
                address, self._credentials, CHANNEL_OPTIONS)
        return channel


def _unavailable(partition: int, reason: str) -> ApiError:
    if reason == "NO_LEADER":
        message = (f"partition {partition} has no leader right now (election in progress or "
                   "no quorum); nothing was applied, retry")
    else:
        message = (f"the outcome on partition {partition} is not known yet; retry with the "
                   "same transaction_id to learn it (it will be applied at most once)")
    return ApiError(grpc.StatusCode.UNAVAILABLE, reason, message)


def deadline_of(context: grpc.aio.ServicerContext) -> float:
    """Monotonic time by which the answer must be sent."""
    remaining_s = context.time_remaining()
    if remaining_s is None:
        remaining_s = DEADLINE_DEFAULT_S
    remaining_s = float(remaining_s)
    margin_s = min(DEADLINE_MARGIN_S_MAX, remaining_s * DEADLINE_MARGIN_FRACTION)
    return time.monotonic() + max(0.0, remaining_s - margin_s)
