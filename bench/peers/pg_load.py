"""The PostgreSQL load generator: spawned worker processes, each closed-loop asyncio callers.

Each caller owns one connection (psycopg 3, asyncio, autocommit: one statement
is one transaction, committed as the server's settings say) and sends, one at
a time, either `SELECT transfer(...)` (the peer of a unary Transfer call) or
`SELECT transfer_batch(...)` with arrays of `batch_size` transfers (the peer of
TransferBatch). Statements are prepared on first use. Which transfers, in which
order, is `bench.peers.workload`: those of the RaftWallet run with the same
seed, run number, worker index and caller.

Protocol over the pipe, like bench.loadgen: the parent sends a `PgRunJob`; the
worker connects and prepares, answers `Ready`; the parent sends
`bench.loadgen.Go` (start, measure-from and end times on CLOCK_MONOTONIC,
shared by every process); the worker runs and answers `PgRunStats`. `Stop` or
a closed pipe ends the worker. Workers are started with "spawn".
"""

from __future__ import annotations

import asyncio
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from bench import loadgen
from bench.peers import workload
from bench.worker_pool import WorkerPool

UNARY_SQL = "SELECT transfer(%s, %s, %s, %s, %s::uuid)"
BATCH_SQL = ("SELECT transfer_batch(%s::text[], %s::text[], %s::bigint[], %s::char(3)[], "
             "%s::uuid[])")
COMMITTED_OUTCOMES = frozenset({"OK", "INSUFFICIENT_FUNDS"})
"""Outcomes recorded under the id: committed, as RaftWallet's intra mix counts them."""
ERROR_PAUSE_S = 0.01
"""A caller whose statement failed waits this long before the next one."""
CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True)
class PgRunJob:
    conninfo: str
    accounts: list[str]
    partitions: int
    seed: int
    run: int
    mix: str
    batch_size: int
    """1: transfer() per statement; more: transfer_batch() of that many."""
    callers: int
    """Callers of this worker (each with its own connection)."""


@dataclass(frozen=True, slots=True)
class Ready:
    prepare_s: float


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    message: str


@dataclass(slots=True)
class PgRunStats:
    """One worker's figures for one run; counted by the statement's completion time."""

    calls: int = 0
    """Statements completed inside the measured window."""
    transfers: int = 0
    committed: int = 0
    """Transfers with a recorded outcome (OK or INSUFFICIENT_FUNDS) in the window."""
    succeeded: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Transfers in the window that did not succeed, by outcome or SQLSTATE."""
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    calls_total: int = 0
    transfers_total: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


# --- the worker process -----------------------------------------------------------------------


def worker_main(conn: Connection, index: int, progress: Any) -> None:
    """Entry point of a spawned worker: serve jobs until Stop or the pipe closes."""
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(job, Stop):
            return
        try:
            answer: object = asyncio.run(_run(conn, index, progress, job))
        except Exception:  # reported to the parent, which fails the benchmark
            answer = WorkerFailed(f"pg worker {index}: {traceback.format_exc()}")
        conn.send(answer)


async def _run(pipe: Connection, index: int, progress: Any,
               job: PgRunJob) -> PgRunStats | WorkerFailed:
    started = time.monotonic()
    transfers = workload.worker_transfers(job.accounts, job.partitions, job.seed, job.run,
                                          index, job.mix)
    starts = workload.caller_starts(job.seed, job.run, index, job.callers)
    connections = [await psycopg.AsyncConnection.connect(
        job.conninfo, autocommit=True, prepare_threshold=0, connect_timeout=CONNECT_TIMEOUT_S)
        for _ in range(job.callers)]
    try:
        stats = PgRunStats()
        pipe.send(Ready(time.monotonic() - started))
        go = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        if not isinstance(go, loadgen.Go):
            return WorkerFailed(f"expected Go, got {go!r}")
        await asyncio.sleep(max(0.0, go.start_at - time.monotonic()))
        ids = loadgen.IdSource()
        failures: Counter[str] = Counter()
        cpu_started = time.process_time()
        wall_started = time.monotonic()
        ticker = asyncio.create_task(_report_progress(progress, index, stats))
        try:
            if job.batch_size == 1:
                await asyncio.gather(*(
                    _unary_caller(c, workload.UnaryFeed(transfers, s), ids, go, stats, failures)
                    for c, s in zip(connections, starts, strict=True)))
            else:
                await asyncio.gather(*(
                    _batch_caller(c, workload.BatchFeed(transfers, s, job.batch_size, job.mix),
                                  ids, go, stats, failures)
                    for c, s in zip(connections, starts, strict=True)))
        finally:
            ticker.cancel()
        stats.cpu_s = time.process_time() - cpu_started
        stats.wall_s = time.monotonic() - wall_started
        stats.failures = dict(failures)
        progress[index] = stats.transfers_total
        return stats
    finally:
        for connection in connections:
            await connection.close()


async def _report_progress(progress: Any, index: int, stats: PgRunStats) -> None:
    while True:
        progress[index] = stats.transfers_total
        await asyncio.sleep(0.2)


def _record(stats: PgRunStats, go: loadgen.Go, began: float, ended: float,
            outcomes: Sequence[str], failures: Counter[str]) -> None:
    stats.calls_total += 1
    stats.transfers_total += len(outcomes)
    if not go.measure_from <= ended <= go.end_at:
        return
    stats.calls += 1
    stats.transfers += len(outcomes)
    stats.latencies_s.append(ended - began)
    for outcome in outcomes:
        if outcome == "OK":
            stats.succeeded += 1
        else:
            failures[outcome] += 1
        if outcome in COMMITTED_OUTCOMES:
            stats.committed += 1


def _error_name(error: psycopg.Error) -> str:
    return f"SQLSTATE {error.sqlstate}" if error.sqlstate else type(error).__name__


async def _unary_caller(connection: psycopg.AsyncConnection[Any], feed: workload.UnaryFeed,
                        ids: loadgen.IdSource, go: loadgen.Go, stats: PgRunStats,
                        failures: Counter[str]) -> None:
    monotonic = time.monotonic
    while True:
        began = monotonic()
        if began >= go.end_at:
            return
        t = feed.next()
        params = (t.from_account, t.to_account, t.amount_minor, t.currency,
                  ids.next().decode("ascii"))
        try:
            cursor = await connection.execute(UNARY_SQL, params)
            row = await cursor.fetchone()
            outcomes: Sequence[str] = [str(row[0]) if row else "NO_ROW"]
        except psycopg.Error as error:
            outcomes = [_error_name(error)]
        _record(stats, go, began, monotonic(), outcomes, failures)
        if outcomes[0] not in COMMITTED_OUTCOMES:
            await asyncio.sleep(ERROR_PAUSE_S)


async def _batch_caller(connection: psycopg.AsyncConnection[Any], feed: workload.BatchFeed,
                        ids: loadgen.IdSource, go: loadgen.Go, stats: PgRunStats,
                        failures: Counter[str]) -> None:
    monotonic = time.monotonic
    while True:
        began = monotonic()
        if began >= go.end_at:
            return
        batch = feed.next()
        params = ([t.from_account for t in batch], [t.to_account for t in batch],
                  [t.amount_minor for t in batch], [t.currency for t in batch],
                  [ids.next().decode("ascii") for _ in batch])
        try:
            cursor = await connection.execute(BATCH_SQL, params)
            row = await cursor.fetchone()
            outcomes: Sequence[str] = list(row[0]) if row else ["NO_ROW"] * len(batch)
            if len(outcomes) != len(batch):
                outcomes = ["WRONG_OUTCOME_COUNT"] * len(batch)
        except psycopg.Error as error:
            outcomes = [_error_name(error)] * len(batch)
        _record(stats, go, began, monotonic(), outcomes, failures)
        if any(o not in COMMITTED_OUTCOMES for o in outcomes):
            await asyncio.sleep(ERROR_PAUSE_S)


# --- the parent's side ------------------------------------------------------------------------


class PgLoadFailed(Exception):
    """A worker failed, died or did not answer in time."""


class PgWorkers(WorkerPool):
    """`count` spawned worker processes; `close` stops them all (also on failure)."""

    def __init__(self, count: int) -> None:
        super().__init__(count, worker_main, (), "pg worker", "bench-pg-load", Stop(),
                         WorkerFailed, PgLoadFailed)
