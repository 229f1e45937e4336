"""Prometheus metrics: what each node's /metrics says after known work.

The cluster tests run a real 3-node cluster (every node hosts every partition,
so a transfer is counted by the node that was asked), do a known set of
transfers and scrape every node. The unit tests check the RPC interceptor, the
transfer counter and the HTTP server without a cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ledger.results import Code
from ledger.routing import partition_of
from node.config import local_cluster_config
from node.metrics import NodeMetrics, RpcMetricsInterceptor, TransferOutcomes
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    WAIT_S,
    LocalCluster,
    allocate_ports,
    running_cluster,
    wait_until,
)

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2
SCRAPE_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0

Samples = list[Sample]
REPO = Path(__file__).resolve().parent.parent


def account_on(partition: int, prefix: str) -> str:
    i = 0
    while partition_of(f"{prefix}-{i}", PARTITIONS) != partition:
        i += 1
    return f"{prefix}-{i}"


def new_id() -> str:
    return str(uuid.uuid4())


def call(method: Callable[..., Any], request: object) -> Any:
    """One call, repeated only while the node answers UNAVAILABLE (no leader yet).

    An UNAVAILABLE answer is counted by the node as an error, never as an
    outcome, so retrying it keeps the outcome counters exact.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def scrape(cluster: LocalCluster, node_id: str) -> Samples:
    port = cluster.config.node(node_id).metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode("utf-8")
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("metrics"), nodes=3, partitions=PARTITIONS,
                         env={"RAFTWALLET_UNSAFE_NO_FSYNC": "0"}) as running:
        yield running


@pytest.fixture(scope="module")
def scraped(cluster: LocalCluster) -> dict[str, Samples]:
    """Every node's samples after a known workload, once every saga has finished.

    Workload (partition 0: alice, bob; partition 1: carol; no account "ghost"):
    intra transfers: 1 unary and 1 in a batch succeed, 1 fails INSUFFICIENT_FUNDS;
    cross transfers: 1 unary and 1 in a batch succeed, 1 to a missing account is
    compensated and fails ACCOUNT_NOT_FOUND.
    """
    alice, bob = account_on(0, "alice"), account_on(0, "bob")
    carol, ghost = account_on(1, "carol"), account_on(1, "ghost")
    wallet = cluster.wallet("n1")
    for account in (alice, bob, carol):
        call(wallet.CreateAccount, pb.CreateAccountRequest(account_id=account, currency="USD",
                                                           request_id=new_id()))
    call(wallet.Deposit, pb.DepositRequest(account_id=alice, amount="100.00", currency="USD",
                                           transaction_id=new_id()))

    def transfer(to_account: str, amount: str) -> pb.TransferRequest:
        return pb.TransferRequest(from_account=alice, to_account=to_account, amount=amount,
                                  currency="USD", transaction_id=new_id())

    assert call(wallet.Transfer, transfer(bob, "10.00")).status == pb.SUCCEEDED
    assert call(wallet.Transfer, transfer(carol, "5.00")).status == pb.SUCCEEDED
    batch = call(wallet.TransferBatch, pb.TransferBatchRequest(
        transfers=[transfer(bob, "1.00"), transfer(carol, "1.00")]))
    assert list(batch.statuses) == [pb.SUCCEEDED, pb.SUCCEEDED]
    for to_account, amount, code in ((bob, "1000.00", grpc.StatusCode.FAILED_PRECONDITION),
                                     (ghost, "2.00", None)):
        with pytest.raises(grpc.RpcError) as refused:
            call(wallet.Transfer, transfer(to_account, amount))
        assert code is None or refused.value.code() == code
    found: dict[str, dict[str, Samples]] = {}

    def sagas_done() -> bool:
        views = {node.id: scrape(cluster, node.id) for node in cluster.config.nodes}
        if all(total(samples, "raftwallet_saga_transfers_in_flight") == 0
               for samples in views.values()):
            found["views"] = views
            return True
        return False

    wait_until(sagas_done, "every saga to settle or compensate")
    return found["views"]


def summed(scraped: dict[str, Samples], name: str, **labels: str) -> float:
    return sum(total(samples, name, **labels) for samples in scraped.values())


# -- the cluster -------------------------------------------------------------------------------


def test_transfers_are_counted_by_outcome_reason_and_kind(
        scraped: dict[str, Samples]) -> None:
    name = "raftwallet_transfers_total"
    assert summed(scraped, name, outcome="succeeded", kind="intra") == 2
    assert summed(scraped, name, outcome="succeeded", kind="cross") == 2
    assert summed(scraped, name, outcome="failed", reason="INSUFFICIENT_FUNDS",
                  kind="intra") == 1
    assert summed(scraped, name, outcome="failed", reason="ACCOUNT_NOT_FOUND",
                  kind="cross") == 1
    assert summed(scraped, name, outcome="pending") == 0


def test_a_refused_credit_counts_as_a_compensation(scraped: dict[str, Samples]) -> None:
    assert summed(scraped, "raftwallet_saga_compensations_total") >= 1
    assert summed(scraped, "raftwallet_saga_credits_sent_total") >= 3


def test_money_in_flight_is_zero_once_sagas_finish(scraped: dict[str, Samples]) -> None:
    assert summed(scraped, "raftwallet_saga_money_in_flight_minor", currency="USD") == 0


def test_each_partition_has_exactly_one_leader_across_the_nodes(cluster: LocalCluster) -> None:
    # Leadership may move between two scrapes (to the preferred node): wait for a
    # consistent picture instead of trusting one round.
    def one_leader_each() -> bool:
        views = [scrape(cluster, node.id) for node in cluster.config.nodes]
        return all(sum(total(samples, "raftwallet_raft_is_leader", partition=str(p))
                       for samples in views) == 1 for p in range(PARTITIONS))

    wait_until(one_leader_each, "exactly one raft_is_leader=1 per partition")


def test_every_node_reports_raft_state_of_every_partition(scraped: dict[str, Samples]) -> None:
    for node_id, samples in scraped.items():
        for partition in map(str, range(PARTITIONS)):
            assert total(samples, "raftwallet_raft_term", partition=partition) >= 1, node_id
            assert total(samples, "raftwallet_raft_commit_index", partition=partition) > 0
            assert total(samples, "raftwallet_ledger_applied_position", partition=partition) > 0
            assert total(samples, "raftwallet_journal_size_bytes", partition=partition) > 0


def test_rpc_latency_is_observed_per_method_and_status(scraped: dict[str, Samples]) -> None:
    name = "raftwallet_grpc_server_handling_seconds_count"
    assert summed(scraped, name, grpc_method="Transfer", grpc_code="OK") == 2
    assert summed(scraped, name, grpc_method="Transfer", grpc_code="FAILED_PRECONDITION") >= 1
    assert summed(scraped, name, grpc_method="TransferBatch", grpc_code="OK") == 1
    assert summed(scraped, "raftwallet_grpc_server_handling_seconds_sum",
                  grpc_method="Transfer") > 0


def test_group_commit_batch_sizes_are_observed(scraped: dict[str, Samples]) -> None:
    entries = summed(scraped, "raftwallet_proposer_entry_commands_count")
    commands = summed(scraped, "raftwallet_proposer_entry_commands_sum")
    assert entries > 0
    assert commands >= entries  # every entry holds at least one command
    assert summed(scraped, "raftwallet_proposer_entries_total") > 0


def test_every_node_observes_its_journal_fsyncs(scraped: dict[str, Samples]) -> None:
    for node_id, samples in scraped.items():
        assert total(samples, "raftwallet_journal_fsync_seconds_count") > 0, node_id


def test_process_metrics_and_node_identity_are_exposed(
        cluster: LocalCluster, scraped: dict[str, Samples]) -> None:
    for node_id, samples in scraped.items():
        assert "metrics serving" in cluster.log(node_id)
        assert total(samples, "raftwallet_node_info", node=node_id, cluster="test") == 1
        assert total(samples, "process_cpu_seconds_total") > 0
        assert any(s.name == "python_gc_objects_collected_total" for s in samples)


def test_the_sample_dashboard_queries_only_metrics_the_nodes_export(
        scraped: dict[str, Samples]) -> None:
    exported = {s.name for samples in scraped.values() for s in samples}
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text("utf-8"))
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"raftwallet_\w+", target["expr"])}
    assert queried, "the dashboard queries RaftWallet metrics"
    assert queried <= exported, sorted(queried - exported)


def test_every_exported_metric_is_documented(scraped: dict[str, Samples]) -> None:
    documented = (REPO / "docs" / "cluster.md").read_text("utf-8")
    exported = {re.sub(r"_(total|bucket|count|sum|created)$", "", s.name)
                for samples in scraped.values() for s in samples
                if s.name.startswith("raftwallet_")}
    assert sorted(name for name in exported if f"`{name}" not in documented) == []


def test_a_node_without_metrics_port_serves_no_metrics_and_still_works(
        tmp_path: Path) -> None:
    generated = local_cluster_config("unmetered", 1, 1, allocate_ports, replication_factor=1)
    config = dataclasses.replace(
        generated, nodes=(dataclasses.replace(generated.nodes[0], metrics_port=None),))
    cluster = LocalCluster(tmp_path, config=config)
    try:
        cluster.start_all()
        wallet = cluster.wallet("n1")
        call(wallet.CreateAccount, pb.CreateAccountRequest(account_id="solo", currency="USD",
                                                           request_id=new_id()))
        call(wallet.Deposit, pb.DepositRequest(account_id="solo", amount="1.00",
                                               currency="USD", transaction_id=new_id()))
        log = cluster.log("n1")
        assert "node serving" in log
        assert "metrics serving" not in log
    finally:
        cluster.stop_all()


# -- without a cluster -----------------------------------------------------------------------


def test_interceptor_measures_each_call_with_its_final_status_code() -> None:
    registry = CollectorRegistry()

    async def exercise() -> None:
        server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(registry)])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await servicer.set("known", health_pb2.HealthCheckResponse.SERVING)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(2):
                    await stub.Check(health_pb2.HealthCheckRequest(service="known"), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.Check(health_pb2.HealthCheckRequest(service="unknown"),
                                     timeout=10)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await server.stop(None)

    asyncio.run(exercise())
    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    count = "raftwallet_grpc_server_handling_seconds_count"
    assert registry.get_sample_value(count, {**labels, "grpc_code": "OK"}) == 2
    assert registry.get_sample_value(count, {**labels, "grpc_code": "NOT_FOUND"}) == 1


def test_transfer_outcomes_tally_a_batch_by_code_reason_and_kind() -> None:
    registry = CollectorRegistry()
    outcomes = TransferOutcomes(registry)
    outcomes.record_many([(Code.OK, False), (Code.OK, False), (Code.OK, True),
                          (Code.INSUFFICIENT_FUNDS, True), ("NO_LEADER", False)])

    def value(outcome: str, reason: str, kind: str) -> float | None:
        return registry.get_sample_value("raftwallet_transfers_total",
                                         {"outcome": outcome, "reason": reason, "kind": kind})

    assert value("succeeded", "", "intra") == 2
    assert value("succeeded", "", "cross") == 1
    assert value("failed", "INSUFFICIENT_FUNDS", "cross") == 1
    assert value("error", "NO_LEADER", "intra") == 1
    assert value("pending", "", "cross") == 0  # bound up front, so rate() works at once


def test_two_nodes_in_one_process_keep_separate_registries_and_servers() -> None:
    first, second = NodeMetrics("n1", "test"), NodeMetrics("n2", "test")
    first.transfers.record(Code.OK, cross=False)
    server = first.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",
                                    timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode("utf-8")
    finally:
        server.close()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert total(samples, "raftwallet_node_info", node="n1") == 1
    assert total(samples, "raftwallet_node_info", node="n2") == 0
    assert total(samples, "raftwallet_transfers_total", outcome="succeeded") == 1
    assert second.registry.get_sample_value(
        "raftwallet_transfers_total",
        {"outcome": "succeeded", "reason": "", "kind": "intra"}) == 0
