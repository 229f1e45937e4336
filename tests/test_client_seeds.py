"""Fresh clients reach a cluster with two of its five nodes paused (issue #13, finding 8).

Two nodes are stopped with SIGSTOP, the first seed of the cluster file among them: their
ports still accept TCP connections, but nothing ever answers. A fresh SDK client (sync
and asyncio), a fresh `walletctl --config` process and a fresh `walletctl gateway` must
each serve a partition whose leader is alive well within their deadline, and a transfer
whose node is paused while it is in flight is sent again, with the same transaction id,
to another node and applied exactly once. Every paused node is resumed, and every
process a test starts is stopped, in a `finally`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from client.aio import AsyncWalletClient
from client.sdk import TransferStatus, WalletClient
from ledger.routing import partition_of
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    WAIT_S,
    LocalCluster,
    allocate_ports,
    call_until_done,
    converged,
    wait_until,
)

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

T = TypeVar("T")

PARTITIONS = 2
REPO = Path(__file__).resolve().parent.parent
FRESH_CLIENT_S_MAX = 5.0
"""A fresh client's call to a healthy partition answers within this (its deadline is 10 s)."""
IN_FLIGHT_S_MAX = 8.0
"""A transfer whose node is paused mid-call is answered by another node within this: one
attempt's timeout (3 s by default), a connection wait (1 s), the answer, and some slack."""
READY_S_MAX = 20.0
"""A fresh gateway's /readyz turns 200 within this (an election for the partitions the
paused seed led, and one ClusterStatus that waits 1 s for the paused peers)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path_factory.mktemp("seeds"), nodes=5, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


@dataclass(frozen=True)
class Scene:
    """A partition whose leader stays up, the two nodes to pause, two funded accounts."""

    partition: int
    leader: str
    paused: tuple[str, str]
    """The cluster file's first node, and one more; every partition keeps a majority."""
    payer: str
    payee: str


def choose_scene(cluster: LocalCluster, prefix: str) -> Scene:
    status = cluster.wait_for_leaders()
    first = cluster.config.nodes[0].id
    node_ids = [n.id for n in cluster.config.nodes]
    led = [p for p in status.partitions if p.leader_node_id != first]
    assert led, f"every partition is led by {first}: no healthy partition to test"
    partition, leader = led[0].partition, led[0].leader_node_id
    replicas = {p: set(cluster.config.replicas_of(p)) for p in range(PARTITIONS)}

    def keeps_majorities(second: str) -> bool:
        return all(len(nodes & {first, second}) <= len(nodes) // 2 for nodes in replicas.values())

    seconds = [n for n in node_ids if n not in (first, leader) and keeps_majorities(n)]
    assert seconds, "no second node can be paused without costing a partition its majority"
    # Prefer a replica of the partition under test: it then runs on a bare majority.
    second = next((n for n in seconds if n in replicas[partition]), seconds[0])
    names = [f"{prefix}-{uuid.uuid4().hex[:8]}-{i}" for i in range(400)]
    payer, payee = [n for n in names if partition_of(n, PARTITIONS) == partition][:2]
    for account in (payer, payee):
        call_until_done(cluster, "CreateAccount", pb.CreateAccountRequest(
            account_id=account, currency="USD", request_id=str(uuid.uuid4())))
    call_until_done(cluster, "Deposit", pb.DepositRequest(
        account_id=payer, amount="100.00", currency="USD", transaction_id=str(uuid.uuid4())))
    return Scene(partition, leader, (first, second), payer, payee)


@contextmanager
def paused(cluster: LocalCluster, node_ids: tuple[str, ...]) -> Iterator[None]:
    """SIGSTOP the nodes; SIGCONT them whatever happens, and wait for every leader again."""
    stopped: list[str] = []
    try:
        for node_id in node_ids:
            cluster.processes[node_id].send_signal(signal.SIGSTOP)
            stopped.append(node_id)
        yield
    finally:
        for node_id in stopped:
            cluster.processes[node_id].send_signal(signal.SIGCONT)
    cluster.wait_for_leaders()
    cluster.wait_serving(*stopped)  # the next scene may ask a resumed node first


def addresses(cluster: LocalCluster, first: str | None = None) -> list[str]:
    """Every node's gRPC address in cluster-file order (`first` moved to the front)."""
    ordered = [n.id for n in cluster.config.nodes]
    if first is not None:
        ordered = [first, *(n for n in ordered if n != first)]
    return [cluster.config.node(n).grpc_address for n in ordered]


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def balance_of(cluster: LocalCluster, account: str) -> Decimal:
    answer = call_until_done(cluster, "GetBalance", pb.GetBalanceRequest(account_id=account))
    return Decimal(answer.balance)  # type: ignore[attr-defined]


# --- the SDK ----------------------------------------------------------------------------


def test_a_fresh_sdk_client_reaches_a_healthy_partition_past_two_paused_nodes(
    cluster: LocalCluster,
) -> None:
    scene = choose_scene(cluster, "sdk")
    credentials = node_client_credentials(cluster.config)
    with paused(cluster, scene.paused):
        with WalletClient(addresses(cluster), token=credentials.wallet_token,
                          admin_token=credentials.admin_token) as wallet:
            balance, balance_s = timed(lambda: wallet.balance(scene.payer))
            sent, transfer_s = timed(lambda: wallet.transfer(scene.payer, scene.payee,
                                                             "1.00", "USD"))

        async def asyncio_client() -> tuple[str, float]:
            async with AsyncWalletClient(addresses(cluster), token=credentials.wallet_token,
                                         admin_token=credentials.admin_token) as wallet:
                started = time.monotonic()
                result = await wallet.transfer(scene.payer, scene.payee, "2.00", "USD")
                return result.status, time.monotonic() - started

        async_status, async_s = asyncio.run(asyncio_client())

    assert balance.balance == "100.00"
    assert sent.status is TransferStatus.SUCCEEDED and async_status is TransferStatus.SUCCEEDED
    assert max(balance_s, transfer_s, async_s) < FRESH_CLIENT_S_MAX, (
        f"balance {balance_s:.1f} s, transfer {transfer_s:.1f} s, asyncio {async_s:.1f} s")
    assert balance_of(cluster, scene.payee) == Decimal("3.00")


# --- walletctl ----------------------------------------------------------------------------


def walletctl(cluster: LocalCluster, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    command = [sys.executable, "-m", "node.cli.walletctl", "--config", str(cluster.config_path),
               "--json", *args]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=WAIT_S,
                          check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return done, time.monotonic() - started


def test_walletctl_with_the_cluster_file_reaches_a_healthy_partition_past_two_paused_nodes(
    cluster: LocalCluster,
) -> None:
    scene = choose_scene(cluster, "cli")
    transaction_id = str(uuid.uuid4())
    with paused(cluster, scene.paused):
        balance, balance_s = walletctl(cluster, "balance", scene.payer)
        transfer, transfer_s = walletctl(cluster, "transfer", scene.payer, scene.payee, "1.00",
                                         "--currency", "USD", "--id", transaction_id)

    assert balance.returncode == 0, balance.stderr
    assert json.loads(balance.stdout)["balance"] == "100.00"
    assert transfer.returncode == 0, transfer.stderr
    assert json.loads(transfer.stdout)["status"] == "SUCCEEDED"
    assert max(balance_s, transfer_s) < FRESH_CLIENT_S_MAX, (
        f"balance {balance_s:.1f} s, transfer {transfer_s:.1f} s (process start included)")
    assert balance_of(cluster, scene.payee) == Decimal("1.00")


# --- the HTTP gateway ---------------------------------------------------------------------


@contextmanager
def gateway_process(cluster: LocalCluster, log_path: Path) -> Iterator[str]:
    """`walletctl gateway --config ...` on a free port until /healthz answers; stopped on exit."""
    port = allocate_ports(1)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "node.cli.walletctl", "gateway", "--config",
             str(cluster.config_path), "--listen", f"127.0.0.1:{port}"],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError("walletctl gateway exited:\n" + log_path.read_text())
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, "walletctl gateway to answer /healthz")
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=WAIT_S)


def test_a_fresh_gateway_serves_a_healthy_partition_past_two_paused_nodes(
    cluster: LocalCluster, tmp_path: Path,
) -> None:
    scene = choose_scene(cluster, "http")
    transaction_id = str(uuid.uuid4())
    with paused(cluster, scene.paused), \
            gateway_process(cluster, tmp_path / "gateway.log") as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as http:
        balance, balance_s = timed(
            lambda: http.get(f"/v1/wallet/accounts/{scene.payer}/balance"))
        transfer, transfer_s = timed(lambda: http.post("/v1/wallet/balance_transfer", json={
            "from_account": scene.payer, "to_account": scene.payee, "amount": "1.00",
            "currency": "USD", "transaction_id": transaction_id}))
        readiness: list[httpx.Response] = []

        def ready() -> bool:
            readiness.append(http.get("/readyz"))
            return readiness[-1].status_code == 200

        wait_until(ready, "/readyz to answer 200", timeout_s=READY_S_MAX, period_s=0.5)

    assert balance.status_code == 200, balance.text
    assert balance.json()["balance"] == "100.00"
    assert transfer.status_code == 200, transfer.text
    assert transfer.json()["status"] == "success"
    assert transfer.json()["transaction_id"] == transaction_id
    assert max(balance_s, transfer_s) < FRESH_CLIENT_S_MAX, (
        f"balance {balance_s:.1f} s, transfer {transfer_s:.1f} s")
    assert balance_of(cluster, scene.payee) == Decimal("1.00")


# --- a transfer in flight -------------------------------------------------------------------


def test_a_transfer_whose_node_is_paused_in_flight_is_applied_once_through_another_node(
    cluster: LocalCluster,
) -> None:
    scene = choose_scene(cluster, "flight")
    victim = scene.paused[1]
    credentials = node_client_credentials(cluster.config)
    transaction_id = str(uuid.uuid4())
    # Routing off: the transfer goes to the victim first, on a connection already up.
    with WalletClient(addresses(cluster, first=victim), learn_routes=False,
                      token=credentials.wallet_token) as wallet:
        assert wallet.balance(scene.payer).balance == "100.00"  # answered by the victim
        with paused(cluster, scene.paused):
            # The request reaches the paused victim's socket and is never answered there.
            sent, transfer_s = timed(lambda: wallet.transfer(
                scene.payer, scene.payee, "1.00", "USD", transaction_id=transaction_id))
        # Resumed, the victim finds the old request in its socket: at most a duplicate.
        wait_until(lambda: converged(cluster), "the resumed nodes to catch up")

    assert sent.status is TransferStatus.SUCCEEDED and sent.transaction_id == transaction_id
    assert transfer_s < IN_FLIGHT_S_MAX, f"transfer took {transfer_s:.1f} s"
    record = call_until_done(cluster, "GetTransfer", pb.GetTransferRequest(
        from_account=scene.payer, transaction_id=transaction_id))
    assert record.status == pb.SUCCEEDED  # type: ignore[attr-defined]
    assert balance_of(cluster, scene.payer) == Decimal("99.00")
    assert balance_of(cluster, scene.payee) == Decimal("1.00")


def test_readiness_gives_cluster_status_longer_than_a_node_waits_for_paused_peers() -> None:
    from node.gateway import app
    from node.services import admin_service

    assert app.READY_TIMEOUT_S > admin_service.PEER_STATUS_TIMEOUT_S + 1.0
    assert app.READY_RETRY_DEADLINE_S >= app.READY_TIMEOUT_S + 1.0, (
        "a silent first target (1 s health check) and one ClusterStatus must fit")
