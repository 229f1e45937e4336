"""Property tests of one partition's state machine over random command sequences.

Commands are drawn from small pools (few accounts, few transaction ids) so that
duplicates, conflicts and invalid input are frequent, not rare.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import commands as c
from ledger.codec import decode_entry, encode_entry
from ledger.replay import replay
from ledger.results import Code
from ledger.state import StateMachine

ACCOUNTS = ["a", "b", "c", "d", "", "not valid"]
CURRENCIES = [("USD", 2), ("JPY", 0), ("usd", 2)]
TRANSACTION_IDS = [n.to_bytes(16, "big") for n in range(6)] + [b"short"]
AMOUNTS = st.one_of(
    st.integers(min_value=1, max_value=5_000),
    st.sampled_from([-5, 0, 10**18, 10**18 + 1]),
)

# Mostly valid values, so that commands succeed often; the rest exercise refusals.
accounts = st.sampled_from(["a", "b", "c", "a", "b", "c", *ACCOUNTS])
currency_codes = st.sampled_from(["USD"] * 8 + [code for code, _ in CURRENCIES])
transaction_ids = st.sampled_from(TRANSACTION_IDS)
reasons = st.sampled_from([Code.ACCOUNT_NOT_FOUND, Code.ABORTED, Code.OK, Code.PENDING])

transfers = st.builds(c.Transfer, accounts, accounts, AMOUNTS, currency_codes, transaction_ids)
debits = st.builds(c.DebitForTransfer, accounts, accounts, AMOUNTS, currency_codes,
                   transaction_ids, st.sampled_from([1, 2, 1, 2, 0]))

commands_strategy: st.SearchStrategy[c.Command] = st.one_of(
    transfers, debits, transfers, debits,
    st.builds(
        lambda a, cur, t: c.CreateAccount(a, cur[0], cur[1], t),
        accounts, st.sampled_from(CURRENCIES), transaction_ids,
    ),
    st.builds(c.Deposit, accounts, AMOUNTS, currency_codes, transaction_ids),
    st.builds(c.Withdraw, accounts, AMOUNTS, currency_codes, transaction_ids),
    st.builds(c.CreditForTransfer, st.sampled_from([0, 1, 2]), st.integers(0, 6), accounts,
              accounts, AMOUNTS, currency_codes, transaction_ids, st.integers(0, 4)),
    st.builds(c.ResolveTransfer, accounts, transaction_ids, st.booleans(), reasons),
    st.builds(c.Abort, accounts, transaction_ids),
    st.builds(c.AbortCredit, st.sampled_from([0, 1, 2]), st.integers(0, 6)),
    st.builds(c.CloseAccount, accounts, transaction_ids),
    st.builds(c.PruneDedup, st.integers(0, 2_000)),
    st.just(c.Barrier()),
    st.builds(c.Deposit, accounts, AMOUNTS, currency_codes, transaction_ids),
)

# Failures that mean "this command was refused": the ledger's content must not change.
REFUSALS = frozenset({
    Code.INVALID_AMOUNT, Code.INVALID_ACCOUNT_ID, Code.INVALID_CURRENCY,
    Code.INVALID_TRANSACTION_ID, Code.INVALID_PARTITION, Code.INVALID_COMMAND,
    Code.ACCOUNT_NOT_FOUND, Code.CURRENCY_MISMATCH, Code.SAME_ACCOUNT, Code.ACCOUNT_CLOSED,
    Code.ID_CONFLICT, Code.ACCOUNT_EXISTS, Code.UNKNOWN_TRANSFER, Code.STALE_CREDIT,
    Code.ACCOUNT_NOT_EMPTY, Code.TRANSFER_IN_FLIGHT,
})


def is_refusal(command: c.Command, code: Code, replayed: bool) -> bool:
    """Whether the ledger promises this outcome left its content untouched."""
    if isinstance(command, c.CreditForTransfer | c.AbortCredit):
        # A destination records its rejections (they are permanent), and every
        # credit carries the source's progress, which lets it forget outcomes.
        return code in (Code.INVALID_PARTITION, Code.INVALID_COMMAND, Code.INVALID_AMOUNT,
                        Code.INVALID_TRANSACTION_ID, Code.INVALID_CURRENCY)
    return replayed or code in REFUSALS


def effect_key(command: c.Command) -> tuple[object, ...] | None:
    match command:
        case c.Deposit() | c.Withdraw():
            return (command.account_id, command.transaction_id)
        case c.Transfer() | c.DebitForTransfer():
            return (command.from_account, command.transaction_id)
        case c.CreditForTransfer():
            return ("credit", command.source_partition, command.sequence)
    return None


GENESIS = c.Entry(0, (
    c.CreateAccount("a", "USD", 2, b"genesis-a-000000"),
    c.CreateAccount("b", "USD", 2, b"genesis-b-000000"),
    c.CreateAccount("d", "JPY", 0, b"genesis-d-000000"),
    c.Deposit("a", 10_000, "USD", b"genesis-a-dep-00"),
    c.Deposit("b", 10_000, "USD", b"genesis-b-dep-00"),
))

entries_strategy = st.lists(
    st.tuples(st.lists(commands_strategy, min_size=1, max_size=4), st.integers(0, 50)),
    min_size=1, max_size=60,
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries_strategy)
def test_random_command_sequences_keep_every_ledger_property(
    entries: list[tuple[list[c.Command], int]],
) -> None:
    state = StateMachine(partition=0)
    log: list[tuple[int, c.Entry]] = []
    effects: dict[tuple[object, ...], int] = {}
    stamp_ms = 1_000
    assert state.apply_entry(GENESIS, 1) is not None
    log.append((1, GENESIS))
    for log_index, (batch, clock_step) in enumerate(entries, start=2):
        stamp_ms += clock_step - 10  # clocks may run backwards between leaders
        entry = c.Entry(stamp_ms, tuple(batch))
        assert decode_entry(encode_entry(entry)) == entry
        # Apply one command at a time through a probe copy, to check refusals exactly.
        probe = StateMachine.restore(state.snapshot())
        singles = []
        for command in batch:
            before = probe.content_hash()
            single = probe.apply_entry(c.Entry(stamp_ms, (command,)), probe.last_log_index + 1)
            assert single is not None
            outcome = single.results[0]
            singles.append(outcome)
            if is_refusal(command, outcome.code, outcome.replayed):
                assert probe.content_hash() == before, (command, outcome)
            if isinstance(command, c.PruneDedup):
                for pruned in [k for k in effects if k[0] != "credit" and k not in probe.dedup]:
                    del effects[pruned]  # past the dedup window: the API refuses the id
            key = effect_key(command)
            if key is not None and not outcome.replayed and outcome.code in (Code.OK,
                                                                              Code.PENDING):
                effects[key] = effects.get(key, 0) + 1
                assert effects[key] == 1, f"{key} took effect twice"
        applied = state.apply_entry(entry, log_index)
        assert applied is not None and len(applied.results) == len(batch)
        # Batching commands into one entry never changes their outcomes.
        assert [r.code for r in applied.results] == [r.code for r in singles]
        log.append((log_index, entry))
        state.check_invariants()  # conservation, bounds, no negative balance, hash
        # Re-delivering an applied log index changes nothing.
        frozen = state.state_hash()
        assert state.apply_entry(entry, log_index) is None
        assert state.state_hash() == frozen
    assert StateMachine.restore(state.snapshot()).state_hash() == state.state_hash()
    assert replay(log, partition=0).state_hash() == state.state_hash()
    encoded = [(i, encode_entry(e)) for i, e in log]
    assert replay(encoded, partition=0).state_hash() == state.state_hash()
