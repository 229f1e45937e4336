"""Ledger commands: the immutable records that travel through the replicated log.

One Raft log entry is an `Entry`: a batch of commands stamped by the leader.
Their binary form is defined in proto/ledger/v1/ledger.proto and produced by
`ledger.codec`. Everything non-deterministic (time, ids, the destination
partition) is decided before proposing and travels inside the command.
"""

from __future__ import annotations

from dataclasses import dataclass

ENTRY_VERSION = 1
"""Encoding version this code writes and reads (see ledger.proto)."""


@dataclass(frozen=True, slots=True)
class CreateAccount:
    account_id: str
    currency: str
    exponent: int
    request_id: bytes


@dataclass(frozen=True, slots=True)
class Deposit:
    account_id: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class Withdraw:
    account_id: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer whose two accounts live on the same partition: one atomic step."""

    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class DebitForTransfer:
    """Saga step 1 on the source partition: debit and record in the outbox."""

    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    destination_partition: int


@dataclass(frozen=True, slots=True)
class CreditForTransfer:
    """Saga step 2 on the destination: credit once per (source_partition, sequence)."""

    source_partition: int
    sequence: int
    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    source_resolved_through: int


@dataclass(frozen=True, slots=True)
class ResolveTransfer:
    """Saga step 3 on the source: settle when credited, else compensate with `reason`."""

    from_account: str
    transaction_id: bytes
    credited: bool
    reason: int


@dataclass(frozen=True, slots=True)
class Abort:
    """Record ABORTED for (account_id, transaction_id) unless it already has an outcome."""

    account_id: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class AbortCredit:
    """Operator force-fail on the destination: reject a credit not processed yet."""

    source_partition: int
    sequence: int


@dataclass(frozen=True, slots=True)
class LeaderStart:
    term: int
    node_id: str


@dataclass(frozen=True, slots=True)
class CloseAccount:
    account_id: str
    request_id: bytes


@dataclass(frozen=True, slots=True)
class PruneDedup:
    before_stamp_ms: int


@dataclass(frozen=True, slots=True)
class Barrier:
    """A no-op that orders a linearizable read after every earlier entry."""


Command = (
    CreateAccount
    | Deposit
    | Withdraw
    | Transfer
    | DebitForTransfer
    | CreditForTransfer
    | ResolveTransfer
    | Abort
    | AbortCredit
    | LeaderStart
    | CloseAccount
    | PruneDedup
    | Barrier
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry: commands applied in order, each with its own result."""

    stamp_ms: int
    commands: tuple[Command, ...]
    version: int = ENTRY_VERSION
