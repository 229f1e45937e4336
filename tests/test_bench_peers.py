"""The peer benchmark's PostgreSQL side and the Locust file, against real processes.

The stored functions are checked against a real throwaway PostgreSQL instance
(bench.peers.postgres): the server binaries are installed on every machine
these tests run on (development and CI), so nothing here is skipped. The Locust
file runs headless as a subprocess against a real local cluster.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.peers import run as peers_run
from bench.peers import workload
from bench.peers.postgres import PostgresInstance, PostgresMissing, find_binaries
from tests.cluster_harness import WAIT_S, running_cluster

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUST = Path(sys.executable).parent / "locust"
START_MINOR = 10_000


@pytest.fixture(scope="module")
def instance() -> Iterator[PostgresInstance]:
    with PostgresInstance(find_binaries()) as pg:
        yield pg


@pytest.fixture()
def db(instance: PostgresInstance) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Accounts alice and bob (USD, 100.00 each) and carol (EUR, 100.00); no transfers."""
    with psycopg.connect(instance.conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE transfers, accounts")
        conn.execute("INSERT INTO accounts VALUES ('alice', 'USD', %s), ('bob', 'USD', %s), "
                     "('carol', 'EUR', %s)", (START_MINOR, START_MINOR, START_MINOR))
        yield conn


def transfer(conn: psycopg.Connection[tuple[object, ...]], source: str, target: str,
             amount_minor: int, txid: uuid.UUID, currency: str = "USD") -> str:
    row = conn.execute("SELECT transfer(%s, %s, %s, %s, %s)",
                       (source, target, amount_minor, currency, txid)).fetchone()
    assert row is not None
    return str(row[0])


def balances(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    rows = conn.execute("SELECT account_id, balance_minor FROM accounts").fetchall()
    return {str(account): int(str(balance)) for account, balance in rows}


def recorded(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT count(*) FROM transfers").fetchone()
    assert row is not None
    return int(str(row[0]))


# --- transfer() ---------------------------------------------------------------------------------


def test_a_transfer_moves_the_money_and_is_recorded(db: psycopg.Connection[tuple[object, ...]]
                                                    ) -> None:
    assert transfer(db, "alice", "bob", 1_234, uuid.uuid4()) == "OK"
    assert balances(db) == {"alice": START_MINOR - 1_234, "bob": START_MINOR + 1_234,
                            "carol": START_MINOR}
    assert recorded(db) == 1


def test_a_retry_with_the_same_content_is_a_duplicate_and_moves_nothing(
        db: psycopg.Connection[tuple[object, ...]]) -> None:
    txid = uuid.uuid4()
    assert transfer(db, "alice", "bob", 500, txid) == "OK"
    assert transfer(db, "alice", "bob", 500, txid) == "DUPLICATE"
    assert balances(db)["alice"] == START_MINOR - 500
    assert recorded(db) == 1


def test_the_same_id_with_other_content_is_an_id_conflict(
        db: psycopg.Connection[tuple[object, ...]]) -> None:
    txid = uuid.uuid4()
    assert transfer(db, "alice", "bob", 500, txid) == "OK"
    assert transfer(db, "alice", "bob", 501, txid) == "ID_CONFLICT"
    assert balances(db)["alice"] == START_MINOR - 500


def test_insufficient_funds_leaves_balances_unchanged_and_is_replayed(
        db: psycopg.Connection[tuple[object, ...]]) -> None:
    before = balances(db)
    txid = uuid.uuid4()
    assert transfer(db, "alice", "bob", START_MINOR + 1, txid) == "INSUFFICIENT_FUNDS"
    assert balances(db) == before
    # Recorded under the id: once funds arrive, a retry still gets the first outcome.
    assert transfer(db, "bob", "alice", 1, uuid.uuid4()) == "OK"
    assert transfer(db, "alice", "bob", START_MINOR + 1, txid) == "INSUFFICIENT_FUNDS"


def test_refusals_that_are_not_executed_record_nothing(
        db: psycopg.Connection[tuple[object, ...]]) -> None:
    assert transfer(db, "alice", "nobody", 1, uuid.uuid4()) == "NOT_FOUND"
    assert transfer(db, "alice", "carol", 1, uuid.uuid4()) == "CURRENCY_MISMATCH"
    assert transfer(db, "alice", "alice", 1, uuid.uuid4()) == "SAME_ACCOUNT"
    assert transfer(db, "alice", "bob", 0, uuid.uuid4()) == "INVALID_AMOUNT"
    assert recorded(db) == 0
    assert balances(db) == {"alice": START_MINOR, "bob": START_MINOR, "carol": START_MINOR}


def test_no_balance_can_go_below_zero(db: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE accounts SET balance_minor = -1 WHERE account_id = 'alice'")


# --- transfer_batch() ---------------------------------------------------------------------------


def test_a_batch_applies_each_transfer_independently_in_order(
        db: psycopg.Connection[tuple[object, ...]]) -> None:
    repeated = uuid.uuid4()
    row = db.execute(
        "SELECT transfer_batch(%s, %s, %s, %s, %s)",
        (["alice", "alice", "bob", "alice", "alice"], ["bob", "bob", "nobody", "bob", "bob"],
         [300, START_MINOR, 1, 300, 5], ["USD"] * 5,
         [repeated, uuid.uuid4(), uuid.uuid4(), repeated, uuid.uuid4()])).fetchone()
    assert row is not None
    assert row[0] == ["OK", "INSUFFICIENT_FUNDS", "NOT_FOUND", "DUPLICATE", "OK"]
    assert balances(db)["alice"] == START_MINOR - 305
    assert balances(db)["bob"] == START_MINOR + 305
    assert recorded(db) == 3


def test_a_batch_with_arrays_of_different_lengths_is_refused_whole(
        db: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT transfer_batch(%s, %s, %s, %s, %s)",
                   (["alice", "alice"], ["bob"], [1, 1], ["USD", "USD"],
                    [uuid.uuid4(), uuid.uuid4()]))
    assert recorded(db) == 0


def test_concurrent_batches_in_opposite_directions_neither_deadlock_nor_lose_money(
        instance: PostgresInstance, db: psycopg.Connection[tuple[object, ...]]) -> None:
    outcomes: list[list[str]] = []

    def send(source: str, target: str) -> None:
        with psycopg.connect(instance.conninfo, autocommit=True) as conn:
            for _ in range(20):
                row = conn.execute("SELECT transfer_batch(%s, %s, %s, %s, %s)",
                                   ([source, target] * 10, [target, source] * 10, [1] * 20,
                                    ["USD"] * 20, [uuid.uuid4() for _ in range(20)])
                                   ).fetchone()
                assert row is not None
                outcomes.append(list(row[0]))

    threads = [threading.Thread(target=send, args=pair)
               for pair in (("alice", "bob"), ("bob", "alice"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert len(outcomes) == 40 and all(o == ["OK"] * 20 for o in outcomes)
    assert sum(balances(db).values()) == 3 * START_MINOR


# --- the instance and the runner ----------------------------------------------------------------


def test_the_instance_is_durable_and_gone_after_use() -> None:
    with PostgresInstance(find_binaries()) as pg:
        assert (pg.show("fsync"), pg.show("synchronous_commit")) == ("on", "on")
        pg.set_setting("synchronous_commit", "off")
        assert pg.show("synchronous_commit") == "off"
        root, process = pg.root, pg.process
        assert root is not None and process is not None
    assert not root.exists()
    assert process.poll() is not None


def test_without_postgresql_binaries_the_runner_says_how_to_install_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PostgresMissing):
        find_binaries({"PATH": ""}, search_dirs=())

    def missing() -> None:
        find_binaries({"PATH": ""}, search_dirs=())

    monkeypatch.setattr(peers_run, "find_binaries", missing)
    assert peers_run.main(["--quick"]) == peers_run.EXIT_NO_POSTGRES
    assert "apt-get install postgresql" in capsys.readouterr().err


def test_the_shared_workload_is_fixed_by_seed_run_and_worker() -> None:
    accounts = workload.account_ids(40)
    first = workload.worker_transfers(accounts, 4, seed=1, run=0, worker_index=0, mix="intra")
    again = workload.worker_transfers(accounts, 4, seed=1, run=0, worker_index=0, mix="intra")
    other = workload.worker_transfers(accounts, 4, seed=1, run=0, worker_index=1, mix="intra")
    assert first == again and first != other
    assert all(t.from_account != t.to_account and 1 <= t.amount_minor <= 999 for t in first)


# --- the Locust file ----------------------------------------------------------------------------


def test_the_locustfile_runs_headless_against_a_cluster_without_failures(
        tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster", nodes=3, partitions=1) as cluster:
        host = ",".join(node.grpc_address for node in cluster.config.nodes)
        csv_prefix = tmp_path / "locust"
        done = subprocess.run(
            [str(LOCUST), "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless",
             "-u", "2", "-r", "2", "-t", "5s", "--host", host, "--csv", str(csv_prefix),
             "--wallet-accounts", "10", "--think-min-s", "0.05", "--think-max-s", "0.2",
             "--only-summary"],
            cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
            env=dict(os.environ, PYTHONPATH=""), check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(f"{csv_prefix}_stats.csv", encoding="utf-8") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert {"GetBalance", "Transfer", "ListTransfers"} <= set(rows)
    assert int(rows["Aggregated"]["Request Count"]) > 0
