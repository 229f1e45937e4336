"""The chaos network injects real faults between real processes, and cleans up after itself.

Each node is a tiny TCP echo server (a real process, started through
`node_command`) on the port its Raft replicas would bind; a probe connects the
way a peer's Raft would, to the node's advertised (proxied) Raft port, and
checks that its bytes come back. In proxy mode the probe opens with
pysyncobj's handshake (encrypted with the cluster secret), as a real node
does, so the proxy knows who is calling. Two tests run real nodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client.auth import open_channel
from node.config import ClusterConfig, NodeConfig, dump_cluster_config
from node.raft.cipher import cipher_for_secret
from node.raft.wire import encode_payload
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc
from tests.chaos.network import (
    STATE_DIR,
    ChaosNetwork,
    NetnsNetwork,
    ProxyNetwork,
    cleanup_stale_networks,
    netns_available,
    open_network,
)
from tests.chaos.tcp_proxy import socket_in_netns
from tests.cluster_harness import WAIT_S, wait_until

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

REPO = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2", "n3")
KINDS = ["proxy", *(["netns"] if netns_available() else [])]
CUT_TIMEOUT_S = 0.5
"""A probe that gets no echo within this long counts the link as cut."""
HEALTHY_TIMEOUT_S = 5.0
SLOW_DELAY_MS = 150

ECHO_SERVER = """
import socket, sys, threading
def serve(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
for port in ports:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


class EchoCluster:
    """One echo server per node, on the node's real (bind) Raft ports."""

    def __init__(self, net: ChaosNetwork, config: ClusterConfig) -> None:
        self.net = net
        self.config = config
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self._secret_encryptor = cipher_for_secret(config.secret) if config.secret else None

    def start(self) -> None:
        for node in self.config.nodes:
            self._start_echo(node)

    def add_node(self, node_id: str) -> NodeConfig:
        """A node added after the others (as a replacement is), with its echo server."""
        node = self.net.add_node(node_id)
        self.config = dataclasses.replace(self.config, nodes=(*self.config.nodes, node))
        self._start_echo(node)
        return node

    def _start_echo(self, node: NodeConfig) -> None:
        offset = int(self.net.node_extra_args(node.id)[1])
        ports = [str(node.raft_port_base + offset)]
        process = subprocess.Popen(
            self.net.node_command(node.id, [sys.executable, "-c", ECHO_SERVER,
                                            node.host, *ports]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes[node.id] = process
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", f"echo server {node.id}"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=WAIT_S)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()

    def _frame(self, message: object) -> bytes:
        data = encode_payload(message, self._secret_encryptor, int(time.monotonic()))
        return struct.pack("i", len(data)) + data

    def round_trip_s(self, from_node: str, to_node: str, timeout_s: float) -> float | None:
        """Seconds for a hello to `to_node`'s partition-0 Raft port and back, as
        `from_node`'s Raft would send it; None when the link is cut."""
        target = self.config.node(to_node)
        source = self.config.node(from_node)
        hello = (self._frame(os.urandom(32))
                 + self._frame((os.urandom(32), source.raft_address(0))) + b"ping")
        netns = self.net.netns_of(from_node) if isinstance(self.net, NetnsNetwork) else None
        sock = socket_in_netns(netns)
        sock.settimeout(timeout_s)
        started = time.monotonic()
        try:
            with sock:
                sock.connect((target.host, target.raft_port_base))
                sock.sendall(hello)
                echoed = b""
                while len(echoed) < len(hello):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    echoed += chunk
        except OSError:  # refused, reset, unreachable, timed out
            return None
        assert echoed == hello
        return time.monotonic() - started

    def reaches(self, from_node: str, to_node: str) -> bool:
        return self.round_trip_s(from_node, to_node, HEALTHY_TIMEOUT_S) is not None

    def is_cut(self, from_node: str, to_node: str) -> bool:
        return self.round_trip_s(from_node, to_node, CUT_TIMEOUT_S) is None


@pytest.fixture(params=KINDS)
def echo_cluster(request: pytest.FixtureRequest) -> Iterator[EchoCluster]:
    net = open_network(request.param)
    cluster: EchoCluster | None = None
    try:
        config = net.build_config(NODES, 1, "chaos-net-test")
        cluster = EchoCluster(net, config)
        cluster.start()
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        net.teardown()


def pairs() -> list[tuple[str, str]]:
    return [(a, b) for a in NODES for b in NODES if a != b]


def test_every_node_reaches_every_other_on_a_healthy_network(echo_cluster: EchoCluster) -> None:
    assert all(echo_cluster.reaches(a, b) for a, b in pairs())


def test_isolate_cuts_the_node_both_ways_and_heal_restores(echo_cluster: EchoCluster) -> None:
    echo_cluster.net.isolate("n1")
    assert echo_cluster.is_cut("n1", "n2") and echo_cluster.is_cut("n3", "n1")
    assert echo_cluster.reaches("n2", "n3") and echo_cluster.reaches("n3", "n2")
    echo_cluster.net.heal()
    wait_until(lambda: all(echo_cluster.reaches(a, b) for a, b in pairs()),
               "every link to come back after heal")


def test_split_cuts_across_the_sides_but_not_within(echo_cluster: EchoCluster) -> None:
    echo_cluster.net.split(["n1"], ["n2", "n3"])
    assert echo_cluster.is_cut("n1", "n2") and echo_cluster.is_cut("n3", "n1")
    assert echo_cluster.reaches("n2", "n3") and echo_cluster.reaches("n3", "n2")
    echo_cluster.net.heal()
    wait_until(lambda: all(echo_cluster.reaches(a, b) for a, b in pairs()),
               "every link to come back after heal")


def test_slow_delays_each_direction_of_the_nodes_links(echo_cluster: EchoCluster) -> None:
    echo_cluster.net.slow("n2", SLOW_DELAY_MS, 0.0)
    round_trip_s = echo_cluster.round_trip_s("n1", "n2", HEALTHY_TIMEOUT_S)
    assert round_trip_s is not None and round_trip_s >= 2 * SLOW_DELAY_MS / 1000
    echo_cluster.net.heal()
    fast_s = echo_cluster.round_trip_s("n1", "n2", HEALTHY_TIMEOUT_S)
    assert fast_s is not None and fast_s < SLOW_DELAY_MS / 1000


def test_a_drop_rate_of_one_loses_every_connection_of_the_node(
        echo_cluster: EchoCluster) -> None:
    echo_cluster.net.slow("n3", 0, 1.0)
    assert echo_cluster.is_cut("n1", "n3") and echo_cluster.is_cut("n3", "n2")
    assert echo_cluster.reaches("n1", "n2")


def test_an_added_node_reaches_and_is_reached_by_every_node(
        echo_cluster: EchoCluster) -> None:
    echo_cluster.add_node("n4")
    assert all(echo_cluster.reaches("n4", other) and echo_cluster.reaches(other, "n4")
               for other in NODES)


def test_an_added_node_can_be_isolated_split_off_and_healed(
        echo_cluster: EchoCluster) -> None:
    echo_cluster.add_node("n4")
    echo_cluster.net.isolate("n4")
    assert echo_cluster.is_cut("n4", "n1") and echo_cluster.is_cut("n2", "n4")
    echo_cluster.net.heal()
    echo_cluster.net.split(["n4"], ["n1"])
    assert echo_cluster.is_cut("n4", "n1") and echo_cluster.is_cut("n1", "n4")
    assert echo_cluster.reaches("n4", "n2") and echo_cluster.reaches("n3", "n4")
    echo_cluster.net.heal()
    wait_until(lambda: echo_cluster.reaches("n1", "n4") and echo_cluster.reaches("n4", "n1"),
               "the added node's links to come back after heal")


def test_an_added_node_can_be_slowed(echo_cluster: EchoCluster) -> None:
    echo_cluster.add_node("n4")
    echo_cluster.net.slow("n4", SLOW_DELAY_MS, 0.0)
    round_trip_s = echo_cluster.round_trip_s("n1", "n4", HEALTHY_TIMEOUT_S)
    assert round_trip_s is not None and round_trip_s >= 2 * SLOW_DELAY_MS / 1000


def test_a_node_id_cannot_be_added_twice(echo_cluster: EchoCluster) -> None:
    with pytest.raises(ValueError, match="already"):
        echo_cluster.net.add_node("n2")


def test_split_refuses_overlapping_sides(echo_cluster: EchoCluster) -> None:
    with pytest.raises(ValueError, match="both sides"):
        echo_cluster.net.split(["n1", "n2"], ["n2", "n3"])


def _netns_names() -> set[str]:
    output = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    return {line.split()[0] for line in output.splitlines() if line.strip()}


def _root_links() -> set[str]:
    output = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                            check=True).stdout
    return {line.split(":")[1].strip() for line in output.splitlines()}


def _proxy_threads() -> int:
    return sum(thread.name == "chaos-tcp-proxy" for thread in threading.enumerate())


@pytest.mark.parametrize("kind", KINDS)
def test_teardown_leaves_no_namespace_link_process_or_proxy(kind: str) -> None:
    links_before = _root_links()
    proxies_before = _proxy_threads()
    net = open_network(kind)
    try:
        cluster = EchoCluster(net, net.build_config(NODES, 1, "chaos-net-test"))
        cluster.start()
        cluster.add_node("n4")  # added nodes go with the rest
    finally:
        net.teardown()
    net.teardown()  # idempotent
    try:
        assert not any(name.startswith(f"rwc{net.run_id}-") for name in _netns_names())
        assert _root_links() == links_before
        assert _proxy_threads() == proxies_before
        if kind == "netns":  # the echo servers lived in the namespaces: gone with them
            for process in cluster.processes.values():
                assert process.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        cluster.stop()


@pytest.mark.skipif(not netns_available(), reason="needs root and ip netns")
def test_cleanup_removes_the_namespaces_of_a_run_whose_owner_died() -> None:
    net = open_network("netns")
    try:
        net.build_config(NODES, 1, "chaos-net-test")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(timeout=WAIT_S)
        marker = STATE_DIR / f"{net.run_id}.pid"
        assert marker.exists()
        marker.write_text(str(dead.pid), encoding="ascii")
        removed = cleanup_stale_networks()
        assert {f"rwc{net.run_id}-{role}" for role in ("hub", "cli", *NODES)} <= set(removed)
        assert not any(name.startswith(f"rwc{net.run_id}-") for name in _netns_names())
    finally:
        net.teardown()


# --- real nodes ------------------------------------------------------------------------------

HEALTH_SCRIPT = """
import json, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
answers = {}
for address in sys.argv[1:]:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2)
            answers[address] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as error:
            answers[address] = error.code().name
print(json.dumps(answers))
"""


def leader_of_partition_0(config: ClusterConfig) -> str:
    """The node that reports leading partition 0 ("" when none does). Proxy mode only:
    the nodes' gRPC ports are reachable from this process."""
    for node in config.nodes:
        channel = open_channel(node.grpc_address, node_client_credentials(config))
        try:
            status = wallet_pb2_grpc.AdminServiceStub(channel).ClusterStatus(
                pb.ClusterStatusRequest(local_only=True), timeout=5)
        except grpc.RpcError:
            continue
        finally:
            channel.close()
        if any(p.partition == 0 and p.reporter_is_leader for p in status.partitions):
            return node.id
    return ""


class RealNodes:
    """Real `python -m node.server` processes started through the network's wrappers."""

    def __init__(self, net: ChaosNetwork, root: Path, partitions: int) -> None:
        self.net = net
        self.root = root
        self.config = net.build_config(NODES, partitions, "chaos-net-real")
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(dump_cluster_config(self.config), encoding="utf-8")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start_all(self) -> None:
        env = dict(os.environ, RAFTWALLET_UNSAFE_NO_FSYNC="1")
        for node in self.config.nodes:
            argv = [sys.executable, "-m", "node.server", "--config", str(self.config_path),
                    "--node-id", node.id, "--data-dir", str(self.root / node.id),
                    "--bootstrap", *self.net.node_extra_args(node.id)]
            with open(self.root / f"{node.id}.log", "ab") as log:
                self.processes[node.id] = subprocess.Popen(
                    self.net.node_command(node.id, argv), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, cwd=REPO, env=env, start_new_session=True)

    def health(self) -> dict[str, str]:
        """Each node's gRPC health, asked from a client process (`client_command`)."""
        for node_id, process in self.processes.items():
            log = (self.root / f"{node_id}.log").read_text(errors="replace")[-3000:]
            assert process.poll() is None, f"{node_id} exited:\n{log}"
        addresses = [node.grpc_address for node in self.config.nodes]
        result = subprocess.run(
            self.net.client_command([sys.executable, "-c", HEALTH_SCRIPT, *addresses]),
            capture_output=True, text=True, cwd=REPO, timeout=WAIT_S, check=True)
        answers: dict[str, str] = json.loads(result.stdout)
        return answers

    def all_serving(self) -> bool:
        """Every node SERVING: every partition it hosts has a leader."""
        return set(self.health().values()) == {"SERVING"}

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=WAIT_S)


@pytest.mark.skipif(not netns_available(), reason="needs root and ip netns")
def test_real_nodes_elect_leaders_through_namespaces_and_proxies(tmp_path: Path) -> None:
    net = open_network("netns")
    nodes: RealNodes | None = None
    try:
        nodes = RealNodes(net, tmp_path, partitions=2)
        nodes.start_all()
        wait_until(nodes.all_serving, "every node to serve (every partition led)",
                   period_s=0.5)
        assert isinstance(net, NetnsNetwork) and net.proxy is not None
        links = net.proxy.links()
        assert links and all(initiator in NODES for initiator, _ in links), links
    finally:
        if nodes is not None:
            nodes.stop_all()
        net.teardown()


def test_proxy_mode_identifies_real_raft_peers_and_isolate_cuts_them(tmp_path: Path) -> None:
    net = open_network("proxy")
    nodes: RealNodes | None = None
    try:
        nodes = RealNodes(net, tmp_path, partitions=1)
        nodes.start_all()
        wait_until(nodes.all_serving, "every node to serve (every partition led)",
                   period_s=0.5)
        assert isinstance(net, ProxyNetwork) and net.proxy is not None
        proxy = net.proxy
        # pysyncobj connects each pair once: 3 links among 3 nodes, each identified.
        wait_until(lambda: len([link for link in proxy.links() if link[0] in NODES]) >= 3,
                   "the Raft links of every pair")
        assert all(initiator in NODES for initiator, _ in proxy.links())
        # Isolate the LEADER: it steps down once it hears no majority (a follower cut off
        # from everyone keeps its last known leader: pysyncobj only forgets it when it
        # calls an election, which it does not do while connected to nobody).
        leaders: list[str] = []
        config = nodes.config

        def leader_known() -> bool:
            leaders[:] = [leader_of_partition_0(config)]
            return bool(leaders[0])

        wait_until(leader_known, "partition 0's leader to be known")
        leader = leaders[0]
        net.isolate(leader)
        assert not [link for link in proxy.links() if leader in link]
        # pysyncobj keeps reconnecting meanwhile: every attempt must be refused.
        isolated = nodes
        wait_until(lambda: not isolated.all_serving(), "the isolated leader to step down",
                   period_s=0.5)
        assert not [link for link in proxy.links() if leader in link]
    finally:
        if nodes is not None:
            nodes.stop_all()
        net.teardown()
