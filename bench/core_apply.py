"""Applies of transfers per second in one process: the ceiling for a partition's replica.

Measures decode + apply of pre-encoded log entries (what every replica does
for every committed entry), for entries of one transfer and of 1,000
transfers, as the median of several runs. Writes bench/results/local/core_apply.json
(the committed record bench/results/core_apply.json with --record; bench/outputs.py).

    make bench-core            # or: python -m bench.core_apply --runs 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from bench.environment import describe
from bench.outputs import add_output_options, resolve_output
from ledger import commands as c
from ledger.codec import decode_entry, encode_entry
from ledger.state import StateMachine

RESULTS_NAME = "core_apply.json"


def funded_state(accounts: int) -> tuple[StateMachine, list[str]]:
    state = StateMachine(0)
    names = [f"acct-{i:06d}" for i in range(accounts)]
    creates = [c.CreateAccount(n, "USD", 2, i.to_bytes(16, "big")) for i, n in enumerate(names)]
    deposits = [c.Deposit(n, 10**12, "USD", (i + 2**64).to_bytes(16, "big"))
                for i, n in enumerate(names)]
    state.apply_entry(c.Entry(1, tuple(creates)), 1)
    state.apply_entry(c.Entry(2, tuple(deposits)), 2)
    return state, names


def encoded_entries(names: list[str], transfers: int, per_entry: int,
                    rng: random.Random) -> list[bytes]:
    blobs = []
    for start in range(0, transfers, per_entry):
        commands = []
        for _ in range(min(per_entry, transfers - start)):
            a, b = rng.sample(names, 2)
            commands.append(c.Transfer(a, b, rng.randint(1, 10_000), "USD", rng.randbytes(16)))
        blobs.append(encode_entry(c.Entry(1_000 + start, tuple(commands))))
    return blobs


def one_run(accounts: int, transfers: int, per_entry: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    state, names = funded_state(accounts)
    blobs = encoded_entries(names, transfers, per_entry, rng)
    started = time.perf_counter()
    decoded = [decode_entry(blob) for blob in blobs]
    decoded_s = time.perf_counter() - started
    for log_index, entry in enumerate(decoded, start=3):
        state.apply_entry(entry, log_index)
    total_s = time.perf_counter() - started
    state.state_hash()
    hashed_s = time.perf_counter() - started
    return {
        "transfers_per_s": transfers / total_s,
        "apply_only_per_s": transfers / (total_s - decoded_s),
        "with_state_hash_per_s": transfers / hashed_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--single-transfers", type=int, default=50_000)
    parser.add_argument("--batch-transfers", type=int, default=300_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    add_output_options(parser, RESULTS_NAME)
    args = parser.parse_args(argv)
    args.output = resolve_output(args, RESULTS_NAME)

    figures: dict[str, list[dict[str, float]]] = {"single": [], "batch": []}
    for run in range(args.runs):
        figures["single"].append(one_run(args.accounts, args.single_transfers, 1, run))
        figures["batch"].append(
            one_run(args.accounts, args.batch_transfers, args.batch_size, run))
        print(f"run {run + 1}/{args.runs}: single "
              f"{figures['single'][-1]['transfers_per_s']:,.0f}/s, batch of {args.batch_size} "
              f"{figures['batch'][-1]['transfers_per_s']:,.0f}/s", flush=True)

    def median(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in figures[kind]))

    report: dict[str, Any] = {
        "benchmark": "core_apply",
        "what": "decode + apply of pre-encoded log entries of intra-partition transfers, "
                "one process, median of runs",
        "runs": args.runs,
        "accounts": args.accounts,
        "batch_size": args.batch_size,
        "transfers_per_s_single": median("single", "transfers_per_s"),
        "transfers_per_s_batch": median("batch", "transfers_per_s"),
        "apply_only_per_s_single": median("single", "apply_only_per_s"),
        "apply_only_per_s_batch": median("batch", "apply_only_per_s"),
        "batch_over_single": round(median("batch", "transfers_per_s")
                                   / median("single", "transfers_per_s"), 2),
        "environment": describe(),
        "raw": figures,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"transfers/s (median of {args.runs}): single {report['transfers_per_s_single']:,}, "
          f"batch of {args.batch_size} {report['transfers_per_s_batch']:,} "
          f"(x{report['batch_over_single']}); written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
