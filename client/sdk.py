"""The RaftWallet Python SDK: a synchronous client of the public gRPC API.

    with WalletClient(["127.0.0.1:50051", "127.0.0.1:50052"]) as wallet:
        wallet.create_account("alice", "USD")
        wallet.deposit("alice", "100.00", "USD")
        result = wallet.transfer("alice", "bob", "12.34", "USD")
        print(result.status, wallet.balance("bob").balance)

Answers are small frozen dataclasses; amounts are decimal strings in the
currency's major unit, always next to their `currency`. Failures raise the
exceptions of `client.errors`.

Exactly once: every write carries an id (a transaction id, or the request id of
an account creation); when the caller gives none the SDK generates a UUIDv7.
On a transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
RESOURCE_EXHAUSTED) the SDK resends the *same* request, with the same id, after
a bounded exponential backoff with jitter, to the next node, until
`retry_deadline_s`; the ledger deduplicates by id, so a resent write happens at
most once. A write that never gets a definite answer raises `OutcomeUnknown`
with its id. Other statuses are never retried.

Deadlines: a call ends within max(`timeout_s`, `retry_deadline_s`). Each attempt
gets a slice of that, min(`timeout_s`, what is left). Before an attempt at a node
that has not answered lately, the client asks it for its health (the standard
gRPC health check: a few bytes, no credentials) and waits at most
min(`probe_timeout_s`, what is left): a node that does not answer (down, paused,
cut off) is passed over with nothing sent. Probes are made on the first pass over
the nodes only: after that the request itself goes out, so that a node too busy
to answer a health check that fast still gets it. A node that holds an attempt
for its whole slice is passed over too, and the next node is tried. An attempt
that timed out is an unknown outcome until a later attempt answers; as every
attempt carries the same id, that answer is the write's one outcome. Nodes that
failed an attempt are tried after the others for `SUSPECT_S`, so a paused node
costs a call one probe or one slice, not every call.

Routing is an optimisation (any node accepts any request): the client asks
several nodes at once for the cluster map (`GetClusterMap`, answered from every
node's memory; the first answer ends the wait, the newest map version wins), so
that one answering seed is enough; then it learns each partition's leader from
`ClusterStatus`, sends a request for an account to its partition leader first,
and falls back to the other nodes. If `ClusterStatus` fails, it routes by the
map's preferred leaders; without a map, it simply uses the targets.

Authentication: `token=` is sent to WalletService and `admin_token=` to
AdminService as `authorization: Bearer ...` metadata (ClusterStatus needs the
admin token; without it the client routes by the map's preferred leaders);
`tls=TlsOptions(...)` makes every channel TLS (`client.auth`).

`client.aio.AsyncWalletClient` offers the same methods on grpc.aio.
"""

from __future__ import annotations

import functools
import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import grpc
from google.protobuf.message import Message

from client.auth import Credentials, TlsOptions
from client.errors import (
    OutcomeUnknown,
    Unavailable,
    WalletError,
    from_rpc_error,
    is_retryable,
)
from ledger.routing import partition_of
from proto.wallet.v1 import wallet_pb2 as pb

__all__ = [
    "Account",
    "Balance",
    "BatchResult",
    "ClusterMapView",
    "ClusterStatus",
    "Consistency",
    "MovementResult",
    "NodeInfo",
    "PartitionInfo",
    "ReplicaInfo",
    "Route",
    "TransferPage",
    "TransferRecord",
    "TransferResult",
    "TransferSpec",
    "TransferStatus",
    "TransferStep",
    "WalletClient",
    "new_id",
    "normalize_targets",
    "route_of",
]

DEFAULT_TIMEOUT_S = 3.0
"""Deadline of one attempt of one call: long enough for a partition to elect a new leader
(1 to 2.5 s) while the node waits, short enough that a paused node holding the attempt
costs the call one slice of its deadline before the next node is tried."""

DEFAULT_RETRY_DEADLINE_S = 30.0
"""How long a call keeps retrying a transient failure, from its first attempt."""

DEFAULT_PROBE_TIMEOUT_S = 1.0
"""How long the health check before an attempt at a node that has not answered lately may
take; a node silent that long (down, paused, cut off) is passed over with nothing sent."""

PROBE_PATH = "/grpc.health.v1.Health/Check"
"""The probe: every node serves the standard gRPC health check without credentials. Any
answer (even UNIMPLEMENTED from a server without it) shows that the node is there."""

DISCOVERY_TIMEOUT_S = 1.0
"""Deadline of each GetClusterMap of a discovery round (every node answers it from memory)."""

DISCOVERY_FANOUT_MAX = 8
"""Most nodes one discovery round asks at once."""

SUSPECT_S = 10.0
"""A node that failed an attempt (no connection, no answer in time) is tried after the
other nodes for this long, then like a node never tried."""

RETRY_BACKOFF_S_BASE = 0.05
"""Backoff before the first retry; it doubles per retry up to RETRY_BACKOFF_S_MAX."""

RETRY_BACKOFF_S_MAX = 1.0
"""Longest wait between two attempts."""

RETRY_ATTEMPT_S_MIN = 0.05
"""A retry is only made if at least this much of the retry deadline is left for it; no
attempt or probe gets less."""

ROUTE_REFRESH_S_MIN = 1.0
"""Least time between two route look-ups (a discovery round, then ClusterStatus)."""

ROUTE_LOOKUP_TIMEOUT_S_MAX = 2.0
"""Deadline of a ClusterStatus look-up made for routing (never retried). More than the
node's own 1 s wait for its peers' views, so that paused peers do not fail it."""

MAX_CHANNELS = 64
"""Most channels one client keeps open (targets first, then learnt leader addresses)."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message sent or received (64 MiB)."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Ping an idle-looking connection during a call every 60 s; give up after 20 s.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect to a restarted node within seconds, not the default two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

Consistency = Literal["linearizable", "stale"]


# --- ids ------------------------------------------------------------------------------


class _Uuid7Generator:
    """UUIDv7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter, then 62 random bits.

    Ids generated by one process are strictly increasing, even within one
    millisecond or if the clock steps back (the counter carries into the time).
    """

    _COUNTER_MAX = 0xFFF

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._counter = secrets.randbits(11)  # random start, room to count up
            else:
                self._counter += 1
                if self._counter > self._COUNTER_MAX:
                    self._last_ms += 1
                    self._counter = secrets.randbits(11)
            unix_ms, counter = self._last_ms, self._counter
        value = (
            (unix_ms & ((1 << 48) - 1)) << 80
            | 0x7 << 76
            | counter << 64
            | 0b10 << 62
            | secrets.randbits(62)
        )
        return str(uuid.UUID(int=value))


new_id: Callable[[], str] = _Uuid7Generator()
"""A new UUIDv7 as a canonical lower-case string (time-ordered, unique)."""


def normalize_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """'a:1,b:2' or ['a:1', 'b:2,c:3'] -> ('a:1', 'b:2', 'c:3'), without duplicates."""
    items = [targets] if isinstance(targets, str) else list(targets)
    result: list[str] = []
    for item in items:
        for part in item.split(","):
            address = part.strip()
            if address and address not in result:
                result.append(address)
    if not result:
        raise ValueError("at least one target HOST:PORT is needed")
    return tuple(result)


# --- answers --------------------------------------------------------------------------


class TransferStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    """Committed and final: the money moved."""
    FAILED = "FAILED"
    """Final: nothing moved (or a cross-partition debit was compensated); see `reason`."""
    PENDING = "PENDING"
    """Debited on the source, credit in flight; ask `get_transfer` later."""
    UNSPECIFIED = "UNSPECIFIED"
    """The server sent no status (or one this SDK does not know)."""


_STATUS_OF_PB: dict[int, TransferStatus] = {
    pb.SUCCEEDED: TransferStatus.SUCCEEDED,
    pb.FAILED: TransferStatus.FAILED,
    pb.PENDING: TransferStatus.PENDING,
}


def _status(value: int) -> TransferStatus:
    return _STATUS_OF_PB.get(value, TransferStatus.UNSPECIFIED)


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    currency: str
    position: int
    request_id: str


@dataclass(frozen=True, slots=True)
class MovementResult:
    """The outcome of a deposit or a withdrawal; `balance` is the balance after it."""

    transaction_id: str
    status: TransferStatus
    reason: str
    account_id: str
    amount: str
    currency: str
    balance: str
    position: int


@dataclass(frozen=True, slots=True)
class TransferResult:
    transaction_id: str
    status: TransferStatus
    reason: str
    """The ledger reason (a `ledger.results.Code` name) when FAILED, else ""."""
    message: str
    from_account: str
    to_account: str
    amount: str
    currency: str
    position: int
    """Log position of the source partition that decided the outcome."""


@dataclass(frozen=True, slots=True)
class TransferSpec:
    """One transfer of a batch; a missing transaction_id is generated."""

    from_account: str
    to_account: str
    amount: str
    currency: str
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    results: tuple[TransferResult, ...]
    """One result per spec, in order."""
    succeeded: int
    failed: int
    pending: int


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    balance: str
    currency: str
    position: int
    stale: bool


@dataclass(frozen=True, slots=True)
class TransferStep:
    name: str
    at_ms: int
    position: int
    partition: int


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A transfer as the ledger remembers it (GetTransfer, ListTransfers)."""

    transaction_id: str
    from_account: str
    to_account: str
    amount: str
    currency: str
    status: TransferStatus
    reason: str
    steps: tuple[TransferStep, ...]
    stale: bool


@dataclass(frozen=True, slots=True)
class TransferPage:
    transfers: tuple[TransferRecord, ...]
    next_page_token: str
    """Pass it back to get the next page; "" when this is the last page."""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    node_id: str
    match_index: int
    lag: int


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    leader_node_id: str
    leader_address: str
    term: int
    commit_index: int
    applied_position: int
    replicas: tuple[ReplicaInfo, ...]
    money_in_flight: str
    outbox_depth: int
    last_snapshot_position: int
    state_hash: str


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    up: bool
    partitions: tuple[int, ...]
    leader_of: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    partition_count: int
    partitions: tuple[PartitionInfo, ...]
    nodes: tuple[NodeInfo, ...]
    map_version: int = 0
    membership_differences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """Where an account lives: its partition and that partition's leader ("" if none)."""

    account_id: str
    partition: int
    partition_count: int
    leader_node_id: str
    leader_address: str


def _record(r: pb.GetTransferResponse) -> TransferRecord:
    return TransferRecord(
        transaction_id=r.transaction_id,
        from_account=r.from_account,
        to_account=r.to_account,
        amount=r.amount,
        currency=r.currency,
        status=_status(r.status),
        reason=r.reason,
        steps=tuple(TransferStep(s.name, s.at_ms, s.position, s.partition) for s in r.steps),
        stale=r.stale,
    )


def _cluster_status(r: pb.ClusterStatusResponse) -> ClusterStatus:
    return ClusterStatus(
        partition_count=r.partition_count,
        partitions=tuple(
            PartitionInfo(
                partition=p.partition,
                leader_node_id=p.leader_node_id,
                leader_address=p.leader_address,
                term=p.term,
                commit_index=p.commit_index,
                applied_position=p.applied_position,
                replicas=tuple(ReplicaInfo(x.node_id, x.match_index, x.lag) for x in p.replicas),
                money_in_flight=p.money_in_flight,
                outbox_depth=p.outbox_depth,
                last_snapshot_position=p.last_snapshot_position,
                state_hash=p.state_hash,
            )
            for p in r.partitions
        ),
        nodes=tuple(
            NodeInfo(n.node_id, n.address, n.up, tuple(n.partitions), tuple(n.leader_of))
            for n in r.nodes
        ),
        map_version=r.map_version,
        membership_differences=tuple(r.membership_differences),
    )


def route_of(status: ClusterStatus, account_id: str) -> Route:
    """The partition of `account_id` (ledger.routing.partition_of) and its leader."""
    if status.partition_count < 1:
        raise Unavailable(grpc.StatusCode.UNAVAILABLE, "the cluster reports no partitions yet")
    partition = partition_of(account_id, status.partition_count)
    leader = next((p for p in status.partitions if p.partition == partition), None)
    return Route(
        account_id=account_id,
        partition=partition,
        partition_count=status.partition_count,
        leader_node_id=leader.leader_node_id if leader else "",
        leader_address=leader.leader_address if leader else "",
    )


# --- operations: one request, how to route it, how to read its answer ----------------

T = TypeVar("T")

_WALLET = "/raftwallet.wallet.v1.WalletService/"
_ADMIN = "/raftwallet.wallet.v1.AdminService/"


@dataclass(frozen=True)
class _Op(Generic[T]):
    """One call: shared by the sync and the asyncio client."""

    path: str
    request: Message
    response_type: type[Message]
    convert: Callable[[Any], T]
    account: str | None = None
    """Send it to this account's partition leader first."""
    ids: tuple[str, ...] = ()
    """The ids of a write; a write whose retries run out raises OutcomeUnknown."""

    def exhausted(self, error: WalletError) -> WalletError:
        if not self.ids:
            return error
        return OutcomeUnknown(error.status, error.message, self.ids[0], self.ids, error.reason)


def _op_create_account(account_id: str, currency: str, request_id: str | None) -> _Op[Account]:
    rid = new_id() if request_id is None else request_id
    return _Op(
        _WALLET + "CreateAccount",
        pb.CreateAccountRequest(account_id=account_id, currency=currency, request_id=rid),
        pb.CreateAccountResponse,
        lambda r: Account(r.account_id or account_id, r.currency or currency, r.position, rid),
        account=account_id,
        ids=(rid,),
    )


def _op_movement(
    kind: Literal["Deposit", "Withdraw"],
    account_id: str,
    amount: str,
    currency: str,
    transaction_id: str | None,
) -> _Op[MovementResult]:
    tid = new_id() if transaction_id is None else transaction_id
    request_type = pb.DepositRequest if kind == "Deposit" else pb.WithdrawRequest
    return _Op(
        _WALLET + kind,
        request_type(account_id=account_id, amount=amount, currency=currency, transaction_id=tid),
        pb.MoneyMovementResponse,
        lambda r: MovementResult(
            transaction_id=r.transaction_id or tid,
            status=_status(r.status),
            reason=r.reason,
            account_id=account_id,
            amount=amount,
            currency=currency,
            balance=r.balance,
            position=r.position,
        ),
        account=account_id,
        ids=(tid,),
    )


def _transfer_request(spec: TransferSpec) -> pb.TransferRequest:
    return pb.TransferRequest(
        from_account=spec.from_account,
        to_account=spec.to_account,
        amount=spec.amount,
        currency=spec.currency,
        transaction_id=new_id() if spec.transaction_id is None else spec.transaction_id,
    )


def _transfer_result(
    request: pb.TransferRequest, status: TransferStatus, reason: str, message: str, position: int
) -> TransferResult:
    return TransferResult(
        transaction_id=request.transaction_id,
        status=status,
        reason=reason,
        message=message,
        from_account=request.from_account,
        to_account=request.to_account,
        amount=request.amount,
        currency=request.currency,
        position=position,
    )


def _op_transfer(spec: TransferSpec) -> _Op[TransferResult]:
    request = _transfer_request(spec)
    return _Op(
        _WALLET + "Transfer",
        request,
        pb.TransferResponse,
        lambda r: _transfer_result(request, _status(r.status), r.reason, r.message, r.position),
        account=request.from_account,
        ids=(request.transaction_id,),
    )


def _op_transfer_batch(specs: Sequence[TransferSpec]) -> _Op[BatchResult]:
    requests = [_transfer_request(spec) for spec in specs]
    if not requests:
        raise ValueError("transfer_batch needs at least one transfer")

    def convert(r: pb.TransferBatchResponse) -> BatchResult:
        if len(r.statuses) != len(requests):
            raise WalletError(
                grpc.StatusCode.INTERNAL,
                f"batch answer has {len(r.statuses)} statuses for {len(requests)} transfers",
            )
        results = tuple(
            _transfer_result(req, _status(st), r.reasons.get(i, ""), "", 0)
            for i, (req, st) in enumerate(zip(requests, r.statuses, strict=True))
        )
        return BatchResult(results, r.succeeded, r.failed, r.pending)

    return _Op(
        _WALLET + "TransferBatch",
        pb.TransferBatchRequest(transfers=requests),
        pb.TransferBatchResponse,
        convert,
        account=requests[0].from_account,
        ids=tuple(req.transaction_id for req in requests),
    )


def _consistency(value: str) -> pb.Consistency:
    if value == "linearizable":
        return pb.LINEARIZABLE
    if value == "stale":
        return pb.STALE
    raise ValueError(f"consistency must be 'linearizable' or 'stale', not {value!r}")


def _op_balance(account_id: str, consistency: str, min_position: int) -> _Op[Balance]:
    return _Op(
        _WALLET + "GetBalance",
        pb.GetBalanceRequest(
            account_id=account_id,
            consistency=_consistency(consistency),
            min_position=min_position,
        ),
        pb.GetBalanceResponse,
        lambda r: Balance(r.account_id or account_id, r.balance, r.currency, r.position, r.stale),
        account=account_id,
    )


def _op_balance_at(account_id: str, position: int | None, time_ms: int | None) -> _Op[Balance]:
    request = pb.GetBalanceAtRequest(account_id=account_id)
    if position is not None:
        request.position = position
    else:
        request.time_ms = 0 if time_ms is None else time_ms
    return _Op(
        _WALLET + "GetBalanceAt",
        request,
        pb.GetBalanceResponse,
        lambda r: Balance(r.account_id or account_id, r.balance, r.currency, r.position, r.stale),
        account=account_id,
    )


def _op_get_transfer(
    from_account: str, transaction_id: str, consistency: str
) -> _Op[TransferRecord]:
    return _Op(
        _WALLET + "GetTransfer",
        pb.GetTransferRequest(
            from_account=from_account,
            transaction_id=transaction_id,
            consistency=_consistency(consistency),
        ),
        pb.GetTransferResponse,
        _record,
        account=from_account,
    )


def _op_abort_transfer(from_account: str, transaction_id: str) -> _Op[TransferRecord]:
    return _Op(
        _WALLET + "AbortTransfer",
        pb.AbortTransferRequest(from_account=from_account, transaction_id=transaction_id),
        pb.GetTransferResponse,
        _record,
        account=from_account,
    )


def _op_list_transfers(
    account_id: str, page_token: str, limit: int, newest_first: bool
) -> _Op[TransferPage]:
    return _Op(
        _WALLET + "ListTransfers",
        pb.ListTransfersRequest(
            account_id=account_id,
            page_token=page_token,
            limit=limit,
            order=pb.NEWEST_FIRST if newest_first else pb.OLDEST_FIRST,
        ),
        pb.ListTransfersResponse,
        lambda r: TransferPage(tuple(_record(t) for t in r.transfers), r.next_page_token),
        account=account_id,
    )


@dataclass(frozen=True, slots=True)
class ClusterMapView:
    """The cluster map as a node serves it (GetClusterMap): membership, versioned.

    `groups[p]` lists partition p's replicas as (node id, state), preferred leader
    first; state is "voter", "joining", "seeded" or "leaving". `metadata_group` is the same
    for the group that holds the map.
    """

    version: int
    name: str
    partition_count: int
    node_addresses: dict[str, str]
    """node id -> gRPC address"""
    groups: tuple[tuple[tuple[str, str], ...], ...]
    metadata_group: tuple[tuple[str, str], ...]

    @classmethod
    def from_json(cls, map_json: str) -> ClusterMapView:
        document = json.loads(map_json)
        count = int(document["partition_count"])
        groups = tuple(tuple((str(n), str(s)) for n, s in slots)
                       for slots in document["groups"])
        return cls(
            version=int(document["version"]), name=str(document["name"]),
            partition_count=count,
            node_addresses={n["id"]: f"{n['host']}:{n['grpc_port']}" for n in document["nodes"]},
            groups=groups[:count], metadata_group=groups[count])

    def preferred_leader(self, partition: int) -> str | None:
        """gRPC address of the partition's first voter (where its leader is kept)."""
        for node_id, state in self.groups[partition]:
            if state == "voter":
                return self.node_addresses.get(node_id)
        return None


def _op_cluster_map() -> _Op[ClusterMapView]:
    return _Op(
        _WALLET + "GetClusterMap",
        pb.GetClusterMapRequest(),
        pb.GetClusterMapResponse,
        lambda r: ClusterMapView.from_json(r.map_json),
    )


def _op_cluster_status() -> _Op[pb.ClusterStatusResponse]:
    return _Op(
        _ADMIN + "ClusterStatus",
        pb.ClusterStatusRequest(),
        pb.ClusterStatusResponse,
        lambda r: r,
    )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


# --- retries and routing, shared by both clients ------------------------------------
#
# Everything here decides and remembers; nothing sends. Each client drives the same
# decisions with its own transport (`_send`, `_discover`): grpc's blocking calls for
# WalletClient, grpc.aio for AsyncWalletClient.


class _Retry:
    """The clock of one call: its deadline, each attempt's slice of it, the backoff.

    The call ends by max(timeout_s, retry_deadline_s) from its start. Each attempt gets
    min(timeout_s, what is left) and each probe min(probe_timeout_s, what is left),
    never less than RETRY_ATTEMPT_S_MIN; a retry is only started while retry_deadline_s
    leaves room for it (0: never retry).
    """

    def __init__(self, timeout_s: float, retry_deadline_s: float) -> None:
        now = time.monotonic()
        self.timeout_s = timeout_s
        self.deadline = now + max(timeout_s, retry_deadline_s)
        self.retry_deadline = now + retry_deadline_s
        self.attempt = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def slice(self, limit_s: float) -> float:
        """min(limit_s, what the call's deadline leaves), at least RETRY_ATTEMPT_S_MIN."""
        return max(RETRY_ATTEMPT_S_MIN, min(limit_s, self.remaining()))

    def attempt_timeout(self) -> float:
        """The deadline of the next attempt (after its probe, if any)."""
        return self.slice(self.timeout_s)

    def backoff(self) -> float | None:
        """Seconds to wait before the next attempt, or None when the deadline is too near."""
        ceiling = min(RETRY_BACKOFF_S_MAX, RETRY_BACKOFF_S_BASE * (1 << min(self.attempt, 16)))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if self.retry_deadline - time.monotonic() - delay < RETRY_ATTEMPT_S_MIN:
            return None
        self.attempt += 1
        return delay


_NO_ANSWER: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
})


def _node_answered(error: WalletError) -> bool:
    """Whether the node itself sent this status (so it is up), rather than the transport
    saying it could not reach the node or heard nothing back in time. A node's own
    UNAVAILABLE (no leader, outcome unknown) always carries a ledger reason."""
    return bool(error.reason) or error.status not in _NO_ANSWER


class _NodeHealth:
    """What the client saw of each node lately, to choose where the next attempt goes.

    A node is *up* once it answered anything (a refusal too): attempts there skip the
    probe. It is *suspect* for SUSPECT_S after an attempt or probe it did not answer
    (no connection, or no answer in time): the other nodes are tried first. Otherwise
    it is unknown. At most one entry per address a client ever tried (MAX_CHANNELS).
    """

    UP, UNKNOWN, SUSPECT = 0, 1, 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up: set[str] = set()
        self._suspect_until: dict[str, float] = {}

    def answered(self, address: str) -> None:
        with self._lock:
            self._up.add(address)
            self._suspect_until.pop(address, None)

    def failed(self, address: str) -> None:
        with self._lock:
            self._up.discard(address)
            self._suspect_until[address] = time.monotonic() + SUSPECT_S

    def record(self, address: str, error: WalletError) -> None:
        """A failed call at `address`: the node is up if it sent the status itself."""
        if _node_answered(error):
            self.answered(address)
        else:
            self.failed(address)

    def is_up(self, address: str) -> bool:
        with self._lock:
            return address in self._up

    def rank(self, address: str) -> int:
        """UP, UNKNOWN or SUSPECT: the lower, the sooner the node is tried."""
        with self._lock:
            if address in self._up:
                return self.UP
            until = self._suspect_until.get(address)
        if until is not None and time.monotonic() < until:
            return self.SUSPECT
        return self.UNKNOWN


def _probe_refusal(address: str, error: WalletError, waited_s: float) -> WalletError | None:
    """None when a failed probe still shows the node is there (it answered, if only to
    refuse), else why the attempt goes elsewhere with nothing sent."""
    if _node_answered(error):
        return None
    detail = (f"no answer to a health check within {waited_s:.2g} s"
              if error.status is grpc.StatusCode.DEADLINE_EXCEEDED
              else f"health check failed ({error})")
    return Unavailable(grpc.StatusCode.UNAVAILABLE, f"{address}: {detail}; nothing was sent")


def _as_wallet_error(error: BaseException) -> WalletError:
    """A failed call's exception as a WalletError (a grpc future can also be cancelled)."""
    if isinstance(error, WalletError):
        return error
    if isinstance(error, grpc.RpcError):
        return from_rpc_error(error)
    return WalletError(grpc.StatusCode.CANCELLED, f"{type(error).__name__}: {error}")


class _Discovery:
    """One round of asking several nodes at once for the cluster map.

    The round is over at the first map (or once every node asked has failed): one
    answering seed is enough. Answers that arrive later still count: the routes keep
    the newest map version, and every answer or failure updates the nodes' health.
    Thread-safe: the sync client records the answers from gRPC's threads.
    """

    def __init__(self, addresses: list[str], routes: _RouteTable, health: _NodeHealth) -> None:
        self.addresses = addresses
        self._routes = routes
        self._health = health
        self._lock = threading.Lock()
        self._pending = set(addresses)
        self.first: str | None = None
        """The node that sent the first map: up, and the one to ask for ClusterStatus."""

    def answered(self, address: str, response: pb.GetClusterMapResponse) -> bool:
        """Record a map; True when the round is over."""
        self._health.answered(address)
        try:
            view = ClusterMapView.from_json(response.map_json)
        except (ValueError, KeyError, TypeError, IndexError):
            return self._settle(address, got_map=False)  # a map this SDK cannot read
        self._routes.update_map(view)
        return self._settle(address, got_map=True)

    def failed(self, address: str, error: BaseException) -> bool:
        """Record a failure (an old server without the map, a node down); True when over."""
        self._health.record(address, _as_wallet_error(error))
        return self._settle(address, got_map=False)

    def over(self) -> bool:
        with self._lock:
            return self.first is not None or not self._pending

    def _settle(self, address: str, got_map: bool) -> bool:
        with self._lock:
            self._pending.discard(address)
            if got_map and self.first is None:
                self.first = address
            return self.first is not None or not self._pending


class _RouteTable:
    """What the client learnt about the cluster; optional (any node accepts any request).

    From the cluster map (GetClusterMap, open to every client): the nodes, so that
    a client configured with one address finds the others, and each partition's
    preferred leader. From ClusterStatus (needs the admin token): the actual leaders.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._partition_count = 0
        self._leaders: dict[int, str] = {}
        self._preferred: dict[int, str] = {}
        self.cluster_map: ClusterMapView | None = None
        self._stale = True
        self._disabled = not enabled
        self._status_refused = False
        self._last_lookup = float("-inf")

    def update_map(self, view: ClusterMapView) -> None:
        with self._lock:
            if self.cluster_map is not None and view.version < self.cluster_map.version:
                return  # an older map from a node that has not caught up
            self.cluster_map = view
            self._partition_count = view.partition_count
            self._preferred = {p: a for p in range(view.partition_count)
                               if (a := view.preferred_leader(p)) is not None}
            if self._status_refused:
                self._stale = False

    def discovered(self) -> list[str]:
        """gRPC addresses of every node in the newest map seen."""
        with self._lock:
            view = self.cluster_map
        return [] if view is None else list(view.node_addresses.values())

    @property
    def wants_status(self) -> bool:
        return not self._status_refused

    def claim_refresh(self) -> bool:
        """True when the caller should look the routes up now (at most once per interval)."""
        with self._lock:
            now = time.monotonic()
            if self._disabled or not self._stale or now - self._last_lookup < ROUTE_REFRESH_S_MIN:
                return False
            self._last_lookup = now
            return True

    def update(self, status: pb.ClusterStatusResponse) -> None:
        with self._lock:
            self._partition_count = status.partition_count
            self._leaders = {
                p.partition: p.leader_address for p in status.partitions if p.leader_address
            }
            self._stale = False

    def lookup_failed(self, status: grpc.StatusCode) -> None:
        # A server without ClusterStatus, or one that does not let this client call it.
        if status in _ROUTES_REFUSED:
            with self._lock:
                self._status_refused = True  # route by the map's preferred leaders
                if self.cluster_map is None:
                    self._disabled = True  # no map either (an old server): use the targets

    def invalidate(self) -> None:
        with self._lock:
            self._stale = True

    def leader_for(self, account_id: str) -> str | None:
        with self._lock:
            if self._partition_count < 1:
                return None
            partition = partition_of(account_id, self._partition_count)
            return self._leaders.get(partition) or self._preferred.get(partition)


_ROUTES_REFUSED = frozenset({
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
})


class _ClientBase:
    """Targets, timeouts, routing, the nodes' health: everything of a client except its
    transport, which each client supplies (`_send`, `_discover`, channels)."""

    def __init__(
        self,
        targets: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        *,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        learn_routes: bool = True,
        token: str = "",
        admin_token: str = "",
        tls: TlsOptions | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if retry_deadline_s < 0:
            raise ValueError("retry_deadline_s must not be negative")
        if probe_timeout_s <= 0:
            raise ValueError("probe_timeout_s must be positive")
        self.targets = normalize_targets(targets)
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.probe_timeout_s = probe_timeout_s
        self._routes = _RouteTable(enabled=learn_routes)
        self._health = _NodeHealth()
        self._closed = False
        self._credentials = Credentials(token, admin_token, tls)

    def _has_channel(self, address: str) -> bool:
        raise NotImplementedError

    def _channel_count(self) -> int:
        raise NotImplementedError

    # -- where attempts go

    def _candidates(self, account: str | None) -> list[str]:
        """Every node an attempt may go to, best first: the account's partition leader
        (unless suspect), then the targets and the nodes learnt from the cluster map (a
        client given one address survives that node's loss, and finds nodes added
        later), nodes that answered lately before unknown ones before suspect ones,
        each group in the configured order."""
        others = list(self.targets)
        if len(others) < MAX_CHANNELS:
            known = set(others)
            learnt = [a for a in self._routes.discovered() if a not in known]
            others += learnt[:MAX_CHANNELS - len(others)]
        ranked = sorted(others, key=self._health.rank)  # stable: configured order kept
        leader = self._routes.leader_for(account) if account is not None else None
        if leader is None or not (self._has_channel(leader)
                                  or self._channel_count() < MAX_CHANNELS):
            return ranked
        rest = [a for a in ranked if a != leader]
        if self._health.rank(leader) == _NodeHealth.SUSPECT:
            return [*rest, leader]
        return [leader, *rest]

    def _pick(self, account: str | None, tried: set[str]) -> tuple[str, bool]:
        """The best candidate this call has not tried yet, and whether every candidate had
        been tried (the call then starts over; `tried` is the call's own set)."""
        candidates = self._candidates(account)
        fresh = [a for a in candidates if a not in tried]
        over = not fresh
        if over:
            tried.clear()
            fresh = candidates
        tried.add(fresh[0])
        return fresh[0], over

    def _probe_s(self, address: str, clock: _Retry) -> float | None:
        """How long to wait for `address`'s health check before an attempt there; None
        (no probe) when the node answered lately."""
        if self._health.is_up(address):
            return None
        return clock.slice(self.probe_timeout_s)

    # -- route look-ups

    def _new_discovery(self) -> _Discovery:
        """A discovery round over the best DISCOVERY_FANOUT_MAX nodes that are not
        suspect (over the suspect ones when no other is left)."""
        candidates = self._candidates(None)
        hopeful = [a for a in candidates if self._health.rank(a) != _NodeHealth.SUSPECT]
        return _Discovery((hopeful or candidates)[:DISCOVERY_FANOUT_MAX], self._routes,
                          self._health)

    def _status_address(self, discovery: _Discovery) -> str:
        """Where to ask ClusterStatus: the node that just sent the map, else the best one."""
        return discovery.first or self._pick(None, set())[0]

    def _status_failed(self, address: str, error: WalletError) -> None:
        self._health.record(address, error)
        self._routes.lookup_failed(error.status)

    def _status_answered(self, address: str, response: pb.ClusterStatusResponse) -> None:
        self._health.answered(address)
        self._routes.update(response)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the wallet client is closed")


class _Attempts:
    """One call's attempts: the node of each, whether to probe it first, and what a
    failure means. Both clients drive it the same way:

        attempts = _Attempts(client, op)
        while True:
            address = attempts.next()
            try: response = <probe for attempts.probe_s(), then send op within attempts.clock>
            except WalletError as error: <sleep attempts.failed(error)>; continue
            attempts.answered(); return op.convert(response)

    Probes are made on the first pass over the candidates only: once every node was
    tried, the request itself goes out, so a node too busy to answer a health check
    within probe_timeout_s still gets it.
    """

    def __init__(self, client: _ClientBase, op: _Op[Any]) -> None:
        self.clock = _Retry(client.timeout_s, client.retry_deadline_s)
        self._client = client
        self._op = op
        self._tried: set[str] = set()
        self._probing = True
        self.address = ""

    def next(self) -> str:
        self.address, over = self._client._pick(self._op.account, self._tried)
        if over:
            self._probing = False
        return self.address

    def probe_s(self) -> float | None:
        """How long to wait for the health check before this attempt (None: no probe)."""
        return self._client._probe_s(self.address, self.clock) if self._probing else None

    def answered(self) -> None:
        self._client._health.answered(self.address)

    def failed(self, error: WalletError) -> float:
        """Seconds to wait before the next attempt; raises what the call ends with when
        the error is final (a refusal) or the deadline is too near (`_Op.exhausted`: a
        write's outcome is then unknown)."""
        self._client._health.record(self.address, error)
        if not is_retryable(error):
            raise error
        self._client._routes.invalidate()  # the leader may have moved: look again
        delay = self.clock.backoff()
        if delay is None:
            final = self._op.exhausted(error)
            if final is error:
                raise error
            raise final from error
        return delay


class WalletClient(_ClientBase):
    """A synchronous, thread-safe RaftWallet client; one channel per node address, kept
    for the client's life.

    `timeout_s` is the deadline of each attempt, `retry_deadline_s` how long a call
    keeps retrying transient failures (0: never retry), `probe_timeout_s` how long
    the health check before an attempt at a node that has not answered lately may
    take (see "Deadlines" above). `learn_routes=False` makes the client never look routes up on
    its own (one-shot clients such as walletctl, where the look-up would cost more
    than it saves). `token`, `admin_token` and `tls`: see "Authentication" above.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        *,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        learn_routes: bool = True,
        token: str = "",
        admin_token: str = "",
        tls: TlsOptions | None = None,
    ) -> None:
        super().__init__(targets, timeout_s, retry_deadline_s,
                         probe_timeout_s=probe_timeout_s, learn_routes=learn_routes,
                         token=token, admin_token=admin_token, tls=tls)
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}

    # -- the API

    def create_account(
        self, account_id: str, currency: str, request_id: str | None = None
    ) -> Account:
        """Open an account; a retry with the same request_id returns the same answer."""
        return self._run(_op_create_account(account_id, currency, request_id))

    def deposit(
        self, account_id: str, amount: str, currency: str, transaction_id: str | None = None
    ) -> MovementResult:
        """Money in from the outside world."""
        return self._run(_op_movement("Deposit", account_id, amount, currency, transaction_id))

    def withdraw(
        self, account_id: str, amount: str, currency: str, transaction_id: str | None = None
    ) -> MovementResult:
        """Money out to the outside world."""
        return self._run(_op_movement("Withdraw", account_id, amount, currency, transaction_id))

    def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: str,
        currency: str,
        transaction_id: str | None = None,
    ) -> TransferResult:
        """Move `amount` from one account to another, exactly once per transaction_id."""
        spec = TransferSpec(from_account, to_account, amount, currency, transaction_id)
        return self._run(_op_transfer(spec))

    def transfer_batch(self, transfers: Sequence[TransferSpec]) -> BatchResult:
        """Several transfers in one request; one result per transfer, in order."""
        return self._run(_op_transfer_batch(transfers))

    def balance(
        self, account_id: str, consistency: Consistency = "linearizable", min_position: int = 0
    ) -> Balance:
        """The balance; "stale" reads from any replica (labelled), min_position waits for it."""
        return self._run(_op_balance(account_id, consistency, min_position))

    def balance_at(self, account_id: str, position: int | None = None,
                   time_ms: int | None = None) -> Balance:
        """The balance as it was right after a log position of its partition, or at a time
        (Unix ms), rebuilt from the event archive; `position` is where it was last set."""
        if (position is None) == (time_ms is None):
            raise ValueError("give exactly one of position and time_ms")
        return self._run(_op_balance_at(account_id, position, time_ms))

    def get_transfer(
        self, from_account: str, transaction_id: str, consistency: Consistency = "linearizable"
    ) -> TransferRecord:
        """A transfer by its key (source account, transaction id)."""
        return self._run(_op_get_transfer(from_account, transaction_id, consistency))

    def abort_transfer(self, from_account: str, transaction_id: str) -> TransferRecord:
        """Close an unknown outcome for good: the transfer's outcome if it was applied,
        else FAILED with reason ABORTED (and the original request is refused later)."""
        return self._run(_op_abort_transfer(from_account, transaction_id))

    def list_transfers(
        self, account_id: str, page_token: str = "", limit: int = 100, newest_first: bool = False
    ) -> TransferPage:
        """One page of an account's transfers."""
        return self._run(_op_list_transfers(account_id, page_token, limit, newest_first))

    def cluster_status(self) -> ClusterStatus:
        """Partitions (leader, term, indexes, replicas, state hash) and nodes."""
        response = self._run(_op_cluster_status())
        self._routes.update(response)
        return _cluster_status(response)

    def cluster_map(self) -> ClusterMapView:
        """The cluster map as the answering node knows it (also refreshes routing)."""
        view = self._run(_op_cluster_map())
        self._routes.update_map(view)
        return view

    def route(self, account_id: str) -> Route:
        """The account's partition (with the cluster's partition count) and its leader."""
        return route_of(self.cluster_status(), account_id)

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._callables.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> WalletClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport

    def _has_channel(self, address: str) -> bool:
        return address in self._channels

    def _channel_count(self) -> int:
        return len(self._channels)

    def _callable(self, address: str, path: str, response_type: type[Message] | None) -> Any:
        """The cached callable of `path` at `address` (None: raw bytes in and out)."""
        with self._lock:
            self._check_open()
            method = self._callables.get((address, path))
            if method is None:
                channel = self._channels.get(address)
                if channel is None:
                    tls = self._credentials.tls
                    channel = (
                        grpc.insecure_channel(address, options=CHANNEL_OPTIONS) if tls is None
                        else grpc.secure_channel(
                            address, tls.channel_credentials(), options=CHANNEL_OPTIONS)
                    )
                    self._channels[address] = channel
                method = channel.unary_unary(
                    path,
                    request_serializer=None if response_type is None else _serialize,
                    response_deserializer=None if response_type is None
                    else response_type.FromString,
                )
                self._callables[(address, path)] = method
            return method

    def _send(self, address: str, op: _Op[Any], clock: _Retry, limit_s: float,
              probe_s: float | None) -> Any:
        """One attempt of `op` at `address`: the health check first when probe_s is given
        (a node silent that long gets nothing), then the call, answered within
        clock.slice(limit_s). Any failure is raised as a WalletError."""
        call = self._callable(address, op.path, op.response_type)
        if probe_s is not None:
            probe = self._callable(address, PROBE_PATH, None)
            try:
                probe(b"", timeout=probe_s)
            except grpc.RpcError as rpc_error:
                refusal = _probe_refusal(address, from_rpc_error(rpc_error), probe_s)
                if refusal is not None:
                    raise refusal from rpc_error
        try:
            return call(op.request, timeout=clock.slice(limit_s),
                        metadata=self._credentials.metadata_for(op.path))
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error

    def _discover(self, discovery: _Discovery, timeout_s: float) -> None:
        """Ask every node of the round at once; return when the round is over or after
        timeout_s (the calls still running finish on their own, each within timeout_s)."""
        op = _op_cluster_map()
        over = threading.Event()

        def record(address: str, future: grpc.Future) -> None:
            try:
                response = future.result()
            except Exception as error:  # an RpcError, or cancelled by close()
                done = discovery.failed(address, error)
            else:
                done = discovery.answered(address, response)
            if done:
                over.set()

        for address in discovery.addresses:
            call = self._callable(address, op.path, op.response_type)
            future = call.future(op.request, timeout=timeout_s,
                                 metadata=self._credentials.metadata_for(op.path))
            future.add_done_callback(functools.partial(record, address))
        over.wait(timeout_s)

    def _refresh_routes(self, clock: _Retry) -> None:
        if not self._routes.claim_refresh():
            return
        discovery = self._new_discovery()
        self._discover(discovery, clock.slice(DISCOVERY_TIMEOUT_S))
        if not self._routes.wants_status:
            return
        address = self._status_address(discovery)
        try:
            response = self._send(address, _op_cluster_status(), clock,
                                  ROUTE_LOOKUP_TIMEOUT_S_MAX, self._probe_s(address, clock))
        except WalletError as error:
            self._status_failed(address, error)
            return
        self._status_answered(address, response)

    def _run(self, op: _Op[T]) -> T:
        attempts = _Attempts(self, op)
        while True:
            if op.account is not None:
                self._refresh_routes(attempts.clock)
            address = attempts.next()
            try:
                response = self._send(address, op, attempts.clock, self.timeout_s,
                                      attempts.probe_s())
            except WalletError as error:
                time.sleep(attempts.failed(error))
                continue
            attempts.answered()
            return op.convert(response)

