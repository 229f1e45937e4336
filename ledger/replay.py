"""Event sourcing: rebuild a partition's state by folding its log from position 0.

A replay of the same entries reaches the same `state_hash()` as the live
replica, bit for bit; that is how history is reconstructed and how a code
change is checked against recorded traffic.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.codec import parse_entry
from ledger.commands import Entry
from ledger.state import Balance, StateMachine

LogRecord = tuple[int, Entry | bytes]
"""A committed log entry: its Raft log index and the entry (decoded or encoded)."""


def replay(
    records: Iterable[LogRecord], partition: int, until_position: int | None = None
) -> StateMachine:
    """Apply `records` in order to a fresh state machine, up to `until_position` inclusive.

    Encoded entries take the replay's fast path (`parse_entry`, `apply_wire_entry`):
    the same state, bit for bit, as decoding them first.
    """
    state = StateMachine(partition)
    for log_index, entry in records:
        if until_position is not None and state.position >= until_position:
            break
        if isinstance(entry, bytes):
            state.apply_wire_entry(parse_entry(entry), log_index)
        else:
            state.apply_entry(entry, log_index)
    return state


def balance_at(
    records: Iterable[LogRecord], partition: int, account_id: str, position: int
) -> Balance | None:
    """The balance of `account_id` as it was right after `position` was applied."""
    return replay(records, partition, until_position=position).balance(account_id)
