"""Raft ports under hostile clients, and entries big enough to be split (real processes)."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.routing import partition_of
from node.services.wallet_service import TRANSFERS_PER_BATCH_MAX
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    LocalCluster,
    call_until_done,
    converged,
    running_cluster,
    wait_until,
)

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2

ATTACK_S = 5.0
"""How long the hostile clients stream into every Raft port."""
WRITE_GAP_S_MAX = 2.5
"""Longest time any partition may go without an acknowledged transfer during the attack."""
CLOSE_S_MAX = 2.0
"""How soon a node must close a connection that announced a 2 GiB frame."""
STREAM_CHUNK_BYTES = 64 * 1024

REASSEMBLY_ERRORS = ("pickle data was truncated", "Wrong transmission type",
                     "can't concat", "UnpicklingError", "failed _onTick", "tick failed")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path, nodes=3, partitions=PARTITIONS) as running:
        yield running


def long_accounts_on(partition: int, count: int, prefix: str) -> list[str]:
    """Account ids of the longest allowed length (64), all on `partition`."""
    found = []
    for i in range(10_000):
        name = f"{prefix}-{i}-".ljust(64, "x")
        if partition_of(name, PARTITIONS) == partition:
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError("not enough account ids")


def test_batches_of_the_largest_size_replicate_whole_to_every_replica(
    cluster: LocalCluster,
) -> None:
    accounts = long_accounts_on(0, 8, "big")
    for account in accounts:
        call_until_done(cluster, "CreateAccount", pb.CreateAccountRequest(
            account_id=account, currency="USD", request_id=str(uuid.uuid4())))
        call_until_done(cluster, "Deposit", pb.DepositRequest(
            account_id=account, amount="100000000.00", currency="USD",
            transaction_id=str(uuid.uuid4())))
    for batch in range(6):
        transfers = [pb.TransferRequest(
            from_account=accounts[i % len(accounts)],
            to_account=accounts[(i + 1 + batch) % len(accounts)],
            amount=f"{1 + i % 997}.{i % 100:02d}", currency="USD",
            transaction_id=str(uuid.uuid4())) for i in range(TRANSFERS_PER_BATCH_MAX)]
        answer = call_until_done(cluster, "TransferBatch",
                                 pb.TransferBatchRequest(transfers=transfers))
        assert answer.succeeded == TRANSFERS_PER_BATCH_MAX  # type: ignore[attr-defined]
    wait_until(lambda: converged(cluster), "every replica to apply the same entries")
    for node in cluster.config.nodes:
        log = cluster.log(node.id)
        for error in REASSEMBLY_ERRORS:
            assert error not in log, f"{node.id}: {error}"


# -- hostile clients on the Raft ports -------------------------------------------------------


@dataclass
class HostileClient:
    """Opens a connection to one Raft port, announces a 2 GiB frame and streams zeros until
    the node closes it; then again, until the attack ends. No secret involved."""

    address: tuple[str, int]
    opened: int = 0
    closed_by_server: list[float] = field(default_factory=list)
    """Seconds from the length prefix to the node closing the connection, per connection."""
    still_open_at_end: int = 0
    """Connections the node had not closed CLOSE_S_MAX after their length prefix (or at
    the attack's end, whichever is later)."""

    def run(self, until: float) -> None:
        chunk = bytes(STREAM_CHUNK_BYTES)
        while time.monotonic() < until:
            try:
                sock = socket.create_connection(self.address, timeout=1.0)
            except OSError:
                time.sleep(0.1)
                continue
            self.opened += 1
            started = time.monotonic()
            try:
                sock.sendall(struct.pack("i", 2**31 - 1))
                # Past the attack's end too: each connection gets its full CLOSE_S_MAX.
                while time.monotonic() < max(until, started + CLOSE_S_MAX):
                    sock.sendall(chunk)
                self.still_open_at_end += 1
            except TimeoutError:
                self.still_open_at_end += 1  # blocked: the node neither reads nor closes
            except OSError:  # reset or broken pipe: the node closed it
                self.closed_by_server.append(time.monotonic() - started)
                time.sleep(0.1)
            finally:
                sock.close()


class Writer:
    """Transfers of 0.01 on one partition, one after the other; records when each succeeds."""

    def __init__(self, cluster: LocalCluster, payer: str, payee: str) -> None:
        self.cluster, self.payer, self.payee = cluster, payer, payee
        self.succeeded_at: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = call_until_done(self.cluster, "Transfer", pb.TransferRequest(
                    from_account=self.payer, to_account=self.payee, amount="0.01",
                    currency="USD", transaction_id=str(uuid.uuid4())), timeout_s=30)
            except Exception as exc:  # reported by the test
                self.failures.append(repr(exc))
                continue
            if answer.status == pb.SUCCEEDED:  # type: ignore[attr-defined]
                self.succeeded_at.append(time.monotonic())
            else:
                self.failures.append(str(answer))

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def longest_gap_s(self, start: float, end: float) -> float:
        times = [start] + [t for t in self.succeeded_at if start < t < end] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


def dropped_oversize(cluster: LocalCluster, node_id: str) -> float:
    port = cluster.config.node(node_id).metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "raftwallet_raft_connections_dropped_oversize_total")


def leaders_and_terms(cluster: LocalCluster) -> list[tuple[str, int]]:
    status = cluster.wait_for_leaders()
    return [(p.leader_node_id, p.term) for p in sorted(status.partitions,
                                                       key=lambda p: p.partition)]


def test_hostile_clients_streaming_into_every_raft_port_neither_stall_writes_nor_move_leaders(
    cluster: LocalCluster,
) -> None:
    writers = []
    for partition in range(PARTITIONS):
        payer, payee = long_accounts_on(partition, 2, f"w{partition}")
        for account in (payer, payee):
            call_until_done(cluster, "CreateAccount", pb.CreateAccountRequest(
                account_id=account, currency="USD", request_id=str(uuid.uuid4())))
        call_until_done(cluster, "Deposit", pb.DepositRequest(
            account_id=payer, amount="1000000.00", currency="USD",
            transaction_id=str(uuid.uuid4())))
        writers.append(Writer(cluster, payer, payee))
    ports = [(node.host, node.raft_port_base + group) for node in cluster.config.nodes
             for group in range(PARTITIONS + 1)]  # the partitions and the metadata group
    # Leaders first move to their preferred nodes on their own: not what is measured here.
    preferred = [cluster.config.replicas_of(p)[0] for p in range(PARTITIONS)]
    wait_until(lambda: [leader for leader, _ in leaders_and_terms(cluster)] == preferred,
               "every partition to be led by its preferred node")
    before = leaders_and_terms(cluster)
    for writer in writers:
        writer.__enter__()
    try:
        wait_until(lambda: all(len(w.succeeded_at) >= 5 for w in writers), "writes to flow")
        clients = [HostileClient(port) for port in ports]
        start = time.monotonic()
        until = start + ATTACK_S
        threads = [threading.Thread(target=c.run, args=(until,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=ATTACK_S + 30)
        end = time.monotonic()
    finally:
        for writer in writers:
            writer.__exit__()
    for client in clients:
        assert client.opened >= 1, client
        assert client.still_open_at_end == 0, f"{client.address}: never closed by the node"
        assert max(client.closed_by_server) <= CLOSE_S_MAX, client
    for partition, writer in enumerate(writers):
        assert writer.failures == [], writer.failures[:3]
        gap_s = writer.longest_gap_s(start, end)
        assert gap_s <= WRITE_GAP_S_MAX, f"partition {partition}: no write for {gap_s:.1f} s"
    assert leaders_and_terms(cluster) == before
    for node in cluster.config.nodes:
        assert "frame length over the bound" in cluster.log(node.id)
        assert dropped_oversize(cluster, node.id) >= 1
