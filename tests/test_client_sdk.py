"""The SDK (client.sdk, client.aio, client.errors) against the in-process fake node."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest

from client import sdk
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
from proto.wallet.v1 import wallet_pb2 as pb
from tests.fake_wallet_server import FakeWalletServer, running_fake, silent_node

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


# --- deadlines, silent nodes, seeds (issue #13) -------------------------------------------


class FakeClock:
    """time.monotonic for client.sdk, moved by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake_clock = FakeClock()
    monkeypatch.setattr("client.sdk.time.monotonic", fake_clock)
    monkeypatch.setattr("client.sdk.random.uniform", lambda low, high: high)  # longest backoff
    return fake_clock


def test_each_attempt_gets_a_slice_of_the_calls_deadline(clock: FakeClock) -> None:
    retry = sdk._Retry(timeout_s=3.0, retry_deadline_s=10.0)

    assert retry.attempt_timeout() == 3.0
    assert retry.slice(sdk.DEFAULT_PROBE_TIMEOUT_S) == 1.0
    clock.now_s += 8.5
    assert retry.attempt_timeout() == pytest.approx(1.5), "no attempt outlives the call"
    clock.now_s += 1.49
    assert retry.attempt_timeout() == sdk.RETRY_ATTEMPT_S_MIN


def test_a_call_whose_retry_deadline_is_shorter_than_one_attempt_still_gets_that_attempt(
    clock: FakeClock,
) -> None:
    retry = sdk._Retry(timeout_s=2.0, retry_deadline_s=0.0)

    assert retry.attempt_timeout() == 2.0
    assert retry.backoff() is None, "retry_deadline_s=0: never retry"


def test_retries_start_only_while_the_retry_deadline_leaves_room(clock: FakeClock) -> None:
    retry = sdk._Retry(timeout_s=3.0, retry_deadline_s=10.0)

    assert retry.backoff() == pytest.approx(sdk.RETRY_BACKOFF_S_BASE)
    assert retry.backoff() == pytest.approx(2 * sdk.RETRY_BACKOFF_S_BASE)
    clock.now_s += 10.0 - 0.1 - sdk.RETRY_ATTEMPT_S_MIN
    assert retry.backoff() is None, "a 0.2 s backoff would leave no time for the attempt"
    assert retry.attempt == 2


def test_nodes_that_failed_are_tried_last_until_they_answer_again(clock: FakeClock) -> None:
    health = sdk._NodeHealth()
    unavailable = Unavailable(grpc.StatusCode.UNAVAILABLE, "connection refused")
    no_leader = Unavailable(grpc.StatusCode.UNAVAILABLE, "no leader", reason="NO_LEADER")

    health.record("a:1", unavailable)
    health.record("b:2", no_leader)  # the node itself said so: it is up
    assert [health.rank(a) for a in ("a:1", "b:2", "c:3")] == [
        sdk._NodeHealth.SUSPECT, sdk._NodeHealth.UP, sdk._NodeHealth.UNKNOWN]
    clock.now_s += sdk.SUSPECT_S
    assert health.rank("a:1") == sdk._NodeHealth.UNKNOWN


def test_a_discovery_round_ends_at_the_first_map_and_keeps_the_newest() -> None:
    routes, health = sdk._RouteTable(), sdk._NodeHealth()
    discovery = sdk._Discovery(["a:1", "b:2", "c:3"], routes, health)

    assert not discovery.failed("a:1", Unavailable(grpc.StatusCode.DEADLINE_EXCEEDED, "late"))
    assert discovery.answered("b:2", pb.GetClusterMapResponse(map_json=cluster_map_json(5)))
    assert discovery.first == "b:2"
    discovery.answered("c:3", pb.GetClusterMapResponse(map_json=cluster_map_json(3)))
    assert routes.cluster_map is not None and routes.cluster_map.version == 5
    assert health.rank("a:1") == sdk._NodeHealth.SUSPECT
    assert health.is_up("b:2") and health.is_up("c:3")


def test_a_discovery_round_where_every_node_fails_is_over_without_a_map() -> None:
    discovery = sdk._Discovery(["a:1"], sdk._RouteTable(), sdk._NodeHealth())

    assert discovery.failed("a:1", WalletError(grpc.StatusCode.UNIMPLEMENTED))
    assert discovery.first is None


def cluster_map_json(version: int, addresses: Sequence[str] = ("127.0.0.1:1",),
                     partition_count: int = 4) -> str:
    nodes = []
    for index, address in enumerate(addresses):
        host, _, port = address.rpartition(":")
        nodes.append({"id": f"n{index + 1}", "host": host, "grpc_port": int(port)})
    voters = [[node["id"], "voter"] for node in nodes]
    return json.dumps({"version": version, "name": "fake", "partition_count": partition_count,
                       "nodes": nodes, "groups": [voters] * (partition_count + 1)})


def run_client(kind: str, targets: list[str], call: str, *args: Any, **options: Any) -> Any:
    """Call `call(*args)` on a fresh sync or asyncio client of `targets` and close it."""
    if kind == "sync":
        with WalletClient(targets, **options) as wallet:
            return getattr(wallet, call)(*args)

    async def scenario() -> Any:
        async with AsyncWalletClient(targets, **options) as wallet:
            return await getattr(wallet, call)(*args)

    return asyncio.run(scenario())


CLIENTS = ["sync", "asyncio"]


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_silent_first_seed_costs_one_health_check_then_the_next_seed_answers(
    fake: FakeWalletServer, kind: str,
) -> None:
    with silent_node() as paused:
        started = time.monotonic()
        balance = run_client(kind, [paused, fake.address], "balance", "alice",
                             learn_routes=False, timeout_s=10.0, retry_deadline_s=10.0)
        elapsed_s = time.monotonic() - started

    assert balance.balance == "100.00"
    assert elapsed_s < sdk.DEFAULT_PROBE_TIMEOUT_S + 0.8, f"took {elapsed_s:.2f} s"
    assert len(fake.requests_of("GetBalance")) == 1


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_write_to_silent_nodes_only_ends_outcome_unknown_within_its_deadline(kind: str) -> None:
    tid = new_id()
    with silent_node() as first, silent_node() as second:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown) as raised:
            run_client(kind, [first, second], "transfer", "alice", "bob", "1.00", "USD", tid,
                       learn_routes=False, timeout_s=0.5, retry_deadline_s=2.0,
                       probe_timeout_s=0.3)
        elapsed_s = time.monotonic() - started

    assert raised.value.transaction_id == tid
    assert 1.5 < elapsed_s < 2.6, f"took {elapsed_s:.2f} s for a 2 s deadline"


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_transfer_stalled_past_its_attempt_is_resent_to_the_next_node_and_applied_once(
    fake: FakeWalletServer, kind: str,
) -> None:
    fake.stall("Transfer", seconds=1.5)  # then served anyway, like a node resumed later
    tid = new_id()

    started = time.monotonic()
    result = run_client(kind, [fake.address, fake.second_address], "transfer",
                        "alice", "bob", "1.00", "USD", tid,
                        learn_routes=False, timeout_s=0.5, retry_deadline_s=10.0)
    elapsed_s = time.monotonic() - started
    wait_until_true(lambda: len(fake.transfers) == 1 and len(fake.requests_of("Transfer")) == 2)
    time.sleep(1.5)  # the stalled request has been served by now

    assert result.status is TransferStatus.SUCCEEDED and result.transaction_id == tid
    assert elapsed_s < 1.5, f"took {elapsed_s:.2f} s: the attempt was not cut at 0.5 s"
    assert [r.transaction_id for r in fake.requests_of("Transfer")] == [tid, tid]
    assert [t.transaction_id for t in fake.transfers] == [tid]
    assert (fake.accounts["alice"].balance_minor, fake.accounts["bob"].balance_minor) == (
        9900, 100)


@pytest.mark.parametrize("kind", CLIENTS)
def test_discovery_asks_the_seeds_at_once_so_one_answering_seed_is_enough(kind: str) -> None:
    with running_fake() as live, silent_node() as first, silent_node() as second:
        live.add_account("alice", "USD", "5.00")
        live.map_json = cluster_map_json(7, [first, second, live.address])
        started = time.monotonic()
        balance = run_client(kind, [first, second, live.address], "balance", "alice",
                             timeout_s=10.0, retry_deadline_s=10.0)
        elapsed_s = time.monotonic() - started

        assert balance.balance == "5.00"
        assert elapsed_s < 0.8, f"took {elapsed_s:.2f} s: the silent seeds were waited for"
        assert len(live.requests_of("GetClusterMap")) == 1
        assert len(live.requests_of("ClusterStatus")) == 1


def test_a_client_keeps_passing_over_a_silent_node_after_its_first_failure(
    fake: FakeWalletServer,
) -> None:
    with silent_node() as paused, WalletClient([paused, fake.address], learn_routes=False,
                                              timeout_s=10.0) as wallet:
        wallet.balance("alice")
        started = time.monotonic()
        for _ in range(3):
            wallet.balance("alice")
        elapsed_s = time.monotonic() - started

    assert elapsed_s < 0.5, f"took {elapsed_s:.2f} s: the silent node was probed again"
    assert len(fake.requests_of("GetBalance")) == 4


def wait_until_true(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
