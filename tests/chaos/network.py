"""The network of the chaos suite: real partitions between real node processes.

Two kinds, one interface (`ChaosNetwork`), chosen by `open_network`:

``netns`` (Linux, root, `ip netns` usable; the default when available)
    Every node runs in its own network namespace ``rwc<run>-<node id>`` with one
    private address 10.213.X.(10+i)/24 on its ``eth0``; a veth pair joins it to a
    bridge ``br0`` inside a "hub" namespace ``rwc<run>-hub``. Clients (workload,
    checker) run in the namespace ``rwc<run>-cli`` (10.213.X.2), also on the hub.
    Nothing is added to the root namespace but the namespace names themselves:
    test addresses exist only inside the test's namespaces, so the root
    namespace cannot reach a node (run clients through `client_command`).
    Interface names live inside the namespaces, so concurrent runs never collide.

    - `isolate(n)`: the hub side of n's veth goes down. Every packet to or from n
      is lost (Raft, gRPC, clients), silently, as with a pulled cable.
    - `split(a, b)`: in every node of a, a ``blackhole`` route to each address
      of b, and the converse. This machine has neither nftables nor iptables;
      host routes give the same exact pairwise cut, any shape of split (not only
      two bridges), and leave the client namespace connected to every node, as
      real clients on the other side of a partition usually are. Packets are
      dropped at the sender; new connections fail at once, established ones stall.
    - `slow(n, ...)`: every Raft port sits behind a user-space TCP proxy
      (`tcp_proxy.FaultProxy`, a thread of the test process with its sockets
      created inside the node's namespace); the node binds its Raft ports
      `RAFT_BIND_OFFSET` higher (`node_extra_args`). A connection is slowed when
      its initiator or its target is slow; the initiator is known exactly from
      the source address. gRPC is never slowed (only Raft goes through proxies).

``proxy`` (the fallback: any machine)
    Every node on 127.0.0.1. A `FaultProxy` listens on each advertised Raft port
    and forwards to the node's real bind port (`--raft-bind-port-offset`). All
    faults (isolate, split, slow) are applied by the proxies. pysyncobj opens ONE
    connection per pair of replicas, initiated by the peer with the greater
    address string, and the proxy in front of X sees only connections initiated
    towards X. Source addresses are all 127.0.0.1, so the proxy identifies the
    initiator from the handshake instead: with a cluster secret, the initiator's
    second frame is encrypted (node.raft.cipher) ``(random key, own Raft address)``; the proxy
    derives the key from the secret the test generated, decrypts that frame and
    looks up the node (nothing the initiator sends after its random key reaches
    the target before that). A connection whose initiator cannot be identified
    is cut whenever any cut is in force. Raft isolation and splits are therefore
    EXACT in proxy mode (tested against real nodes). gRPC is NOT faulted in
    proxy mode: clients and peers still reach an isolated node's gRPC port (its
    writes fail, as it has no Raft quorum, but reads marked STALE and saga calls
    to it go through).

When a cut comes, established connections behave as on a real network in netns
mode (they stall; pysyncobj's connection timeout notices), while in proxy mode
the proxy aborts the connections that cross the cut at once (RST both ways) and
refuses new ones.

In netns mode the cluster file gets a `wallet_token` (the node refuses plaintext
WalletService off loopback without one): clients must send it.

Lifetime: `open_network` creates everything; `teardown` removes every namespace,
veth, route and proxy, kills any process still inside the run's namespaces (by
pid), and is idempotent. Use `with open_network() as net:`. A crashed run leaves
a marker (`STATE_DIR/<run id>.pid` naming its owner process);
`cleanup_stale_networks()` removes the namespaces of runs whose owner is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

from node.config import (
    ClusterConfig,
    NodeConfig,
    PortAllocator,
    dump_cluster_config,
    local_cluster_config,
    parse_cluster_config,
)
from tests.chaos.tcp_proxy import NETNS_DIR, FaultPolicy, FaultProxy, Initiators, SlowLink
from tests.cluster_harness import allocate_ports

__all__ = [
    "NETNS_PREFIX",
    "RAFT_BIND_OFFSET",
    "ChaosNetwork",
    "NetnsNetwork",
    "NetworkCommandError",
    "ProxyNetwork",
    "cleanup_stale_networks",
    "netns_available",
    "open_network",
]

NETNS_PREFIX = "rwc"
"""Every namespace of a chaos run is named ``rwc<run id>-<role>``."""

RAFT_BIND_OFFSET = 1000
"""netns mode: a node binds Raft port p + this, its proxy listens on p."""


@runtime_checkable
class ChaosNetwork(Protocol):
    """The network a chaos run puts its nodes on, and the faults it can inject.

    Node ids are those given to `build_config`. Every fault method may be called
    in any order and any number of times; faults accumulate until `heal`.
    """

    kind: str
    """"netns" or "proxy"."""
    run_id: str
    """Short unique id of this run, part of every name it creates."""

    def build_config(self, node_ids: Sequence[str], partitions: int,
                     name: str) -> ClusterConfig:
        """The cluster file for these nodes, placed on this network.

        Hosts and ports are those the network wants (netns: each node's own
        address; proxy: 127.0.0.1 with free ports), a fresh secret, replication
        factor min(3, nodes), round-robin placement. Call once per network,
        before any other method that names a node.
        """
        ...

    def add_node(self, node_id: str) -> NodeConfig:
        """Place one more node on the network (the replacement of a lost one): its
        address and ports, reachable from the other nodes and the clients, with the
        same faults as the others (netns: its own namespace on the hub; proxy: proxies
        in front of its Raft ports). The other nodes need no change: the cluster map
        carries the new node's addresses. Call after `build_config`; teardown removes
        it too. The id must be new to this network.
        """
        ...

    def node_command(self, node_id: str, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run "on" the node (netns: ``ip netns exec <ns> ...``).

        The wrapper execs `argv`, so the Popen pid is the program's own pid.
        """
        ...

    def node_extra_args(self, node_id: str) -> tuple[str, ...]:
        """Arguments to append to ``python -m node.server ...`` for this node
        (the Raft bind offset its proxies need)."""
        ...

    def client_command(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run as a client that reaches every node's gRPC port
        (netns: inside the client namespace; proxy: unchanged)."""
        ...

    def isolate(self, node_id: str) -> None:
        """No Raft traffic (netns: no traffic at all) to or from the node."""
        ...

    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        """Nodes of side a cannot talk to nodes of side b; within a side they can.

        Nodes in neither side are unaffected. The sides must not overlap.
        """
        ...

    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None:
        """Delay every Raft byte to and from the node by `delay_ms` (per direction)
        and reset its Raft connections with probability `drop_rate` per forwarded
        chunk (a lost message: pysyncobj reconnects and Raft retransmits; a chunk
        is never silently removed from a TCP stream). Replaces an earlier
        `slow` of the same node."""
        ...

    def heal(self) -> None:
        """Undo every fault: links up, routes removed, proxies pass-through."""
        ...

    def teardown(self) -> None:
        """Remove everything the network made, even after a failure; idempotent."""
        ...

    def __enter__(self) -> ChaosNetwork:
        ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Calls `teardown`."""
        ...


def netns_available() -> bool:
    """True when this process can create network namespaces (root and `ip netns`).

    Probes by creating and deleting a namespace once; the answer is cached.
    """
    global _netns_available
    if _netns_available is None:
        _netns_available = _probe_netns()
    return _netns_available


_netns_available: bool | None = None


def _probe_netns() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{NETNS_PREFIX}probe{os.getpid()}-x"
    try:
        _ip("netns", "add", probe)
    except NetworkCommandError:
        return False
    with contextlib.suppress(NetworkCommandError):
        _ip("netns", "del", probe)
    return True


def open_network(kind: str = "auto", run_id: str | None = None) -> ChaosNetwork:
    """Create a chaos network. `kind`: "netns", "proxy", or "auto" (netns when
    `netns_available()`, else proxy). `run_id` defaults to 6 random hex digits.

    On failure while building, whatever was made is torn down before raising.
    """
    if kind == "auto":
        kind = "netns" if netns_available() else "proxy"
    run_id = run_id if run_id is not None else secrets.token_hex(3)
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r}: use 1 to 8 characters from a-z and 0-9")
    if kind == "netns":
        return NetnsNetwork(run_id)
    if kind == "proxy":
        return ProxyNetwork(run_id)
    raise ValueError(f"unknown network kind {kind!r} (expected 'auto', 'netns' or 'proxy')")


def cleanup_stale_networks(prefix: str = NETNS_PREFIX) -> list[str]:
    """Delete namespaces named ``<prefix><run>-*`` whose run's owner process is gone
    (or that have no owner marker and are older than `STALE_AGE_S`); returns their names.

    Processes still inside a stale namespace are killed first (by pid).
    """
    by_run: dict[str, list[str]] = {}
    for name in _list_netns():
        if name.startswith(prefix) and "-" in name:
            by_run.setdefault(name[len(prefix):].split("-", 1)[0], []).append(name)
    removed: list[str] = []
    for run_id, names in sorted(by_run.items()):
        if _run_is_live(run_id, names):
            continue
        for name in names:
            _delete_netns(name)
            removed.append(name)
        with contextlib.suppress(FileNotFoundError):
            _marker_path(run_id).unlink()
    return removed


STATE_DIR = Path(tempfile.gettempdir()) / "raftwallet-chaos"
"""Holds ``<run id>.pid``: the pid of the process that owns a run's namespaces."""
STALE_AGE_S = 600.0
SUBNET_PREFIX = "10.213"
CLIENT_HOST_NUMBER = 2
FIRST_NODE_HOST_NUMBER = 10
NODE_HOST_NUMBER_MAX = 254
NETNS_GRPC_PORT = 7000
NETNS_METRICS_PORT = 7001
NETNS_RAFT_PORT_BASE = 7100
KILL_WAIT_S = 5.0
LOOPBACK_HOST = "127.0.0.1"
_RUN_ID = re.compile(r"[a-z0-9]{1,8}")


class NetworkCommandError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


def _ip(*args: str) -> str:
    command = ["ip", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise NetworkCommandError(f"{shlex.join(command)}: {result.stderr.strip()}")
    return result.stdout


def _list_netns() -> list[str]:
    try:
        output = _ip("netns", "list")
    except (NetworkCommandError, FileNotFoundError):
        return []
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def _netns_pids(name: str) -> list[int]:
    try:
        return [int(word) for word in _ip("netns", "pids", name).split()]
    except NetworkCommandError:
        return []


def _delete_netns(name: str) -> None:
    """Kill what runs inside (by pid), then delete the namespace; quiet if gone."""
    pids = _netns_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while pids and time.monotonic() < deadline:
        pids = _netns_pids(name)
        if pids:
            time.sleep(0.05)
    with contextlib.suppress(NetworkCommandError):
        _ip("netns", "del", name)


def _marker_path(run_id: str) -> Path:
    return STATE_DIR / f"{run_id}.pid"


def _write_marker(run_id: str) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    _marker_path(run_id).write_text(str(os.getpid()), encoding="ascii")


def _run_is_live(run_id: str, names: Sequence[str]) -> bool:
    try:
        owner = int(_marker_path(run_id).read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError):
        newest = max((_netns_age_s(name) for name in names), default=0.0)
        return newest < STALE_AGE_S
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_age_s(name: str) -> float:
    try:
        return time.time() - os.stat(Path(NETNS_DIR) / name).st_mtime
    except OSError:
        return STALE_AGE_S


def _placed_config(node_ids: Sequence[str], partitions: int, name: str,
                   allocate: PortAllocator,
                   place: Callable[[int, NodeConfig], NodeConfig]) -> ClusterConfig:
    """A validated cluster file: `local_cluster_config`'s (secret, tokens, placement),
    renamed to `node_ids` and with each node moved by `place(index, node)`."""
    if len(set(node_ids)) != len(node_ids) or not node_ids:
        raise ValueError(f"node ids must be distinct and not empty, got {list(node_ids)}")
    base = local_cluster_config(name, len(node_ids), partitions, allocate,
                                replication_factor=min(3, len(node_ids)))
    renamed = {node.id: node_ids[index] for index, node in enumerate(base.nodes)}
    nodes = tuple(place(index, dataclasses.replace(node, id=renamed[node.id]))
                  for index, node in enumerate(base.nodes))
    placement = tuple(tuple(renamed[old] for old in replicas) for replicas in base.placement)
    moved = dataclasses.replace(base, nodes=nodes, placement=placement)
    loopback_only = all(node.host == base.nodes[0].host for node in nodes) and (
        base.nodes[0].host == "127.0.0.1")
    if not loopback_only and "wallet_token" in {f.name for f in dataclasses.fields(moved)}:
        # Off loopback the cluster file must protect WalletService: clients read the
        # token from the file (ClusterConfig.wallet_token).
        moved = dataclasses.replace(moved, wallet_token=secrets.token_urlsafe(32))
    config = parse_cluster_config(dump_cluster_config(moved), f"<chaos {name}>")
    assert config.partition_count == partitions and len(config.nodes) == len(node_ids)
    return config


def raft_port_count(config: ClusterConfig) -> int:
    """How many Raft ports each node has from `raft_port_base` on: one per partition,
    plus the metadata group's when the cluster file format has one. Proxying one
    port too many is harmless (nobody connects to it), so when unsure, count it."""
    return config.partition_count + 1


class _BaseNetwork:
    kind: str
    run_id: str

    def __enter__(self) -> ChaosNetwork:
        return self  # type: ignore[return-value]  # subclasses complete the protocol

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.teardown()

    def teardown(self) -> None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, slots=True)
class _NetnsNode:
    netns: str
    address: str
    hub_link: str


class NetnsNetwork(_BaseNetwork):
    """Namespaces, veths to a hub bridge, blackhole routes, and proxies for slowness.

    See the module docstring for the layout and what each fault does.
    """

    kind = "netns"

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._subnet = f"{SUBNET_PREFIX}.{int(run_id, 36) % 250 + 1}"
        self._hub = self._netns_name("hub")
        self._client = self._netns_name("cli")
        self._created: list[str] = []
        self._nodes: dict[str, _NetnsNode] = {}
        self._links_down: set[str] = set()
        self._routes: set[tuple[str, str]] = set()  # (netns, blackholed address)
        self.policy = FaultPolicy()
        self._proxy: FaultProxy | None = None
        self._initiators = Initiators(by_source_host={})
        self._raft_ports = 0
        self._metrics = False
        self._torn_down = False
        _write_marker(run_id)
        try:
            self._add_netns(self._hub)
            _ip("-n", self._hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self._hub, "link", "set", "br0", "up")
            self._attach(self._client, "vcli", f"{self._subnet}.{CLIENT_HOST_NUMBER}")
        except BaseException:
            self.teardown()
            raise

    def _netns_name(self, role: str) -> str:
        return f"{NETNS_PREFIX}{self.run_id}-{role}"

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _attach(self, netns: str, hub_link: str, address: str) -> None:
        """A new namespace with `address` on eth0, its veth peer in the hub's bridge."""
        self._add_netns(netns)
        _ip("-n", self._hub, "link", "add", hub_link, "type", "veth",
            "peer", "name", "eth0", "netns", netns)
        _ip("-n", self._hub, "link", "set", hub_link, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")

    def build_config(self, node_ids: Sequence[str], partitions: int,
                     name: str) -> ClusterConfig:
        assert not self._nodes, "build_config is called once per network"
        next_port = iter(range(20_000, 65_000))

        def allocate(count: int) -> int:  # replaced below: every namespace has every port
            first = next(next_port)
            for _ in range(count - 1):
                next(next_port)
            return first

        def place(index: int, node: NodeConfig) -> NodeConfig:
            return dataclasses.replace(
                node, host=f"{self._subnet}.{FIRST_NODE_HOST_NUMBER + index}",
                grpc_port=NETNS_GRPC_PORT, raft_port_base=NETNS_RAFT_PORT_BASE,
                metrics_port=None if node.metrics_port is None else NETNS_METRICS_PORT)

        config = _placed_config(node_ids, partitions, name, allocate, place)
        self._raft_ports = raft_port_count(config)
        self._metrics = any(node.metrics_port is not None for node in config.nodes)
        try:
            self._proxy = FaultProxy(self.policy, self._initiators)
            self._proxy.start()
            for node in config.nodes:
                self._place(node)
        except BaseException:
            self.teardown()
            raise
        return config

    def add_node(self, node_id: str) -> NodeConfig:
        assert self._proxy is not None, "add_node comes after build_config"
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} is already on this network")
        index = len(self._nodes)
        host_number = FIRST_NODE_HOST_NUMBER + index
        if host_number > NODE_HOST_NUMBER_MAX:
            raise ValueError(f"no address left in {self._subnet}.0/24 for {node_id!r}")
        node = NodeConfig(node_id, f"{self._subnet}.{host_number}", NETNS_GRPC_PORT,
                          NETNS_RAFT_PORT_BASE, NETNS_METRICS_PORT if self._metrics else None)
        self._place(node)
        return node

    def _place(self, node: NodeConfig) -> None:
        """The node's namespace on the hub, and the proxies in front of its Raft ports."""
        assert self._proxy is not None
        netns = self._netns_name(node.id)
        hub_link = f"v{len(self._nodes)}"
        self._attach(netns, hub_link, node.host)
        self._nodes[node.id] = _NetnsNode(netns, node.host, hub_link)
        self._initiators.add_node(node.id, source_host=node.host)
        for offset in range(self._raft_ports):
            port = node.raft_port_base + offset
            self._proxy.add_listener((node.host, port), (node.host, port + RAFT_BIND_OFFSET),
                                     node.id, netns)

    def _node(self, node_id: str) -> _NetnsNode:
        if node_id not in self._nodes:
            raise KeyError(f"no node {node_id!r} on this network (nodes: {sorted(self._nodes)})")
        return self._nodes[node_id]

    def node_command(self, node_id: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self._node(node_id).netns, *argv]

    def node_extra_args(self, node_id: str) -> tuple[str, ...]:
        self._node(node_id)
        return ("--raft-bind-port-offset", str(RAFT_BIND_OFFSET))

    def client_command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self._client, *argv]

    @property
    def client_address(self) -> str:
        """The client namespace's address (clients' source address)."""
        return f"{self._subnet}.{CLIENT_HOST_NUMBER}"

    def isolate(self, node_id: str) -> None:
        hub_link = self._node(node_id).hub_link
        _ip("-n", self._hub, "link", "set", hub_link, "down")
        self._links_down.add(hub_link)

    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        _check_sides(side_a, side_b)
        for one, other in itertools.chain(itertools.product(side_a, side_b),
                                          itertools.product(side_b, side_a)):
            netns, address = self._node(one).netns, self._node(other).address
            _ip("-n", netns, "route", "replace", "blackhole", f"{address}/32")
            self._routes.add((netns, address))

    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None:
        self._node(node_id)
        self.policy.set_slow(node_id, SlowLink(delay_ms, drop_rate))

    def heal(self) -> None:
        for hub_link in sorted(self._links_down):
            _ip("-n", self._hub, "link", "set", hub_link, "up")
        self._links_down.clear()
        for netns, address in sorted(self._routes):
            with contextlib.suppress(NetworkCommandError):
                _ip("-n", netns, "route", "del", "blackhole", f"{address}/32")
        self._routes.clear()
        self.policy.heal()

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        if self._proxy is not None:
            self._proxy.close()
        # Nodes and the client first, the hub last: deleting a namespace deletes its
        # veth end, and with it the peer in the hub.
        for name in reversed(self._created):
            _delete_netns(name)
        with contextlib.suppress(FileNotFoundError):
            _marker_path(self.run_id).unlink()

    def namespaces(self) -> list[str]:
        """Every namespace this network created (for tests and diagnostics)."""
        return list(self._created)

    def netns_of(self, node_id: str) -> str:
        """The namespace the node runs in."""
        return self._node(node_id).netns

    @property
    def proxy(self) -> FaultProxy | None:
        """The Raft proxies (None before `build_config`)."""
        return self._proxy


class ProxyNetwork(_BaseNetwork):
    """127.0.0.1 only: every fault is made by `FaultProxy` listeners on the Raft ports."""

    kind = "proxy"

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.policy = FaultPolicy()
        self._proxy: FaultProxy | None = None
        self._bind_offsets: dict[str, int] = {}
        self._initiators: Initiators | None = None
        self._raft_ports = 0
        self._metrics = False
        self._torn_down = False

    def build_config(self, node_ids: Sequence[str], partitions: int,
                     name: str) -> ClusterConfig:
        assert not self._bind_offsets, "build_config is called once per network"
        config = _placed_config(node_ids, partitions, name, allocate_ports,
                                lambda index, node: node)
        self._raft_ports = raft_port_count(config)
        self._metrics = any(node.metrics_port is not None for node in config.nodes)
        self._initiators = Initiators(
            by_raft_address={f"{node.host}:{node.raft_port_base + offset}": node.id
                             for node in config.nodes for offset in range(self._raft_ports)},
            secret=config.secret or None)
        self._proxy = FaultProxy(self.policy, self._initiators)
        self._proxy.start()
        try:
            for node in config.nodes:
                self._place(node)
        except BaseException:
            self.teardown()
            raise
        return config

    def add_node(self, node_id: str) -> NodeConfig:
        assert self._initiators is not None, "add_node comes after build_config"
        if node_id in self._bind_offsets:
            raise ValueError(f"node {node_id!r} is already on this network")
        node = NodeConfig(node_id, LOOPBACK_HOST, allocate_ports(1),
                          allocate_ports(self._raft_ports),
                          allocate_ports(1) if self._metrics else None)
        self._initiators.add_node(node_id, raft_addresses=tuple(
            f"{node.host}:{node.raft_port_base + offset}" for offset in range(self._raft_ports)))
        self._place(node)
        return node

    def _place(self, node: NodeConfig) -> None:
        """Proxies on the node's advertised Raft ports, forwarding to ports it binds."""
        assert self._proxy is not None
        self._bind_offsets[node.id] = allocate_ports(self._raft_ports) - node.raft_port_base
        for offset in range(self._raft_ports):
            port = node.raft_port_base + offset
            self._proxy.add_listener((node.host, port),
                                     (node.host, port + self._bind_offsets[node.id]), node.id)

    def _check(self, node_id: str) -> None:
        if node_id not in self._bind_offsets:
            raise KeyError(f"no node {node_id!r} on this network "
                           f"(nodes: {sorted(self._bind_offsets)})")

    def node_command(self, node_id: str, argv: Sequence[str]) -> list[str]:
        self._check(node_id)
        return list(argv)

    def node_extra_args(self, node_id: str) -> tuple[str, ...]:
        self._check(node_id)
        return ("--raft-bind-port-offset", str(self._bind_offsets[node_id]))

    def client_command(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def isolate(self, node_id: str) -> None:
        self._check(node_id)
        self.policy.isolate(node_id)
        self._enforce()

    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        _check_sides(side_a, side_b)
        for one, other in itertools.product(side_a, side_b):
            self._check(one)
            self._check(other)
            self.policy.cut(one, other)
        self._enforce()

    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None:
        self._check(node_id)
        self.policy.set_slow(node_id, SlowLink(delay_ms, drop_rate))

    def heal(self) -> None:
        self.policy.heal()

    @property
    def proxy(self) -> FaultProxy | None:
        """The Raft proxies (None before `build_config`)."""
        return self._proxy

    def _enforce(self) -> None:
        if self._proxy is not None:
            self._proxy.enforce()

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        if self._proxy is not None:
            self._proxy.close()


def _check_sides(side_a: Sequence[str], side_b: Sequence[str]) -> None:
    overlap = set(side_a) & set(side_b)
    if overlap:
        raise ValueError(f"a node cannot be on both sides of a split: {sorted(overlap)}")
