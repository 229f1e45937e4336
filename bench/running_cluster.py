"""A cluster that is already running, reached by address: the target mode of `bench.tps`.

`python -m bench.tps --config FILE` or `--target HOST:PORT ...` measures a cluster
that someone else started and will keep running. This module is the harness's
view of such a cluster, with the methods `bench.tps.Bench` uses on the clusters
it starts itself (`BenchCluster`), so the same runs work on both:

- the partition count, the nodes and each partition's preferred leader come from
  the cluster map (GetClusterMap: no admin token needed);
- the leaders and the Raft commit indexes come from ClusterStatus when the
  credentials hold the admin token; without it, calls go to the preferred
  leaders (a follower forwards) and Raft entries are not counted;
- the node processes are found only where they can be: a node whose host is an
  address of this machine is the process listening on its gRPC port
  (`/proc/net/tcp*`, `/proc/<pid>/fd`). The nodes' CPU per transfer is reported
  only when every node was found (`all_nodes_local`), else it is "n/a".

Nothing here starts, stops or signals a node.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from client.auth import Credentials, open_channel
from client.sdk import ClusterMapView, WalletClient
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

STATUS_TIMEOUT_S = 5.0
MAP_TIMEOUT_S = 10.0
"""How long reading the cluster map may take, retries included."""
LEADERS_TIMEOUT_S = 60.0
TCP_LISTEN = "0A"
"""The `st` column of /proc/net/tcp for a listening socket."""


class TargetUnavailable(Exception):
    """The running cluster cannot be measured: unreachable, or its map cannot be read."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


def parse_address(address: str) -> Endpoint:
    """'host:port' (or '[v6]:port') -> Endpoint; ValueError with the reason otherwise."""
    host, sep, port_text = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return Endpoint(host, int(port_text))


# --- finding local node processes -------------------------------------------------------------


def _local_ips(host: str) -> set[str] | None:
    """The IPs `host` resolves to, if every one is an address of this machine; else None."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None
    ips = {str(info[4][0]) for info in infos}
    for ip in ips:
        if ipaddress.ip_address(ip).is_loopback:
            continue
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, 0))  # succeeds only for an address of this machine
            except OSError:
                return None
    return ips or None


def _hex_ip(text: str) -> str:
    """An address of /proc/net/tcp{,6} (hex, 32-bit words in host byte order) as text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _listening_inodes(port: int, ips: set[str]) -> set[str]:
    """Socket inodes listening on `port` at one of `ips` or at a wildcard address."""
    wildcard = {"0.0.0.0", "::"}
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                rows = lines.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN:
                continue
            address, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            ip = _hex_ip(address)
            mapped = ipaddress.ip_address(ip)
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                ip = str(mapped.ipv4_mapped)
            if ip in ips or ip in wildcard:
                found.add(fields[9])
    return found


def find_listening_pid(host: str, port: int) -> int | None:
    """The pid of the process of this machine listening on `host:port`, or None.

    None when `host` is not an address of this machine, when nothing listens there,
    or when the owner's file descriptors cannot be read (another user's process).
    """
    ips = _local_ips(host)
    if ips is None:
        return None
    inodes = _listening_inodes(port, ips)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            descriptors = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{entry.name}/fd/{fd}") in wanted:
                    return int(entry.name)
            except OSError:
                continue
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- the cluster --------------------------------------------------------------------------------


class RunningCluster:
    """A running cluster reached at `addresses`, seen through its public API only."""

    managed = False
    """The harness did not start it: it must neither stop it nor count on owning it."""

    def __init__(self, addresses: Sequence[str], credentials: Credentials,
                 config_path: Path | None = None) -> None:
        if not addresses:
            raise ValueError("at least one address of the running cluster is needed")
        self.addresses = tuple(addresses)
        self.credentials = credentials
        self.config_path = config_path
        self.http_addresses: dict[str, str] = {}
        """No HTTP gateways: their addresses are not in the cluster map."""
        self.map = self._read_map()
        self.partition_count = self.map.partition_count
        self._node_pids = {node_id: pid for node_id, pid in (
            (node_id, self._local_pid(address))
            for node_id, address in sorted(self.map.node_addresses.items()))
            if pid is not None}

    def _read_map(self) -> ClusterMapView:
        try:
            with WalletClient(list(self.addresses), timeout_s=STATUS_TIMEOUT_S,
                              retry_deadline_s=MAP_TIMEOUT_S,
                              token=self.credentials.wallet_token,
                              admin_token=self.credentials.admin_token,
                              tls=self.credentials.tls) as client:
                view = client.cluster_map()
        except Exception as error:  # any failure means: not measurable
            raise TargetUnavailable(f"cannot read the cluster map from "
                                    f"{', '.join(self.addresses)}: {error}") from error
        if view.partition_count < 1 or not view.node_addresses:
            raise TargetUnavailable(f"the cluster map from {', '.join(self.addresses)} has "
                                    f"no partitions or no nodes")
        return view

    @staticmethod
    def _local_pid(address: str) -> int | None:
        try:
            endpoint = parse_address(address)
        except ValueError:
            return None
        return find_listening_pid(endpoint.host, endpoint.port)

    # -- shape -----------------------------------------------------------------------------------

    def node_addresses(self) -> dict[str, str]:
        """node id -> gRPC address, from the cluster map."""
        return dict(self.map.node_addresses)

    def replicas_per_partition(self) -> int:
        return max(sum(1 for _, state in group if state == "voter")
                   for group in self.map.groups)

    @property
    def all_nodes_local(self) -> bool:
        """Every node's process was found on this machine (its CPU can be measured)."""
        return set(self._node_pids) == set(self.map.node_addresses)

    def pids(self) -> dict[str, int]:
        """node id -> pid of the nodes found on this machine (maybe none)."""
        return dict(self._node_pids)

    def check_alive(self) -> None:
        """The node processes found locally are still running (their CPU is being counted)."""
        dead = [node_id for node_id, pid in self._node_pids.items() if not _alive(pid)]
        if dead:
            raise TargetUnavailable(f"node processes of {dead} exited during the benchmark")

    def log_tails(self, chars: int = 2000) -> str:
        return ""  # the logs are the operator's, wherever they are

    # -- leaders and Raft positions --------------------------------------------------------------

    def _status(self) -> pb.ClusterStatusResponse | None:
        """ClusterStatus from the first address that answers; None without the admin token."""
        if not self.credentials.admin_token:
            return None
        for address in (*self.addresses, *self.map.node_addresses.values()):
            with open_channel(address, self.credentials) as channel:
                stub = wallet_pb2_grpc.AdminServiceStub(channel)
                try:
                    response: pb.ClusterStatusResponse = stub.ClusterStatus(
                        pb.ClusterStatusRequest(), timeout=STATUS_TIMEOUT_S)
                    return response
                except grpc.RpcError:
                    continue
        return None

    def preferred_leaders(self) -> list[str]:
        """Per partition, its preferred leader's node id (the map's first voter)."""
        preferred = []
        for partition, group in enumerate(self.map.groups):
            voters = [node_id for node_id, state in group if state == "voter"]
            if not voters:
                raise TargetUnavailable(f"partition {partition} has no voter in the map")
            preferred.append(voters[0])
        return preferred

    def leaders(self) -> tuple[list[str], list[str]]:
        """Per partition: the leader's gRPC address and node id.

        From ClusterStatus with the admin token; without it, the preferred leaders
        (a follower forwards what reaches it, at the cost of one more hop).
        """
        if not self.credentials.admin_token:
            ids = self.preferred_leaders()
            return [self.map.node_addresses[i] for i in ids], ids
        deadline = time.monotonic() + LEADERS_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            status = self._status()
            if status is not None and len(status.partitions) == self.partition_count:
                views = sorted(status.partitions, key=lambda p: p.partition)
                if all(p.leader_address for p in views):
                    return ([p.leader_address for p in views], [p.leader_node_id for p in views])
            time.sleep(0.2)
        raise TargetUnavailable("no leader known for every partition (ClusterStatus)")

    def wait_for_preferred_leaders(self, timeout_s: float) -> bool:
        """Wait until every partition is led by its preferred node; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            _, leader_ids = self.leaders()
            if leader_ids == self.preferred_leaders():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def commit_indexes(self) -> list[int]:
        """Per partition, the Raft commit index; [] without the admin token (not counted)."""
        status = self._status()
        if status is None:
            return []
        found = [0] * self.partition_count
        for partition in status.partitions:
            if partition.partition < self.partition_count:
                found[partition.partition] = int(partition.commit_index)
        return found
