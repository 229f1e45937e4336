"""Real node processes on 127.0.0.1 for integration tests.

Every process a test starts is stopped by the test (the fixture kills whatever
is left, even when the test fails). Waits are on conditions, each bounded.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import grpc

from client.auth import open_channel
from node.cli.launcher import cluster_status, start_node
from node.config import ClusterConfig, dump_cluster_config, local_cluster_config
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}

WAIT_S = 60.0
"""Upper bound of any wait in these tests: generous for a loaded 2-core machine."""

_handed_out: set[int] = set()


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


PORTS_FIRST: Final = 20_000
PORTS_END: Final = 32_768
"""Ports handed out to test servers: below Linux's default ephemeral range (32768-60999),
so that no client connection's local port can take one between its check and its bind."""


def worker_port_range() -> range:
    """This test process's share of the ports: under pytest-xdist (`make test` runs two
    workers) each worker has its own slice, so two workers never pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    share = (PORTS_END - PORTS_FIRST) // max(workers, 1)
    first = PORTS_FIRST + index * share
    return range(first, first + share)


def allocate_ports(count: int) -> int:
    """First of `count` consecutive free ports on 127.0.0.1 (not handed out before)."""
    rng = random.Random()
    ports = worker_port_range()
    for _ in range(500):
        base = rng.randrange(ports.start, ports.stop - count)
        block = range(base, base + count)
        if any(p in _handed_out for p in block):
            continue
        if all(bindable(p) for p in block):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S,
               period_s: float = 0.1) -> None:
    """Poll `condition` until it holds, at most `timeout_s`.

    A call in `condition` answered with a retryable gRPC status (a node still starting,
    busy or going away) counts as "not yet", like False: the last such answer is named
    if the wait times out. Any other error fails the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            last_error = f" (last answer: {exc.code().name} {exc.details()})"
        time.sleep(period_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{last_error}")


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3, partitions: int = 2,
                 env: dict[str, str] | None = None, config: ClusterConfig | None = None) -> None:
        """`config` replaces the generated loopback cluster (e.g. one with TLS or tokens)."""
        self.root = root
        self.config: ClusterConfig = config if config is not None else local_cluster_config(
            "test", nodes, partitions, allocate_ports, replication_factor=min(3, nodes))
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(dump_cluster_config(self.config), encoding="utf-8")
        self.env = dict(os.environ, **(env or {}))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        """Nodes stopped on purpose: their exit is not a failure."""
        self._channels: dict[str, grpc.Channel] = {}

    def node_dir(self, node_id: str) -> Path:
        return self.root / "data" / node_id

    def start(self, node_id: str, env: dict[str, str] | None = None,
              bootstrap: bool = False, extra_args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        process = start_node(self.config_path, node_id, self.node_dir(node_id), bootstrap,
                             env=dict(self.env, **(env or {})), extra_args=extra_args)
        self.killed.discard(node_id)
        self.processes[node_id] = process
        return process

    def start_all(self, bootstrap: bool = True) -> None:
        """Start every node; return once each partition has a leader AND every node serves
        (two of three nodes elect a leader: a test's next call may go to the third)."""
        for node in self.config.nodes:
            self.start(node.id, bootstrap=bootstrap)
        self.wait_for_leaders()
        self.wait_serving(*(n.id for n in self.config.nodes))

    def wait_serving(self, *node_ids: str, timeout_s: float = WAIT_S) -> None:
        """Return once each of `node_ids` answers and knows the leader of every partition
        it hosts. A node just (re)started is not serving yet although the others may have
        a leader for everything: a test that uses a node it started waits for this first."""
        def serving() -> bool:
            for node_id in node_ids:
                process = self.processes[node_id]
                if process.poll() is not None:
                    raise AssertionError(f"node {node_id} exited with {process.returncode}:\n"
                                         + self.log(node_id)[-3000:])
                view = self.admin(node_id).ClusterStatus(
                    pb.ClusterStatusRequest(local_only=True), timeout=5)
                if not all(p.leader_node_id for p in view.partitions):
                    return False
            return True

        wait_until(serving, f"{', '.join(node_ids)} to serve", timeout_s)

    def log(self, node_id: str) -> str:
        path = self.root / "data" / f"{node_id}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def status(self) -> pb.ClusterStatusResponse | None:
        return cluster_status(self.config, timeout_s=2.0)

    def wait_for_leaders(self, timeout_s: float = WAIT_S) -> pb.ClusterStatusResponse:
        found: list[pb.ClusterStatusResponse] = []  # the status that showed every leader

        def all_led() -> bool:
            for node_id, process in self.processes.items():
                if process.poll() is not None and node_id not in self.killed:
                    raise AssertionError(f"node {node_id} exited with {process.returncode}:\n"
                                         + self.log(node_id)[-3000:])
            status = self.status()
            if status is None or len(status.partitions) != self.config.partition_count:
                return False
            if all(p.leader_node_id for p in status.partitions):
                found.append(status)
                return True
            return False

        wait_until(all_led, "every partition to have a leader", timeout_s)
        return found[-1]

    def leader_of(self, partition: int) -> str:
        return self.wait_for_leaders().partitions[partition].leader_node_id

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        self.killed.add(node_id)
        process = self.processes[node_id]
        if process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=WAIT_S)

    def stop_all(self) -> None:
        for node_id in list(self.processes):
            process = self.processes[node_id]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=WAIT_S)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def channel(self, node_id: str) -> grpc.Channel:
        if node_id not in self._channels:
            # With the cluster's tokens (and TLS), like an operator holding the cluster file.
            self._channels[node_id] = open_channel(self.config.node(node_id).grpc_address,
                                                   node_client_credentials(self.config))
        return self._channels[node_id]

    def wallet(self, node_id: str = "n1") -> wallet_pb2_grpc.WalletServiceStub:
        return wallet_pb2_grpc.WalletServiceStub(self.channel(node_id))

    def admin(self, node_id: str = "n1") -> wallet_pb2_grpc.AdminServiceStub:
        return wallet_pb2_grpc.AdminServiceStub(self.channel(node_id))

    def local_views(self) -> dict[str, pb.ClusterStatusResponse]:
        """Each running node's own view of its replicas."""
        views = {}
        for node_id, process in self.processes.items():
            if process.poll() is None:
                try:
                    views[node_id] = self.admin(node_id).ClusterStatus(
                        pb.ClusterStatusRequest(local_only=True), timeout=5)
                except grpc.RpcError:
                    continue  # not serving yet (starting) or going away
        return views


@contextmanager
def running_cluster(root: Path, nodes: int = 3, partitions: int = 2,
                    env: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, nodes, partitions, env)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


class Abandoned(Exception):
    """The caller gave up on a request whose outcome it never learnt."""


def call_until_done(cluster: LocalCluster, method: str, request: object,
                    timeout_s: float = WAIT_S, stop: threading.Event | None = None) -> object:
    """A client that retries the SAME request over every node until it gets an answer."""
    deadline = time.monotonic() + timeout_s
    nodes = [n.id for n in cluster.config.nodes]
    attempt = 0
    while True:
        if stop is not None and stop.is_set():
            raise Abandoned(method)
        node_id = nodes[attempt % len(nodes)]
        attempt += 1
        if cluster.processes[node_id].poll() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method}: no live node answered")
            time.sleep(0.01)
            continue
        try:
            return getattr(cluster.wallet(node_id), method)(request, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def converged(cluster: LocalCluster) -> bool:
    views = cluster.local_views()
    if len(views) != len(cluster.config.nodes):
        return False
    for partition in range(cluster.config.partition_count):
        seen = {(p.applied_position, p.state_hash) for view in views.values()
                for p in view.partitions if p.partition == partition}
        if len(seen) != 1:
            return False
    return True
