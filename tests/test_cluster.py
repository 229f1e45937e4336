"""A real 3-node cluster on 127.0.0.1: writes, reads, replicas agreeing, bad input refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ledger.routing import partition_of
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import LocalCluster, running_cluster, wait_until

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2


def accounts_on(partition: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < count:
        name = f"{prefix}-{i}"
        if partition_of(name, PARTITIONS) == partition:
            found.append(name)
        i += 1
    return found


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), nodes=3,
                         partitions=PARTITIONS) as running:
        yield running


@pytest.fixture(scope="module")
def funded(cluster: LocalCluster) -> tuple[str, str, str]:
    """Two accounts on partition 0 (the first holding 100.00 USD) and one in JPY."""
    alice, bob = accounts_on(0, 2, "funded")
    (yen,) = accounts_on(0, 1, "yen")
    wallet = cluster.wallet("n1")
    for account, currency in ((alice, "USD"), (bob, "USD"), (yen, "JPY")):
        wallet.CreateAccount(pb.CreateAccountRequest(account_id=account, currency=currency,
                                                     request_id=new_id()), timeout=30)
    wallet.Deposit(pb.DepositRequest(account_id=alice, amount="100.00", currency="USD",
                                     transaction_id=new_id()), timeout=30)
    return alice, bob, yen


def balance(cluster: LocalCluster, account: str, node_id: str = "n1") -> str:
    response = cluster.wallet(node_id).GetBalance(pb.GetBalanceRequest(account_id=account),
                                                  timeout=30)
    return str(response.balance)


def replicas_converged(cluster: LocalCluster) -> bool:
    """Every replica of every partition at the same position with the same state hash."""
    views = cluster.local_views()
    for partition in range(cluster.config.partition_count):
        seen = {(p.applied_position, p.state_hash) for view in views.values()
                for p in view.partitions if p.partition == partition}
        if len(seen) != 1:
            return False
    return True


# -- the happy path ------------------------------------------------------------------------


def test_transfer_moves_money_and_reads_see_it_on_every_node(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    before_alice, before_bob = balance(cluster, alice), balance(cluster, bob)
    response = cluster.wallet("n2").Transfer(pb.TransferRequest(
        from_account=alice, to_account=bob, amount="2.50", currency="USD",
        transaction_id=new_id()), timeout=30)
    assert response.status == pb.SUCCEEDED
    for node_id in ("n1", "n2", "n3"):
        assert float(balance(cluster, alice, node_id)) == float(before_alice) - 2.5
        assert float(balance(cluster, bob, node_id)) == float(before_bob) + 2.5


def test_every_replica_reaches_the_same_state_hash(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    cluster.wallet("n3").Transfer(pb.TransferRequest(
        from_account=alice, to_account=bob, amount="0.01", currency="USD",
        transaction_id=new_id()), timeout=30)
    wait_until(lambda: replicas_converged(cluster), "replicas to converge")


def test_a_repeated_transfer_is_applied_once(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    request = pb.TransferRequest(from_account=alice, to_account=bob, amount="1.00",
                                 currency="USD", transaction_id=new_id())
    before = float(balance(cluster, bob))
    for node_id in ("n1", "n2", "n1"):
        assert cluster.wallet(node_id).Transfer(request, timeout=30).status == pb.SUCCEEDED
    assert float(balance(cluster, bob)) == before + 1.0


def test_get_transfer_reports_the_outcome(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    transaction_id = new_id()
    cluster.wallet("n1").Transfer(pb.TransferRequest(
        from_account=alice, to_account=bob, amount="0.10", currency="USD",
        transaction_id=transaction_id), timeout=30)
    found = cluster.wallet("n3").GetTransfer(pb.GetTransferRequest(
        from_account=alice, transaction_id=transaction_id), timeout=30)
    assert (found.status, found.to_account, found.amount, found.currency) == (
        pb.SUCCEEDED, bob, "0.10", "USD")


def test_stale_reads_are_labelled_stale(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, _ = funded
    response = cluster.wallet("n2").GetBalance(
        pb.GetBalanceRequest(account_id=alice, consistency=pb.STALE), timeout=30)
    assert response.stale


def test_transfer_batch_answers_each_transfer(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    batch = pb.TransferBatchRequest(transfers=[
        pb.TransferRequest(from_account=alice, to_account=bob, amount="0.01", currency="USD",
                           transaction_id=new_id()),
        pb.TransferRequest(from_account=bob, to_account=alice, amount="99999.00",
                           currency="USD", transaction_id=new_id()),
        pb.TransferRequest(from_account=alice, to_account=bob, amount="1.001", currency="USD",
                           transaction_id=new_id()),
    ])
    response = cluster.wallet("n2").TransferBatch(batch, timeout=30)
    assert list(response.statuses) == [pb.SUCCEEDED, pb.FAILED, pb.FAILED]
    assert dict(response.reasons) == {1: "INSUFFICIENT_FUNDS", 2: "INVALID_AMOUNT"}
    assert (response.succeeded, response.failed) == (1, 2)


def test_cluster_status_names_a_leader_for_every_partition(cluster: LocalCluster) -> None:
    status = cluster.admin("n3").ClusterStatus(pb.ClusterStatusRequest(), timeout=30)
    assert status.partition_count == PARTITIONS
    assert all(p.leader_node_id in {"n1", "n2", "n3"} for p in status.partitions)
    assert [n.up for n in status.nodes] == [True, True, True]


def test_health_and_reflection_are_served(cluster: LocalCluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = cluster.channel("n1")
    health = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    wait_until(serving, "the health check to say SERVING")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
    names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert "raftwallet.wallet.v1.WalletService" in names


# -- bad input: a precise status, and nothing changes -----------------------------------


def assert_refused(cluster: LocalCluster, call: str, request: object, status: grpc.StatusCode,
                   field: str, watched: list[str]) -> None:
    before = [balance(cluster, account) for account in watched]
    with pytest.raises(grpc.RpcError) as excinfo:
        getattr(cluster.wallet("n2"), call)(request, timeout=30)
    error = excinfo.value
    assert error.code() == status, error.details()
    assert field in error.details()
    assert "Traceback" not in error.details()
    assert [balance(cluster, account) for account in watched] == before


def transfer(alice: str, bob: str, **changes: str) -> pb.TransferRequest:
    fields = {"from_account": alice, "to_account": bob, "amount": "1.00", "currency": "USD",
              "transaction_id": new_id()} | changes
    return pb.TransferRequest(**fields)


@pytest.mark.parametrize(("changes", "status", "field"), [
    ({"amount": "-1.00"}, grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    ({"amount": "1.001"}, grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    ({"amount": "1e3"}, grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    ({"currency": "usd"}, grpc.StatusCode.INVALID_ARGUMENT, "currency"),
    ({"currency": "XYZ"}, grpc.StatusCode.INVALID_ARGUMENT, "currency"),
    ({"transaction_id": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT, "transaction_id"),
    ({"transaction_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "transaction_id"),
    ({"to_account": "no such"}, grpc.StatusCode.INVALID_ARGUMENT, "to_account"),
    ({"amount": "5000.00"}, grpc.StatusCode.FAILED_PRECONDITION, "from_account"),
    ({"currency": "EUR"}, grpc.StatusCode.FAILED_PRECONDITION, "currency"),
])
def test_a_malformed_or_impossible_transfer_is_refused_and_changes_nothing(
    cluster: LocalCluster, funded: tuple[str, str, str], changes: dict[str, str],
    status: grpc.StatusCode, field: str,
) -> None:
    alice, bob, _ = funded
    assert_refused(cluster, "Transfer", transfer(alice, bob, **changes), status, field,
                   [alice, bob])


def test_transfer_to_an_unknown_account_is_not_found(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    (ghost,) = accounts_on(0, 1, "ghost")
    assert_refused(cluster, "Transfer", transfer(alice, ghost), grpc.StatusCode.NOT_FOUND,
                   "to_account", [alice, bob])


def test_transfer_to_the_same_account_is_a_failed_precondition(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    assert_refused(cluster, "Transfer", transfer(alice, alice),
                   grpc.StatusCode.FAILED_PRECONDITION, "to_account", [alice, bob])


def test_transfer_in_the_wrong_currency_is_a_failed_precondition(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, yen = funded
    assert_refused(cluster, "Transfer", transfer(alice, yen, amount="1"),
                   grpc.StatusCode.FAILED_PRECONDITION, "currency", [alice, yen])


def test_reused_transaction_id_with_other_content_is_already_exists(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    transaction_id = new_id()
    cluster.wallet("n1").Transfer(transfer(alice, bob, transaction_id=transaction_id,
                                           amount="0.01"), timeout=30)
    assert_refused(cluster, "Transfer", transfer(alice, bob, transaction_id=transaction_id,
                                                 amount="0.02"),
                   grpc.StatusCode.ALREADY_EXISTS, "transaction_id", [alice, bob])


def test_a_transfer_across_partitions_succeeds(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, _ = funded
    (far,) = accounts_on(1, 1, "far")
    cluster.wallet("n1").CreateAccount(pb.CreateAccountRequest(
        account_id=far, currency="USD", request_id=new_id()), timeout=30)
    before = float(balance(cluster, alice))
    response = cluster.wallet("n2").Transfer(transfer(alice, far, amount="4.00"), timeout=30)
    assert response.status == pb.SUCCEEDED
    assert (float(balance(cluster, alice)), balance(cluster, far)) == (before - 4.0, "4.00")


def test_deposit_to_an_unknown_account_is_not_found(cluster: LocalCluster) -> None:
    (ghost,) = accounts_on(1, 1, "nobody")
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").Deposit(pb.DepositRequest(
            account_id=ghost, amount="1.00", currency="USD", transaction_id=new_id()),
            timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert "account_id" in excinfo.value.details()


def test_creating_an_existing_account_is_already_exists(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, _ = funded
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").CreateAccount(pb.CreateAccountRequest(
            account_id=alice, currency="USD", request_id=new_id()), timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_refusals_carry_a_machine_readable_reason(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").Transfer(transfer(alice, bob, amount="9999.00"), timeout=30)
    metadata = dict(excinfo.value.trailing_metadata() or ())
    assert metadata["raftwallet-reason"] == "INSUFFICIENT_FUNDS"


# -- issue #13: the smaller defects ------------------------------------------------------

NIL_UUID = "00000000-0000-0000-0000-000000000000"


def far_account(cluster: LocalCluster, prefix: str) -> str:
    """A new USD account on partition 1 (funded's accounts are on partition 0)."""
    (far,) = accounts_on(1, 1, prefix)
    cluster.wallet("n1").CreateAccount(pb.CreateAccountRequest(
        account_id=far, currency="USD", request_id=new_id()), timeout=30)
    return far


def test_a_transfer_from_an_unknown_account_to_one_on_another_partition_names_only_the_unknown(
    cluster: LocalCluster,
) -> None:
    (ghost,) = accounts_on(0, 1, "nobody-cross")
    far = far_account(cluster, "far-known")
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n2").Transfer(transfer(ghost, far), timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert excinfo.value.details() == f"from_account {ghost!r} does not exist"
    assert dict(excinfo.value.trailing_metadata() or ())["raftwallet-reason"] == (
        "ACCOUNT_NOT_FOUND")


def test_a_transfer_from_and_to_unknown_accounts_of_one_partition_names_both(
    cluster: LocalCluster,
) -> None:
    ghost, other = accounts_on(0, 2, "nobody-both")
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n2").Transfer(transfer(ghost, other), timeout=30)
    assert excinfo.value.details() == (
        f"from_account {ghost!r} and to_account {other!r} do not exist")


def test_a_credit_refused_across_partitions_still_names_the_to_account(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, _ = funded
    (ghost,) = accounts_on(1, 1, "far-ghost")
    request = transfer(alice, ghost, amount="0.50")
    for _ in range(2):  # the first answer, then the retry answered from the dedup record
        with pytest.raises(grpc.RpcError) as excinfo:
            cluster.wallet("n1").Transfer(request, timeout=30)
        assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
        assert excinfo.value.details().startswith(
            f"to_account {ghost!r} on partition 1 refused the credit (ACCOUNT_NOT_FOUND)")


# -- issue #19: refusals name their cause ------------------------------------------------


@pytest.mark.parametrize("partition", [0, 1], ids=["same-partition", "cross-partition"])
def test_a_transfer_in_another_currency_than_the_source_says_so_and_that_nothing_moved(
    cluster: LocalCluster, funded: tuple[str, str, str], partition: int,
) -> None:
    alice, _, _ = funded  # USD, on partition 0
    (euros,) = accounts_on(partition, 1, f"euros-{partition}")
    cluster.wallet("n1").CreateAccount(pb.CreateAccountRequest(
        account_id=euros, currency="EUR", request_id=new_id()), timeout=30)
    request = transfer(alice, euros, currency="EUR")
    before = balance(cluster, alice)
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n2").Transfer(request, timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert excinfo.value.details() == (
        f"from_account {alice!r} is in currency USD, not EUR; nothing moved")
    assert (balance(cluster, alice), balance(cluster, euros)) == (before, "0.00")
    with pytest.raises(grpc.RpcError) as unknown:  # nothing recorded: no compensation
        cluster.wallet("n3").GetTransfer(pb.GetTransferRequest(
            from_account=alice, transaction_id=request.transaction_id), timeout=30)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_same_partition_transfer_names_each_account_in_another_currency(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, yen = funded
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").Transfer(transfer(yen, alice, amount="1"), timeout=30)
    assert excinfo.value.details() == (
        f"from_account {yen!r} is in currency JPY, not USD; nothing moved")
    with pytest.raises(grpc.RpcError) as both:
        cluster.wallet("n1").Transfer(transfer(alice, yen, currency="EUR"), timeout=30)
    assert both.value.details() == (f"from_account {alice!r} is in currency USD and to_account "
                                    f"{yen!r} is in currency JPY, not EUR; nothing moved")


def test_walletctl_transfer_from_an_unknown_account_names_only_it_across_partitions(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
) -> None:
    from node.cli.walletctl import main as walletctl

    (ghost,) = accounts_on(0, 1, "nobody-ctl")
    far = far_account(cluster, "alice-ctl")
    assert walletctl(["--config", str(cluster.config_path), "transfer", ghost, far, "1.00",
                      "--currency", "USD"]) == 1
    error = capsys.readouterr().err
    assert f"from_account {ghost!r} does not exist" in error, error
    assert far not in error


@pytest.mark.parametrize("call", ["Transfer", "Deposit", "CreateAccount"])
def test_the_nil_uuid_is_refused_as_the_id_of_a_write(
    cluster: LocalCluster, funded: tuple[str, str, str], call: str,
) -> None:
    alice, bob, _ = funded
    request, field = {
        "Transfer": (transfer(alice, bob, transaction_id=NIL_UUID), "transaction_id"),
        "Deposit": (pb.DepositRequest(account_id=alice, amount="1.00", currency="USD",
                                      transaction_id=NIL_UUID), "transaction_id"),
        "CreateAccount": (pb.CreateAccountRequest(account_id="nil-request", currency="USD",
                                                  request_id=NIL_UUID), "request_id"),
    }[call]
    before = [balance(cluster, alice), balance(cluster, bob)]
    with pytest.raises(grpc.RpcError) as excinfo:
        getattr(cluster.wallet("n2"), call)(request, timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.details().startswith(f"{field}: the nil UUID {NIL_UUID} is not")
    assert dict(excinfo.value.trailing_metadata() or ())["raftwallet-reason"] == (
        "INVALID_TRANSACTION_ID")
    assert [balance(cluster, alice), balance(cluster, bob)] == before


def test_a_nil_transaction_id_can_still_be_looked_up(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    _, bob, _ = funded  # never the debited account of a nil-id write in these tests
    with pytest.raises(grpc.RpcError) as excinfo:
        cluster.wallet("n1").GetTransfer(pb.GetTransferRequest(
            from_account=bob, transaction_id=NIL_UUID), timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND  # not INVALID_ARGUMENT


def test_the_sdk_refuses_a_nil_transaction_id_at_once_without_retrying(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    from client.errors import OutcomeUnknown, WalletError
    from client.sdk import WalletClient

    alice, bob, _ = funded
    targets = [node.grpc_address for node in cluster.config.nodes]
    with WalletClient(targets, retry_deadline_s=5.0) as wallet, \
            pytest.raises(WalletError) as excinfo:
        wallet.transfer(alice, bob, "0.01", "USD", NIL_UUID)
    assert not isinstance(excinfo.value, OutcomeUnknown)
    assert (excinfo.value.status, excinfo.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TRANSACTION_ID")
    assert "nil UUID" in excinfo.value.message


@pytest.mark.parametrize("across", [False, True])
def test_a_retried_transfer_answers_the_position_of_its_first_answer(
    cluster: LocalCluster, funded: tuple[str, str, str], across: bool,
) -> None:
    alice, bob, _ = funded
    to_account = far_account(cluster, f"far-retry-{new_id()[:8]}") if across else bob
    request = transfer(alice, to_account, amount="0.05")
    first = cluster.wallet("n1").Transfer(request, timeout=30)
    cluster.wallet("n1").Deposit(pb.DepositRequest(  # the log moves on in between
        account_id=alice, amount="0.01", currency="USD", transaction_id=new_id()), timeout=30)
    again = cluster.wallet("n2").Transfer(request, timeout=30)
    assert (first.status, again.status) == (pb.SUCCEEDED, pb.SUCCEEDED)
    assert again.position == first.position > 0
    found = cluster.wallet("n1").GetTransfer(pb.GetTransferRequest(
        from_account=alice, transaction_id=request.transaction_id), timeout=30)
    assert found.steps[0].position == first.position


def test_retried_deposits_and_account_creations_answer_their_first_position(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, _, _ = funded
    wallet = cluster.wallet("n1")
    deposit = pb.DepositRequest(account_id=alice, amount="0.02", currency="USD",
                                transaction_id=new_id())
    (account,) = accounts_on(0, 1, f"retry-create-{new_id()[:8]}")
    create = pb.CreateAccountRequest(account_id=account, currency="USD", request_id=new_id())
    first = wallet.Deposit(deposit, timeout=30), wallet.CreateAccount(create, timeout=30)
    wallet.Transfer(transfer(alice, account, amount="0.01"), timeout=30)
    again = wallet.Deposit(deposit, timeout=30), wallet.CreateAccount(create, timeout=30)
    assert [answer.position for answer in again] == [answer.position for answer in first]


def test_the_node_refuses_to_start_without_identity_in_its_data_dir(tmp_path: Path) -> None:
    spare = LocalCluster(tmp_path, nodes=1, partitions=1)
    try:
        process = spare.start("n1", bootstrap=False)
        assert process.wait(timeout=60) == 3
        assert "no RaftWallet identity" in spare.log("n1")
    finally:
        spare.stop_all()


def test_aborting_an_unknown_transfer_refuses_it_for_good(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    transaction_id = new_id()
    aborted = cluster.wallet("n2").AbortTransfer(pb.AbortTransferRequest(
        from_account=alice, transaction_id=transaction_id), timeout=30)
    assert (aborted.status, aborted.reason) == (pb.FAILED, "ABORTED")
    assert_refused(cluster, "Transfer", transfer(alice, bob, transaction_id=transaction_id),
                   grpc.StatusCode.FAILED_PRECONDITION, "aborted", [alice, bob])


def test_aborting_an_applied_transfer_returns_its_outcome(
    cluster: LocalCluster, funded: tuple[str, str, str],
) -> None:
    alice, bob, _ = funded
    transaction_id = new_id()
    cluster.wallet("n1").Transfer(transfer(alice, bob, transaction_id=transaction_id,
                                           amount="0.05"), timeout=30)
    answer = cluster.wallet("n3").AbortTransfer(pb.AbortTransferRequest(
        from_account=alice, transaction_id=transaction_id), timeout=30)
    assert (answer.status, answer.amount) == (pb.SUCCEEDED, "0.05")


def test_leaders_settle_on_the_preferred_nodes_of_the_cluster_file(
    cluster: LocalCluster,
) -> None:
    preferred = {p: cluster.config.replicas_of(p)[0] for p in range(PARTITIONS)}

    def spread() -> bool:
        status = cluster.status()
        return status is not None and {
            p.partition: p.leader_node_id for p in status.partitions} == preferred

    wait_until(spread, "every partition to be led by its preferred node")


def test_the_sdk_and_cli_reach_the_cluster(
    cluster: LocalCluster, funded: tuple[str, str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from client.sdk import TransferStatus, WalletClient
    from node.cli.walletctl import main as walletctl

    alice, bob, _ = funded
    targets = [node.grpc_address for node in cluster.config.nodes]
    with WalletClient(targets) as wallet:
        done = wallet.transfer(alice, bob, "0.02", "USD")
        assert done.status is TransferStatus.SUCCEEDED
        aborted = wallet.abort_transfer(alice, new_id())
        assert (aborted.status, aborted.reason) == (TransferStatus.FAILED, "ABORTED")
    assert walletctl(["--config", str(cluster.config_path), "--json", "balance", bob]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["account"], shown["currency"]) == (bob, "USD")


def test_verify_replays_every_archive_to_the_live_state(
    cluster: LocalCluster, funded: tuple[str, str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from node.cli.walletctl import main as walletctl

    alice, bob, _ = funded
    cluster.wallet("n1").Transfer(transfer(alice, bob, amount="0.03"), timeout=30)
    wait_until(lambda: replicas_converged(cluster), "replicas to converge")
    assert walletctl(["--config", str(cluster.config_path), "--json", "verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["replicas"]) == 3 * PARTITIONS


def test_replay_rebuilds_balances_from_a_node_archive(
    cluster: LocalCluster, funded: tuple[str, str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from node.cli.walletctl import main as walletctl

    alice, _, _ = funded
    live = balance(cluster, alice)
    wait_until(lambda: replicas_converged(cluster), "replicas to converge")
    data_dir = cluster.node_dir("n2")
    assert walletctl(["--json", "replay", "--data-dir", str(data_dir), "--partition", "0",
                      "--account", alice]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert (replayed["account"], replayed["balance"], replayed["partition"]) == (alice, live, 0)


def test_a_node_can_serve_the_http_gateway_itself(tmp_path: Path) -> None:
    import json
    import urllib.request

    from tests.cluster_harness import allocate_ports

    single = LocalCluster(tmp_path, nodes=1, partitions=1)
    port = allocate_ports(1)
    try:
        single.start("n1", bootstrap=True, extra_args=("--http-listen", f"127.0.0.1:{port}"))
        single.wait_for_leaders()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(ready, "the embedded gateway to be ready")
        body = json.dumps({"account_id": "web-1", "currency": "EUR"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/wallet/accounts", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 201
    finally:
        single.stop_all()
    assert single.processes["n1"].returncode == 0
