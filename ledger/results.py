"""Outcomes of ledger commands.

`Code` mirrors `raftwallet.ledger.v1.ResultCode` value for value (a test checks
it): the numbers are stored in the log and the archive, and the names are the
machine-readable reasons the API reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Code(IntEnum):
    OK = 1
    PENDING = 2
    ACCOUNT_NOT_FOUND = 3
    ACCOUNT_EXISTS = 4
    CURRENCY_MISMATCH = 5
    INSUFFICIENT_FUNDS = 6
    SAME_ACCOUNT = 7
    ACCOUNT_CLOSED = 8
    ID_CONFLICT = 9
    BALANCE_LIMIT = 10
    INVALID_AMOUNT = 11
    INVALID_ACCOUNT_ID = 12
    INVALID_CURRENCY = 13
    INVALID_TRANSACTION_ID = 14
    ABORTED = 15
    ACCOUNT_NOT_EMPTY = 16
    TRANSFER_IN_FLIGHT = 17
    UNKNOWN_TRANSFER = 18
    STALE_CREDIT = 19
    INVALID_PARTITION = 20
    INVALID_COMMAND = 21


CREDIT_REJECTIONS = frozenset(
    {
        Code.ACCOUNT_NOT_FOUND,
        Code.CURRENCY_MISMATCH,
        Code.ACCOUNT_CLOSED,
        Code.BALANCE_LIMIT,
        Code.ABORTED,
        Code.INVALID_ACCOUNT_ID,
    }
)
"""Definitive rejections a destination may record for a credit; each compensates."""


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one command. `replayed` is set when it came from the dedup table."""

    code: Code
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


# Results are immutable: share one instance per (code, replayed).
_RESULTS = {(code, replayed): Result(code, replayed) for code in Code for replayed in (False, True)}


def result(code: Code, replayed: bool = False) -> Result:
    return _RESULTS[(code, replayed)]


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What applying one log entry gave: its position, time, and a result per command."""

    position: int
    stamp_ms: int
    results: tuple[Result, ...]
