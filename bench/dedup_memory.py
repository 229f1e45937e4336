"""Memory of the dedup table per million transaction ids (one partition, one process).

    python -m bench.dedup_memory --ids 1000000
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

from ledger import commands as c
from ledger.state import StateMachine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args(argv)
    state = StateMachine(0)
    names = [f"acct-{i:06d}" for i in range(args.accounts)]
    state.apply_entry(c.Entry(1, tuple(c.CreateAccount(n, "USD", 2, i.to_bytes(16, "big"))
                                       for i, n in enumerate(names))), 1)
    state.apply_entry(c.Entry(2, tuple(c.Deposit(n, 10**12, "USD", (2**64 + i).to_bytes(16))
                                       for i, n in enumerate(names))), 2)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    entries = []
    for start in range(0, args.ids, 1_000):
        entries.append(c.Entry(3, tuple(
            c.Transfer(names[i % args.accounts], names[(i * 7 + 1) % args.accounts], 1, "USD",
                       (2**96 + i).to_bytes(16, "big"))
            for i in range(start, min(start + 1_000, args.ids)))))
    for log_index, entry in enumerate(entries, start=3):
        state.apply_entry(entry, log_index)
    del entries
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    per_id = (after - before) / args.ids
    print(f"dedup records: {len(state.dedup):,}; {per_id:.0f} bytes per id; "
          f"{per_id * 1_000_000 / 2**20:.0f} MiB per million ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
