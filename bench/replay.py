"""Replay speed: rebuild a partition from its event archive, in one process.

Generates (or reuses, `--archive DIR`) the archive of one partition holding
`--transfers` intra-partition transfers in log entries of `--batch-size`,
archived exactly as a replica does (entry blob + encoded results, after a live
apply), then measures, as the median of `--runs` runs:

- replay: `node.archive.replay_cli.replay_partition`, what `walletctl replay` runs:
  read the archive (checksums and hash chain verified), parse every entry and
  apply it to a fresh StateMachine on the fast path (`parse_entry`,
  `apply_wire_entry`), compare its results with the archived ones; the
  cyclic GC is paused meanwhile;
- replay, GC on: read + parse + apply with the cyclic GC left running;
- parse + apply: the fast path, the entry blobs already in memory (GC paused);
- decode + apply: the plain (live) path, `decode_entry` + `apply_entry`, the
  entry blobs already in memory (GC paused);
- apply only: the entries already decoded, `apply_entry` (GC paused);
- read only: reading and verifying the archive, nothing applied.

With `--baseline-rev REV`, each run also times the replay of the code of
commit REV (its ledger/, node/ and proto/, exported with `git archive`) and
of the current code, each in a fresh process, one after the other: on a
shared machine the ratio of their medians is the figure to trust.

Transfers/s divide the transfers by the whole time, which also includes the
setup entries (accounts created and funded: 2 commands per account).

Every run must reach the live state hash. Writes bench/results/local/replay.json (the
committed record bench/results/replay.json with --record; bench/outputs.py).

    python -m bench.replay                      # 1,000,000 transfers in a temp dir
    python -m bench.replay --archive /tmp/arch  # generate once, reuse afterwards
    python -m bench.replay --archive /tmp/arch --baseline-rev 198bb9c
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.environment import describe
from bench.outputs import add_output_options, resolve_output
from ledger import commands as c
from ledger.codec import decode_entry, encode_entry, parse_entry
from ledger.results_codec import encode_results
from ledger.state import StateMachine
from node.archive.event_archive import EventArchive, read_archive
from node.archive.replay_cli import Bound, paused_cyclic_gc, replay_partition

RESULTS_NAME = "replay.json"
META_NAME = "bench-replay.json"
"""Written next to the segments: what the archive holds and the live state hash to reach."""
PARTITION = 0
TARGET_TRANSFERS_PER_S = 300_000
REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_TREES = ("ledger", "node", "proto")
"""What `--baseline-rev` exports of the old commit: everything a replay imports of ours."""
SUBPROCESS_TIMEOUT_S = 600

_TIME_ONE_REPLAY = """
import json, sys, time
try:
    from node.archive.replay_cli import Bound, replay_partition
except ImportError:  # a --baseline-rev from before node/ was split into packages (issue #14)
    from node.replay_cli import Bound, replay_partition
started, cpu = time.perf_counter(), time.process_time()
state = replay_partition(sys.argv[1], int(sys.argv[2]), Bound()).state
wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"wall_s": wall_s, "cpu_s": cpu_s, "state_hash": state.state_hash()}))
"""
"""One `replay_partition` of the code in the working directory, timed in a fresh process."""


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
            state.apply_wire_entry(parse_entry(record.entry_blob), record.log_index)
        return state

    def read_only() -> None:
        for _ in read_archive(directory, PARTITION):
            pass

    blobs = [(r.log_index, r.entry_blob) for r in read_archive(directory, PARTITION)]

    def parse_apply() -> StateMachine:
        state = StateMachine(PARTITION)
        with paused_cyclic_gc():
            for log_index, blob in blobs:
                state.apply_wire_entry(parse_entry(blob), log_index)
        return state

    def decode_apply() -> StateMachine:
        state = StateMachine(PARTITION)
        with paused_cyclic_gc():
            for log_index, blob in blobs:
                state.apply_entry(decode_entry(blob), log_index)
        return state

    seconds: dict[str, float] = {}
    for name, run in (("replay_s", replay), ("replay_gc_on_s", replay_gc_on),
                      ("parse_apply_s", parse_apply), ("decode_apply_s", decode_apply),
                      ("read_only_s", read_only)):
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


def export_revision(revision: str, destination: str) -> None:
    """Write the `BASELINE_TREES` of commit `revision` into `destination` (read-only git)."""
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", revision,
                           *BASELINE_TREES], capture_output=True, timeout=SUBPROCESS_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"--baseline-rev {revision}: git archive failed: "
                         f"{done.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
            archive.extractall(destination, filter="data")
        else:
            archive.extractall(destination)  # our own commit: trusted


def time_replay_in_process(code_root: str, directory: str, expected_hash: str) -> dict[str, float]:
    """Wall and CPU seconds of one replay by the code under `code_root`, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _TIME_ONE_REPLAY, directory, str(PARTITION)],
                          cwd=code_root, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise AssertionError(f"the replay under {code_root} failed:\n{done.stderr}")
    timing = json.loads(done.stdout)
    if timing["state_hash"] != expected_hash:
        raise AssertionError(f"the replay under {code_root} reached another state")
    return {"wall_s": float(timing["wall_s"]), "cpu_s": float(timing["cpu_s"])}


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
    add_output_options(parser, RESULTS_NAME)
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="also time the replay of commit REV's code against the current "
                        "code, each in a fresh process, alternately (e.g. 198bb9c)")
    args = parser.parse_args(argv)
    args.output = resolve_output(args, RESULTS_NAME)

    with tempfile.TemporaryDirectory(prefix="raftwallet-replay-") as scratch:
        directory, meta = _load_or_generate(args.archive, args, scratch)
        expected_hash = str(meta["state_hash"])
        baseline_root = os.path.join(scratch, "baseline")
        if args.baseline_rev:
            export_revision(args.baseline_rev, baseline_root)
        runs, pairs = [], []
        for number in range(args.runs):
            runs.append(one_run(directory, expected_hash))
            print(f"run {number + 1}/{args.runs}: " + ", ".join(
                f"{name} {value:.2f}" for name, value in runs[-1].items()), flush=True)
            if args.baseline_rev:
                pairs.append({
                    "baseline": time_replay_in_process(baseline_root, directory, expected_hash),
                    "current": time_replay_in_process(str(REPO_ROOT), directory, expected_hash),
                })
                print(f"  in fresh processes: {args.baseline_rev} "
                      f"{pairs[-1]['baseline']['wall_s']:.2f} s, current "
                      f"{pairs[-1]['current']['wall_s']:.2f} s", flush=True)

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
        "parse_apply_transfers_per_s": round(transfers / median("parse_apply_s")),
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
    if pairs:
        report["baseline"] = _baseline_report(args.baseline_rev, pairs, transfers)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"replay (median of {args.runs}): {report['replay_entries_per_s']:,} entries/s, "
          f"{report['replay_transfers_per_s']:,} transfers/s (GC on "
          f"{report['replay_gc_on_transfers_per_s']:,}/s, parse + apply from memory "
          f"{report['parse_apply_transfers_per_s']:,}/s, decode + apply from memory "
          f"{report['decode_apply_transfers_per_s']:,}/s, apply only "
          f"{report['apply_only_transfers_per_s']:,}/s, read + verify "
          f"{report['read_verify_mib_per_s']} MiB/s); target {TARGET_TRANSFERS_PER_S:,}/s "
          f"{'met' if report['target_met'] else 'NOT met'}; written to {args.output}")
    if pairs:
        baseline = report["baseline"]
        print(f"against {args.baseline_rev} (fresh processes, same runs): "
              f"{baseline['speedup_wall']}x wall, {baseline['speedup_cpu']}x CPU "
              f"({baseline['baseline_transfers_per_s']:,} -> "
              f"{baseline['current_transfers_per_s']:,} transfers/s)")
    return 0


def _baseline_report(revision: str, pairs: list[dict[str, dict[str, float]]],
                     transfers: int) -> dict[str, Any]:
    """Medians of the paired fresh-process runs, and the speedups they give."""

    def median(side: str, clock: str) -> float:
        return statistics.median(pair[side][clock] for pair in pairs)

    return {
        "rev": revision,
        "what": "replay_partition timed in fresh processes, the baseline and the current code "
                "one after the other in each run; medians",
        "baseline_transfers_per_s": round(transfers / median("baseline", "wall_s")),
        "current_transfers_per_s": round(transfers / median("current", "wall_s")),
        "speedup_wall": round(median("baseline", "wall_s") / median("current", "wall_s"), 2),
        "speedup_cpu": round(median("baseline", "cpu_s") / median("current", "cpu_s"), 2),
        "raw_seconds": pairs,
    }


if __name__ == "__main__":
    raise SystemExit(main())
