"""The read side: balances as of any moment, and each account's transfers, from the archive.

A `History` follows one replica's event archive with a shadow `StateMachine`:
it replays each archived entry once (lazily, when a history request arrives)
and remembers, per account, every change of its balance (position, leader
time, balance after) and every transfer it took part in, in log order. Both
lists only grow, so a page token (an index into the list) stays valid while
new transfers arrive.

Memory: a second copy of the partition's state plus about three small tuples
per transfer. It is built on first use, in a worker thread, never on the Raft
tick thread.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ledger import commands as c
from ledger.codec import decode_entry
from ledger.results import CREDIT_REJECTIONS, Code
from ledger.state import Balance, StateMachine
from node.archive.event_archive import EventArchive

PAGE_LIMIT_MAX = 1_000


class HistoryUnavailable(Exception):
    """This replica's archive does not hold the whole history (it lags its state)."""


@dataclass(frozen=True, slots=True)
class TransferRef:
    """One transfer an account took part in, where it entered this partition's log."""

    position: int
    stamp_ms: int
    sent: bool
    from_account: str
    to_account: str
    transaction_id: bytes
    amount_minor: int
    currency: str
    source_partition: int
    final_code: int | None
    """The final outcome once this partition's log decided it (None while in flight);
    it stays known after the dedup record is pruned."""


class History:
    def __init__(self, archive: EventArchive, partition: int) -> None:
        self._archive = archive
        self._partition = partition
        self._shadow = StateMachine(partition)
        self._lock = threading.Lock()
        # account -> ascending positions, and the matching (stamp_ms, balance_minor)
        self._positions: dict[str, list[int]] = {}
        self._stamps: dict[str, list[int]] = {}
        self._balances: dict[str, list[int]] = {}
        self._transfers: dict[str, list[TransferRef]] = {}
        # (from_account, transaction_id) -> (account, index) of a sent ref still in flight
        self._in_flight: dict[tuple[str, bytes], tuple[str, int]] = {}

    @property
    def indexed_position(self) -> int:
        return self._shadow.position

    def catch_up(self) -> int:
        """Replay archived entries not indexed yet; returns the position indexed through."""
        with self._lock:
            start = self._shadow.position + 1
            for record in self._archive.records(from_position=start):
                entry = decode_entry(record.entry_blob)
                applied = self._shadow.apply_entry(entry, record.log_index)
                if applied is None or applied.position != record.position:
                    raise HistoryUnavailable(
                        f"partition {self._partition}: archive position {record.position} "
                        "does not follow the history's replay")
                self._index(entry, applied.results, record.position, applied.stamp_ms)
            return self._shadow.position

    def _index(self, entry: c.Entry, results: tuple[object, ...], position: int,
               stamp_ms: int) -> None:
        touched: dict[str, None] = {}
        for command, result in zip(entry.commands, results, strict=True):
            code = result.code  # type: ignore[attr-defined]
            replayed = result.replayed  # type: ignore[attr-defined]
            for account in _accounts_of(command):
                touched[account] = None
            if replayed:
                continue
            if isinstance(command, c.ResolveTransfer) and code is Code.OK:
                key = (command.from_account, command.transaction_id)
                slot = self._in_flight.pop(key, None)
                if slot is not None:
                    account, index = slot
                    refs = self._transfers[account]
                    final = Code.OK if command.credited else Code(command.reason)
                    refs[index] = dataclasses.replace(refs[index], final_code=int(final))
                continue
            if isinstance(command, c.Transfer | c.DebitForTransfer) and code in (
                    Code.OK, Code.PENDING, Code.INSUFFICIENT_FUNDS):
                to_partition = (command.destination_partition
                                if isinstance(command, c.DebitForTransfer) else self._partition)
                final_code = None if code is Code.PENDING else int(code)
                ref = TransferRef(position, stamp_ms, True, command.from_account,
                                  command.to_account, command.transaction_id,
                                  command.amount_minor, command.currency, self._partition,
                                  final_code)
                sent = self._transfers.setdefault(command.from_account, [])
                if final_code is None:
                    self._in_flight[(command.from_account, command.transaction_id)] = (
                        command.from_account, len(sent))
                sent.append(ref)
                if code is Code.OK and to_partition == self._partition:
                    received = TransferRef(position, stamp_ms, False, command.from_account,
                                           command.to_account, command.transaction_id,
                                           command.amount_minor, command.currency,
                                           self._partition, int(Code.OK))
                    self._transfers.setdefault(command.to_account, []).append(received)
            elif isinstance(command, c.CreditForTransfer) and (
                    code is Code.OK or code in CREDIT_REJECTIONS) and code is not Code.ABORTED:
                ref = TransferRef(position, stamp_ms, False, command.from_account,
                                  command.to_account, command.transaction_id,
                                  command.amount_minor, command.currency,
                                  command.source_partition, int(code))
                if self._shadow.balance(command.to_account) is not None:
                    self._transfers.setdefault(command.to_account, []).append(ref)
        for account in touched:
            found = self._shadow.balance(account)
            if found is None:
                continue
            balances = self._balances.setdefault(account, [])
            if balances and balances[-1] == found.balance_minor:
                continue  # unchanged (e.g. a refused command): the timeline keeps only changes
            self._positions.setdefault(account, []).append(position)
            self._stamps.setdefault(account, []).append(stamp_ms)
            balances.append(found.balance_minor)

    def balance_at(self, account_id: str, position: int | None = None,
                   time_ms: int | None = None) -> tuple[Balance, int] | None:
        """The balance right after `position` (or the last entry stamped at or before
        `time_ms`), and the position it was set at; None if the account did not exist."""
        with self._lock:
            account = self._shadow.balance(account_id)
            if account is None:
                return None
            if position is not None:
                index = bisect.bisect_right(self._positions.get(account_id, []), position) - 1
            else:
                assert time_ms is not None
                index = bisect.bisect_right(self._stamps.get(account_id, []), time_ms) - 1
            if index < 0:
                return None  # every account's timeline starts at its creation (balance 0)
            return Balance(account_id, self._balances[account_id][index], account.currency,
                           account.exponent, account.status), self._positions[account_id][index]

    def transfers(self, account_id: str, start: int | None, limit: int,
                  newest_first: bool) -> tuple[list[TransferRef], int | None]:
        """A page of the account's transfers from list index `start`; and the next index."""
        with self._lock:
            refs = self._transfers.get(account_id, [])
            limit = max(1, min(limit or 100, PAGE_LIMIT_MAX))
            if newest_first:
                first = len(refs) - 1 if start is None else min(start, len(refs) - 1)
                indexes: Iterator[int] = iter(range(first, max(first - limit, -1), -1))
                page = [refs[i] for i in indexes]
                following = first - len(page)
                return page, following if following >= 0 else None
            first = 0 if start is None else start
            page = refs[first:first + limit]
            following = first + len(page)
            return page, following if following < len(refs) else None


def _accounts_of(command: c.Command) -> tuple[str, ...]:
    match command:
        case c.Transfer():
            return (command.from_account, command.to_account)
        case c.Deposit() | c.Withdraw() | c.CreateAccount() | c.CloseAccount():
            return (command.account_id,)
        case c.DebitForTransfer() | c.ResolveTransfer():
            return (command.from_account,)
        case c.CreditForTransfer():
            return (command.to_account,)
    return ()
