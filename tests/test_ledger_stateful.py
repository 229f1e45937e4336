"""A stateful model of one partition's ledger: the core against a reference model.

Hypothesis drives a `StateMachine` through sequences of rules: create accounts,
deposit, withdraw, transfer, retry with the same transaction id, reuse an id for
other content, send bad input, abort an id, close an account, snapshot, restart
from a snapshot, replay the log. Every command travels as the node sends it: in a
log entry, encoded, and decoded again before it is applied.

A reference model (plain dicts of integer minor units, no code of the core)
predicts the exact result of every command, `Result(code, replayed)`. After every
step the balances and the per-currency totals must match the model, and three
machines must have the same state hash: the ledger itself, a shadow fed the same
encoded entries through the replay's path (`parse_entry`, `apply_wire_entry`)
from position 0, and a twin restored from the latest snapshot and fed every
entry since.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from ledger import commands as c
from ledger.codec import decode_entry, encode_entry, parse_entry
from ledger.money import AMOUNT_MAX_MINOR, BALANCE_MAX_MINOR
from ledger.replay import replay
from ledger.results import Code, Result, result
from ledger.state import AccountStatus, StateMachine
from tests.support import stateful_settings

pytestmark = pytest.mark.timeout(900)
"""A passing run takes seconds; shrinking a failure to a short example may take minutes."""

PARTITION = 0
KNOWN_IDS = ("alice", "bob", "carol", "dave")
"""Valid account ids the rules create (or try to)."""
UNKNOWN_ID = "zed"
"""A valid account id that is never created."""
MALFORMED_IDS = ("", "no spaces", "-lead")
CURRENCIES = (("USD", 2), ("JPY", 0))
MALFORMED_CURRENCIES = (("usd", 2), ("USD", 9), ("EU", 2))
MONEY_CURRENCIES = ("USD", "JPY", "EUR")
"""Currencies a money command may name: EUR has no account, so it is always a mismatch."""

amounts = st.one_of(st.integers(1, 3_000), st.integers(1, 3_000), st.just(AMOUNT_MAX_MINOR))
known_or_unknown = st.sampled_from(("alice", "bob", "alice", "bob", "carol", "dave", UNKNOWN_ID))
mostly_alice_or_bob = st.sampled_from((*("alice", "bob") * 3, "carol", "dave", UNKNOWN_ID))
OWN = "own"
"""Stands for the currency of the account a money command acts for (most commands use it)."""
money_currencies = st.sampled_from((OWN, OWN, OWN, *MONEY_CURRENCIES))

# Outcomes that write something; any other outcome must leave the ledger's content as it was.
MONEY_WRITES = frozenset({Code.OK, Code.INSUFFICIENT_FUNDS, Code.BALANCE_LIMIT})

MoneyCommand = c.Deposit | c.Withdraw | c.Transfer
DEFECTS = ("zero amount", "negative amount", "amount over the maximum", "short transaction id",
           "unknown account", "wrong currency", "same account", "insufficient funds")


@dataclass
class ModelAccount:
    currency: str
    request_id: bytes
    balance_minor: int = 0
    closed: bool = False


@dataclass(frozen=True)
class ModelRecord:
    """The first outcome of a transaction id, as the ledger must remember it."""

    kind: type[c.Command]
    counterparty: str
    amount_minor: int
    currency: str
    code: Code


def key_of(command: MoneyCommand | c.Abort) -> tuple[str, bytes]:
    """The dedup key of a command: (the account it acts for, its transaction id)."""
    account = command.from_account if isinstance(command, c.Transfer) else command.account_id
    return (account, command.transaction_id)


def money_command(kind: type[MoneyCommand], account: str, to_account: str, amount_minor: int,
                  currency: str, transaction_id: bytes) -> MoneyCommand:
    """A `kind` command for `account` (`to_account` is only a transfer's)."""
    if kind is c.Transfer:
        return c.Transfer(account, to_account, amount_minor, currency, transaction_id)
    if kind is c.Deposit:
        return c.Deposit(account, amount_minor, currency, transaction_id)
    return c.Withdraw(account, amount_minor, currency, transaction_id)


def counterparty_of(command: MoneyCommand) -> str:
    return command.to_account if isinstance(command, c.Transfer) else ""


class LedgerModel(RuleBasedStateMachine):
    """One partition's ledger, driven by rules and checked against a reference model."""

    recorded = Bundle("recorded")
    """Money commands whose outcome the ledger recorded (OK, INSUFFICIENT_FUNDS, BALANCE_LIMIT)."""
    aborted = Bundle("aborted")
    """Keys (account, transaction id) closed by an Abort before any command used them."""

    def __init__(self) -> None:
        super().__init__()
        self.state = StateMachine(PARTITION)
        self.shadow = StateMachine(PARTITION)
        self.twin: StateMachine | None = None
        self.log: list[tuple[int, bytes]] = []
        self.hashes: list[str] = [self.state.state_hash()]
        self.snapshots: list[tuple[int, StateMachine, str]] = []
        self.stamp_ms = 1_700_000_000_000
        self.fresh_ids = itertools.count(1)
        # The reference model.
        self.accounts: dict[str, ModelAccount] = {}
        self.records: dict[tuple[str, bytes], ModelRecord] = {}
        self.deposited: Counter[str] = Counter()
        self.withdrawn: Counter[str] = Counter()

    # ------------------------------------------------------------ applying

    def fresh_id(self) -> bytes:
        return next(self.fresh_ids).to_bytes(16, "big")

    def apply(self, *commands: c.Command) -> tuple[Result, ...]:
        """Apply one log entry of `commands` to the ledger, the shadow and the twin.

        The three must answer the same results.
        """
        self.stamp_ms += 7
        blob = encode_entry(c.Entry(self.stamp_ms, commands))
        log_index = len(self.log) + 1
        applied = self.state.apply_entry(decode_entry(blob), log_index)
        assert applied is not None
        self.log.append((log_index, blob))
        shadowed = self.shadow.apply_wire_entry(parse_entry(blob), log_index)
        assert shadowed is not None and shadowed.results == applied.results
        if self.twin is not None:
            twinned = self.twin.apply_entry(decode_entry(blob), log_index)
            assert twinned is not None and twinned.results == applied.results
        self.hashes.append(self.state.state_hash())
        return applied.results

    def run(self, *commands: c.Command) -> tuple[Result, ...]:
        """Apply `commands` as one entry; each result must be the model's prediction.

        A command whose outcome writes nothing (a refusal, a replayed retry) must
        leave the ledger's content exactly as it was.
        """
        expected: list[Result] = []
        writes = False
        for command in commands:
            outcome = self.predict(command)
            expected.append(outcome)
            writes = self.commit(command, outcome) or writes
        before = self.state.content_hash()
        results = self.apply(*commands)
        assert list(results) == expected, (commands, results, expected)
        if not writes:
            assert self.state.content_hash() == before, (commands, results)
        return results

    # ------------------------------------------------------------ the reference model

    def predict(self, command: c.Command) -> Result:
        """The result the ledger must answer for `command`, from the model alone."""
        match command:
            case c.CreateAccount():
                return self._predict_create(command)
            case c.Deposit() | c.Withdraw() | c.Transfer():
                return self._predict_money(command)
            case c.Abort():
                return self._predict_abort(command)
            case c.CloseAccount():
                return self._predict_close(command)
        raise AssertionError(f"the model does not know {command!r}")

    def _predict_create(self, cmd: c.CreateAccount) -> Result:
        if cmd.account_id in MALFORMED_IDS:
            return result(Code.INVALID_ACCOUNT_ID)
        if (cmd.currency, cmd.exponent) in MALFORMED_CURRENCIES:
            return result(Code.INVALID_CURRENCY)
        if len(cmd.request_id) != 16:
            return result(Code.INVALID_TRANSACTION_ID)
        existing = self.accounts.get(cmd.account_id)
        if existing is not None:
            same = (existing.request_id, existing.currency) == (cmd.request_id, cmd.currency)
            return result(Code.OK, replayed=True) if same else result(Code.ACCOUNT_EXISTS)
        return result(Code.OK)

    def _predict_money(self, cmd: MoneyCommand) -> Result:
        """Checked in this order: amount, id, same account, dedup, accounts, currency, status,
        then the limit (deposits) or the funds (withdrawals and transfers)."""
        if not 0 < cmd.amount_minor <= AMOUNT_MAX_MINOR:
            return result(Code.INVALID_AMOUNT)
        if len(cmd.transaction_id) != 16:
            return result(Code.INVALID_TRANSACTION_ID)
        if isinstance(cmd, c.Transfer) and cmd.from_account == cmd.to_account:
            return result(Code.SAME_ACCOUNT)
        record = self.records.get(key_of(cmd))
        if record is not None:
            if record.kind is c.Abort:
                return result(Code.ABORTED, replayed=True)
            same = (type(cmd), counterparty_of(cmd), cmd.amount_minor, cmd.currency) == (
                record.kind, record.counterparty, record.amount_minor, record.currency)
            return result(record.code, replayed=True) if same else result(Code.ID_CONFLICT)
        involved = [self.accounts.get(account) for account in
                    ((cmd.from_account, cmd.to_account) if isinstance(cmd, c.Transfer)
                     else (cmd.account_id,))]
        if any(account is None for account in involved):
            return result(Code.ACCOUNT_NOT_FOUND)
        if any(account.currency != cmd.currency for account in involved if account):
            return result(Code.CURRENCY_MISMATCH)
        if any(account.closed for account in involved if account):
            return result(Code.ACCOUNT_CLOSED)
        source = involved[0]
        assert source is not None
        if isinstance(cmd, c.Deposit):
            if self.held(cmd.currency) + cmd.amount_minor > BALANCE_MAX_MINOR:
                return result(Code.BALANCE_LIMIT)
        elif source.balance_minor < cmd.amount_minor:
            return result(Code.INSUFFICIENT_FUNDS)
        return result(Code.OK)

    def _predict_abort(self, cmd: c.Abort) -> Result:
        if len(cmd.transaction_id) != 16:
            return result(Code.INVALID_TRANSACTION_ID)
        record = self.records.get(key_of(cmd))
        if record is not None:
            return result(Code.ABORTED if record.kind is c.Abort else record.code, replayed=True)
        if cmd.account_id not in self.accounts:
            return result(Code.ACCOUNT_NOT_FOUND)
        return result(Code.ABORTED)

    def _predict_close(self, cmd: c.CloseAccount) -> Result:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return result(Code.ACCOUNT_NOT_FOUND)
        if account.closed:
            return result(Code.OK, replayed=True)
        if account.balance_minor:
            return result(Code.ACCOUNT_NOT_EMPTY)
        return result(Code.OK)

    def commit(self, command: c.Command, outcome: Result) -> bool:
        """Update the model with `command`'s predicted outcome; True if it writes anything."""
        if outcome.replayed:
            return False
        match command:
            case c.CreateAccount() if outcome.ok:
                self.accounts[command.account_id] = ModelAccount(command.currency,
                                                                 command.request_id)
            case c.Deposit() | c.Withdraw() | c.Transfer() if outcome.code in MONEY_WRITES:
                self.records[key_of(command)] = ModelRecord(
                    type(command), counterparty_of(command), command.amount_minor,
                    command.currency, outcome.code)
                if outcome.ok:
                    self._move(command)
            case c.Abort() if outcome.code is Code.ABORTED:
                self.records[key_of(command)] = ModelRecord(c.Abort, "", 0, "", Code.ABORTED)
            case c.CloseAccount() if outcome.ok:
                self.accounts[command.account_id].closed = True
            case _:
                return False
        return True

    def _move(self, cmd: MoneyCommand) -> None:
        match cmd:
            case c.Deposit():
                self.accounts[cmd.account_id].balance_minor += cmd.amount_minor
                self.deposited[cmd.currency] += cmd.amount_minor
            case c.Withdraw():
                self.accounts[cmd.account_id].balance_minor -= cmd.amount_minor
                self.withdrawn[cmd.currency] += cmd.amount_minor
            case c.Transfer():
                self.accounts[cmd.from_account].balance_minor -= cmd.amount_minor
                self.accounts[cmd.to_account].balance_minor += cmd.amount_minor

    def held(self, currency: str) -> int:
        """The model's money in `currency`: the sum of its balances."""
        return sum(a.balance_minor for a in self.accounts.values() if a.currency == currency)

    def open_accounts(self) -> list[str]:
        return sorted(a for a, account in self.accounts.items() if not account.closed)

    def recorded_or_none(self, command: MoneyCommand, results: tuple[Result, ...],
                         ) -> MoneyCommand | MultipleResults[MoneyCommand]:
        """`command` for the `recorded` bundle when its outcome was recorded, else nothing."""
        first = results[0]
        return command if first.code in MONEY_WRITES and not first.replayed else multiple()

    # ------------------------------------------------------------ rules: accounts

    def currency_of(self, account: str, currency: str) -> str:
        """`currency`, or for OWN the currency of `account` (USD if it does not exist)."""
        if currency != OWN:
            return currency
        return self.accounts[account].currency if account in self.accounts else "USD"

    @initialize(currency=st.sampled_from(CURRENCIES), balance=st.integers(0, 10_000))
    def open_two_accounts(self, currency: tuple[str, int], balance: int) -> None:
        """Every run starts with alice and bob in one currency, each with `balance` on it."""
        for account in ("alice", "bob"):
            self.run(c.CreateAccount(account, *currency, self.fresh_id()))
            if balance:
                self.run(c.Deposit(account, balance, currency[0], self.fresh_id()))

    @rule(account=st.sampled_from((*KNOWN_IDS, *MALFORMED_IDS)),
          currency=st.sampled_from(CURRENCIES + MALFORMED_CURRENCIES),
          retry=st.booleans())
    def create_account(self, account: str, currency: tuple[str, int], retry: bool) -> None:
        """A new account starts at zero. A retry with the same request id and currency is
        answered OK (replayed); any other request for an existing id is ACCOUNT_EXISTS; a
        malformed id or currency is refused."""
        existing = self.accounts.get(account)
        request_id = existing.request_id if retry and existing else self.fresh_id()
        self.run(c.CreateAccount(account, *currency, request_id))

    @rule(account=st.sampled_from(("carol", "dave", UNKNOWN_ID)))
    def close_account(self, account: str) -> None:
        """Only an empty account closes; a closed account refuses every later money command."""
        self.run(c.CloseAccount(account, self.fresh_id()))

    # ------------------------------------------------------------ rules: money

    @rule(target=recorded, account=known_or_unknown, amount=amounts, currency=money_currencies)
    def deposit(self, account: str, amount: int, currency: str,
                ) -> MoneyCommand | MultipleResults[MoneyCommand]:
        """A deposit adds to the balance, unless it would take the currency's total over
        BALANCE_MAX_MINOR (BALANCE_LIMIT, recorded, nothing moves)."""
        command = c.Deposit(account, amount, self.currency_of(account, currency),
                            self.fresh_id())
        return self.recorded_or_none(command, self.run(command))

    @rule(target=recorded, account=known_or_unknown, amount=amounts, currency=money_currencies)
    def withdraw(self, account: str, amount: int, currency: str,
                 ) -> MoneyCommand | MultipleResults[MoneyCommand]:
        """A withdrawal takes from the balance; more than the balance is INSUFFICIENT_FUNDS
        (recorded, nothing moves)."""
        command = c.Withdraw(account, amount, self.currency_of(account, currency),
                             self.fresh_id())
        return self.recorded_or_none(command, self.run(command))

    @rule(target=recorded, source=mostly_alice_or_bob, target_account=known_or_unknown,
          amount=st.integers(1, 3_000), currency=money_currencies)
    def transfer(self, source: str, target_account: str, amount: int, currency: str,
                 ) -> MoneyCommand | MultipleResults[MoneyCommand]:
        """A transfer within the partition moves money between two accounts of its currency,
        atomically; the partition's totals do not change. (A transfer to the same account
        is `refuse_bad_input`'s: here the target is then the other of alice and bob.)"""
        if target_account == source:
            target_account = "bob" if source == "alice" else "alice"
        command = c.Transfer(source, target_account, amount, self.currency_of(source, currency),
                             self.fresh_id())
        return self.recorded_or_none(command, self.run(command))

    @rule(account=st.sampled_from(("alice", "bob")), count=st.integers(1, 12))
    def deposit_the_most_then_take_it_back(self, account: str, count: int) -> None:
        """Batched in one entry, deposits of the largest amount each see the ones before:
        the one that would take the currency's total over BALANCE_MAX_MINOR, and each after
        it, is BALANCE_LIMIT. (The next entry withdraws what went in.)"""
        currency = self.currency_of(account, OWN)
        results = self.run(*(c.Deposit(account, AMOUNT_MAX_MINOR, currency, self.fresh_id())
                             for _ in range(count)))
        taken = sum(1 for outcome in results if outcome.ok)
        if taken:
            self.run(*(c.Withdraw(account, AMOUNT_MAX_MINOR, currency, self.fresh_id())
                       for _ in range(taken)))

    # ------------------------------------------------------------ rules: exactly once

    @rule(command=recorded, in_one_entry=st.booleans())
    def retry_with_the_same_id(self, command: MoneyCommand, in_one_entry: bool) -> None:
        """A retry with the same id and the same content answers the first outcome, replayed,
        and moves nothing, however much later (or, twice in one entry) it comes."""
        first = self.records[key_of(command)].code
        results = self.run(command, command) if in_one_entry else self.run(command)
        assert all(r == result(first, replayed=True) for r in results), results

    @rule(command=recorded, change=st.sampled_from(("amount", "currency", "counterparty",
                                                    "kind")))
    def reuse_the_id_for_other_content(self, command: MoneyCommand, change: str) -> None:
        """The same (account, transaction id) with other content is ID_CONFLICT: refused,
        nothing changes, and the first outcome stays the answer to a real retry."""
        other: MoneyCommand
        if change == "amount":
            amount = command.amount_minor - 1 if command.amount_minor > 1 else 2
            other = _replace(command, amount_minor=amount)
        elif change == "currency":
            other = _replace(command, currency="JPY" if command.currency != "JPY" else "USD")
        elif change == "counterparty" and isinstance(command, c.Transfer):
            others = [a for a in (*KNOWN_IDS, UNKNOWN_ID)
                      if a not in (command.from_account, command.to_account)]
            other = _replace(command, to_account=others[0])
        elif isinstance(command, c.Deposit):
            other = c.Withdraw(command.account_id, command.amount_minor, command.currency,
                               command.transaction_id)
        else:
            account, transaction_id = key_of(command)
            other = c.Deposit(account, command.amount_minor, command.currency, transaction_id)
        (outcome,) = self.run(other)
        assert outcome == result(Code.ID_CONFLICT), (command, other, outcome)

    @rule(target=aborted, account=known_or_unknown)
    def abort_a_fresh_id(self, account: str,
                         ) -> tuple[str, bytes] | MultipleResults[tuple[str, bytes]]:
        """An abort of an id nobody used records ABORTED (for an existing account)."""
        command = c.Abort(account, self.fresh_id())
        (outcome,) = self.run(command)
        return key_of(command) if outcome.code is Code.ABORTED else multiple()

    @rule(command=recorded)
    def abort_an_applied_id(self, command: MoneyCommand) -> None:
        """An abort of an applied command changes nothing and answers that command's outcome."""
        account, transaction_id = key_of(command)
        (outcome,) = self.run(c.Abort(account, transaction_id))
        assert outcome == result(self.records[key_of(command)].code, replayed=True)

    @rule(key=aborted, kind=st.sampled_from((c.Deposit, c.Withdraw, c.Transfer)),
          amount=amounts)
    def late_request_after_abort(self, key: tuple[str, bytes], kind: type[MoneyCommand],
                                 amount: int) -> None:
        """A request arriving after its id was aborted is ABORTED (replayed), whatever it says."""
        account, transaction_id = key
        currency = self.accounts[account].currency
        target = "bob" if account != "bob" else "alice"
        command = money_command(kind, account, target, amount, currency, transaction_id)
        (outcome,) = self.run(command)
        assert outcome == result(Code.ABORTED, replayed=True)

    # ------------------------------------------------------------ rules: bad input

    @precondition(lambda self: bool(self.open_accounts()))
    @rule(defect=st.sampled_from(DEFECTS), which=st.integers(0, 7),
          kind=st.sampled_from((c.Deposit, c.Withdraw, c.Transfer)))
    def refuse_bad_input(self, defect: str, which: int, kind: type[MoneyCommand]) -> None:
        """A command with one defect gets that defect's code and changes nothing:
        INVALID_AMOUNT (amount <= 0 or over AMOUNT_MAX_MINOR), INVALID_TRANSACTION_ID (not
        16 bytes), ACCOUNT_NOT_FOUND, CURRENCY_MISMATCH, SAME_ACCOUNT; INSUFFICIENT_FUNDS is
        recorded (a retry gets it again) but moves nothing."""
        accounts = self.open_accounts()
        account = accounts[which % len(accounts)]
        currency = self.accounts[account].currency
        partners = [a for a in accounts if a != account and self.accounts[a].currency == currency]
        if kind is c.Transfer and not partners and defect != "same account":
            kind = c.Withdraw
        if defect == "insufficient funds" and kind is c.Deposit:
            kind = c.Withdraw
        amount = 1
        if defect == "insufficient funds":
            amount = self.accounts[account].balance_minor + 1
            if amount > AMOUNT_MAX_MINOR:  # no valid amount is more than this balance
                defect, amount = "wrong currency", 1
        command = money_command(kind, account, partners[0] if partners else account, amount,
                                currency, self.fresh_id())
        expected = {
            "zero amount": Code.INVALID_AMOUNT, "negative amount": Code.INVALID_AMOUNT,
            "amount over the maximum": Code.INVALID_AMOUNT,
            "short transaction id": Code.INVALID_TRANSACTION_ID,
            "unknown account": Code.ACCOUNT_NOT_FOUND, "wrong currency": Code.CURRENCY_MISMATCH,
            "same account": Code.SAME_ACCOUNT, "insufficient funds": Code.INSUFFICIENT_FUNDS,
        }[defect]
        match defect:
            case "zero amount":
                command = _replace(command, amount_minor=0)
            case "negative amount":
                command = _replace(command, amount_minor=-5)
            case "amount over the maximum":
                command = _replace(command, amount_minor=AMOUNT_MAX_MINOR + 1)
            case "short transaction id":
                command = _replace(command, transaction_id=b"short")
            case "unknown account" if isinstance(command, c.Transfer):
                command = _replace(command, to_account=UNKNOWN_ID)
            case "unknown account":
                command = _replace(command, account_id=UNKNOWN_ID)
            case "wrong currency":
                command = _replace(command, currency="EUR")
            case "same account":
                command = c.Transfer(account, account, 1, currency, self.fresh_id())
        balances = {a: m.balance_minor for a, m in self.accounts.items()}
        (outcome,) = self.run(command)
        assert outcome == result(expected), (defect, command, outcome)
        assert {a: m.balance_minor for a, m in self.accounts.items()} == balances

    # ------------------------------------------------------------ rules: snapshots and replay

    @rule()
    def take_snapshot(self) -> None:
        """A snapshot restores to a machine with the same state hash and the same snapshot
        bytes; that twin, fed every later entry, keeps the same hash (checked every step). A
        frozen copy, as the node takes for its snapshot file, is kept for a later restart."""
        snapshot = self.state.snapshot()
        self.twin = StateMachine.restore(snapshot)
        assert self.twin.state_hash() == self.state.state_hash()
        assert self.twin.snapshot() == snapshot
        self.snapshots.append((len(self.log), self.state.frozen_copy(), self.state.state_hash()))

    @precondition(lambda self: bool(self.snapshots))
    @rule(which=st.integers(0, 20))
    def restart_from_a_snapshot(self, which: int) -> None:
        """A replica restarting from an older snapshot (written from its frozen copy, after
        the ledger went on applying) and applying the log after it reaches the same hash;
        entries at or below the snapshot's log index are skipped."""
        applied_then, frozen, hash_then = self.snapshots[which % len(self.snapshots)]
        restarted = StateMachine.restore(frozen.snapshot())
        assert restarted.state_hash() == hash_then == self.hashes[applied_then]
        for log_index, blob in self.log:
            outcome = restarted.apply_entry(decode_entry(blob), log_index)
            assert (outcome is None) == (log_index <= applied_then)
        assert restarted.state_hash() == self.state.state_hash()

    @rule(until=st.integers(0, 200))
    def replay_from_the_beginning(self, until: int) -> None:
        """Replaying the log on a fresh machine reaches the hash the ledger had at that
        position, by the replay's fast path (encoded entries) and from decoded entries."""
        position = until % (len(self.log) + 1)
        fast = replay(self.log, PARTITION, until_position=position)
        assert fast.state_hash() == self.hashes[position]
        decoded = [(i, decode_entry(blob)) for i, blob in self.log]
        assert replay(decoded, PARTITION, until_position=position).state_hash() == (
            self.hashes[position])

    @precondition(lambda self: bool(self.log))
    @rule(which=st.integers(0, 200))
    def redeliver_an_applied_log_entry(self, which: int) -> None:
        """Raft handing an already applied log index again changes nothing."""
        log_index, blob = self.log[which % len(self.log)]
        before = self.state.state_hash()
        assert self.state.apply_entry(decode_entry(blob), log_index) is None
        assert self.state.state_hash() == before

    # ------------------------------------------------------------ invariants

    @invariant()
    def balances_match_the_model(self) -> None:
        """Every account reads as the model has it; no balance is ever negative."""
        for account_id in (*KNOWN_IDS, UNKNOWN_ID):
            model = self.accounts.get(account_id)
            found = self.state.balance(account_id)
            if model is None:
                assert found is None, account_id
                continue
            assert found is not None, account_id
            status = AccountStatus.CLOSED if model.closed else AccountStatus.OPEN
            assert (found.balance_minor, found.currency, found.status) == (
                model.balance_minor, model.currency, status), account_id
            assert found.balance_minor >= 0

    @invariant()
    def money_is_conserved(self) -> None:
        """Per currency: balances + in flight == deposited - withdrawn (+ credited in - settled
        out, both zero here), and the core's totals agree with the model's."""
        currencies = {a.currency for a in self.accounts.values()}
        assert set(self.state.totals) == currencies
        for currency, totals in self.state.totals.items():
            balances = sum(b.balance_minor for b in map(self.state.balance, self.accounts)
                           if b is not None and b.currency == currency)
            assert totals.balance_minor == balances == self.held(currency)
            assert (totals.deposited_minor, totals.withdrawn_minor) == (
                self.deposited[currency], self.withdrawn[currency])
            assert totals.in_flight_minor == totals.credited_in_minor == 0
            assert totals.settled_out_minor == 0
            assert balances + totals.in_flight_minor == (
                totals.deposited_minor - totals.withdrawn_minor
                + totals.credited_in_minor - totals.settled_out_minor)
            assert balances <= BALANCE_MAX_MINOR
        self.state.check_invariants()  # the core's own check, from scratch

    @invariant()
    def replicas_agree(self) -> None:
        """The ledger, its replayed shadow and its restored twin have one state hash."""
        current = self.state.state_hash()
        assert self.shadow.state_hash() == current
        if self.twin is not None:
            assert self.twin.state_hash() == current


def _replace(command: MoneyCommand, **changes: object) -> MoneyCommand:
    return replace(command, **changes)  # type: ignore[arg-type]


TestLedgerModel = LedgerModel.TestCase
TestLedgerModel.settings = stateful_settings(max_examples=250, stateful_step_count=50)
