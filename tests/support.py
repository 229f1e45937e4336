"""Helpers for driving a ledger StateMachine in tests: one command per log entry."""

from __future__ import annotations

import itertools
import uuid

from hypothesis import HealthCheck, settings

from ledger import commands as c
from ledger.results import Code, Result
from ledger.state import StateMachine


def tx(n: int | None = None) -> bytes:
    """A transaction id; `tx(7)` is always the same id, `tx()` is a fresh one."""
    return uuid.uuid4().bytes if n is None else n.to_bytes(16, "big")


class Ledger:
    """A StateMachine with its own log index counter and clock, for readable tests."""

    def __init__(self, partition: int = 0) -> None:
        self.state = StateMachine(partition)
        self._log_index = itertools.count(1)
        self.stamp_ms = 1_700_000_000_000
        self.log: list[tuple[int, c.Entry]] = []

    def apply(self, *commands: c.Command) -> list[Result]:
        self.stamp_ms += 1
        entry = c.Entry(self.stamp_ms, tuple(commands))
        log_index = next(self._log_index)
        outcome = self.state.apply_entry(entry, log_index)
        assert outcome is not None
        self.log.append((log_index, entry))
        self.state.check_invariants()
        return list(outcome.results)

    def one(self, command: c.Command) -> Result:
        return self.apply(command)[0]

    def code(self, command: c.Command) -> Code:
        return self.one(command).code

    def open(self, account_id: str, currency: str = "USD", exponent: int = 2,
             balance_minor: int = 0) -> None:
        assert self.code(c.CreateAccount(account_id, currency, exponent, tx())) is Code.OK
        if balance_minor:
            assert self.code(c.Deposit(account_id, balance_minor, currency, tx())) is Code.OK

    def balance(self, account_id: str) -> int:
        found = self.state.balance(account_id)
        assert found is not None
        return found.balance_minor


def stateful_settings(max_examples: int, stateful_step_count: int) -> settings:
    """Settings of a hypothesis state-machine model (tests/test_*_stateful.py).

    Derived from the profile tests/conftest.py loads (derandomized under CI). No
    deadline: a step's time depends on the machine's load. Only the first bug found
    is reported: shrinking a second one as well could take minutes.
    """
    return settings(
        max_examples=max_examples, stateful_step_count=stateful_step_count, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        report_multiple_bugs=False,
    )
