"""The state machine of one partition: accounts, dedup table, outbox, totals.

`StateMachine.apply_entry(entry, log_index)` applies one committed log entry
(a batch of commands) and returns a result per command. It is deterministic:
no clocks, randomness, I/O, floats, or iteration whose order could differ
between replicas; the leader's time stamp travels inside the entry.

Apply is fail-stop. Each command is validated completely before anything is
mutated; a command that fails validation changes nothing. If an unexpected
exception or a broken invariant escapes, the state machine marks itself
halted and raises `LedgerHalted`; the node must then stop the replica rather
than keep a half-applied state (the Raft library would re-run the entry).

Invariants, per currency, checked after every command that moves money:

    balance_minor + in_flight_minor
        == deposited - withdrawn + credited_in - settled_out

and 0 <= balance_minor + in_flight_minor <= BALANCE_MAX_MINOR, which also
bounds every single balance. `check_invariants()` re-derives everything from
scratch (used by tests and by `walletctl verify`).
"""

from __future__ import annotations

import hashlib
import operator
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from itertools import groupby, islice
from typing import Any, NamedTuple, Protocol, cast

from ledger import canonical
from ledger import commands as c
from ledger.codec import WireEntry, command_from_proto
from ledger.money import AMOUNT_MAX_MINOR, BALANCE_MAX_MINOR
from ledger.results import CREDIT_REJECTIONS, Code, EntryResult, Result, result

ACCOUNT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}", re.ASCII)
"""Account ids: 1-64 ASCII letters, digits and `._:@-`, starting with a letter or digit."""

_CURRENCY_RE = re.compile(r"[A-Z]{3}", re.ASCII)
TRANSACTION_ID_BYTES = 16
EXPONENT_MAX = 4
PARTITION_COUNT_MAX = 4096
SNAPSHOT_MAGIC = b"RWSNAP\x00\x01"


class LedgerHalted(Exception):
    """The state machine hit an unexpected error or a broken invariant and stopped."""


class InvariantViolation(AssertionError):
    """A ledger invariant does not hold: the state can no longer be trusted."""


class SnapshotError(ValueError):
    """A snapshot that is corrupt, truncated, or of another format."""


class AccountStatus(IntEnum):
    OPEN = 1
    CLOSED = 2


class RecordKind(IntEnum):
    """What a dedup record was created by."""

    DEPOSIT = 1
    WITHDRAW = 2
    TRANSFER = 3
    CROSS_TRANSFER = 4
    ABORT = 5


_TRANSFER_KINDS = (RecordKind.TRANSFER, RecordKind.CROSS_TRANSFER)
_TRANSFER_KIND_VALUE = int(RecordKind.TRANSFER)
_OK_VALUE = int(Code.OK)
_INSUFFICIENT_FUNDS_VALUE = int(Code.INSUFFICIENT_FUNDS)
_RESULT_OK = result(Code.OK)
_RESULT_INSUFFICIENT_FUNDS = result(Code.INSUFFICIENT_FUNDS)
_transfer_of = operator.attrgetter("transfer")
"""The `Transfer` message inside a protobuf `Command` (of kind "transfer")."""


class TransferFields(Protocol):
    """What applying a transfer reads: a `commands.Transfer`, or the protobuf `Transfer`
    message it was encoded to (same field names, same values), so that a replay
    applies the message without building the command object first."""

    @property
    def from_account(self) -> str: ...
    @property
    def to_account(self) -> str: ...
    @property
    def amount_minor(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def transaction_id(self) -> bytes: ...


class Account:
    __slots__ = (
        "balance_minor",
        "created_position",
        "currency",
        "exponent",
        "open_outbox",
        "request_id",
        "status",
    )

    def __init__(
        self,
        currency: str,
        exponent: int,
        request_id: bytes,
        created_position: int,
        balance_minor: int = 0,
        status: AccountStatus = AccountStatus.OPEN,
        open_outbox: int = 0,
    ) -> None:
        self.currency = currency
        self.exponent = exponent
        self.request_id = request_id
        self.created_position = created_position
        self.balance_minor = balance_minor
        self.status = status
        self.open_outbox = open_outbox


class DedupRecord(NamedTuple):
    """The first outcome recorded for a key (account, transaction_id).

    The table stores these as PLAIN tuples (`RawRecord`, same field order) with
    kind and code as ints: CPython stops tracking an exact tuple of atomic values
    in its cyclic garbage collector, so millions of remembered ids add nothing to
    collection pauses (a NamedTuple, or enum members inside, stay tracked).
    `transfer_record()` and the cold paths view them as DedupRecord.
    """

    kind_value: int
    counterparty: str
    amount_minor: int
    currency: str
    code_value: int
    position: int
    stamp_ms: int
    resolved_position: int
    resolved_stamp_ms: int

    @property
    def kind(self) -> RecordKind:
        return RecordKind(self.kind_value)

    @property
    def code(self) -> Code:
        return Code(self.code_value)


RawRecord = tuple[int, str, int, str, int, int, int, int, int]
_CODE_INDEX = 4


class OutboxEntry(NamedTuple):
    """A cross-partition transfer debited here and not yet settled or compensated."""

    to_account: str
    destination_partition: int
    sequence: int
    amount_minor: int
    currency: str
    position: int
    stamp_ms: int


class Totals:
    """Per-currency money accounting of one partition."""

    __slots__ = (
        "balance_minor",
        "credited_in_minor",
        "deposited_minor",
        "in_flight_minor",
        "settled_out_minor",
        "withdrawn_minor",
    )

    def __init__(self) -> None:
        self.balance_minor = 0
        self.in_flight_minor = 0
        self.deposited_minor = 0
        self.withdrawn_minor = 0
        self.credited_in_minor = 0
        self.settled_out_minor = 0

    def check(self, currency: str) -> None:
        held = self.balance_minor + self.in_flight_minor
        expected = (
            self.deposited_minor
            - self.withdrawn_minor
            + self.credited_in_minor
            - self.settled_out_minor
        )
        if held != expected:
            raise InvariantViolation(
                f"conservation broken for {currency}: balances {self.balance_minor} + in flight "
                f"{self.in_flight_minor} != deposited {self.deposited_minor} - withdrawn "
                f"{self.withdrawn_minor} + credited in {self.credited_in_minor} - settled out "
                f"{self.settled_out_minor}"
            )
        if self.balance_minor < 0 or self.in_flight_minor < 0 or held > BALANCE_MAX_MINOR:
            raise InvariantViolation(f"{currency} totals out of bounds: held {held}")


class Outgoing:
    """Saga bookkeeping of this partition as a source, per destination partition."""

    __slots__ = ("next_sequence", "open_by_sequence", "settled_minor")

    def __init__(self) -> None:
        self.next_sequence = 1
        # sequence -> outbox key, in increasing sequence order (assigned in order)
        self.open_by_sequence: dict[int, tuple[str, bytes]] = {}
        self.settled_minor: dict[str, int] = {}

    def resolved_through(self) -> int:
        """Every sequence at or below this is settled or compensated."""
        for sequence in self.open_by_sequence:
            return sequence - 1
        return self.next_sequence - 1


class Incoming:
    """Credit dedup of this partition as a destination, per source partition.

    `watermark`: every sequence at or below it has been processed. `outcomes`:
    recorded outcomes of processed sequences above `resolved_through` (the
    source has resolved everything at or below that and will not ask again).
    Memory is O(credits in flight), not O(transfers).
    """

    __slots__ = ("credited_minor", "outcomes", "resolved_through", "watermark")

    def __init__(self) -> None:
        self.watermark = 0
        self.resolved_through = 0
        self.outcomes: dict[int, Code] = {}
        self.credited_minor: dict[str, int] = {}


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    balance_minor: int
    currency: str
    exponent: int
    status: AccountStatus


_META = struct.Struct(">IQQqQ")
_ACCOUNT = struct.Struct(">BqBIQ")
_DEDUP_HEAD = struct.Struct(">B")
_DEDUP_TAIL = struct.Struct(">qBQqQq")
_OUTBOX = struct.Struct(">IQqQq")
_SEQ_CODE = struct.Struct(">QB")
_U32_Q = struct.Struct(">IQ")
_U32_QQ = struct.Struct(">IQQ")


def _valid_transaction_id(transaction_id: bytes) -> bool:
    return len(transaction_id) == TRANSACTION_ID_BYTES


def _valid_amount(amount_minor: int) -> bool:
    return 0 < amount_minor <= AMOUNT_MAX_MINOR


class StateMachine:
    """The ledger of one partition. See the module docstring for its contract."""

    def __init__(self, partition: int = 0) -> None:
        if not 0 <= partition < PARTITION_COUNT_MAX:
            raise ValueError(f"partition {partition} out of range")
        self.partition = partition
        self.position = 0
        self.last_log_index = 0
        self.last_stamp_ms = 0
        self.leader_term = 0
        self.accounts: dict[str, Account] = {}
        self.dedup: dict[tuple[str, bytes], RawRecord] = {}
        self.outbox: dict[tuple[str, bytes], OutboxEntry] = {}
        self.totals: dict[str, Totals] = {}
        self.outgoing: dict[int, Outgoing] = {}
        self.incoming: dict[int, Incoming] = {}
        self.halted: str | None = None
        # Incremental state hash: dedup and outbox records are summed eagerly
        # (written once, removed once); accounts change often, so their
        # digests are refreshed lazily for the accounts touched since the
        # last state_hash() call.
        self._records_hash_sum = 0
        self._accounts_hash_sum = 0
        self._account_digest: dict[str, int] = {}
        self._dirty_accounts: dict[str, None] = {}
        self._stamp_ms = 0
        self._handlers: dict[type[Any], Callable[[Any], Result]] = {
            c.Transfer: self._transfer,
            c.CreateAccount: self._create_account,
            c.Deposit: self._deposit,
            c.Withdraw: self._withdraw,
            c.DebitForTransfer: self._debit_for_transfer,
            c.CreditForTransfer: self._credit_for_transfer,
            c.ResolveTransfer: self._resolve_transfer,
            c.Abort: self._abort,
            c.AbortCredit: self._abort_credit,
            c.LeaderStart: self._leader_start,
            c.CloseAccount: self._close_account,
            c.PruneDedup: self._prune_dedup,
            c.Barrier: self._barrier,
        }

    # ------------------------------------------------------------------ apply

    def apply_entry(self, entry: c.Entry, log_index: int) -> EntryResult | None:
        """Apply one committed log entry; None when `log_index` was applied already."""
        if self.halted is not None:
            raise LedgerHalted(f"partition {self.partition} is halted: {self.halted}")
        if log_index <= self.last_log_index:
            return None
        try:
            if entry.version != c.ENTRY_VERSION:
                raise ValueError(f"unsupported entry version {entry.version}")
            self._begin_entry(log_index, entry.stamp_ms)
            handlers = self._handlers
            results: list[Result] = []
            for kind, run in groupby(entry.commands, type):
                if kind is c.Transfer:
                    self._transfers(cast("Iterator[c.Transfer]", run), results)
                else:
                    handler = handlers[kind]
                    results.extend([handler(command) for command in run])
        except Exception as exc:
            raise self._halt(log_index, exc) from exc
        return EntryResult(self.position, self.last_stamp_ms, tuple(results))

    def apply_wire_entry(self, entry: WireEntry, log_index: int) -> EntryResult | None:
        """`apply_entry` for an entry in its protobuf form (`ledger.codec.parse_entry`).

        Same contract, same results and the same state, bit for bit, as
        `apply_entry(decode_entry(blob), log_index)`: runs of transfers are applied
        by the same code (`_transfers`) straight from their messages; every other
        command is converted with `command_from_proto` first. This is the
        replay's path.
        """
        if self.halted is not None:
            raise LedgerHalted(f"partition {self.partition} is halted: {self.halted}")
        if log_index <= self.last_log_index:
            return None
        try:
            self._begin_entry(log_index, entry.stamp_ms)
            handlers = self._handlers
            results: list[Result] = []
            messages = iter(entry.commands)
            for case, count in entry.runs:
                if case == "transfer":
                    self._transfers(map(_transfer_of, islice(messages, count)), results)
                else:
                    for message in islice(messages, count):
                        command = command_from_proto(message)
                        results.append(handlers[type(command)](command))
        except Exception as exc:
            raise self._halt(log_index, exc) from exc
        return EntryResult(self.position, self.last_stamp_ms, tuple(results))

    def _begin_entry(self, log_index: int, stamp_ms: int) -> None:
        self.position += 1
        self.last_log_index = log_index
        if stamp_ms > self.last_stamp_ms:
            self.last_stamp_ms = stamp_ms
        self._stamp_ms = self.last_stamp_ms

    def _halt(self, log_index: int, exc: Exception) -> LedgerHalted:
        """Mark the state halted by `exc`; returns the LedgerHalted to raise."""
        self.halted = f"{type(exc).__name__}: {exc}"
        return LedgerHalted(
            f"partition {self.partition} halted applying log index {log_index}: {self.halted}"
        )

    # Each handler validates everything first, returns a failure result
    # without touching state, and only then mutates.

    def _create_account(self, cmd: c.CreateAccount) -> Result:
        if ACCOUNT_ID_RE.fullmatch(cmd.account_id) is None:
            return result(Code.INVALID_ACCOUNT_ID)
        if _CURRENCY_RE.fullmatch(cmd.currency) is None or not (
            0 <= cmd.exponent <= EXPONENT_MAX
        ):
            return result(Code.INVALID_CURRENCY)
        if not _valid_transaction_id(cmd.request_id):
            return result(Code.INVALID_TRANSACTION_ID)
        existing = self.accounts.get(cmd.account_id)
        if existing is not None:
            same = existing.request_id == cmd.request_id and existing.currency == cmd.currency
            return result(Code.OK, replayed=True) if same else result(Code.ACCOUNT_EXISTS)
        self.accounts[cmd.account_id] = Account(
            cmd.currency, cmd.exponent, cmd.request_id, self.position
        )
        self._dirty_accounts[cmd.account_id] = None
        if cmd.currency not in self.totals:
            self.totals[cmd.currency] = Totals()
        return result(Code.OK)

    def _replay_or_conflict(
        self, raw: RawRecord, kinds: tuple[RecordKind, ...], counterparty: str,
        amount_minor: int, currency: str,
    ) -> Result:
        record = DedupRecord._make(raw)
        if record.kind is RecordKind.ABORT:
            return result(Code.ABORTED, replayed=True)
        if (
            record.kind in kinds
            and record.counterparty == counterparty
            and record.amount_minor == amount_minor
            and record.currency == currency
        ):
            return result(record.code, replayed=True)
        return result(Code.ID_CONFLICT)

    def _money_in_or_out(
        self, cmd: c.Deposit | c.Withdraw, kind: RecordKind
    ) -> tuple[Result | None, Account | None]:
        """Shared validation of deposit and withdraw; (failure, None) or (None, account)."""
        if not _valid_amount(cmd.amount_minor):
            return result(Code.INVALID_AMOUNT), None
        if not _valid_transaction_id(cmd.transaction_id):
            return result(Code.INVALID_TRANSACTION_ID), None
        record = self.dedup.get((cmd.account_id, cmd.transaction_id))
        if record is not None:
            return (
                self._replay_or_conflict(record, (kind,), "", cmd.amount_minor, cmd.currency),
                None,
            )
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return result(Code.ACCOUNT_NOT_FOUND), None
        if account.currency != cmd.currency:
            return result(Code.CURRENCY_MISMATCH), None
        if account.status is not AccountStatus.OPEN:
            return result(Code.ACCOUNT_CLOSED), None
        return None, account

    def _deposit(self, cmd: c.Deposit) -> Result:
        failure, account = self._money_in_or_out(cmd, RecordKind.DEPOSIT)
        if account is None:
            assert failure is not None
            return failure
        totals = self.totals[cmd.currency]
        amount = cmd.amount_minor
        if totals.balance_minor + totals.in_flight_minor + amount > BALANCE_MAX_MINOR:
            code = Code.BALANCE_LIMIT
        else:
            code = Code.OK
            account.balance_minor += amount
            totals.balance_minor += amount
            totals.deposited_minor += amount
            self._dirty_accounts[cmd.account_id] = None
            totals.check(cmd.currency)
        self._record(cmd.account_id, cmd.transaction_id, RecordKind.DEPOSIT, "", amount,
                     cmd.currency, code)
        return result(code)

    def _withdraw(self, cmd: c.Withdraw) -> Result:
        failure, account = self._money_in_or_out(cmd, RecordKind.WITHDRAW)
        if account is None:
            assert failure is not None
            return failure
        amount = cmd.amount_minor
        if account.balance_minor < amount:
            code = Code.INSUFFICIENT_FUNDS
        else:
            code = Code.OK
            totals = self.totals[cmd.currency]
            account.balance_minor -= amount
            totals.balance_minor -= amount
            totals.withdrawn_minor += amount
            self._dirty_accounts[cmd.account_id] = None
            totals.check(cmd.currency)
        self._record(cmd.account_id, cmd.transaction_id, RecordKind.WITHDRAW, "", amount,
                     cmd.currency, code)
        return result(code)

    def _transfer(self, cmd: TransferFields) -> Result:
        results: list[Result] = []
        self._transfers((cmd,), results)
        return results[0]

    def _transfers(self, commands: Iterable[TransferFields], results: list[Result]) -> None:
        """Apply a run of transfers in order, appending one result per transfer to `results`.

        The hottest loop of the ledger (every transfer, live and replayed), hence
        one loop with the state's tables in locals rather than a handler call
        per transfer. Each transfer is still validated completely before it
        changes anything. Its dedup record is written here with the bytes
        `_record` would write; their hash contributions are summed over the run
        and added once (a sum: the order cannot matter, and nothing reads the
        hash in between).
        """
        dedup, accounts, dirty = self.dedup, self.accounts, self._dirty_accounts
        position, stamp_ms = self.position, self._stamp_ms
        append = results.append
        layouts, blake2b, from_bytes = _DEDUP_LAYOUTS, hashlib.blake2b, int.from_bytes
        open_status = AccountStatus.OPEN
        hash_sum = 0
        try:
            for cmd in commands:
                from_id, to_id = cmd.from_account, cmd.to_account
                amount, currency = cmd.amount_minor, cmd.currency
                transaction_id = cmd.transaction_id
                if not 0 < amount <= AMOUNT_MAX_MINOR:
                    append(result(Code.INVALID_AMOUNT))
                    continue
                if len(transaction_id) != TRANSACTION_ID_BYTES:
                    append(result(Code.INVALID_TRANSACTION_ID))
                    continue
                if from_id == to_id:
                    append(result(Code.SAME_ACCOUNT))
                    continue
                key = (from_id, transaction_id)
                raw = dedup.get(key)
                if raw is not None:
                    append(self._replay_or_conflict(raw, _TRANSFER_KINDS, to_id, amount,
                                                    currency))
                    continue
                source = accounts.get(from_id)
                target = accounts.get(to_id)
                if source is None or target is None:
                    append(result(Code.ACCOUNT_NOT_FOUND))
                    continue
                if source.currency != currency or target.currency != currency:
                    append(result(Code.CURRENCY_MISMATCH))
                    continue
                if source.status is not open_status or target.status is not open_status:
                    append(result(Code.ACCOUNT_CLOSED))
                    continue
                if source.balance_minor < amount:
                    code_value, outcome = _INSUFFICIENT_FUNDS_VALUE, _RESULT_INSUFFICIENT_FUNDS
                else:
                    code_value, outcome = _OK_VALUE, _RESULT_OK
                    source.balance_minor -= amount
                    target.balance_minor += amount
                    dirty[from_id] = None
                    dirty[to_id] = None
                    # Totals are unchanged: the money stays in this partition.
                record = (_TRANSFER_KIND_VALUE, to_id, amount, currency, code_value, position,
                          stamp_ms, 0, 0)
                dedup[key] = record
                # canonical.digest(_dedup_record(key, record)), inlined
                account, party = from_id.encode("utf-8"), to_id.encode("utf-8")
                money = currency.encode("utf-8")
                sizes = (len(account), TRANSACTION_ID_BYTES, len(party), len(money))
                layout = layouts.get(sizes) or _dedup_layout(sizes)
                hash_sum += from_bytes(blake2b(layout.pack(
                    b"D", sizes[0], account, TRANSACTION_ID_BYTES, transaction_id,
                    _TRANSFER_KIND_VALUE, sizes[2], party, sizes[3], money, amount, code_value,
                    position, stamp_ms, 0, 0), digest_size=32).digest(), "big")
                append(outcome)
        finally:
            self._records_hash_sum += hash_sum

    def _debit_for_transfer(self, cmd: c.DebitForTransfer) -> Result:
        amount = cmd.amount_minor
        if not _valid_amount(amount):
            return result(Code.INVALID_AMOUNT)
        if not _valid_transaction_id(cmd.transaction_id):
            return result(Code.INVALID_TRANSACTION_ID)
        if ACCOUNT_ID_RE.fullmatch(cmd.to_account) is None:
            return result(Code.INVALID_ACCOUNT_ID)
        if cmd.from_account == cmd.to_account:
            return result(Code.SAME_ACCOUNT)
        destination = cmd.destination_partition
        if not 0 <= destination < PARTITION_COUNT_MAX or destination == self.partition:
            return result(Code.INVALID_PARTITION)
        key = (cmd.from_account, cmd.transaction_id)
        record = self.dedup.get(key)
        if record is not None:
            return self._replay_or_conflict(
                record, _TRANSFER_KINDS, cmd.to_account, amount, cmd.currency
            )
        source = self.accounts.get(cmd.from_account)
        if source is None:
            return result(Code.ACCOUNT_NOT_FOUND)
        if source.currency != cmd.currency:
            return result(Code.CURRENCY_MISMATCH)
        if source.status is not AccountStatus.OPEN:
            return result(Code.ACCOUNT_CLOSED)
        if source.balance_minor < amount:
            self._record(cmd.from_account, cmd.transaction_id, RecordKind.CROSS_TRANSFER,
                         cmd.to_account, amount, cmd.currency, Code.INSUFFICIENT_FUNDS)
            return result(Code.INSUFFICIENT_FUNDS)
        outgoing = self.outgoing.get(destination)
        if outgoing is None:
            outgoing = self.outgoing[destination] = Outgoing()
        sequence = outgoing.next_sequence
        outgoing.next_sequence += 1
        outgoing.open_by_sequence[sequence] = key
        totals = self.totals[cmd.currency]
        source.balance_minor -= amount
        source.open_outbox += 1
        totals.balance_minor -= amount
        totals.in_flight_minor += amount
        self._dirty_accounts[cmd.from_account] = None
        entry = OutboxEntry(cmd.to_account, destination, sequence, amount, cmd.currency,
                            self.position, self._stamp_ms)
        self.outbox[key] = entry
        self._records_hash_sum += canonical.digest(_outbox_record(key, entry))
        self._record(cmd.from_account, cmd.transaction_id, RecordKind.CROSS_TRANSFER,
                     cmd.to_account, amount, cmd.currency, Code.PENDING)
        totals.check(cmd.currency)
        return result(Code.PENDING)

    def _incoming_prune(self, incoming: Incoming, resolved_through: int) -> None:
        resolved_through = min(resolved_through, incoming.watermark)
        if resolved_through <= incoming.resolved_through:
            return
        incoming.resolved_through = resolved_through
        outcomes = incoming.outcomes
        for sequence in sorted(outcomes):
            if sequence > resolved_through:
                break
            del outcomes[sequence]

    def _incoming_record(self, incoming: Incoming, sequence: int, code: Code) -> None:
        incoming.outcomes[sequence] = code
        while incoming.watermark + 1 in incoming.outcomes:
            incoming.watermark += 1

    def _credit_for_transfer(self, cmd: c.CreditForTransfer) -> Result:
        source = cmd.source_partition
        if not 0 <= source < PARTITION_COUNT_MAX or source == self.partition:
            return result(Code.INVALID_PARTITION)
        if cmd.sequence < 1 or cmd.source_resolved_through < 0:
            return result(Code.INVALID_COMMAND)
        amount = cmd.amount_minor
        if not _valid_amount(amount):
            return result(Code.INVALID_AMOUNT)
        if not _valid_transaction_id(cmd.transaction_id):
            return result(Code.INVALID_TRANSACTION_ID)
        if _CURRENCY_RE.fullmatch(cmd.currency) is None:
            return result(Code.INVALID_CURRENCY)
        incoming = self.incoming.get(source)
        if incoming is None:
            incoming = self.incoming[source] = Incoming()
        self._incoming_prune(incoming, cmd.source_resolved_through)
        recorded = incoming.outcomes.get(cmd.sequence)
        if recorded is not None:
            return result(recorded, replayed=True)
        if cmd.sequence <= incoming.watermark:
            return result(Code.STALE_CREDIT)
        target = self.accounts.get(cmd.to_account)
        if target is None:
            code = (
                Code.ACCOUNT_NOT_FOUND
                if ACCOUNT_ID_RE.fullmatch(cmd.to_account)
                else Code.INVALID_ACCOUNT_ID
            )
        elif target.currency != cmd.currency:
            code = Code.CURRENCY_MISMATCH
        elif target.status is not AccountStatus.OPEN:
            code = Code.ACCOUNT_CLOSED
        else:
            totals = self.totals[cmd.currency]
            if totals.balance_minor + totals.in_flight_minor + amount > BALANCE_MAX_MINOR:
                code = Code.BALANCE_LIMIT
            else:
                code = Code.OK
                target.balance_minor += amount
                totals.balance_minor += amount
                totals.credited_in_minor += amount
                credited = incoming.credited_minor
                credited[cmd.currency] = credited.get(cmd.currency, 0) + amount
                self._dirty_accounts[cmd.to_account] = None
                totals.check(cmd.currency)
        self._incoming_record(incoming, cmd.sequence, code)
        return result(code)

    def _resolve_transfer(self, cmd: c.ResolveTransfer) -> Result:
        key = (cmd.from_account, cmd.transaction_id)
        entry = self.outbox.get(key)
        if entry is None:
            return result(Code.UNKNOWN_TRANSFER)
        if not cmd.credited and cmd.reason not in CREDIT_REJECTIONS:
            return result(Code.INVALID_COMMAND)
        account = self.accounts[cmd.from_account]
        totals = self.totals[entry.currency]
        outgoing = self.outgoing[entry.destination_partition]
        amount = entry.amount_minor
        totals.in_flight_minor -= amount
        if cmd.credited:
            code = Code.OK
            totals.settled_out_minor += amount
            settled = outgoing.settled_minor
            settled[entry.currency] = settled.get(entry.currency, 0) + amount
        else:
            code = Code(cmd.reason)
            account.balance_minor += amount
            totals.balance_minor += amount
        account.open_outbox -= 1
        self._dirty_accounts[cmd.from_account] = None
        del outgoing.open_by_sequence[entry.sequence]
        del self.outbox[key]
        self._records_hash_sum -= canonical.digest(_outbox_record(key, entry))
        record = DedupRecord._make(self.dedup[key])
        if record.code is not Code.PENDING:
            raise InvariantViolation(f"outbox entry {key!r} resolved twice")
        self._replace_record(
            key, record._replace(code_value=int(code), resolved_position=self.position,
                                 resolved_stamp_ms=self._stamp_ms)
        )
        totals.check(entry.currency)
        return result(Code.OK)  # the transfer's own outcome is `code`, in its dedup record

    def _abort(self, cmd: c.Abort) -> Result:
        if not _valid_transaction_id(cmd.transaction_id):
            return result(Code.INVALID_TRANSACTION_ID)
        raw = self.dedup.get((cmd.account_id, cmd.transaction_id))
        if raw is not None:
            record = DedupRecord._make(raw)
            code = Code.ABORTED if record.kind is RecordKind.ABORT else record.code
            return result(code, replayed=True)
        if cmd.account_id not in self.accounts:
            return result(Code.ACCOUNT_NOT_FOUND)
        self._record(cmd.account_id, cmd.transaction_id, RecordKind.ABORT, "", 0, "",
                     Code.ABORTED)
        return result(Code.ABORTED)

    def _abort_credit(self, cmd: c.AbortCredit) -> Result:
        source = cmd.source_partition
        if not 0 <= source < PARTITION_COUNT_MAX or source == self.partition:
            return result(Code.INVALID_PARTITION)
        if cmd.sequence < 1:
            return result(Code.INVALID_COMMAND)
        incoming = self.incoming.get(source)
        if incoming is None:
            incoming = self.incoming[source] = Incoming()
        recorded = incoming.outcomes.get(cmd.sequence)
        if recorded is not None:
            return result(recorded, replayed=True)
        if cmd.sequence <= incoming.watermark:
            return result(Code.STALE_CREDIT)
        self._incoming_record(incoming, cmd.sequence, Code.ABORTED)
        return result(Code.ABORTED)

    def _leader_start(self, cmd: c.LeaderStart) -> Result:
        self.leader_term = max(self.leader_term, cmd.term)
        return result(Code.OK)

    def _close_account(self, cmd: c.CloseAccount) -> Result:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return result(Code.ACCOUNT_NOT_FOUND)
        if account.status is AccountStatus.CLOSED:
            return result(Code.OK, replayed=True)
        if account.open_outbox:
            return result(Code.TRANSFER_IN_FLIGHT)
        if account.balance_minor:
            return result(Code.ACCOUNT_NOT_EMPTY)
        account.status = AccountStatus.CLOSED
        self._dirty_accounts[cmd.account_id] = None
        return result(Code.OK)

    def _prune_dedup(self, cmd: c.PruneDedup) -> Result:
        # A full scan, so that the outcome cannot depend on the dict's order.
        before_ms, pending = cmd.before_stamp_ms, int(Code.PENDING)
        doomed = [
            key
            for key, (_, _, _, _, code, _, stamp_ms, _, _) in self.dedup.items()
            if stamp_ms < before_ms and code != pending
        ]
        for key in doomed:
            self._records_hash_sum -= canonical.digest(_dedup_record(key, self.dedup.pop(key)))
        return result(Code.OK)

    def _barrier(self, cmd: c.Barrier) -> Result:
        return result(Code.OK)

    def _record(
        self, account_id: str, transaction_id: bytes, kind: RecordKind, counterparty: str,
        amount_minor: int, currency: str, code: Code,
    ) -> None:
        key = (account_id, transaction_id)
        record = (int(kind), counterparty, amount_minor, currency, int(code), self.position,
                  self._stamp_ms, 0, 0)
        self.dedup[key] = record
        self._records_hash_sum += canonical.digest(_dedup_record(key, record))

    def _replace_record(self, key: tuple[str, bytes], record: DedupRecord) -> None:
        old = self.dedup[key]
        self.dedup[key] = tuple(record)  # type: ignore[assignment]
        self._records_hash_sum += canonical.digest(_dedup_record(key, record)) - canonical.digest(
            _dedup_record(key, old)
        )

    # ------------------------------------------------------------------ reads

    def balance(self, account_id: str) -> Balance | None:
        account = self.accounts.get(account_id)
        if account is None:
            return None
        return Balance(account_id, account.balance_minor, account.currency, account.exponent,
                       account.status)

    def transfer_record(self, account_id: str, transaction_id: bytes) -> DedupRecord | None:
        raw = self.dedup.get((account_id, transaction_id))
        return None if raw is None else DedupRecord._make(raw)

    def outbox_for(self, destination_partition: int) -> Iterator[tuple[tuple[str, bytes],
                                                                         OutboxEntry]]:
        """Open outbox entries for one destination, in sequence order."""
        outgoing = self.outgoing.get(destination_partition)
        if outgoing is None:
            return
        for key in outgoing.open_by_sequence.values():
            yield key, self.outbox[key]

    def resolved_through(self, destination_partition: int) -> int:
        outgoing = self.outgoing.get(destination_partition)
        return 0 if outgoing is None else outgoing.resolved_through()

    # ------------------------------------------------------------------ hash

    def _flush_account_digests(self) -> None:
        accounts, digests = self.accounts, self._account_digest
        total = self._accounts_hash_sum
        for account_id in self._dirty_accounts:
            total -= digests.get(account_id, 0)
            fresh = canonical.digest(_account_record(account_id, accounts[account_id]))
            digests[account_id] = fresh
            total += fresh
        self._dirty_accounts.clear()
        self._accounts_hash_sum = total % canonical.HASH_MODULUS

    def _small_records(self) -> Iterator[bytes]:
        """Records that are few (O(currencies + partitions)) and rebuilt on each hash."""
        for currency in sorted(self.totals):
            yield _totals_record(currency, self.totals[currency])
        for destination in sorted(self.outgoing):
            yield _outgoing_record(destination, self.outgoing[destination])
        for source in sorted(self.incoming):
            yield _incoming_record(source, self.incoming[source])

    def content_hash(self) -> int:
        """Hash of the ledger's content: everything except its position and clock."""
        self._flush_account_digests()
        total = self._records_hash_sum + self._accounts_hash_sum
        for record in self._small_records():
            total += canonical.digest(record)
        return total % canonical.HASH_MODULUS

    def state_hash(self) -> str:
        """Hex hash of the whole state, equal on replicas that applied the same log prefix.

        A sum of per-record digests (so it is independent of order and cheap to
        keep current), including position, clock and partition.
        """
        total = (self.content_hash() + canonical.digest(self._meta_record())) % (
            canonical.HASH_MODULUS
        )
        return total.to_bytes(32, "big").hex()

    def _meta_record(self) -> bytes:
        return b"M" + _META.pack(self.partition, self.position, self.last_log_index,
                                 self.last_stamp_ms, self.leader_term)

    # ------------------------------------------------------------------ snapshot

    def frozen_copy(self) -> StateMachine:
        """A copy to encode elsewhere while this one goes on applying.

        Cheap enough for the Raft tick thread: dedup and outbox records are
        immutable tuples, so their tables are copied shallowly (C-speed, tens of
        milliseconds per million records); only the few mutable objects
        (accounts, totals, saga bookkeeping) are copied one by one.
        """
        self._check_not_halted()
        copy = StateMachine(self.partition)
        copy.position, copy.last_log_index = self.position, self.last_log_index
        copy.last_stamp_ms, copy.leader_term = self.last_stamp_ms, self.leader_term
        copy.accounts = {
            account_id: Account(a.currency, a.exponent, a.request_id, a.created_position,
                                a.balance_minor, a.status, a.open_outbox)
            for account_id, a in self.accounts.items()
        }
        copy.dedup = dict(self.dedup)
        copy.outbox = dict(self.outbox)
        for currency, totals in self.totals.items():
            twin = copy.totals[currency] = Totals()
            twin.balance_minor, twin.in_flight_minor = totals.balance_minor, totals.in_flight_minor
            twin.deposited_minor, twin.withdrawn_minor = (totals.deposited_minor,
                                                          totals.withdrawn_minor)
            twin.credited_in_minor, twin.settled_out_minor = (totals.credited_in_minor,
                                                              totals.settled_out_minor)
        for destination, outgoing in self.outgoing.items():
            out = copy.outgoing[destination] = Outgoing()
            out.next_sequence = outgoing.next_sequence
            out.open_by_sequence = dict(outgoing.open_by_sequence)
            out.settled_minor = dict(outgoing.settled_minor)
        for source, incoming in self.incoming.items():
            into = copy.incoming[source] = Incoming()
            into.watermark, into.resolved_through = incoming.watermark, incoming.resolved_through
            into.outcomes = dict(incoming.outcomes)
            into.credited_minor = dict(incoming.credited_minor)
        return copy

    def snapshot(self) -> bytes:
        """The whole state in canonical form: byte-identical on replicas at the same position."""
        self._check_not_halted()
        parts: list[bytes] = [SNAPSHOT_MAGIC]

        def add(record: bytes) -> None:
            parts.append(canonical.u32(len(record)))
            parts.append(record)

        add(self._meta_record())
        for record in self._small_records():
            add(record)
        for account_id in sorted(self.accounts):
            add(_account_record(account_id, self.accounts[account_id]))
        for key in sorted(self.dedup):
            add(_dedup_record(key, self.dedup[key]))
        for key in sorted(self.outbox):
            add(_outbox_record(key, self.outbox[key]))
        body = b"".join(parts)
        return body + canonical.digest(body).to_bytes(32, "big")

    @classmethod
    def restore(cls, snapshot: bytes) -> StateMachine:
        """Rebuild a state machine from `snapshot()`; raises SnapshotError if it is damaged."""
        if len(snapshot) < len(SNAPSHOT_MAGIC) + 32 or not snapshot.startswith(SNAPSHOT_MAGIC):
            raise SnapshotError("not a RaftWallet ledger snapshot (bad magic or too short)")
        body, checksum = snapshot[:-32], snapshot[-32:]
        if canonical.digest(body).to_bytes(32, "big") != checksum:
            raise SnapshotError("snapshot checksum mismatch: the file is damaged")
        try:
            return cls._restore_records(canonical.Reader(body[len(SNAPSHOT_MAGIC):]))
        except (canonical.CanonicalError, ValueError, KeyError, struct.error) as exc:
            raise SnapshotError(f"snapshot does not parse: {exc}") from None

    @classmethod
    def _restore_records(cls, reader: canonical.Reader) -> StateMachine:
        state: StateMachine | None = None
        while not reader.done:
            size = reader.u32()
            record = canonical.Reader(reader.take(size))
            tag = record.unpack(_TAG)[0]
            if state is None:
                if tag != ord("M"):
                    raise SnapshotError("snapshot does not start with its meta record")
                partition, position, log_index, stamp, term = record.unpack(_META)
                state = cls(partition)
                state.position, state.last_log_index = position, log_index
                state.last_stamp_ms, state.leader_term = stamp, term
            else:
                _RESTORERS[tag](state, record)
            record.expect_done()
        if state is None:
            raise SnapshotError("empty snapshot")
        for key, entry in sorted(state.outbox.items(), key=lambda item: item[1].sequence):
            outgoing = state.outgoing[entry.destination_partition]
            outgoing.open_by_sequence[entry.sequence] = key
            state._records_hash_sum += canonical.digest(_outbox_record(key, entry))
        for key, dedup in state.dedup.items():
            state._records_hash_sum += canonical.digest(_dedup_record(key, dedup))
        state._records_hash_sum %= canonical.HASH_MODULUS
        state._dirty_accounts = dict.fromkeys(state.accounts)
        state.check_invariants()
        return state

    # ------------------------------------------------------------------ invariants

    def _check_not_halted(self) -> None:
        if self.halted is not None:
            raise LedgerHalted(f"partition {self.partition} is halted: {self.halted}")

    def check_invariants(self) -> None:
        """Re-derive every total from scratch and compare; raise InvariantViolation if off."""
        balances: dict[str, int] = {}
        in_flight: dict[str, int] = {}
        open_outbox: dict[str, int] = {}
        for account_id, account in self.accounts.items():
            if account.balance_minor < 0:
                raise InvariantViolation(f"account {account_id} is negative")
            balances[account.currency] = balances.get(account.currency, 0) + account.balance_minor
        for key, entry in self.outbox.items():
            from_account = key[0]
            in_flight[entry.currency] = in_flight.get(entry.currency, 0) + entry.amount_minor
            open_outbox[from_account] = open_outbox.get(from_account, 0) + 1
            record = self.dedup.get(key)
            if record is None or record[_CODE_INDEX] != Code.PENDING:
                raise InvariantViolation(f"outbox entry of {from_account} has no PENDING record")
        for currency, totals in self.totals.items():
            totals.check(currency)
            if balances.get(currency, 0) != totals.balance_minor:
                raise InvariantViolation(f"{currency}: balances do not add up to the total")
            if in_flight.get(currency, 0) != totals.in_flight_minor:
                raise InvariantViolation(f"{currency}: outbox does not add up to in-flight")
        for account_id, account in self.accounts.items():
            if account.open_outbox != open_outbox.get(account_id, 0):
                raise InvariantViolation(f"account {account_id}: open outbox count is off")
        open_count = sum(len(o.open_by_sequence) for o in self.outgoing.values())
        if open_count != len(self.outbox):
            raise InvariantViolation("outgoing sequence index does not match the outbox")
        fresh = StateMachine._hash_from_scratch(self)
        if fresh != self.content_hash():
            raise InvariantViolation("incremental state hash differs from a full recomputation")

    @staticmethod
    def _hash_from_scratch(state: StateMachine) -> int:
        total = 0
        for account_id, account in state.accounts.items():
            total += canonical.digest(_account_record(account_id, account))
        for key, record in state.dedup.items():
            total += canonical.digest(_dedup_record(key, record))
        for key, entry in state.outbox.items():
            total += canonical.digest(_outbox_record(key, entry))
        for record_bytes in state._small_records():
            total += canonical.digest(record_bytes)
        return total % canonical.HASH_MODULUS


# ---------------------------------------------------------------------- records

_TAG = struct.Struct(">B")


def _account_record(account_id: str, a: Account) -> bytes:
    if not 0 <= a.balance_minor <= BALANCE_MAX_MINOR:
        raise InvariantViolation(f"account {account_id} balance {a.balance_minor} out of bounds")
    return (
        b"A" + canonical.text(account_id) + canonical.text(a.currency)
        + _ACCOUNT.pack(a.exponent, a.balance_minor, a.status, a.open_outbox, a.created_position)
        + canonical.blob(a.request_id)
    )


def _restore_account(state: StateMachine, r: canonical.Reader) -> None:
    account_id, currency = r.text(), r.text()
    exponent, balance, status, open_outbox, created = r.unpack(_ACCOUNT)
    state.accounts[account_id] = Account(currency, exponent, r.blob(), created, balance,
                                         AccountStatus(status), open_outbox)


_DEDUP_LAYOUTS: dict[tuple[int, int, int, int], struct.Struct] = {}
_DEDUP_LAYOUTS_MAX = 4096
"""Bound on the cached layouts (one per combination of field sizes; a handful in practice)."""


def _dedup_layout(sizes: tuple[int, int, int, int]) -> struct.Struct:
    """The whole dedup record as one struct, for these byte sizes of its four variable fields.

    Field by field the canonical encoding: "D", text(account), blob(transaction
    id), kind byte, text(counterparty), text(currency), then `_DEDUP_TAIL`. A
    size over 65,535 fails to pack its u16 prefix (struct.error), as
    `canonical.text` does.
    """
    layout = _DEDUP_LAYOUTS.get(sizes)
    if layout is None:
        account, transaction_id, counterparty, currency = sizes
        layout = struct.Struct(f">cH{account}sH{transaction_id}sBH{counterparty}sH{currency}s"
                               + _DEDUP_TAIL.format.lstrip(">"))
        if len(_DEDUP_LAYOUTS) < _DEDUP_LAYOUTS_MAX:
            _DEDUP_LAYOUTS[sizes] = layout
    return layout


def _dedup_record(key: tuple[str, bytes], d: RawRecord) -> bytes:
    """The canonical bytes of a dedup record (see `_dedup_layout`), packed in one call."""
    kind, counterparty, amount, currency, code, position, stamp, resolved, resolved_stamp = d
    account, transaction_id = key[0].encode("utf-8"), key[1]
    party, money = counterparty.encode("utf-8"), currency.encode("utf-8")
    sizes = (len(account), len(transaction_id), len(party), len(money))
    layout = _DEDUP_LAYOUTS.get(sizes) or _dedup_layout(sizes)
    return layout.pack(
        b"D", sizes[0], account, sizes[1], transaction_id, kind, sizes[2], party, sizes[3],
        money, amount, code, position, stamp, resolved, resolved_stamp,
    )


def _restore_dedup(state: StateMachine, r: canonical.Reader) -> None:
    key = (r.text(), r.blob())
    (kind,) = r.unpack(_DEDUP_HEAD)
    counterparty, currency = r.text(), r.text()
    amount, code, position, stamp, resolved_position, resolved_stamp = r.unpack(_DEDUP_TAIL)
    state.dedup[key] = (int(RecordKind(kind)), counterparty, amount, currency, int(Code(code)),
                        position, stamp, resolved_position, resolved_stamp)


def _outbox_record(key: tuple[str, bytes], e: OutboxEntry) -> bytes:
    return (
        b"O" + canonical.text(key[0]) + canonical.blob(key[1]) + canonical.text(e.to_account)
        + canonical.text(e.currency)
        + _OUTBOX.pack(e.destination_partition, e.sequence, e.amount_minor, e.position,
                       e.stamp_ms)
    )


def _restore_outbox(state: StateMachine, r: canonical.Reader) -> None:
    key = (r.text(), r.blob())
    to_account, currency = r.text(), r.text()
    destination, sequence, amount, position, stamp = r.unpack(_OUTBOX)
    state.outbox[key] = OutboxEntry(to_account, destination, sequence, amount, currency,
                                    position, stamp)


def _per_currency(amounts: dict[str, int]) -> bytes:
    parts = [canonical.u32(len(amounts))]
    for currency in sorted(amounts):
        parts.append(canonical.text(currency) + canonical.bigint(amounts[currency]))
    return b"".join(parts)


def _read_per_currency(r: canonical.Reader) -> dict[str, int]:
    return {r.text(): r.bigint() for _ in range(r.u32())}


def _totals_record(currency: str, t: Totals) -> bytes:
    return b"T" + canonical.text(currency) + b"".join(
        canonical.bigint(v)
        for v in (t.balance_minor, t.in_flight_minor, t.deposited_minor, t.withdrawn_minor,
                  t.credited_in_minor, t.settled_out_minor)
    )


def _restore_totals(state: StateMachine, r: canonical.Reader) -> None:
    totals = Totals()
    currency = r.text()
    totals.balance_minor, totals.in_flight_minor = r.bigint(), r.bigint()
    totals.deposited_minor, totals.withdrawn_minor = r.bigint(), r.bigint()
    totals.credited_in_minor, totals.settled_out_minor = r.bigint(), r.bigint()
    state.totals[currency] = totals


def _outgoing_record(destination: int, o: Outgoing) -> bytes:
    return b"S" + _U32_Q.pack(destination, o.next_sequence) + _per_currency(o.settled_minor)


def _restore_outgoing(state: StateMachine, r: canonical.Reader) -> None:
    destination, next_sequence = r.unpack(_U32_Q)
    outgoing = Outgoing()
    outgoing.next_sequence = next_sequence
    outgoing.settled_minor = _read_per_currency(r)
    state.outgoing[destination] = outgoing


def _incoming_record(source: int, i: Incoming) -> bytes:
    outcomes = b"".join(_SEQ_CODE.pack(s, i.outcomes[s]) for s in sorted(i.outcomes))
    return (
        b"I" + _U32_QQ.pack(source, i.watermark, i.resolved_through)
        + canonical.u32(len(i.outcomes)) + outcomes + _per_currency(i.credited_minor)
    )


def _restore_incoming(state: StateMachine, r: canonical.Reader) -> None:
    source, watermark, resolved_through = r.unpack(_U32_QQ)
    incoming = Incoming()
    incoming.watermark, incoming.resolved_through = watermark, resolved_through
    for _ in range(r.u32()):
        sequence, code = r.unpack(_SEQ_CODE)
        incoming.outcomes[sequence] = Code(code)
    incoming.credited_minor = _read_per_currency(r)
    state.incoming[source] = incoming


_RESTORERS: dict[int, Callable[[StateMachine, canonical.Reader], None]] = {
    ord("A"): _restore_account,
    ord("D"): _restore_dedup,
    ord("O"): _restore_outbox,
    ord("T"): _restore_totals,
    ord("S"): _restore_outgoing,
    ord("I"): _restore_incoming,
}
