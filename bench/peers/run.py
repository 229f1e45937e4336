"""RaftWallet against PostgreSQL on the same transfer workload: `make bench-peers`.

    python -m bench.peers.run [--quick] [--clients 1,4,16,64] [--batch-clients 1,2,4,8]
                              [--duration-s S] [--runs N] [--batch-size 100|1000]

One workload, three systems, in this order, in the same invocation:

    PostgreSQL, durable            fsync on, synchronous_commit on, full_page_writes on
    PostgreSQL, async commit       the same instance after synchronous_commit=off
    RaftWallet                     3 nodes, 3 replicas per partition, durable journal

Like with like: a unary Transfer call against one `SELECT transfer(...)` (a
stored function, one transaction), and a TransferBatch call of `--batch-size`
transfers against one `SELECT transfer_batch(...)` taking arrays (each transfer
applied independently, same outcomes). Both sides use the same accounts
(bench.tps's 2,000 accounts with 1,000,000.00 USD each), the same seeded
transfers in the same order per caller (`bench.peers.workload`), fresh
transaction ids (deduplicated by the store), the same refusal rules
(INSUFFICIENT_FUNDS, NOT_FOUND, ...) and the same counting (transfers with a
committed outcome in the measured window). Each is run at every client count
(connections for PostgreSQL, concurrent callers for RaftWallet); a figure is the
median of `--runs` runs; the ratios compare each system at its own best client
count. After every run both sides check their books (the sum of all balances
equals the deposits; RaftWallet also checks that every replica agrees).

The comparison is not between equals in safety: PostgreSQL here is ONE node
without failover (one copy of the data; losing this machine's disk loses it,
and nothing serves while it is down), while RaftWallet keeps three replicas
and keeps serving through the loss of one. All run on the same machine, each
alone while measured.

PostgreSQL is a throwaway instance (bench.peers.postgres) in a temporary
directory, on 127.0.0.1 and a free port, stopped and removed at the end; as
root it runs as the user `nobody`. Nothing is installed: without PostgreSQL's
server binaries this exits 2 and says how to install them. Results go to
bench/results/local/peers.json (peers-quick.json with --quick; ignored by git), to
the committed record bench/results/ with --record, or to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import loadgen, outputs, tps
from bench.environment import describe
from bench.peers import workload
from bench.peers.pg_load import PgLoadFailed, PgWorkers
from bench.peers.pg_side import BooksFailed, PostgresSide, summarize_runs
from bench.peers.postgres import (
    PgBinaries,
    PostgresFailed,
    PostgresInstance,
    PostgresMissing,
    find_binaries,
)
from bench.peers.raftwallet import RaftWalletSide

RESULTS_NAME = "peers.json"
QUICK_RESULTS_NAME = "peers-quick.json"
TARGET_RATIO = 2.0
"""Issue #7: RaftWallet at least 2x durable PostgreSQL (stored function, best client count)."""
CONSOLE_WIDTH_NOT_TTY = 140
"""Output to a file or pipe is not wrapped at rich's default 80 columns."""
EXIT_FAILED = 1
EXIT_NO_POSTGRES = 2
EXIT_INTERRUPTED = 130
KINDS = ("unary", "batch")
PG_DURABLE = "postgresql durable"
PG_ASYNC = "postgresql synchronous_commit=off"
RAFTWALLET = "raftwallet"
SYSTEMS = (PG_DURABLE, PG_ASYNC, RAFTWALLET)
SAFETY_NOTE = ("PostgreSQL here is ONE node without failover (one copy of the data, nothing "
               "serves while it is down); RaftWallet keeps three replicas of every partition "
               "and keeps serving through the loss of one. Same machine, same workload.")


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}"
                                         ) from None
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"client counts must be at least 1: {text!r}")
    return sorted(set(counts))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.run",
        description="The same transfer workload against PostgreSQL (durable, then "
                    "synchronous_commit=off) and a local 3-node RaftWallet cluster; prints "
                    "RaftWallet/PostgreSQL ratios.")
    parser.add_argument("--quick", action="store_true",
                        help="1 run of 3 s per client count (results to peers-quick.json)")
    parser.add_argument("--clients", type=_counts, default=[1, 4, 16, 64],
                        help="client counts of the unary runs (default 1,4,16,64)")
    parser.add_argument("--batch-clients", type=_counts, default=[1, 2, 4, 8],
                        help="client counts of the batch runs (default 1,2,4,8)")
    parser.add_argument("--batch-size", type=int, choices=(100, 1000), default=1000,
                        help="transfers per TransferBatch / transfer_batch call (default 1000)")
    parser.add_argument("--mix", choices=loadgen.MIXES, default="intra",
                        help="bench.tps mix: intra (default; from and to on one partition) "
                             "or uniform (random pairs; most cross partitions on RaftWallet)")
    parser.add_argument("--duration-s", type=float, default=None,
                        help="measured seconds per run (default 10; 3 with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="unmeasured seconds before each run (default 1; 0.5 with --quick)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per client count; figures are medians (default 3; 1 quick)")
    parser.add_argument("--accounts", type=int, default=workload.ACCOUNTS_DEFAULT)
    parser.add_argument("--partitions", type=int, default=workload.PARTITIONS_DEFAULT)
    parser.add_argument("--procs", type=int, default=loadgen.default_procs(),
                        help="load generator processes, both sides (default: cores, at most 2)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    parser.add_argument("--seed", type=int, default=workload.SEED_DEFAULT)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="parent of the temporary directories (default: $TMPDIR; must be "
                             "reachable by 'nobody' when run as root)")
    outputs.add_output_options(parser, f"{RESULTS_NAME} ({QUICK_RESULTS_NAME} with --quick)")
    args = parser.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = 3.0 if args.quick else 10.0
    if args.warmup_s is None:
        args.warmup_s = 0.5 if args.quick else 1.0
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    args.output = outputs.resolve_output(args, QUICK_RESULTS_NAME if args.quick
                                         else RESULTS_NAME)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.system_list or any(s not in SYSTEMS for s in args.system_list):
        parser.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    if args.runs < 1 or args.duration_s <= 0 or args.warmup_s < 0 or args.procs < 1:
        parser.error("--runs and --procs must be at least 1, --duration-s positive, "
                     "--warmup-s >= 0")
    if args.partitions < 1 or args.accounts < 2 * args.partitions:
        parser.error("need at least 1 partition and 2 accounts per partition")
    return args


# --- progress ---------------------------------------------------------------------------------


class RichProgress(tps.Progress):
    """bench.tps's progress interface drawn with rich: every run, and the current one."""

    def __init__(self, progress: Progress, total_runs: int) -> None:
        super().__init__()
        self.rich = progress
        self.overall = progress.add_task("all runs", total=total_runs)
        self.current = progress.add_task("", total=1.0, visible=False)

    def update(self, label: str, done_s: float, total_s: float, rate: float) -> None:
        self.rich.update(self.current, description=f"{label}  {rate:>9,.0f} transfers/s",
                         completed=min(done_s, total_s), total=total_s, visible=True)

    def done(self, line: str) -> None:
        self.rich.console.print(line, highlight=False, soft_wrap=True)
        self.rich.update(self.current, visible=False)
        self.rich.advance(self.overall)


# --- the three systems ------------------------------------------------------------------------


def _record(system: str, kind: str, clients: int, args: argparse.Namespace,
            summary: dict[str, Any]) -> dict[str, Any]:
    batch = kind == "batch"
    if system == RAFTWALLET:
        call = f"TransferBatch x{args.batch_size}" if batch else "Transfer"
    else:
        call = f"SELECT transfer_batch(...) x{args.batch_size}" if batch else \
            "SELECT transfer(...)"
    return {"system": system, "kind": kind, "call": call, "clients": clients,
            "transfers_per_s": summary["transfers_per_s"], "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"], "failures_total": summary["failures_total"],
            "conservation_passed": summary["conservation_passed"], "detail": summary}


def _plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    return ([("unary", c) for c in args.clients]
            + [("batch", c) for c in args.batch_clients])


def run_postgres(args: argparse.Namespace, binaries: PgBinaries,
                 progress: RichProgress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both PostgreSQL phases on one throwaway instance: records and the instance's facts."""
    records: list[dict[str, Any]] = []
    phases = [s for s in (PG_DURABLE, PG_ASYNC) if s in args.system_list]
    accounts = workload.account_ids(args.accounts)
    workers = PgWorkers(args.procs)
    failed = True
    try:
        with PostgresInstance(binaries, parent_dir=args.data_dir) as instance:
            facts: dict[str, Any] = {"version": binaries.version, "settings": {}}
            side = PostgresSide(instance, workers, accounts, args.partitions, args.seed,
                                args.mix, args.warmup_s, args.duration_s, progress)
            for phase in phases:
                instance.set_setting("synchronous_commit", "off" if phase == PG_ASYNC else "on")
                facts["settings"][phase] = {name: instance.show(name) for name in (
                    "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
                    "shared_buffers", "max_wal_size")}
                side.reset()
                for kind, clients in _plan(args):
                    batch_size = args.batch_size if kind == "batch" else 1
                    label = f"{'pg ' + ('async' if phase == PG_ASYNC else 'durable'):>10} " \
                            f"{kind:>5} x{clients:<3}"
                    runs = [side.run(f"{label} run {run + 1}/{args.runs}", batch_size, clients,
                                     run) for run in range(args.runs)]
                    records.append(_record(phase, kind, clients, args, summarize_runs(runs)))
        failed = False
    finally:
        workers.close(hurry=failed)
    return records, facts


def run_raftwallet(args: argparse.Namespace, progress: RichProgress,
                   environment: dict[str, Any]) -> list[dict[str, Any]]:
    workloads = {"unary": "unary" if args.mix == "intra" else "cross-unary",
                 "batch": (f"batch{args.batch_size}" if args.mix == "intra"
                           else f"cross-batch{args.batch_size}")}
    if workloads["batch"] not in tps.WORKLOADS:
        raise tps.BenchFailed(f"bench.tps has no workload {workloads['batch']!r}")
    tps_args = tps.parse_args([
        "--accounts", str(args.accounts), "--partitions", str(args.partitions),
        "--duration-s", str(args.duration_s), "--warmup-s", str(args.warmup_s),
        "--runs", str(args.runs), "--seed", str(args.seed), "--procs", str(args.procs),
        "--workloads", ",".join(workloads.values()), "--output", os.devnull])
    records = []
    with RaftWalletSide(tps_args, progress, parent_dir=args.data_dir) as side:
        for kind, clients in _plan(args):
            name = workloads[kind]
            runs = [side.run(name, clients, run) for run in range(args.runs)]
            summary = side.summarize(name, clients, runs, environment)
            records.append(_record(RAFTWALLET, kind, clients, args, summary))
    return records


# --- the report -------------------------------------------------------------------------------


def best(records: Sequence[dict[str, Any]], system: str, kind: str) -> dict[str, Any] | None:
    """The record of `system` and `kind` with the most transfers/s (its best client count)."""
    mine = [r for r in records if r["system"] == system and r["kind"] == kind]
    return max(mine, key=lambda r: r["transfers_per_s"]) if mine else None


def ratios(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """RaftWallet/PostgreSQL per like-for-like pair, each at its best client count."""
    found = []
    for kind in KINDS:
        ours = best(records, RAFTWALLET, kind)
        for peer in (PG_DURABLE, PG_ASYNC):
            theirs = best(records, peer, kind)
            if ours is None or theirs is None:
                continue
            ratio = (ours["transfers_per_s"] / theirs["transfers_per_s"]
                     if theirs["transfers_per_s"] else float("inf"))
            found.append({"kind": kind, "peer": peer, "ratio": round(ratio, 2),
                          "raftwallet_transfers_per_s": ours["transfers_per_s"],
                          "raftwallet_clients": ours["clients"],
                          "peer_transfers_per_s": theirs["transfers_per_s"],
                          "peer_clients": theirs["clients"],
                          "target": TARGET_RATIO if peer == PG_DURABLE else None,
                          "target_met": ratio >= TARGET_RATIO if peer == PG_DURABLE else None})
    return found


def print_report(console: Console, records: Sequence[dict[str, Any]],
                 pairs: Sequence[dict[str, Any]]) -> None:
    table = Table(title="transfers/s by system, call and client count (median of runs)")
    for header in ("system", "call", "clients", "transfers/s", "p50 ms", "p99 ms", "failed",
                   "books"):
        table.add_column(header, justify="left" if header in ("system", "call") else "right")
    for r in records:
        table.add_row(r["system"], r["call"], str(r["clients"]), f"{r['transfers_per_s']:,}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{sum(r['failures_total'].values()):,}",
                      "ok" if r["conservation_passed"] else "FAILED")
    console.print(table)
    ratio_table = Table(title="RaftWallet / PostgreSQL, each at its best client count")
    for header in ("call", "peer", "RaftWallet", "PostgreSQL", "ratio", "target"):
        ratio_table.add_column(header, justify="left" if header in ("call", "peer")
                               else "right")
    for p in pairs:
        target = ("" if p["target"] is None
                  else f">= {p['target']:.0f}x {'met' if p['target_met'] else 'NOT met'}")
        ratio_table.add_row(p["kind"], p["peer"],
                            f"{p['raftwallet_transfers_per_s']:,} ({p['raftwallet_clients']})",
                            f"{p['peer_transfers_per_s']:,} ({p['peer_clients']})",
                            f"{p['ratio']:.2f}x", target)
    console.print(ratio_table)
    console.print(f"Note: {SAFETY_NOTE}")


# --- main -------------------------------------------------------------------------------------


@contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the instance, cluster and workers are all stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else CONSOLE_WIDTH_NOT_TTY)
    binaries: PgBinaries | None = None
    if PG_DURABLE in args.system_list or PG_ASYNC in args.system_list:
        try:
            binaries = find_binaries()
        except PostgresMissing as missing:
            print(f"bench-peers: {missing}", file=sys.stderr)
            return EXIT_NO_POSTGRES
    environment = describe()
    total_runs = len(args.system_list) * len(_plan(args)) * args.runs
    records: list[dict[str, Any]] = []
    postgres_facts: dict[str, Any] = {}
    console.print(f"Note: {SAFETY_NOTE}")
    with _interrupt_on_sigterm():
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(),
                          TextColumn("{task.completed:.1f}/{task.total:.1f}"),
                          TimeElapsedColumn(), console=console) as bar:
                progress = RichProgress(bar, total_runs)
                if binaries is not None:
                    pg_records, postgres_facts = run_postgres(args, binaries, progress)
                    records += pg_records
                if RAFTWALLET in args.system_list:
                    records += run_raftwallet(args, progress, environment)
        except (PostgresFailed, PgLoadFailed, BooksFailed, tps.BenchFailed) as failure:
            print(f"\nbench-peers FAILED: {failure}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("\ninterrupted: everything started was stopped", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
    pairs = ratios(records)
    report = {
        "benchmark": "peers",
        "what": "the same transfer workload (bench.tps accounts and seeded pairs, fresh "
                "transaction ids) against PostgreSQL through stored functions (durable, then "
                "synchronous_commit=off) and a local 3-node RaftWallet cluster; ratios at each "
                "system's best client count",
        "safety_note": SAFETY_NOTE,
        "mix": args.mix,
        "batch_size": args.batch_size,
        "accounts": args.accounts,
        "partitions": args.partitions,
        "runs": args.runs,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "postgresql": postgres_facts,
        "records": records,
        "ratios": pairs,
        "conservation_passed": all(r["conservation_passed"] for r in records),
        "environment": environment,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(console, records, pairs)
    console.print(f"conservation: every run's balances sum to the deposits; written to "
                  f"{args.output}")
    return 0 if report["conservation_passed"] else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
