"""The SDK (client.sdk, client.aio, client.errors) against the in-process fake node."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import Iterator

import grpc
import pytest

from client.aio import AsyncWalletClient
from client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    WalletError,
    is_retryable,
)
from client.sdk import TransferSpec, TransferStatus, WalletClient, new_id
from ledger.routing import partition_of
from tests.fake_wallet_server import FakeWalletServer, running_fake

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SHORT_RETRY_DEADLINE_S = 0.3


@pytest.fixture
def fake() -> Iterator[FakeWalletServer]:
    with running_fake() as server:
        server.add_account("alice", "USD", "100.00")
        server.add_account("bob", "USD")
        server.add_account("yen", "JPY")
        yield server


@pytest.fixture
def wallet(fake: FakeWalletServer) -> Iterator[WalletClient]:
    with WalletClient(fake.address, timeout_s=5.0, retry_deadline_s=5.0) as client:
        yield client


def test_transfer_returns_succeeded(wallet: WalletClient) -> None:
    result = wallet.transfer("alice", "bob", "12.34", "USD")

    assert result.status is TransferStatus.SUCCEEDED
    assert (result.from_account, result.to_account, result.amount, result.currency) == (
        "alice", "bob", "12.34", "USD",
    )
    assert wallet.balance("bob").balance == "12.34"


def test_retry_after_unavailable_resends_the_same_transaction_id(
    fake: FakeWalletServer, wallet: WalletClient
) -> None:
    fake.fail("Transfer", grpc.StatusCode.UNAVAILABLE, times=2)

    result = wallet.transfer("alice", "bob", "1.00", "USD")

    sent = [request.transaction_id for request in fake.requests_of("Transfer")]
    assert result.status is TransferStatus.SUCCEEDED
    assert sent == [result.transaction_id] * 3


def test_a_given_transaction_id_is_sent_as_is(fake: FakeWalletServer, wallet: WalletClient) -> None:
    tid = "0f8fad5b-d9cb-469f-a165-70867728950e"

    assert wallet.deposit("bob", "5.00", "USD", transaction_id=tid).transaction_id == tid
    assert [r.transaction_id for r in fake.requests_of("Deposit")] == [tid]


@pytest.mark.parametrize(
    ("code", "reason", "exception"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", FailedPrecondition),
        (grpc.StatusCode.ALREADY_EXISTS, "ID_CONFLICT", AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, "", PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, "", Unauthenticated),
        (grpc.StatusCode.UNIMPLEMENTED, "", WalletError),
    ],
)
def test_errors_map_to_their_exception_with_the_reason(
    fake: FakeWalletServer,
    wallet: WalletClient,
    code: grpc.StatusCode,
    reason: str,
    exception: type[WalletError],
) -> None:
    fake.fail("Withdraw", code, reason=reason, details="amount: nope")

    with pytest.raises(exception) as raised:
        wallet.withdraw("alice", "1.00", "USD")

    assert type(raised.value) is exception
    assert (raised.value.status, raised.value.reason, raised.value.message) == (
        code, reason, "amount: nope",
    )


def test_ledger_refusals_carry_the_servers_reason(wallet: WalletClient) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        wallet.transfer("alice", "bob", "1000.00", "USD")

    assert raised.value.reason == "INSUFFICIENT_FUNDS"
    assert "INSUFFICIENT_FUNDS" in str(raised.value)


def test_refusals_are_not_retried(fake: FakeWalletServer, wallet: WalletClient) -> None:
    with pytest.raises(NotFound):
        wallet.balance("nobody")

    assert len(fake.requests_of("GetBalance")) == 1


def test_outcome_unknown_after_the_retry_deadline(fake: FakeWalletServer) -> None:
    fake.fail("Transfer", grpc.StatusCode.UNAVAILABLE, times=None)
    tid = new_id()

    w = WalletClient(fake.address, timeout_s=1.0, retry_deadline_s=SHORT_RETRY_DEADLINE_S)
    with w, pytest.raises(OutcomeUnknown) as raised:
        w.transfer("alice", "bob", "1.00", "USD", transaction_id=tid)

    assert raised.value.transaction_id == tid
    assert raised.value.status is grpc.StatusCode.UNAVAILABLE
    sent = [request.transaction_id for request in fake.requests_of("Transfer")]
    assert len(sent) >= 2
    assert set(sent) == {tid}


def test_a_read_whose_retries_run_out_raises_unavailable(fake: FakeWalletServer) -> None:
    fake.fail("GetBalance", grpc.StatusCode.DEADLINE_EXCEEDED, times=None)

    w = WalletClient(fake.address, timeout_s=1.0, retry_deadline_s=SHORT_RETRY_DEADLINE_S)
    with w, pytest.raises(Unavailable) as raised:
        w.balance("alice")

    assert raised.value.status is grpc.StatusCode.DEADLINE_EXCEEDED


def test_generated_ids_are_unique_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(2000)]

    assert all(UUID_RE.fullmatch(i) for i in ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_writes_without_ids_get_fresh_uuid7s(fake: FakeWalletServer, wallet: WalletClient) -> None:
    first = wallet.deposit("bob", "1.00", "USD")
    second = wallet.deposit("bob", "1.00", "USD")

    assert UUID_RE.fullmatch(first.transaction_id)
    assert first.transaction_id != second.transaction_id
    assert wallet.balance("bob").balance == "2.00"


def test_route_uses_partition_of_with_the_clusters_partition_count() -> None:
    with running_fake(partition_count=7) as fake, WalletClient(fake.address) as wallet:
        fake.leader_addresses = {p: f"10.0.0.{p}:7101" for p in range(7)}
        routes = {account: wallet.route(account) for account in ("alice", "bob", "carol")}

    for account, route in routes.items():
        partition = partition_of(account, 7)
        assert (route.partition, route.partition_count) == (partition, 7)
        assert route.leader_address == f"10.0.0.{partition}:7101"


def test_requests_go_to_the_partition_leader_first() -> None:
    with running_fake() as entry, running_fake() as leader:
        entry.leader_addresses = {p: leader.address for p in range(entry.partition_count)}
        leader.add_account("alice", "USD", "1.00")
        with WalletClient(entry.address) as wallet:
            balance = wallet.balance("alice")

        assert balance.balance == "1.00"
        assert len(leader.requests_of("GetBalance")) == 1
        assert entry.requests_of("GetBalance") == []


def test_an_unreachable_leader_falls_back_to_the_targets(fake: FakeWalletServer) -> None:
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
        fake.leader_addresses = {p: dead for p in range(fake.partition_count)}
        with WalletClient(fake.address, timeout_s=2.0, retry_deadline_s=5.0) as wallet:
            assert wallet.balance("alice").balance == "100.00"

    assert len(fake.requests_of("GetBalance")) == 1


def test_without_cluster_status_the_targets_are_used(fake: FakeWalletServer) -> None:
    fake.fail("ClusterStatus", grpc.StatusCode.UNIMPLEMENTED, times=None)

    with WalletClient(fake.address) as wallet:
        assert wallet.balance("alice").balance == "100.00"
        assert wallet.balance("alice").balance == "100.00"

    assert len(fake.requests_of("ClusterStatus")) == 1  # learnt once that it is missing


def test_retries_rotate_over_the_targets() -> None:
    with running_fake() as down, running_fake() as up:
        for server in (down, up):
            server.fail("ClusterStatus", grpc.StatusCode.UNIMPLEMENTED, times=None)
        down.fail("GetBalance", grpc.StatusCode.UNAVAILABLE, times=None)
        up.add_account("alice", "USD", "3.00")
        with WalletClient([down.address, up.address]) as wallet:
            assert wallet.balance("alice").balance == "3.00"

        assert len(down.requests_of("GetBalance")) == 1
        assert len(up.requests_of("GetBalance")) == 1


def test_transfer_batch_reports_each_transfer(wallet: WalletClient) -> None:
    result = wallet.transfer_batch(
        [
            TransferSpec("alice", "bob", "1.00", "USD"),
            TransferSpec("alice", "bob", "1000.00", "USD"),
        ]
    )

    assert [r.status for r in result.results] == [TransferStatus.SUCCEEDED, TransferStatus.FAILED]
    assert result.results[1].reason == "INSUFFICIENT_FUNDS"
    assert (result.succeeded, result.failed) == (1, 1)


def test_get_transfer_and_history(wallet: WalletClient) -> None:
    sent = wallet.transfer("alice", "bob", "2.50", "USD")

    record = wallet.get_transfer("alice", sent.transaction_id)
    page = wallet.list_transfers("bob", limit=10)

    assert (record.status, record.amount, record.to_account) == (
        TransferStatus.SUCCEEDED, "2.50", "bob",
    )
    assert [t.transaction_id for t in page.transfers] == [sent.transaction_id]
    assert page.next_page_token == ""


def test_async_client_does_a_transfer(fake: FakeWalletServer) -> None:
    async def scenario() -> tuple[TransferStatus, str]:
        async with AsyncWalletClient(fake.address, timeout_s=5.0) as wallet:
            result = await wallet.transfer("alice", "bob", "7.00", "USD")
            balance = await wallet.balance("bob")
            return result.status, balance.balance

    assert asyncio.run(scenario()) == (TransferStatus.SUCCEEDED, "7.00")


def test_async_client_retries_with_the_same_id(fake: FakeWalletServer) -> None:
    fake.fail("Deposit", grpc.StatusCode.UNAVAILABLE, times=1)

    async def scenario() -> str:
        async with AsyncWalletClient(fake.address, timeout_s=5.0) as wallet:
            return (await wallet.deposit("bob", "1.00", "USD")).transaction_id

    tid = asyncio.run(scenario())
    assert [r.transaction_id for r in fake.requests_of("Deposit")] == [tid, tid]


def test_async_client_maps_errors(fake: FakeWalletServer) -> None:
    async def scenario() -> None:
        async with AsyncWalletClient(fake.address, timeout_s=5.0) as wallet:
            await wallet.balance("nobody")

    with pytest.raises(NotFound) as raised:
        asyncio.run(scenario())

    assert raised.value.reason == "ACCOUNT_NOT_FOUND"



def test_a_request_over_the_size_limit_is_not_retried() -> None:
    too_big = WalletError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "Received message larger than max (5242880 vs. 4194304)")
    overloaded = WalletError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             "more than 200000 commands queued for partition 1")
    assert not is_retryable(too_big), "the same bytes would be refused every time"
    assert is_retryable(overloaded)
