"""Cross-partition transfers on real node processes: the saga under crashes at every step."""

from __future__ import annotations

import random
import signal
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from ledger.routing import partition_of
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    RETRYABLE,
    WAIT_S,
    LocalCluster,
    call_until_done,
    converged,
    wait_until,
)

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2


def account_on(partition: int, prefix: str, partitions: int = PARTITIONS) -> str:
    return next(f"{prefix}-{i}" for i in range(1000)
                if partition_of(f"{prefix}-{i}", partitions) == partition)


def open_account(cluster: LocalCluster, account: str, deposit: str | None = None) -> None:
    call_until_done(cluster, "CreateAccount", pb.CreateAccountRequest(
        account_id=account, currency="USD", request_id=str(uuid.uuid4())))
    if deposit:
        call_until_done(cluster, "Deposit", pb.DepositRequest(
            account_id=account, amount=deposit, currency="USD",
            transaction_id=str(uuid.uuid4())))


def balance_of(cluster: LocalCluster, account: str) -> Decimal:
    answer = call_until_done(cluster, "GetBalance", pb.GetBalanceRequest(account_id=account))
    return Decimal(answer.balance)  # type: ignore[attr-defined]


def drained(cluster: LocalCluster) -> bool:
    """No transfer in flight: every outbox is empty on every replica, and replicas agree."""
    views = cluster.local_views()
    return (len(views) == len(cluster.config.nodes)
            and all(p.outbox_depth == 0 for v in views.values() for p in v.partitions)
            and converged(cluster))


def leader_view(cluster: LocalCluster, partition: int) -> pb.PartitionStatus | None:
    """The partition as its current leader sees it (None while there is no answer)."""
    for view in cluster.local_views().values():
        for status in view.partitions:
            if status.partition == partition and status.reporter_is_leader:
                return status
    return None


def assert_partition_books_balance(status: pb.PartitionStatus) -> None:
    for t in status.totals:
        held = int(t.balance_minor) + int(t.in_flight_minor)
        assert held == (int(t.deposited_minor) - int(t.withdrawn_minor)
                        + int(t.credited_in_minor) - int(t.settled_out_minor)), status


def check_money_mid_run(cluster: LocalCluster) -> None:
    """Per partition, its own equation; per pair, credits received keep up with settles.

    Reads of different partitions are not a consistent cut, so the pair check reads
    the source first and then waits (bounded) for the destination to show at least
    that much credited: a settle is only ever proposed after the credit committed.
    """
    for source in range(PARTITIONS):
        status = leader_view(cluster, source)
        if status is None:
            continue
        assert_partition_books_balance(status)
        for settled in status.settled_to:
            def caught_up(settled: pb.PairTotal = settled, source: int = source) -> bool:
                view = leader_view(cluster, settled.partition)
                credited = 0 if view is None else sum(
                    int(c.amount_minor) for c in view.credited_from
                    if c.partition == source and c.currency == settled.currency)
                return credited >= int(settled.amount_minor)

            wait_until(caught_up, f"credits on {settled.partition} to cover settles of {source}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def test_a_cross_partition_transfer_settles_and_every_replica_agrees(
    cluster: LocalCluster,
) -> None:
    source, target = account_on(0, "src"), account_on(1, "dst")
    open_account(cluster, source, "50.00")
    open_account(cluster, target)
    response = cluster.wallet("n3").Transfer(pb.TransferRequest(
        from_account=source, to_account=target, amount="12.34", currency="USD",
        transaction_id=str(uuid.uuid4())), timeout=30)
    assert response.status == pb.SUCCEEDED
    assert (balance_of(cluster, source), balance_of(cluster, target)) == (
        Decimal("37.66"), Decimal("12.34"))
    wait_until(lambda: drained(cluster), "outboxes to drain and replicas to agree")


def test_a_transfer_to_an_unknown_account_elsewhere_is_compensated(
    cluster: LocalCluster,
) -> None:
    source, ghost = account_on(0, "comp"), account_on(1, "ghost")
    open_account(cluster, source, "10.00")
    transaction_id = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").Transfer(pb.TransferRequest(
            from_account=source, to_account=ghost, amount="3.00", currency="USD",
            transaction_id=transaction_id), timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert "compensated" in excinfo.value.details()
    found = cluster.wallet("n2").GetTransfer(pb.GetTransferRequest(
        from_account=source, transaction_id=transaction_id), timeout=30)
    assert (found.status, found.reason) == (pb.FAILED, "ACCOUNT_NOT_FOUND")
    assert [s.name for s in found.steps] == ["debited", "compensated"]
    assert balance_of(cluster, source) == Decimal("10.00")
    wait_until(lambda: drained(cluster), "outboxes to drain")


def test_a_pending_transfer_is_reported_until_it_ends(cluster: LocalCluster) -> None:
    source, target = account_on(1, "pend"), account_on(0, "pend-dst")
    open_account(cluster, source, "5.00")
    open_account(cluster, target)
    transaction_id = str(uuid.uuid4())
    request = pb.TransferRequest(from_account=source, to_account=target, amount="1.00",
                                 currency="USD", transaction_id=transaction_id)
    first = call_until_done(cluster, "Transfer", request)
    assert first.status in (pb.SUCCEEDED, pb.PENDING)  # type: ignore[attr-defined]
    wait_until(lambda: cluster.wallet("n1").GetTransfer(pb.GetTransferRequest(
        from_account=source, transaction_id=transaction_id), timeout=30).status == pb.SUCCEEDED,
        "the transfer to succeed")
    again = call_until_done(cluster, "Transfer", request)
    assert again.status == pb.SUCCEEDED  # type: ignore[attr-defined]
    assert balance_of(cluster, target) == Decimal("1.00")


class CrashRestarter:
    """Restarts (without fail points) every node that a fail point crashed."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.crashes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for node_id, process in list(self.cluster.processes.items()):
                if process.poll() == 137:
                    self.crashes += 1
                    self.cluster.start(node_id, env={"RAFTWALLET_FAILPOINTS": ""})

    def __enter__(self) -> CrashRestarter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)


@pytest.mark.parametrize(("failpoint", "to_existing"), [
    ("saga.before_credit", True),
    ("saga.before_resolve", True),
    ("saga.before_compensate", False),
])
def test_a_crash_at_any_saga_step_ends_the_transfer_exactly_once(
    tmp_path: Path, failpoint: str, to_existing: bool,
) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS,
                           env={"RAFTWALLET_FAILPOINTS": f"{failpoint}=crash"})
    try:
        cluster.start_all()
        source, target = account_on(0, "crash"), account_on(1, "crash-dst")
        open_account(cluster, source, "20.00")
        if to_existing:
            open_account(cluster, target)
        request = pb.TransferRequest(from_account=source, to_account=target, amount="5.00",
                                     currency="USD", transaction_id=str(uuid.uuid4()))
        with CrashRestarter(cluster) as restarter:
            try:
                call_until_done(cluster, "Transfer", request, timeout_s=2 * WAIT_S)
            except grpc.RpcError as exc:
                assert not to_existing and exc.code() == grpc.StatusCode.NOT_FOUND
            wait_until(lambda: restarter.crashes >= 1, "the fail point to crash a node")

            def final() -> bool:
                try:
                    found = cluster.wallet("n1").GetTransfer(pb.GetTransferRequest(
                        from_account=request.from_account,
                        transaction_id=request.transaction_id), timeout=5)
                except grpc.RpcError as exc:
                    if exc.code() in RETRYABLE:
                        return False
                    raise
                return bool(found.status in (pb.SUCCEEDED, pb.FAILED))

            wait_until(final, "the transfer to end", timeout_s=2 * WAIT_S)
            wait_until(lambda: all(p.poll() is None for p in cluster.processes.values())
                       and drained(cluster), "every node up, outboxes drained",
                       timeout_s=2 * WAIT_S)
        expected = ((Decimal("15.00"), Decimal("5.00")) if to_existing
                    else (Decimal("20.00"), None))
        target_balance = balance_of(cluster, target) if to_existing else None
        assert (balance_of(cluster, source), target_balance) == expected
    finally:
        cluster.stop_all()


class CrossTraffic:
    """Concurrent random transfers among accounts on every partition, retried by id."""

    def __init__(self, cluster: LocalCluster, accounts: list[str], seed: int,
                 callers: int = 4) -> None:
        self.cluster, self.accounts = cluster, accounts
        self.succeeded: list[tuple[str, str]] = []
        """(source account, transaction id) of every acknowledged success."""
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True)
                         for i in range(callers)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            source, target = rng.sample(self.accounts, 2)
            amount = Decimal(rng.randint(1, 300)) / 100
            request = pb.TransferRequest(from_account=source, to_account=target,
                                         amount=str(amount), currency="USD",
                                         transaction_id=str(uuid.uuid4()))
            try:
                answer = call_until_done(self.cluster, "Transfer", request, stop=self._stop)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # insufficient funds
                    self.errors.append(exc)
                continue
            except Exception:
                continue  # abandoned at shutdown: never acknowledged
            if answer.status == pb.SUCCEEDED:  # type: ignore[attr-defined]
                with self._lock:
                    self.succeeded.append((source, request.transaction_id))

    def __enter__(self) -> CrossTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.succeeded) >= count or bool(self.errors),
                   f"{count} successful transfers")
        assert not self.errors, self.errors[0]

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT_S)


def test_a_bank_workload_survives_killing_the_destination_then_the_source_leader(
    cluster: LocalCluster,
) -> None:
    accounts = [account_on(i % PARTITIONS, f"bank{i}") for i in range(6)]
    for account in accounts:
        open_account(cluster, account, "100.00")
    with CrossTraffic(cluster, accounts, seed=11) as traffic:
        traffic.wait_for(20)
        check_money_mid_run(cluster)
        first = cluster.leader_of(1)
        cluster.kill(first)
        traffic.wait_for(len(traffic.succeeded) + 20)
        cluster.start(first)
        cluster.wait_serving(first)  # it must hold partition 1's majority once `second` dies
        second = cluster.leader_of(0)
        check_money_mid_run(cluster)
        cluster.kill(second)
        traffic.wait_for(len(traffic.succeeded) + 20)
        check_money_mid_run(cluster)
    for node_id, process in cluster.processes.items():
        if process.poll() is not None:
            cluster.start(node_id)
    wait_until(lambda: drained(cluster), "all sagas to end and replicas to agree",
               timeout_s=2 * WAIT_S)
    check_money_mid_run(cluster)
    statuses = [leader_view(cluster, p) for p in range(PARTITIONS)]
    for status in statuses:
        assert status is not None and status.outbox_depth == 0
    settled = sum(int(s.amount_minor) for st in statuses if st for s in st.settled_to)
    credited = sum(int(c.amount_minor) for st in statuses if st for c in st.credited_from)
    assert settled == credited, "at quiescence every credit is settled and vice versa"
    balances = {account: balance_of(cluster, account) for account in accounts}
    assert sum(balances.values()) == Decimal("100.00") * len(accounts)
    assert all(value >= 0 for value in balances.values())
    assert len(traffic.succeeded) >= 60
    for source, transaction_id in traffic.succeeded:
        found = call_until_done(cluster, "GetTransfer", pb.GetTransferRequest(
            from_account=source, transaction_id=transaction_id))
        assert found.status == pb.SUCCEEDED  # type: ignore[attr-defined]


def test_the_saga_reaches_partitions_this_node_does_not_host(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=4, partitions=4)
    try:
        cluster.start_all()
        source, target = account_on(0, "far", 4), account_on(2, "far-dst", 4)
        hosts_of = {p: set(cluster.config.replicas_of(p)) for p in (0, 2)}
        assert hosts_of[0] != hosts_of[2], "the test needs partitions on different node sets"
        open_account(cluster, source, "9.00")
        open_account(cluster, target)
        answer = call_until_done(cluster, "Transfer", pb.TransferRequest(
            from_account=source, to_account=target, amount="9.00", currency="USD",
            transaction_id=str(uuid.uuid4())))
        assert answer.status == pb.SUCCEEDED  # type: ignore[attr-defined]
        assert balance_of(cluster, target) == Decimal("9.00")
    finally:
        cluster.stop_all()


def test_peer_calls_without_the_cluster_token_are_refused(cluster: LocalCluster) -> None:
    from proto.wallet.v1 import wallet_pb2_grpc

    stub = wallet_pb2_grpc.PeerServiceStub(cluster.channel("n1"))
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.ApplyCredits(pb.ApplyCreditsRequest(
            source_partition=0, destination_partition=1,
            credits=[pb.Credit(sequence=1, from_account="x", to_account="y", amount_minor=10**9,
                               currency="USD", transaction_id=b"0" * 16)]), timeout=30)
    # No token at all: the auth interceptor refuses before PeerService runs.
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_killing_a_node_mid_saga_is_harmless(cluster: LocalCluster) -> None:
    source, target = account_on(0, "mid"), account_on(1, "mid-dst")
    open_account(cluster, source, "30.00")
    open_account(cluster, target)
    cluster.kill(cluster.leader_of(1), signal.SIGKILL)
    answer = call_until_done(cluster, "Transfer", pb.TransferRequest(
        from_account=source, to_account=target, amount="30.00", currency="USD",
        transaction_id=str(uuid.uuid4())))
    assert answer.status in (pb.SUCCEEDED, pb.PENDING)  # type: ignore[attr-defined]
    wait_until(lambda: balance_of(cluster, target) == Decimal("30.00"), "the credit")


def test_an_operator_force_fails_a_stuck_transfer_and_it_is_compensated(
    tmp_path: Path,
) -> None:
    # The fail point makes every driver give up before sending credits: stuck PENDING.
    cluster = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS,
                           env={"RAFTWALLET_FAILPOINTS": "saga.before_credit=raise"})
    try:
        cluster.start_all()
        source, target = account_on(0, "stuck"), account_on(1, "stuck-dst")
        open_account(cluster, source, "8.00")
        open_account(cluster, target)
        request = pb.TransferRequest(from_account=source, to_account=target, amount="8.00",
                                     currency="USD", transaction_id=str(uuid.uuid4()))
        answer = cluster.wallet("n1").Transfer(request, timeout=3)
        assert answer.status == pb.PENDING
        forced = cluster.admin("n2").ForceFailTransfer(pb.ForceFailTransferRequest(
            from_account=source, transaction_id=request.transaction_id), timeout=30)
        assert (forced.destination_outcome, forced.destination_partition) == ("ABORTED", 1)
        for node in cluster.config.nodes:  # heal: drivers work again
            cluster.kill(node.id, signal.SIGTERM)
        cluster.env["RAFTWALLET_FAILPOINTS"] = ""
        cluster.start_all(bootstrap=False)
        wait_until(lambda: drained(cluster), "the compensation")
        found = call_until_done(cluster, "GetTransfer", pb.GetTransferRequest(
            from_account=source, transaction_id=request.transaction_id))
        assert (found.status, found.reason) == (pb.FAILED, "ABORTED")  # type: ignore[attr-defined]
        assert (balance_of(cluster, source), balance_of(cluster, target)) == (
            Decimal("8.00"), Decimal("0.00"))
    finally:
        cluster.stop_all()
