"""Behaviour of one partition's state machine, one rule per test."""

from __future__ import annotations

import pytest

from ledger import commands as c
from ledger.money import BALANCE_MAX_MINOR
from ledger.results import Code
from ledger.state import LedgerHalted, StateMachine
from tests.support import Ledger, tx


@pytest.fixture
def ledger() -> Ledger:
    book = Ledger(partition=0)
    book.open("alice", balance_minor=10_000)
    book.open("bob")
    return book


# -- accounts ----------------------------------------------------------------


def test_create_account_starts_at_zero(ledger: Ledger) -> None:
    ledger.open("carol", "JPY", 0)
    assert ledger.balance("carol") == 0


def test_create_account_retry_with_same_request_id_is_replayed(ledger: Ledger) -> None:
    request = tx()
    assert ledger.one(c.CreateAccount("dave", "USD", 2, request)).code is Code.OK
    again = ledger.one(c.CreateAccount("dave", "USD", 2, request))
    assert (again.code, again.replayed) == (Code.OK, True)


def test_create_existing_account_with_another_request_id_is_refused(ledger: Ledger) -> None:
    assert ledger.code(c.CreateAccount("alice", "USD", 2, tx())) is Code.ACCOUNT_EXISTS


@pytest.mark.parametrize("account_id", ["", "-lead", "a b", "é", "x" * 65, "a\n", "a/b"])
def test_create_account_refuses_malformed_ids(ledger: Ledger, account_id: str) -> None:
    assert ledger.code(c.CreateAccount(account_id, "USD", 2, tx())) is Code.INVALID_ACCOUNT_ID


@pytest.mark.parametrize(("currency", "exponent"), [("usd", 2), ("US", 2), ("USD", 9)])
def test_create_account_refuses_malformed_currency(ledger: Ledger, currency: str,
                                                   exponent: int) -> None:
    assert ledger.code(c.CreateAccount("zed", currency, exponent, tx())) is Code.INVALID_CURRENCY


def test_closed_account_refuses_deposits(ledger: Ledger) -> None:
    ledger.open("empty")
    assert ledger.code(c.CloseAccount("empty", tx())) is Code.OK
    assert ledger.code(c.Deposit("empty", 1, "USD", tx())) is Code.ACCOUNT_CLOSED


def test_account_with_money_cannot_be_closed(ledger: Ledger) -> None:
    assert ledger.code(c.CloseAccount("alice", tx())) is Code.ACCOUNT_NOT_EMPTY


# -- deposits and withdrawals ------------------------------------------------


def test_deposit_adds_to_the_balance(ledger: Ledger) -> None:
    assert ledger.code(c.Deposit("bob", 250, "USD", tx())) is Code.OK
    assert ledger.balance("bob") == 250


def test_withdraw_more_than_the_balance_is_insufficient_funds(ledger: Ledger) -> None:
    assert ledger.code(c.Withdraw("alice", 10_001, "USD", tx())) is Code.INSUFFICIENT_FUNDS
    assert ledger.balance("alice") == 10_000


def test_deposit_that_would_overflow_the_partition_total_is_refused(ledger: Ledger) -> None:
    ledger.open("whale")
    headroom = BALANCE_MAX_MINOR - ledger.state.totals["USD"].balance_minor
    assert ledger.code(c.Deposit("whale", 10**18, "USD", tx())) is Code.OK
    for _ in range(headroom // 10**18 - 1):
        assert ledger.code(c.Deposit("whale", 10**18, "USD", tx())) is Code.OK
    assert ledger.code(c.Deposit("whale", 10**18, "USD", tx())) is Code.BALANCE_LIMIT
    assert ledger.state.totals["USD"].balance_minor <= BALANCE_MAX_MINOR


@pytest.mark.parametrize("amount_minor", [0, -1, 10**18 + 1, -(2**63)])
def test_deposit_of_an_invalid_amount_is_refused(ledger: Ledger, amount_minor: int) -> None:
    assert ledger.code(c.Deposit("bob", amount_minor, "USD", tx())) is Code.INVALID_AMOUNT


def test_deposit_in_another_currency_is_a_mismatch(ledger: Ledger) -> None:
    assert ledger.code(c.Deposit("bob", 1, "EUR", tx())) is Code.CURRENCY_MISMATCH


# -- intra-partition transfers -----------------------------------------------


def test_transfer_moves_money_between_accounts(ledger: Ledger) -> None:
    assert ledger.code(c.Transfer("alice", "bob", 2_500, "USD", tx())) is Code.OK
    assert (ledger.balance("alice"), ledger.balance("bob")) == (7_500, 2_500)


def test_transfer_retry_with_same_id_applies_once(ledger: Ledger) -> None:
    transaction_id = tx()
    first = ledger.one(c.Transfer("alice", "bob", 100, "USD", transaction_id))
    again = ledger.one(c.Transfer("alice", "bob", 100, "USD", transaction_id))
    assert (first.code, first.replayed, again.code, again.replayed) == (
        Code.OK, False, Code.OK, True)
    assert ledger.balance("bob") == 100


def test_transfer_id_reused_with_other_content_is_a_conflict(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.one(c.Transfer("alice", "bob", 100, "USD", transaction_id))
    assert ledger.code(c.Transfer("alice", "bob", 101, "USD", transaction_id)) is Code.ID_CONFLICT
    assert ledger.balance("bob") == 100


def test_same_transaction_id_from_another_account_is_another_key(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.open("carol", balance_minor=500)
    assert ledger.code(c.Transfer("alice", "bob", 100, "USD", transaction_id)) is Code.OK
    assert ledger.code(c.Transfer("carol", "bob", 100, "USD", transaction_id)) is Code.OK


def test_insufficient_funds_is_recorded_and_stays_the_answer(ledger: Ledger) -> None:
    transaction_id = tx()
    transfer = c.Transfer("bob", "alice", 100, "USD", transaction_id)
    assert ledger.code(transfer) is Code.INSUFFICIENT_FUNDS
    ledger.apply(c.Deposit("bob", 1_000, "USD", tx()))
    again = ledger.one(transfer)
    assert (again.code, again.replayed) == (Code.INSUFFICIENT_FUNDS, True)
    assert ledger.balance("bob") == 1_000


def test_transfer_to_self_is_refused(ledger: Ledger) -> None:
    assert ledger.code(c.Transfer("alice", "alice", 1, "USD", tx())) is Code.SAME_ACCOUNT


def test_transfer_to_unknown_account_changes_nothing(ledger: Ledger) -> None:
    before = ledger.state.content_hash()
    assert ledger.code(c.Transfer("alice", "nobody", 1, "USD", tx())) is Code.ACCOUNT_NOT_FOUND
    assert ledger.state.content_hash() == before


def test_transfer_between_currencies_is_a_mismatch(ledger: Ledger) -> None:
    ledger.open("yen", "JPY", 0)
    assert ledger.code(c.Transfer("alice", "yen", 1, "USD", tx())) is Code.CURRENCY_MISMATCH


def test_transfer_with_malformed_transaction_id_is_refused(ledger: Ledger) -> None:
    code = ledger.code(c.Transfer("alice", "bob", 1, "USD", b"short"))
    assert code is Code.INVALID_TRANSACTION_ID


# -- the saga, source side ---------------------------------------------------


def test_debit_for_transfer_moves_money_in_flight(ledger: Ledger) -> None:
    assert ledger.code(c.DebitForTransfer("alice", "zoe", 300, "USD", tx(), 1)) is Code.PENDING
    totals = ledger.state.totals["USD"]
    assert (ledger.balance("alice"), totals.in_flight_minor) == (9_700, 300)


def test_debits_get_increasing_sequences_per_destination(ledger: Ledger) -> None:
    for _ in range(3):
        ledger.apply(c.DebitForTransfer("alice", "zoe", 1, "USD", tx(), 1))
    ledger.apply(c.DebitForTransfer("alice", "yan", 1, "USD", tx(), 2))
    assert [e.sequence for _, e in ledger.state.outbox_for(1)] == [1, 2, 3]
    assert [e.sequence for _, e in ledger.state.outbox_for(2)] == [1]


def test_settle_ends_the_transfer_as_succeeded(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.apply(c.DebitForTransfer("alice", "zoe", 300, "USD", transaction_id, 1))
    assert ledger.code(c.ResolveTransfer("alice", transaction_id, True, 0)) is Code.OK
    record = ledger.state.transfer_record("alice", transaction_id)
    assert record is not None and record.code is Code.OK
    assert ledger.state.totals["USD"].settled_out_minor == 300
    assert ledger.state.resolved_through(1) == 1


def test_compensation_returns_the_money_with_the_reason(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.apply(c.DebitForTransfer("alice", "zoe", 300, "USD", transaction_id, 1))
    code = ledger.code(c.ResolveTransfer("alice", transaction_id, False, Code.ACCOUNT_NOT_FOUND))
    assert code is Code.OK
    assert ledger.balance("alice") == 10_000
    record = ledger.state.transfer_record("alice", transaction_id)
    assert record is not None and record.code is Code.ACCOUNT_NOT_FOUND


def test_a_transfer_is_resolved_only_once(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.apply(c.DebitForTransfer("alice", "zoe", 300, "USD", transaction_id, 1))
    ledger.apply(c.ResolveTransfer("alice", transaction_id, True, 0))
    again = c.ResolveTransfer("alice", transaction_id, False, Code.ACCOUNT_NOT_FOUND)
    assert ledger.code(again) is Code.UNKNOWN_TRANSFER
    assert ledger.balance("alice") == 9_700


def test_compensation_needs_a_real_rejection_reason(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.apply(c.DebitForTransfer("alice", "zoe", 300, "USD", transaction_id, 1))
    assert ledger.code(c.ResolveTransfer("alice", transaction_id, False, Code.OK)) is (
        Code.INVALID_COMMAND)


def test_account_with_a_transfer_in_flight_cannot_be_closed(ledger: Ledger) -> None:
    ledger.open("small", balance_minor=5)
    ledger.apply(c.DebitForTransfer("small", "zoe", 5, "USD", tx(), 1))
    assert ledger.code(c.CloseAccount("small", tx())) is Code.TRANSFER_IN_FLIGHT


def test_debit_to_own_partition_is_refused(ledger: Ledger) -> None:
    code = ledger.code(c.DebitForTransfer("alice", "zoe", 1, "USD", tx(), 0))
    assert code is Code.INVALID_PARTITION


# -- the saga, destination side ----------------------------------------------


def credit(sequence: int, amount_minor: int = 100, to_account: str = "bob",
           resolved_through: int = 0, source: int = 1) -> c.CreditForTransfer:
    return c.CreditForTransfer(source, sequence, "remote", to_account, amount_minor, "USD",
                               tx(sequence), resolved_through)


def test_credit_adds_money_received_from_another_partition(ledger: Ledger) -> None:
    assert ledger.code(credit(1)) is Code.OK
    assert ledger.balance("bob") == 100
    assert ledger.state.totals["USD"].credited_in_minor == 100


def test_redelivered_credit_returns_the_recorded_outcome_and_credits_once(
    ledger: Ledger,
) -> None:
    ledger.apply(credit(1))
    again = ledger.one(credit(1))
    assert (again.code, again.replayed) == (Code.OK, True)
    assert ledger.balance("bob") == 100


def test_credit_to_unknown_account_is_a_permanent_rejection(ledger: Ledger) -> None:
    assert ledger.code(credit(1, to_account="ghost")) is Code.ACCOUNT_NOT_FOUND
    ledger.open("ghost")
    again = ledger.one(credit(1, to_account="ghost"))
    assert (again.code, again.replayed) == (Code.ACCOUNT_NOT_FOUND, True)
    assert ledger.balance("ghost") == 0


def test_credits_may_arrive_out_of_order(ledger: Ledger) -> None:
    ledger.apply(credit(2))
    assert ledger.state.incoming[1].watermark == 0
    ledger.apply(credit(1))
    assert ledger.state.incoming[1].watermark == 2
    assert ledger.balance("bob") == 200


def test_destination_forgets_outcomes_the_source_has_resolved(ledger: Ledger) -> None:
    for sequence in (1, 2, 3):
        ledger.apply(credit(sequence))
    ledger.apply(credit(4, resolved_through=2))
    assert sorted(ledger.state.incoming[1].outcomes) == [3, 4]


def test_a_deposed_leader_redelivering_an_old_credit_never_credits_twice(
    ledger: Ledger,
) -> None:
    ledger.apply(credit(1), credit(2, resolved_through=1))
    assert ledger.code(credit(1)) is Code.STALE_CREDIT
    assert ledger.balance("bob") == 200


def test_aborted_credit_is_rejected_when_it_arrives(ledger: Ledger) -> None:
    assert ledger.code(c.AbortCredit(1, 1)) is Code.ABORTED
    result = ledger.one(credit(1))
    assert (result.code, result.replayed) == (Code.ABORTED, True)
    assert ledger.balance("bob") == 0


def test_credit_from_own_partition_is_refused(ledger: Ledger) -> None:
    assert ledger.code(credit(1, source=0)) is Code.INVALID_PARTITION


# -- unknown outcomes, positions and halting ---------------------------------


def test_abort_closes_a_key_so_the_original_command_is_refused(ledger: Ledger) -> None:
    transaction_id = tx()
    assert ledger.code(c.Abort("alice", transaction_id)) is Code.ABORTED
    late = ledger.one(c.Transfer("alice", "bob", 100, "USD", transaction_id))
    assert (late.code, late.replayed) == (Code.ABORTED, True)
    assert ledger.balance("bob") == 0


def test_abort_of_an_applied_command_returns_its_outcome(ledger: Ledger) -> None:
    transaction_id = tx()
    ledger.apply(c.Transfer("alice", "bob", 100, "USD", transaction_id))
    result = ledger.one(c.Abort("alice", transaction_id))
    assert (result.code, result.replayed) == (Code.OK, True)


def test_each_entry_advances_the_position_by_one(ledger: Ledger) -> None:
    before = ledger.state.position
    ledger.apply(c.Barrier(), c.Barrier())
    assert ledger.state.position == before + 1


def test_an_already_applied_log_index_is_skipped(ledger: Ledger) -> None:
    before = ledger.state.state_hash()
    entry = c.Entry(1, (c.Deposit("bob", 5, "USD", tx()),))
    assert ledger.state.apply_entry(entry, ledger.state.last_log_index) is None
    assert ledger.state.state_hash() == before


def test_time_never_runs_backwards(ledger: Ledger) -> None:
    late = ledger.state.last_stamp_ms
    outcome = ledger.state.apply_entry(c.Entry(late - 10_000, (c.Barrier(),)), 10_000)
    assert outcome is not None and outcome.stamp_ms == late


def test_a_broken_invariant_halts_the_state_machine() -> None:
    state = StateMachine(0)
    state.apply_entry(c.Entry(1, (c.CreateAccount("a", "USD", 2, tx()),)), 1)
    state.totals["USD"].deposited_minor += 1  # corrupt it behind the ledger's back
    with pytest.raises(LedgerHalted, match="conservation"):
        state.apply_entry(c.Entry(2, (c.Deposit("a", 1, "USD", tx()),)), 2)


def test_a_halted_state_machine_refuses_every_later_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = StateMachine(0)

    def explode(command: c.Barrier) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setitem(state._handlers, c.Barrier, explode)
    with pytest.raises(LedgerHalted, match="injected fault"):
        state.apply_entry(c.Entry(1, (c.Barrier(),)), 1)
    with pytest.raises(LedgerHalted, match="halted"):
        state.apply_entry(c.Entry(2, (c.CreateAccount("a", "USD", 2, tx()),)), 2)
    assert state.accounts == {}


def test_an_unknown_entry_version_halts_the_state_machine() -> None:
    state = StateMachine(0)
    with pytest.raises(LedgerHalted, match="version"):
        state.apply_entry(c.Entry(1, (c.Barrier(),), version=2), 1)


# -- retention -----------------------------------------------------------------


def test_prune_forgets_resolved_records_but_keeps_pending_ones(ledger: Ledger) -> None:
    done, pending = tx(), tx()
    ledger.apply(c.Transfer("alice", "bob", 1, "USD", done))
    ledger.apply(c.DebitForTransfer("alice", "zoe", 1, "USD", pending, 1))
    ledger.apply(c.PruneDedup(ledger.stamp_ms + 1))
    assert ledger.state.transfer_record("alice", done) is None
    assert ledger.state.transfer_record("alice", pending) is not None


# -- snapshots ---------------------------------------------------------------


def test_snapshot_restores_an_equal_state(ledger: Ledger) -> None:
    ledger.apply(c.DebitForTransfer("alice", "zoe", 300, "USD", tx(), 1), credit(1))
    restored = StateMachine.restore(ledger.state.snapshot())
    assert restored.state_hash() == ledger.state.state_hash()
    assert restored.snapshot() == ledger.state.snapshot()


def test_a_damaged_snapshot_is_refused() -> None:
    from ledger.state import SnapshotError

    book = Ledger()
    book.open("a", balance_minor=5)
    snapshot = bytearray(book.state.snapshot())
    snapshot[20] ^= 0x01
    with pytest.raises(SnapshotError, match="checksum"):
        StateMachine.restore(bytes(snapshot))
    with pytest.raises(SnapshotError):
        StateMachine.restore(bytes(snapshot[:10]))


def test_dedup_records_are_invisible_to_the_cyclic_garbage_collector(ledger: Ledger) -> None:
    # Millions of remembered ids must not lengthen GC pauses (which stall Raft ticks).
    import gc

    transaction_id = tx()
    ledger.apply(c.Transfer("alice", "bob", 1, "USD", transaction_id))
    gc.collect()
    key = ("alice", transaction_id)
    record = ledger.state.dedup[key]
    assert not gc.is_tracked(record)
    assert next(k for k in ledger.state.dedup if k == key) is not None


def test_a_frozen_copy_snapshots_the_moment_it_was_taken(ledger: Ledger) -> None:
    ledger.apply(c.DebitForTransfer("alice", "zoe", 300, "USD", tx(), 1))
    expected = ledger.state.snapshot()
    frozen = ledger.state.frozen_copy()
    ledger.apply(c.Transfer("alice", "bob", 5, "USD", tx()), c.Deposit("bob", 7, "USD", tx()))
    (key, _), = list(ledger.state.outbox_for(1))
    ledger.apply(c.ResolveTransfer(key[0], key[1], True, 0))
    assert frozen.snapshot() == expected
    assert StateMachine.restore(expected).state_hash() != ledger.state.state_hash()
