"""The pure steps of a cross-partition transfer, for whoever drives the saga.

1. The source applies `DebitForTransfer`: the money leaves the account and
   waits in the outbox, counted as in flight.
2. `credits_for(source, destination)` builds the `CreditForTransfer` commands
   for every open outbox entry; the destination applies them (once each).
3. `resolutions(source, destination, outcomes)` turns the destination's
   recorded outcomes into `ResolveTransfer` commands: settle on OK, compensate
   on a definitive rejection. Anything else (no answer, a timeout) resolves
   nothing: the credit is simply sent again later.

These functions only read state and build commands; the node sends them
through the replicated logs.
"""

from __future__ import annotations

from collections.abc import Mapping

from ledger import commands as c
from ledger.results import CREDIT_REJECTIONS, Code
from ledger.state import StateMachine

CREDITS_PER_BATCH_MAX = 4096
"""Most credits sent to one destination in one command batch."""


def credits_for(
    source: StateMachine, destination: int, limit: int = CREDITS_PER_BATCH_MAX
) -> list[c.CreditForTransfer]:
    """Credits for the open outbox entries towards `destination`, in sequence order."""
    resolved_through = source.resolved_through(destination)
    credits: list[c.CreditForTransfer] = []
    for key, entry in source.outbox_for(destination):
        if len(credits) >= limit:
            break
        credits.append(
            c.CreditForTransfer(source.partition, entry.sequence, key[0], entry.to_account,
                                entry.amount_minor, entry.currency, key[1], resolved_through)
        )
    return credits


def resolutions(
    source: StateMachine, destination: int, outcomes: Mapping[int, Code]
) -> list[c.ResolveTransfer]:
    """Settle or compensate the outbox entries whose credit outcome (by sequence) is final."""
    commands: list[c.ResolveTransfer] = []
    for key, entry in source.outbox_for(destination):
        code = outcomes.get(entry.sequence)
        if code is Code.OK:
            commands.append(c.ResolveTransfer(key[0], key[1], True, 0))
        elif code is not None and code in CREDIT_REJECTIONS:
            commands.append(c.ResolveTransfer(key[0], key[1], False, code))
    return commands
