"""Replay speed: rebuild a partition from its event archive, in one process.

Generates (or reuses, `--archive DIR`) the archive of one partition holding
`--transfers` intra-partition transfers in log entries of `--batch-size`,
archived exactly as a replica does (entry blob + encoded results, after a live
apply), then measures, as the median of `--runs` runs:

- replay: `node.replay_cli.replay_partition`, what `walletctl replay` runs:
  read the archive (checksums and hash chain verified), decode every entry,
  apply it to a fresh StateMachine, compare its results with the archived
  ones; the cyclic GC is paused meanwhile;
- replay, GC on: read + decode + apply with the cyclic GC left running;
- decode + apply: the entry blobs already in memory (GC paused);
- apply only: the entries already decoded (GC paused);
- read only: reading and verifying the archive, nothing applied.

Transfers/s divide the transfers by the whole time, which also includes the
setup entries (accounts created and funded: 2 commands per account).

Every run must reach the live state hash. Writes bench/results/replay.json.

    python -m bench.replay                      # 1,000,000 transfers in a temp dir
    python -m bench.replay --archive /tmp/arch  # generate once, reuse afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.environment import describe
from ledger import commands as c
from ledger.codec import decode_entry, encode_entry
from ledger.results_codec import encode_results
from ledger.state import StateMachine
from node.archive import EventArchive, read_archive
from node.replay_cli import Bound, paused_cyclic_gc, replay_partition

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "replay.json"
META_NAME = "bench-replay.json"
"""Written next to the segments: what the archive holds and the live state hash to reach."""
PARTITION = 0
TARGET_TRANSFERS_PER_S = 300_000


def _setup_batches(names: list[str], batch_size: int) -> list[list[c.Command]]:
    creates: list[c.Command] = [c.CreateAccount(n, "USD", 2, i.to_bytes(16, "big"))
                                for i, n in enumerate(names)]
    deposits: list[c.Command] = [c.Deposit(n, 10**12, "USD", (i + 2**64).to_bytes(16, "big"))
                                 for i, n in enumerate(names)]
    commands = creates + deposits
    return [commands[i:i + batch_size] for i in range(0, len(commands), batch_size)]


def generate(directory: str, transfers: int, batch_size: int, accounts: int,
             seed: int) -> dict[str, Any]:
    """Apply a workload to a live StateMachine, archiving each entry; returns the meta data."""
    rng = random.Random(seed)
    names = [f"acct-{i:06d}" for i in range(accounts)]
    state = StateMachine(PARTITION)
    stamp_ms = 1_767_225_600_000
    started = time.perf_counter()
    with EventArchive(directory, PARTITION) as archive:

        def apply(commands: list[c.Command]) -> None:
            nonlocal stamp_ms
            stamp_ms += 7
            entry = c.Entry(stamp_ms, tuple(commands))
            log_index = state.last_log_index + 1
            outcome = state.apply_entry(entry, log_index)
            assert outcome is not None
            archive.append(outcome.position, log_index, 1, outcome.stamp_ms,
                           encode_entry(entry), encode_results(outcome.results))

        for setup in _setup_batches(names, batch_size):
            apply(setup)
        for start in range(0, transfers, batch_size):
            batch: list[c.Command] = []
            for _ in range(min(batch_size, transfers - start)):
                source, target = rng.sample(names, 2)
                batch.append(c.Transfer(source, target, rng.randint(1, 10_000), "USD",
                                        rng.randbytes(16)))
            apply(batch)
            if archive.last_position % 100 == 0:
                print(f"  generated {archive.last_position:,} entries", flush=True)
        archive.sync()
        meta = {
            "transfers": transfers, "batch_size": batch_size, "accounts": accounts,
            "seed": seed, "entries": archive.last_position, "chain_head": archive.chain_head,
            "state_hash": state.state_hash(),
            "archive_bytes": sum(os.path.getsize(p) for p in archive.segment_paths),
            "generate_s": round(time.perf_counter() - started, 1),
        }
    Path(directory, META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _timed(run: Callable[[], StateMachine | None]) -> tuple[float, StateMachine | None]:
    started = time.perf_counter()
    state = run()
    return time.perf_counter() - started, state


def one_run(directory: str, expected_hash: str) -> dict[str, float]:
    """Seconds taken by each way of replaying; checks that each one reaches the live state."""

    def replay() -> StateMachine:  # exactly what `walletctl replay` runs
        return replay_partition(directory, PARTITION, Bound()).state

    def replay_gc_on() -> StateMachine:  # the same loop, the cyclic GC left running
        state = StateMachine(PARTITION)
        for record in read_archive(directory, PARTITION):
            state.apply_entry(decode_entry(record.entry_blob), record.log_index)
        return state

    def read_only() -> None:
        for _ in read_archive(directory, PARTITION):
            pass

    blobs = [(r.log_index, r.entry_blob) for r in read_archive(directory, PARTITION)]

    def decode_apply() -> StateMachine:
        state = StateMachine(PARTITION)
        with paused_cyclic_gc():
            for log_index, blob in blobs:
                state.apply_entry(decode_entry(blob), log_index)
        return state

    seconds: dict[str, float] = {}
    for name, run in (("replay_s", replay), ("replay_gc_on_s", replay_gc_on),
                      ("decode_apply_s", decode_apply), ("read_only_s", read_only)):
        seconds[name], state = _timed(run)
        if state is not None and state.state_hash() != expected_hash:
            raise AssertionError(f"{name}: replay reached another state than the live one")
    decoded = [(log_index, decode_entry(blob)) for log_index, blob in blobs]
    state = StateMachine(PARTITION)
    started = time.perf_counter()
    with paused_cyclic_gc():
        for log_index, entry in decoded:
            state.apply_entry(entry, log_index)
    seconds["apply_only_s"] = time.perf_counter() - started
    if state.state_hash() != expected_hash:
        raise AssertionError("apply only: replay reached another state than the live one")
    return seconds


def _load_or_generate(archive: str | None, args: argparse.Namespace,
                      scratch: str) -> tuple[str, dict[str, Any]]:
    directory = archive or os.path.join(scratch, "partition-0", "archive")
    meta_path = Path(directory, META_NAME)
    if meta_path.exists():
        print(f"reusing the archive in {directory}", flush=True)
        return directory, dict(json.loads(meta_path.read_text(encoding="utf-8")))
    print(f"generating {args.transfers:,} transfers in entries of {args.batch_size:,} into "
          f"{directory}", flush=True)
    return directory, generate(directory, args.transfers, args.batch_size, args.accounts,
                               args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--archive", metavar="DIR",
                        help="archive directory to reuse (generated there if it has none)")
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="raftwallet-replay-") as scratch:
        directory, meta = _load_or_generate(args.archive, args, scratch)
        runs = []
        for number in range(args.runs):
            runs.append(one_run(directory, str(meta["state_hash"])))
            print(f"run {number + 1}/{args.runs}: " + ", ".join(
                f"{name} {value:.2f}" for name, value in runs[-1].items()), flush=True)

    def median(name: str) -> float:
        return statistics.median(run[name] for run in runs)

    transfers, entries = int(meta["transfers"]), int(meta["entries"])
    report: dict[str, Any] = {
        "benchmark": "replay",
        "what": "rebuild one partition from its event archive in one process: read + verify "
                "checksums and hash chain + decode + apply; median of runs",
        "runs": args.runs,
        "archive": {k: meta[k] for k in ("transfers", "batch_size", "accounts", "entries",
                                         "archive_bytes", "chain_head", "state_hash")},
        "replay_entries_per_s": round(entries / median("replay_s")),
        "replay_transfers_per_s": round(transfers / median("replay_s")),
        "replay_gc_on_transfers_per_s": round(transfers / median("replay_gc_on_s")),
        "decode_apply_entries_per_s": round(entries / median("decode_apply_s")),
        "decode_apply_transfers_per_s": round(transfers / median("decode_apply_s")),
        "apply_only_transfers_per_s": round(transfers / median("apply_only_s")),
        "read_verify_mib_per_s": round(int(meta["archive_bytes"]) / 2**20
                                       / median("read_only_s"), 1),
        "target_transfers_per_s": TARGET_TRANSFERS_PER_S,
        "environment": describe(),
        "raw_seconds": runs,
    }
    report["target_met"] = report["replay_transfers_per_s"] >= TARGET_TRANSFERS_PER_S
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"replay (median of {args.runs}): {report['replay_entries_per_s']:,} entries/s, "
          f"{report['replay_transfers_per_s']:,} transfers/s (GC on "
          f"{report['replay_gc_on_transfers_per_s']:,}/s, decode + apply from memory "
          f"{report['decode_apply_transfers_per_s']:,}/s, apply only "
          f"{report['apply_only_transfers_per_s']:,}/s, read + verify "
          f"{report['read_verify_mib_per_s']} MiB/s); target {TARGET_TRANSFERS_PER_S:,}/s "
          f"{'met' if report['target_met'] else 'NOT met'}; written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
