"""A fixed pseudo-random workload; prints the final state hash. Run under several hash seeds.

`python -m tests.determinism_workload` must print the same line whatever
PYTHONHASHSEED is: nothing in the ledger may depend on str hashing or set order.
"""

from __future__ import annotations

import random

from ledger import commands as c
from ledger.canonical import digest
from ledger.state import StateMachine


def run(seed: int = 7, entries: int = 400) -> StateMachine:
    rng = random.Random(seed)
    state = StateMachine(partition=1)
    names = [f"acct-{i}" for i in range(40)]
    log_index = 0

    def apply(*commands: c.Command) -> None:
        nonlocal log_index
        log_index += 1
        state.apply_entry(c.Entry(1_000 + log_index, commands), log_index)

    apply(*(c.CreateAccount(n, "EUR", 2, rng.randbytes(16)) for n in names))
    apply(*(c.Deposit(n, rng.randint(1, 10**6), "EUR", rng.randbytes(16)) for n in names))
    ids = [rng.randbytes(16) for _ in range(300)]
    for _ in range(entries):
        batch: list[c.Command] = []
        for _ in range(rng.randint(1, 20)):
            a, b = rng.sample(names, 2)
            amount = rng.randint(1, 50_000)
            transaction_id = rng.choice(ids)
            roll = rng.random()
            if roll < 0.5:
                batch.append(c.Transfer(a, b, amount, "EUR", transaction_id))
            elif roll < 0.8:
                batch.append(c.DebitForTransfer(a, f"remote-{b}", amount, "EUR", transaction_id,
                                                rng.choice([0, 2, 3])))
            else:
                batch.append(c.CreditForTransfer(rng.choice([0, 2]), rng.randint(1, 200), "x", b,
                                                 amount, "EUR", transaction_id,
                                                 rng.randint(0, 100)))
        for key in list(state.outbox)[: rng.randint(0, 5)]:
            batch.append(c.ResolveTransfer(key[0], key[1], rng.random() < 0.7, 3))
        if rng.random() < 0.05:
            batch.append(c.PruneDedup(1_000 + log_index - 50))
        apply(*batch)
    return state


def main() -> None:
    state = run()
    state.check_invariants()
    print(state.state_hash(), digest(state.snapshot()))


if __name__ == "__main__":
    main()
