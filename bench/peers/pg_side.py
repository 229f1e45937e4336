"""The PostgreSQL side of the peer benchmark: accounts, measured runs, conservation checks.

Accounts and deposits are bench.tps's (`bench.peers.workload`), loaded with
COPY; `reset` reloads them and empties the transfers table, so each phase
(durable, synchronous_commit=off) starts from the same state. A run is
`warmup_s` then `duration_s` measured, like bench.tps: transfers count when the
statement carrying them completed inside the measured window, committed ones
being OK and the recorded refusals (INSUFFICIENT_FUNDS, none expected). After
each run the books are checked: the sum of all balances must still equal the
deposits, no balance below zero (also a CHECK constraint), and the transfers
recorded OK must be at least the ones the callers saw succeed.
"""

from __future__ import annotations

import statistics
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg

from bench import loadgen, tps
from bench.peers import workload
from bench.peers.pg_load import PgRunJob, PgRunStats, PgWorkers, Ready
from bench.peers.postgres import PostgresInstance

PROGRESS_POLL_S = 0.25


class BooksFailed(Exception):
    """Money was created or destroyed: the PostgreSQL run is invalid."""


class PostgresSide:
    """Runs the workload against `instance` with the load generators `workers`."""

    def __init__(self, instance: PostgresInstance, workers: PgWorkers, accounts: list[str],
                 partitions: int, seed: int, mix: str, warmup_s: float, duration_s: float,
                 progress: tps.Progress) -> None:
        self.instance = instance
        self.workers = workers
        self.accounts = accounts
        self.partitions = partitions
        self.seed = seed
        self.mix = mix
        self.warmup_s = warmup_s
        self.duration_s = duration_s
        self.progress = progress

    @property
    def deposits_minor(self) -> int:
        return workload.DEPOSIT_MINOR * len(self.accounts)

    def reset(self) -> None:
        """Every account back at its deposit, no transfer recorded, statistics fresh."""
        with psycopg.connect(self.instance.conninfo, autocommit=True) as conn:
            conn.execute("TRUNCATE transfers, accounts")
            with conn.cursor().copy(
                    "COPY accounts (account_id, currency, balance_minor) FROM STDIN") as copy:
                for account in self.accounts:
                    copy.write_row((account, workload.CURRENCY, workload.DEPOSIT_MINOR))
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        self.check_books(succeeded_at_least=0)

    def check_books(self, succeeded_at_least: int) -> dict[str, Any]:
        with psycopg.connect(self.instance.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT count(*), coalesce(sum(balance_minor), 0), "
                               "coalesce(min(balance_minor), 0) FROM accounts").fetchone()
            ok_row = conn.execute("SELECT count(*) FROM transfers WHERE outcome = 'OK'"
                                  ).fetchone()
        assert row is not None and ok_row is not None
        count, total, lowest = int(row[0]), int(row[1]), int(row[2])
        recorded_ok = int(ok_row[0])
        books = {"passed": (count == len(self.accounts) and total == self.deposits_minor
                            and lowest >= 0 and recorded_ok >= succeeded_at_least),
                 "accounts_read": count, "sum_minor": total,
                 "deposited_minor": self.deposits_minor, "lowest_balance_minor": lowest,
                 "transfers_recorded_ok": recorded_ok}
        if not books["passed"]:
            raise BooksFailed(f"PostgreSQL CONSERVATION FAILED: {books} (callers saw "
                              f"{succeeded_at_least} succeed)")
        return books

    def run(self, label: str, batch_size: int, callers: int, run: int) -> dict[str, Any]:
        """One measured run with `callers` connections; books checked after it."""
        procs = min(len(self.workers), callers)
        jobs = {index: PgRunJob(self.instance.conninfo, self.accounts, self.partitions,
                                self.seed, run, self.mix, batch_size, share)
                for index, share in enumerate(workload.shares(callers, procs))}
        for index, job in jobs.items():
            self.workers.send(index, job)
        for index in jobs:
            ready = self.workers.receive(index)
            assert isinstance(ready, Ready), ready
        self.workers.reset_progress()
        start_at = time.monotonic() + 0.1
        go = loadgen.Go(start_at, start_at + self.warmup_s,
                        start_at + self.warmup_s + self.duration_s)
        for index in jobs:
            self.workers.send(index, go)
        last_total, last_time, rate = 0, time.monotonic(), 0.0
        while time.monotonic() < go.end_at:
            time.sleep(PROGRESS_POLL_S)
            now = time.monotonic()
            total = self.workers.progress_total()
            if now - last_time >= 0.5:
                rate = max(0.0, (total - last_total) / (now - last_time))
                last_total, last_time = total, now
            self.progress.update(label, now - go.start_at, go.end_at - go.start_at, rate)
        stats = [s for s in (self.workers.receive(index) for index in jobs)
                 if isinstance(s, PgRunStats)]
        record = self._record(stats)
        record["books"] = self.check_books(succeeded_at_least=sum(s.succeeded for s in stats))
        failed = sum(record["failures"].values())
        self.progress.done(f"{label}: {record['transfers_per_s']:>9,.0f} transfers/s  "
                           f"p50 {record['p50_ms']:7.1f} ms  p99 {record['p99_ms']:7.1f} ms  "
                           f"client {record['client_cpu_us_per_call']:6.0f} us/call  books ok"
                           + (f"  failures {record['failures']}" if failed else ""))
        return record

    def _record(self, stats: Sequence[PgRunStats]) -> dict[str, Any]:
        latencies: array[float] = array("d")
        failures: Counter[str] = Counter()
        for s in stats:
            latencies.extend(s.latencies_s)
            failures.update(s.failures)
        ordered = sorted(latencies)
        calls_total = sum(s.calls_total for s in stats)
        client_cpu_s = sum(s.cpu_s for s in stats)
        client_wall_s = max((s.wall_s for s in stats), default=0.0)
        return {
            "transfers_per_s": sum(s.committed for s in stats) / self.duration_s,
            "succeeded_per_s": sum(s.succeeded for s in stats) / self.duration_s,
            "calls_per_s": sum(s.calls for s in stats) / self.duration_s,
            "p50_ms": tps.percentile(ordered, 0.50) * 1000,
            "p99_ms": tps.percentile(ordered, 0.99) * 1000,
            "failures": dict(failures),
            "client_cpu_us_per_call": client_cpu_s / calls_total * 1e6 if calls_total else 0.0,
            "client_cpu_cores": client_cpu_s / client_wall_s if client_wall_s else 0.0,
        }


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the runs' figures, every failure counted, the raw runs kept."""
    failures: Counter[str] = Counter()
    for r in runs:
        failures.update(r["failures"])
    return {
        "runs": len(runs),
        "transfers_per_s": round(statistics.median(r["transfers_per_s"] for r in runs)),
        "succeeded_per_s": round(statistics.median(r["succeeded_per_s"] for r in runs)),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "client_cpu_us_per_call": round(statistics.median(
            r["client_cpu_us_per_call"] for r in runs), 1),
        "failures_total": dict(failures),
        "conservation_passed": all(r["books"]["passed"] for r in runs),
        "raw": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                for r in runs],
    }
