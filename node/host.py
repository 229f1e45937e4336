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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from ledger import commands as c
from ledger.results import EntryResult
from node.api import ApiError
from node.config import ClusterConfig
from node.history import History
from node.proposer import (
    Applied,
    NotApplied,
    Overloaded,
    ProposalError,
    Proposer,
    ProposerSettings,
)
from node.replica import PartitionReplica
from proto.wallet.v1 import wallet_pb2_grpc

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


@dataclass
class _PositionWaiters:
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


class NodeHost:
    def __init__(self, config: ClusterConfig, node_id: str,
                 replicas: dict[int, PartitionReplica], loop: asyncio.AbstractEventLoop,
                 proposer_settings: ProposerSettings) -> None:
        self.config = config
        self.node_id = node_id
        self.replicas = replicas
        self.loop = loop
        self.proposers = {p: Proposer(r, proposer_settings, loop) for p, r in replicas.items()}
        self._position_waiters = {p: _PositionWaiters() for p in replicas}
        self._channels: dict[str, grpc.aio.Channel] = {}
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
        box = self._position_waiters[partition]
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
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS)
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
