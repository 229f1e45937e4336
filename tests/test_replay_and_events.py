"""Replay from position 0, balances as of a position, and the events commands produce."""

from __future__ import annotations

from ledger import commands as c
from ledger import events as ev
from ledger.replay import balance_at, replay
from ledger.results import Code, result
from ledger.routing import partition_of
from ledger.saga import credits_for, resolutions
from tests.support import Ledger, tx


def test_replay_from_zero_reaches_the_live_state_hash() -> None:
    book = Ledger()
    book.open("a", balance_minor=500)
    book.open("b")
    book.apply(c.Transfer("a", "b", 100, "USD", tx()), c.DebitForTransfer("a", "z", 5, "USD",
                                                                          tx(), 2))
    assert replay(book.log, partition=0).state_hash() == book.state.state_hash()


def test_balance_at_a_past_position_is_the_balance_then() -> None:
    book = Ledger()
    book.open("a", balance_minor=500)
    position_after_deposit = book.state.position
    book.apply(c.Withdraw("a", 200, "USD", tx()))
    past = balance_at(book.log, 0, "a", position_after_deposit)
    assert past is not None and past.balance_minor == 500
    assert book.balance("a") == 300


def test_balance_at_before_the_account_existed_is_none() -> None:
    book = Ledger()
    book.open("a")
    assert balance_at(book.log, 0, "a", 0) is None


def test_a_successful_transfer_produces_one_event() -> None:
    command = c.Transfer("a", "b", 1, "USD", tx(1))
    assert ev.events_of(command, result(Code.OK)) == (
        ev.TransferCompleted("a", "b", 1, "USD", tx(1)),)


def test_a_replayed_command_produces_no_event() -> None:
    command = c.Transfer("a", "b", 1, "USD", tx(1))
    assert ev.events_of(command, result(Code.OK, replayed=True)) == ()


def test_a_refused_command_produces_no_event() -> None:
    assert ev.events_of(c.Deposit("a", 1, "USD", tx(1)), result(Code.ACCOUNT_NOT_FOUND)) == ()


def test_a_compensation_is_an_event_with_the_destination_reason() -> None:
    command = c.ResolveTransfer("a", tx(1), False, Code.ACCOUNT_NOT_FOUND)
    assert ev.events_of(command, result(Code.OK)) == (
        ev.TransferCompensated("a", tx(1), Code.ACCOUNT_NOT_FOUND),)


def test_insufficient_funds_is_recorded_as_a_rejection_event() -> None:
    command = c.Withdraw("a", 9, "USD", tx(1))
    assert ev.events_of(command, result(Code.INSUFFICIENT_FUNDS)) == (
        ev.Rejected("a", tx(1), Code.INSUFFICIENT_FUNDS),)


def test_saga_steps_settle_credited_and_compensate_rejected_transfers() -> None:
    source, destination = Ledger(partition=0), Ledger(partition=1)
    source.open("a", balance_minor=1_000)
    destination.open("b")
    source.apply(c.DebitForTransfer("a", "b", 100, "USD", tx(1), 1),
                 c.DebitForTransfer("a", "nobody", 50, "USD", tx(2), 1))
    credits = credits_for(source.state, 1)
    outcomes = {cr.sequence: r.code for cr, r in
                zip(credits, destination.apply(*credits), strict=True)}
    source.apply(*resolutions(source.state, 1, outcomes))
    assert (source.balance("a"), destination.balance("b")) == (900, 100)
    assert not source.state.outbox
    failed = source.state.transfer_record("a", tx(2))
    assert failed is not None and failed.code is Code.ACCOUNT_NOT_FOUND


def test_unknown_credit_outcomes_resolve_nothing() -> None:
    source = Ledger(partition=0)
    source.open("a", balance_minor=1_000)
    source.apply(c.DebitForTransfer("a", "b", 100, "USD", tx(1), 1))
    assert resolutions(source.state, 1, {}) == []
    assert resolutions(source.state, 1, {1: Code.INVALID_AMOUNT}) == []


def test_partition_of_is_stable_across_processes_and_releases() -> None:
    # Fixed expectations: changing the routing hash would move every account.
    assert [partition_of(f"wallet-{i}", 8) for i in range(6)] == [7, 0, 3, 3, 4, 1]
    assert partition_of("alice", 4) == 1
    assert {partition_of(f"w{i}", 4) for i in range(100)} == {0, 1, 2, 3}
