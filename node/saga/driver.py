"""The saga driver: moves cross-partition transfers from DEBITED to SETTLED or COMPENSATED.

It runs on every node and acts for each partition whose replica here leads.
All of a transfer's state lives in the replicated logs; the driver only reads
committed state and proposes the next step, so any process may crash at any
point and the next leader simply carries on:

1. A new leader first proposes `LeaderStart(term)`. When that entry applies,
   every entry of earlier terms has applied too, so the outbox it reads is
   complete; only then does it drive.
2. For each destination with open outbox entries, it sends one batch of
   `CreditForTransfer` commands (in sequence order, with the source's progress)
   to the destination partition: through the local proposer when this node
   hosts a replica of it, else by `PeerService.ApplyCredits` to a node that does.
3. It proposes one entry of `ResolveTransfer` commands for every credit whose
   outcome came back definitive: settle on OK, compensate on a recorded
   rejection. No answer, a timeout or an unknown outcome resolves nothing: the
   credit is sent again later (with bounded exponential backoff), because it
   may have been applied. It never compensates because of a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from ledger import commands as c
from ledger.results import CREDIT_REJECTIONS, Code
from ledger.saga import credits_for, resolutions
from node import failpoints
from node.api import ApiError
from node.host import NodeHost
from node.proposer import Applied
from node.security.auth import PEER_TOKEN_METADATA_KEY, peer_token
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

log = logging.getLogger(__name__)

DRIVE_IDLE_S = 0.5
"""How often an idle driver looks at its outboxes anyway (besides being woken)."""
STEP_TIMEOUT_S = 5.0
RETRY_BACKOFF_S_MIN = 0.05
RETRY_BACKOFF_S_MAX = 5.0
_DEFINITIVE = frozenset({Code.OK, *CREDIT_REJECTIONS})


def credit_outcomes(credits: Sequence[c.CreditForTransfer],
                    outcomes: Sequence[Applied | ApiError]) -> dict[int, Code]:
    """Sequence -> definitive outcome, for the credits whose outcome is recorded."""
    known: dict[int, Code] = {}
    for credit, outcome in zip(credits, outcomes, strict=True):
        if isinstance(outcome, Applied) and outcome.result.code in _DEFINITIVE:
            known[credit.sequence] = outcome.result.code
    return known


class SagaDriver:
    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leader_start_proposed: dict[int, int] = {}
        self._backoff_until: dict[tuple[int, int], float] = {}
        self._backoff_s: dict[tuple[int, int], float] = {}
        self._token = peer_token(host.config.secret) if host.config.secret else ""
        self.credits_sent = 0
        self.compensations = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="saga-driver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def wake(self) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                busy = await self.drive_once()
            except Exception:
                log.exception("saga driver round failed")
                busy = False
            if not busy:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=DRIVE_IDLE_S)
                except TimeoutError:
                    pass

    async def drive_once(self) -> bool:
        """One round over every led partition and destination; True if work was done."""
        pairs: list[tuple[int, int]] = []
        for partition, replica in self.host.replicas.items():
            if not replica.is_leader() or not self._leader_ready(partition):
                continue
            with replica.lock:
                destinations = [q for q, o in replica.state.outgoing.items() if o.open_by_sequence]
            now = time.monotonic()
            pairs.extend((partition, q) for q in destinations
                         if self._backoff_until.get((partition, q), 0.0) <= now)
        if not pairs:
            return False
        done = await asyncio.gather(*(self._drive(p, q) for p, q in pairs))
        return any(done)

    def _leader_ready(self, partition: int) -> bool:
        """True once this term's LeaderStart has applied; proposes it if needed."""
        replica = self.host.replicas[partition]
        term = int(replica.syncobj.raftCurrentTerm)
        with replica.lock:
            applied_term = replica.state.leader_term
        if applied_term >= term:
            return True
        if self._leader_start_proposed.get(partition) != term:
            self._leader_start_proposed[partition] = term
            try:
                proposal = self.host.proposers[partition].submit(
                    [c.LeaderStart(term, self.host.node_id)])

                def retry_if_failed(future: asyncio.Future[Any], partition: int = partition,
                                    term: int = term) -> None:
                    failed = future.cancelled() or future.exception() is not None
                    if failed and self._leader_start_proposed.get(partition) == term:
                        del self._leader_start_proposed[partition]  # propose it again

                proposal.add_done_callback(retry_if_failed)
            except Exception:
                self._leader_start_proposed.pop(partition, None)
                log.exception("LeaderStart proposal failed", extra={"partition": partition})
        return False

    async def _drive(self, source: int, destination: int) -> bool:
        replica = self.host.replicas[source]
        with replica.lock:
            credits = credits_for(replica.state, destination)
        if not credits:
            return False
        failpoints.hit("saga.before_credit")
        outcomes = await self._send_credits(source, destination, credits)
        self.credits_sent += len(credits)
        if not outcomes:
            self._back_off(source, destination)
            return False
        self._backoff_s.pop((source, destination), None)
        self._backoff_until.pop((source, destination), None)
        failpoints.hit("saga.before_resolve")
        with replica.lock:
            steps = resolutions(replica.state, destination, outcomes)
        compensations = sum(1 for step in steps if not step.credited)
        if compensations:
            failpoints.hit("saga.before_compensate")
            self.compensations += compensations
        if steps:
            await self.host.execute(source, steps, time.monotonic() + STEP_TIMEOUT_S)
        return True

    def _back_off(self, source: int, destination: int) -> None:
        key = (source, destination)
        delay_s = min(RETRY_BACKOFF_S_MAX,
                      self._backoff_s.get(key, RETRY_BACKOFF_S_MIN / 2) * 2)
        self._backoff_s[key] = delay_s
        self._backoff_until[key] = time.monotonic() + delay_s

    async def _send_credits(self, source: int, destination: int,
                            credits: list[c.CreditForTransfer]) -> dict[int, Code]:
        if self.host.hosts(destination):
            outcomes = await self.host.execute(destination, credits,
                                               time.monotonic() + STEP_TIMEOUT_S)
            return credit_outcomes(credits, outcomes)
        request = pb.ApplyCreditsRequest(
            source_partition=source, destination_partition=destination,
            source_resolved_through=credits[0].source_resolved_through,
            credits=[pb.Credit(sequence=x.sequence, from_account=x.from_account,
                               to_account=x.to_account, amount_minor=x.amount_minor,
                               currency=x.currency, transaction_id=x.transaction_id)
                     for x in credits])
        metadata = ((PEER_TOKEN_METADATA_KEY, self._token),)
        for node_id in self.host.config.replicas_of(destination):
            address = self.host.config.node(node_id).grpc_address
            stub = wallet_pb2_grpc.PeerServiceStub(self.host.channel(address))
            try:
                response = await stub.ApplyCredits(request, timeout=STEP_TIMEOUT_S,
                                                   metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                log.info("credit delivery failed", extra={
                    "source": source, "destination": destination, "peer": node_id,
                    "status": exc.code().name})
                continue
            return {credit.sequence: Code(code) for credit, code in
                    zip(credits, response.codes, strict=True) if code and Code(code) in _DEFINITIVE}
        return {}
