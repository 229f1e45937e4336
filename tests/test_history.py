"""History from the event archive: past balances, transfer lists, replay after compaction."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ledger.routing import partition_of
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import LocalCluster, call_until_done, converged, wait_until

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2


def account_on(partition: int, prefix: str) -> str:
    return next(f"{prefix}-{i}" for i in range(1000)
                if partition_of(f"{prefix}-{i}", PARTITIONS) == partition)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def open_accounts(cluster: LocalCluster, *accounts: str, deposit: str = "100.00") -> None:
    for account in accounts:
        call_until_done(cluster, "CreateAccount", pb.CreateAccountRequest(
            account_id=account, currency="USD", request_id=str(uuid.uuid4())))
        call_until_done(cluster, "Deposit", pb.DepositRequest(
            account_id=account, amount=deposit, currency="USD",
            transaction_id=str(uuid.uuid4())))


def move(cluster: LocalCluster, source: str, target: str, amount: str) -> str:
    transaction_id = str(uuid.uuid4())
    call_until_done(cluster, "Transfer", pb.TransferRequest(
        from_account=source, to_account=target, amount=amount, currency="USD",
        transaction_id=transaction_id))
    return transaction_id


def test_balance_at_a_past_position_and_time_is_what_a_read_returned_then(
    cluster: LocalCluster,
) -> None:
    payer, payee = account_on(0, "past"), account_on(0, "past-to")
    open_accounts(cluster, payer, payee)
    seen = []
    for amount in ("1.00", "2.00", "3.00"):
        move(cluster, payer, payee, amount)
        read = cluster.wallet("n2").GetBalance(pb.GetBalanceRequest(account_id=payer), timeout=30)
        seen.append((read.position, read.balance, int(time.time() * 1000)))
    for position, balance, _ in seen:
        past = cluster.wallet("n3").GetBalanceAt(pb.GetBalanceAtRequest(
            account_id=payer, position=position), timeout=30)
        assert past.balance == balance
    _, last_balance, at_ms = seen[-1]
    by_time = cluster.wallet("n1").GetBalanceAt(pb.GetBalanceAtRequest(
        account_id=payer, time_ms=at_ms), timeout=30)
    assert by_time.balance == last_balance
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").GetBalanceAt(pb.GetBalanceAtRequest(account_id=payer, position=0),
                                          timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


def test_history_pages_stay_stable_while_new_transfers_arrive(cluster: LocalCluster) -> None:
    payer, payee = account_on(1, "hist"), account_on(1, "hist-to")
    open_accounts(cluster, payer, payee)
    first_ids = [move(cluster, payer, payee, "0.10") for _ in range(5)]
    wallet = cluster.wallet("n1")
    page = wallet.ListTransfers(pb.ListTransfersRequest(account_id=payer, limit=3), timeout=30)
    assert [t.transaction_id for t in page.transfers] == first_ids[:3]
    later_ids = [move(cluster, payer, payee, "0.10") for _ in range(2)]
    rest = wallet.ListTransfers(pb.ListTransfersRequest(
        account_id=payer, limit=100, page_token=page.next_page_token), timeout=30)
    assert [t.transaction_id for t in rest.transfers] == first_ids[3:] + later_ids
    assert rest.next_page_token == ""
    newest = wallet.ListTransfers(pb.ListTransfersRequest(
        account_id=payee, limit=2, order=pb.NEWEST_FIRST), timeout=30)
    assert [t.transaction_id for t in newest.transfers] == later_ids[::-1]


def test_history_shows_in_flight_and_compensated_transfers(cluster: LocalCluster) -> None:
    payer, payee, ghost = account_on(0, "mix"), account_on(1, "mix-to"), account_on(1, "nobody")
    open_accounts(cluster, payer, payee)
    succeeded = move(cluster, payer, payee, "5.00")
    failed = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError):
        cluster.wallet("n1").Transfer(pb.TransferRequest(
            from_account=payer, to_account=ghost, amount="1.00", currency="USD",
            transaction_id=failed), timeout=30)
    sent = cluster.wallet("n2").ListTransfers(pb.ListTransfersRequest(account_id=payer),
                                              timeout=30)
    assert [(t.transaction_id, t.status) for t in sent.transfers] == [
        (succeeded, pb.SUCCEEDED), (failed, pb.FAILED)]
    assert sent.transfers[1].reason == "ACCOUNT_NOT_FOUND"
    received = cluster.wallet("n3").ListTransfers(pb.ListTransfersRequest(account_id=payee),
                                                  timeout=30)
    assert [(t.transaction_id, t.from_account, t.amount) for t in received.transfers] == [
        (succeeded, payer, "5.00")]


def verify_ok(cluster: LocalCluster) -> bool:
    return all(cluster.admin(node.id).Verify(pb.VerifyRequest(), timeout=60).ok
               for node in cluster.config.nodes)


def test_replay_equals_live_after_several_log_compactions(cluster: LocalCluster) -> None:
    payer, payee = account_on(0, "compact"), account_on(0, "compact-to")
    open_accounts(cluster, payer, payee)
    for _ in range(3):
        for _ in range(5):
            move(cluster, payer, payee, "0.01")
        for node in cluster.config.nodes:
            cluster.admin(node.id).Snapshot(pb.SnapshotRequest(partition=0), timeout=30)
    wait_until(lambda: converged(cluster), "replicas to agree")
    assert verify_ok(cluster)


def test_replay_equals_live_after_a_kill_mid_write_and_restart(cluster: LocalCluster) -> None:
    payer, payee = account_on(1, "killed"), account_on(1, "killed-to")
    open_accounts(cluster, payer, payee)
    for _ in range(10):
        move(cluster, payer, payee, "0.01")
    cluster.kill("n2", signal.SIGKILL)
    for _ in range(10):
        move(cluster, payer, payee, "0.01")
    cluster.start("n2")
    wait_until(lambda: converged(cluster), "the restarted node to catch up")
    assert verify_ok(cluster)


def test_walletctl_balance_at_a_time(cluster: LocalCluster,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json
    from datetime import UTC, datetime

    from node.cli.walletctl import main as walletctl

    payer, payee = account_on(0, "cli-at"), account_on(0, "cli-at-to")
    open_accounts(cluster, payer, payee)
    now = datetime.now(UTC)
    moment = now.isoformat()
    # The transfer must be stamped in a later millisecond than `moment`.
    wait_until(lambda: time.time() > now.timestamp() + 0.002, "the next millisecond")
    move(cluster, payer, payee, "40.00")
    assert walletctl(["--config", str(cluster.config_path), "--json", "balance", payer,
                      "--at", moment]) == 0
    assert json.loads(capsys.readouterr().out)["balance"] == "100.00"


def test_a_replica_that_installs_the_leaders_snapshot_keeps_serving(
    cluster: LocalCluster,
) -> None:
    payer, payee = account_on(0, "install"), account_on(0, "install-to")
    open_accounts(cluster, payer, payee)
    wait_until(lambda: converged(cluster), "replicas to agree")
    cluster.kill("n3", signal.SIGTERM)
    for _ in range(5):
        move(cluster, payer, payee, "0.01")
    for node_id in ("n1", "n2"):  # compact past what n3 has: it must take a snapshot
        cluster.admin(node_id).Snapshot(pb.SnapshotRequest(partition=0), timeout=30)
    wait_until(lambda: all((cluster.node_dir(n) / "partition-0" / "snapshot").exists()
                           for n in ("n1", "n2")), "the snapshots")
    move(cluster, payer, payee, "0.01")
    cluster.start("n3")
    wait_until(lambda: converged(cluster), "n3 to install the snapshot and catch up")
    cluster.kill("n3", signal.SIGTERM)  # and it restarts from that snapshot
    cluster.start("n3")
    wait_until(lambda: converged(cluster), "n3 to restart from the installed snapshot")
    assert cluster.processes["n3"].poll() is None


def test_history_keeps_outcomes_after_the_dedup_records_are_pruned(tmp_path: Path) -> None:
    from ledger import commands as c
    from ledger.codec import encode_entry
    from ledger.results_codec import encode_results
    from ledger.state import StateMachine
    from node.archive.event_archive import EventArchive
    from node.archive.history import History

    state, archive = StateMachine(0), EventArchive(str(tmp_path / "archive"), 0, fsync=False)
    ids = [uuid.uuid4().bytes for _ in range(3)]
    entries: list[tuple[c.Command, ...]] = [
        (c.CreateAccount("a", "USD", 2, ids[0]), c.CreateAccount("b", "USD", 2, ids[1]),
         c.Deposit("a", 100, "USD", ids[2])),
        (c.Transfer("a", "b", 500, "USD", ids[0]),  # insufficient funds, recorded
         c.DebitForTransfer("a", "far", 10, "USD", ids[1], 1)),
    ]
    for log_index, commands in enumerate(entries, start=1):
        entry = c.Entry(1_000 * log_index, commands)
        applied = state.apply_entry(entry, log_index)
        assert applied is not None
        archive.append(applied.position, log_index, 1, applied.stamp_ms, encode_entry(entry),
                       encode_results(applied.results))
    (key, _), = list(state.outbox_for(1))
    later: list[tuple[int, tuple[c.Command, ...]]] = [
        (3, (c.ResolveTransfer(key[0], key[1], False, 3),)), (4, (c.PruneDedup(10**12),))]
    for log_index, commands in later:
        entry = c.Entry(1_000 * log_index, commands)
        applied = state.apply_entry(entry, log_index)
        assert applied is not None
        archive.append(applied.position, log_index, 1, applied.stamp_ms, encode_entry(entry),
                       encode_results(applied.results))
    history = History(archive, 0)
    history.catch_up()
    refs, _ = history.transfers("a", None, 10, newest_first=False)
    assert [r.final_code for r in refs] == [6, 3]  # INSUFFICIENT_FUNDS, then compensated
    assert state.transfer_record("a", ids[0]) is None  # pruned from the live state
