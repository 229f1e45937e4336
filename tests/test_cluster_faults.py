"""Crashes and damage: kill -9, whole-cluster restart, corrupt files, halting applies."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.routing import partition_of
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    WAIT_S,
    Abandoned,
    LocalCluster,
    call_until_done,
    converged,
    wait_until,
)

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2


def pair_on(partition: int, prefix: str) -> tuple[str, str]:
    names = [f"{prefix}-{i}" for i in range(200) if partition_of(f"{prefix}-{i}", PARTITIONS)
             == partition]
    return names[0], names[1]


def open_funded_pair(cluster: LocalCluster, partition: int, prefix: str) -> tuple[str, str]:
    payer, payee = pair_on(partition, prefix)
    for account in (payer, payee):
        call_until_done(cluster, "CreateAccount", pb.CreateAccountRequest(
            account_id=account, currency="USD", request_id=str(uuid.uuid4())))
    call_until_done(cluster, "Deposit", pb.DepositRequest(
        account_id=payer, amount="1000000.00", currency="USD", transaction_id=str(uuid.uuid4())))
    return payer, payee


class TransferStream:
    """Transfers of 1.00 from payer to payee, each retried with its id until answered."""

    def __init__(self, cluster: LocalCluster, payer: str, payee: str) -> None:
        self.cluster, self.payer, self.payee = cluster, payer, payee
        self.acknowledged: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                transaction_id = str(uuid.uuid4())
                response = call_until_done(self.cluster, "Transfer", pb.TransferRequest(
                    from_account=self.payer, to_account=self.payee, amount="1.00",
                    currency="USD", transaction_id=transaction_id), stop=self._stop)
                assert response.status == pb.SUCCEEDED  # type: ignore[attr-defined]
                self.acknowledged.append(transaction_id)
        except Abandoned:
            pass  # stopped with a transfer in flight: it was never acknowledged
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc

    def __enter__(self) -> TransferStream:
        self._thread.start()
        return self

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.acknowledged) >= count or self.error is not None,
                   f"{count} acknowledged transfers")

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)
        if self.error is not None:
            raise self.error


def assert_each_applied_once(cluster: LocalCluster, payer: str, payee: str,
                             acknowledged: list[str]) -> None:
    for transaction_id in acknowledged:
        found = call_until_done(cluster, "GetTransfer", pb.GetTransferRequest(
            from_account=payer, transaction_id=transaction_id))
        assert found.status == pb.SUCCEEDED  # type: ignore[attr-defined]
    balance = call_until_done(cluster, "GetBalance", pb.GetBalanceRequest(account_id=payee))
    # Every transfer moved exactly 1.00: the payee holds one unit per applied id, and
    # every acknowledged id is applied; only unacknowledged in-flight ones may add more.
    applied = float(balance.balance)  # type: ignore[attr-defined]
    assert len(acknowledged) <= applied <= len(acknowledged) + 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def test_killing_the_leader_mid_stream_loses_no_acknowledged_transfer(
    cluster: LocalCluster,
) -> None:
    payer, payee = open_funded_pair(cluster, 0, "kill")
    with TransferStream(cluster, payer, payee) as stream:
        stream.wait_for(30)
        victim = cluster.leader_of(0)
        cluster.kill(victim)
        stream.wait_for(len(stream.acknowledged) + 30)
    cluster.start(victim)
    wait_until(lambda: converged(cluster), "the restarted node to catch up")
    assert_each_applied_once(cluster, payer, payee, stream.acknowledged)


def test_a_retry_after_a_leader_change_applies_once(cluster: LocalCluster) -> None:
    payer, payee = open_funded_pair(cluster, 1, "retry")
    request = pb.TransferRequest(from_account=payer, to_account=payee, amount="7.00",
                                 currency="USD", transaction_id=str(uuid.uuid4()))
    call_until_done(cluster, "Transfer", request)
    cluster.kill(cluster.leader_of(1))
    assert call_until_done(cluster, "Transfer", request).status == pb.SUCCEEDED  # type: ignore[attr-defined]
    balance = call_until_done(cluster, "GetBalance", pb.GetBalanceRequest(account_id=payee))
    assert balance.balance == "7.00"  # type: ignore[attr-defined]


def test_killing_every_node_keeps_every_acknowledged_transfer(cluster: LocalCluster) -> None:
    payer, payee = open_funded_pair(cluster, 0, "all")
    with TransferStream(cluster, payer, payee) as stream:
        stream.wait_for(40)
        for node in cluster.config.nodes:
            cluster.kill(node.id)
    acknowledged = list(stream.acknowledged)
    cluster.start_all(bootstrap=False)
    assert_each_applied_once(cluster, payer, payee, acknowledged)


def test_an_apply_that_raises_halts_the_node_instead_of_applying_twice(
    cluster: LocalCluster,
) -> None:
    payer, payee = open_funded_pair(cluster, 0, "halt")
    views = cluster.local_views()
    position = next(p.applied_position for p in views["n3"].partitions if p.partition == 0)
    cluster.kill("n3", signal.SIGTERM)
    failpoint = f"apply.before=raise@{position + 1}"
    faulty = cluster.start("n3", env={"RAFTWALLET_FAILPOINTS": failpoint})
    call_until_done(cluster, "Transfer", pb.TransferRequest(
        from_account=payer, to_account=payee, amount="3.00", currency="USD",
        transaction_id=str(uuid.uuid4())))
    assert faulty.wait(timeout=WAIT_S) == 70
    assert "replica halted" in cluster.log("n3")
    cluster.start("n3")
    wait_until(lambda: converged(cluster), "the halted node to restart and agree")
    balance = call_until_done(cluster, "GetBalance", pb.GetBalanceRequest(account_id=payee))
    assert balance.balance == "3.00"  # type: ignore[attr-defined]


def test_a_node_whose_data_dir_was_wiped_refuses_to_rejoin_under_its_old_id(
    cluster: LocalCluster,
) -> None:
    cluster.kill("n3")
    for path in sorted(cluster.node_dir("n3").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    process = cluster.start("n3")
    assert process.wait(timeout=WAIT_S) == 3
    assert "no RaftWallet identity" in cluster.log("n3")


def flip_byte(path: Path, offset_from_end: int | None = None, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    where = offset if offset is not None else len(data) - (offset_from_end or 1)
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_journal_stops_the_node_with_a_clear_message(cluster: LocalCluster) -> None:
    open_funded_pair(cluster, 0, "corrupt")
    wait_until(lambda: converged(cluster), "replicas to agree")
    cluster.kill("n2", signal.SIGTERM)
    journal = cluster.node_dir("n2") / "partition-0" / "journal"
    flip_byte(journal, offset=len(journal.read_bytes()) // 2)
    process = cluster.start("n2")
    assert process.wait(timeout=WAIT_S) == 3
    assert "journal" in cluster.log("n2") and "refus" in cluster.log("n2")


def test_a_corrupt_snapshot_stops_the_node_with_a_clear_message(cluster: LocalCluster) -> None:
    open_funded_pair(cluster, 0, "snap")
    wait_until(lambda: converged(cluster), "replicas to agree")
    cluster.admin("n2").Snapshot(pb.SnapshotRequest(partition=0), timeout=30)
    snapshot = cluster.node_dir("n2") / "partition-0" / "snapshot"
    wait_until(snapshot.exists, "the snapshot file")
    cluster.kill("n2", signal.SIGTERM)
    flip_byte(snapshot, offset_from_end=40)
    process = cluster.start("n2")
    assert process.wait(timeout=WAIT_S) == 3
    assert "snapshot file" in cluster.log("n2") and "damaged" in cluster.log("n2")


def test_verify_fails_loudly_when_one_replicas_archive_is_tampered_with(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
) -> None:
    from node.cli.walletctl import main as walletctl

    payer, payee = open_funded_pair(cluster, 0, "tamper")
    call_until_done(cluster, "Transfer", pb.TransferRequest(
        from_account=payer, to_account=payee, amount="2.00", currency="USD",
        transaction_id=str(uuid.uuid4())))
    wait_until(lambda: converged(cluster), "replicas to agree")
    (segment,) = sorted((cluster.node_dir("n2") / "partition-0" / "archive").glob("*.rwa"))[:1]
    flip_byte(segment, offset=64)
    assert walletctl(["--config", str(cluster.config_path), "verify"]) == 1
    report = capsys.readouterr().out
    assert "replay != live" in report and "verify: FAILED" in report
