"""Domain events: what happened, named in the past tense.

The log stores commands; the state machine returns a result per command.
Events are derived from the pair (command, result), deterministically, so the
hot path builds no event objects and the archive and history can produce them
whenever they need them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import commands as c
from ledger.results import CREDIT_REJECTIONS, Code, Result


@dataclass(frozen=True, slots=True)
class AccountCreated:
    account_id: str
    currency: str


@dataclass(frozen=True, slots=True)
class AccountClosed:
    account_id: str


@dataclass(frozen=True, slots=True)
class Deposited:
    account_id: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class Withdrawn:
    account_id: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class TransferCompleted:
    """An intra-partition transfer: both legs in one step."""

    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class TransferDebited:
    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    destination_partition: int


@dataclass(frozen=True, slots=True)
class TransferCredited:
    source_partition: int
    sequence: int
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class CreditRejected:
    source_partition: int
    sequence: int
    transaction_id: bytes
    reason: Code


@dataclass(frozen=True, slots=True)
class TransferSettled:
    from_account: str
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class TransferCompensated:
    from_account: str
    transaction_id: bytes
    reason: Code


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command whose definitive failure was recorded (e.g. insufficient funds)."""

    account_id: str
    transaction_id: bytes
    reason: Code


Event = (
    AccountCreated | AccountClosed | Deposited | Withdrawn | TransferCompleted | TransferDebited
    | TransferCredited | CreditRejected | TransferSettled | TransferCompensated | Rejected
)

_RECORDED_FAILURES = frozenset({Code.INSUFFICIENT_FUNDS, Code.BALANCE_LIMIT, Code.ABORTED})


def events_of(command: c.Command, outcome: Result) -> tuple[Event, ...]:
    """The events a command produced, given its result; () when it changed nothing."""
    if outcome.replayed:
        return ()
    code = outcome.code
    match command:
        case c.CreateAccount() if code is Code.OK:
            return (AccountCreated(command.account_id, command.currency),)
        case c.CloseAccount() if code is Code.OK:
            return (AccountClosed(command.account_id),)
        case c.Deposit() if code is Code.OK:
            return (Deposited(command.account_id, command.amount_minor, command.currency,
                              command.transaction_id),)
        case c.Withdraw() if code is Code.OK:
            return (Withdrawn(command.account_id, command.amount_minor, command.currency,
                              command.transaction_id),)
        case c.Transfer() if code is Code.OK:
            return (TransferCompleted(command.from_account, command.to_account,
                                      command.amount_minor, command.currency,
                                      command.transaction_id),)
        case c.DebitForTransfer() if code is Code.PENDING:
            return (TransferDebited(command.from_account, command.to_account,
                                    command.amount_minor, command.currency,
                                    command.transaction_id, command.destination_partition),)
        case c.CreditForTransfer() if code is Code.OK:
            return (TransferCredited(command.source_partition, command.sequence,
                                     command.to_account, command.amount_minor, command.currency,
                                     command.transaction_id),)
        case c.CreditForTransfer() if code in CREDIT_REJECTIONS:
            return (CreditRejected(command.source_partition, command.sequence,
                                   command.transaction_id, code),)
        case c.ResolveTransfer() if code is Code.OK and command.credited:
            return (TransferSettled(command.from_account, command.transaction_id),)
        case c.ResolveTransfer() if code is Code.OK:
            return (TransferCompensated(command.from_account, command.transaction_id,
                                        Code(command.reason)),)
        case c.Deposit() | c.Withdraw() | c.Abort() if code in _RECORDED_FAILURES:
            return (Rejected(command.account_id, command.transaction_id, code),)
        case c.Transfer() | c.DebitForTransfer() if code in _RECORDED_FAILURES:
            return (Rejected(command.from_account, command.transaction_id, code),)
        case c.AbortCredit() if code is Code.ABORTED:
            return (CreditRejected(command.source_partition, command.sequence, b"", code),)
    return ()
