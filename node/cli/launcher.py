"""`walletctl cluster up|down`: run every node of a local cluster file as background processes.

`cluster up` starts one `node.server` process per `[[nodes]]` entry, each with its
data dir `DATA_DIR/<node-id>` (bootstrapped on first use), writes the process
ids to `DATA_DIR/cluster.json`, and waits until every partition has a leader AND
every node that answers on the file's ports is one it started: each node's own
cluster map must record, for that node, the incarnation of the data dir it was
started with (`DATA_DIR/<node-id>/raftwallet-node.json`). Another cluster already
serving on the same ports has other incarnations, so it is never taken for this
one. When a process it started exits, `cluster up` stops the others, says why
from each node's log (its `walletctl node start: ...` line, else its last error
line) and exits 3.

Exit status of `cluster up`: 0 every partition has a leader, served by its own
nodes; 1 not within LEADERS_TIMEOUT_S (the nodes keep running: see their logs);
2 the cluster file is invalid, or a cluster is already running from DATA_DIR,
or its data dirs are inconsistent; 3 a node it started exited (another cluster
holds the ports, a data dir refused, ...). `cluster down` stops them (SIGTERM,
then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from client.auth import open_channel
from node.cluster_map import decode_map
from node.config import ClusterConfig, ConfigError, load_cluster_config
from node.security.auth import node_client_credentials
from node.server import IDENTITY_FILE
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

STATE_FILE = "cluster.json"
LEADERS_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
POLL_PERIOD_S = 0.2
EXITED_SETTLE_S = 3.0
"""Once one started node has exited, how long the others get to exit too (their reasons
are reported together) before cluster up stops them."""
LOG_REASON_CHARS_MAX = 400
NODE_START_PREFIX = "walletctl node start: "

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_USAGE = 2
EXIT_NODE_EXITED = 3


@dataclass(frozen=True, slots=True)
class NodeProcess:
    node_id: str
    pid: int
    log_path: Path


def node_command(config_path: Path, node_id: str, data_dir: Path, bootstrap: bool) -> list[str]:
    command = [sys.executable, "-m", "node.server", "--config", str(config_path),
               "--node-id", node_id, "--data-dir", str(data_dir)]
    if bootstrap:
        command.append("--bootstrap")
    return command


def start_node(config_path: Path, node_id: str, node_dir: Path, bootstrap: bool = False,
               env: dict[str, str] | None = None,
               extra_args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Start one node process in its own session, logging to `node_dir/../<id>.log`."""
    log_path = node_dir.parent / f"{node_id}.log"
    node_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [*node_command(config_path.resolve(), node_id, node_dir.resolve(), bootstrap),
             *extra_args],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
            env=env if env is not None else os.environ.copy())


def cluster_status(config: ClusterConfig,
                   timeout_s: float = 2.0) -> pb.ClusterStatusResponse | None:
    """ClusterStatus from the first node that answers, or None (with the cluster's admin token)."""
    credentials = node_client_credentials(config)
    for node in config.nodes:
        with open_channel(node.grpc_address, credentials) as channel:
            stub = wallet_pb2_grpc.AdminServiceStub(channel)
            try:
                response: pb.ClusterStatusResponse = stub.ClusterStatus(
                    pb.ClusterStatusRequest(), timeout=timeout_s)
                return response
            except grpc.RpcError:
                continue
    return None


def wait_for_leaders(config: ClusterConfig, timeout_s: float = LEADERS_TIMEOUT_S,
                     processes: list[subprocess.Popen[bytes]] | None = None) -> bool:
    """Wait until every partition reports a leader; False on timeout or a dead process."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if processes and any(p.poll() is not None for p in processes):
            return False
        status = cluster_status(config)
        if status is not None and len(status.partitions) == config.partition_count and all(
                p.leader_node_id for p in status.partitions):
            return True
        time.sleep(POLL_PERIOD_S)
    return False


def node_incarnation(node_dir: Path) -> str | None:
    """The incarnation in a node's identity file; None while the node has not written it."""
    try:
        identity = json.loads((node_dir / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    incarnation = identity.get("incarnation") if isinstance(identity, dict) else None
    return incarnation if isinstance(incarnation, str) else None


def serves_own_incarnation(config: ClusterConfig, node_id: str, incarnation: str,
                           timeout_s: float = 2.0) -> bool:
    """Whether the node answering on `node_id`'s gRPC address is the one with `incarnation`.

    It answers its own copy of the cluster map; that map records the incarnation each
    node started with. A node of another cluster on the same port answers another one.
    """
    with open_channel(config.node(node_id).grpc_address,
                      node_client_credentials(config)) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        try:
            response = stub.GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    try:
        return decode_map(response.map_json.encode()).incarnation_of(node_id) == incarnation
    except (ValueError, KeyError, TypeError):
        return False


def wait_for_own_cluster(config: ClusterConfig, processes: list[subprocess.Popen[bytes]],
                         node_dirs: list[Path], timeout_s: float = LEADERS_TIMEOUT_S) -> int:
    """EXIT_READY once every started node serves its own incarnation and every partition
    has a leader; EXIT_NODE_EXITED as soon as a started process exits; else EXIT_NOT_READY."""
    deadline = time.monotonic() + timeout_s
    own: dict[str, bool] = {}
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return EXIT_NODE_EXITED
        for node, node_dir in zip(config.nodes, node_dirs, strict=True):
            if not own.get(node.id):
                incarnation = node_incarnation(node_dir)
                own[node.id] = incarnation is not None and serves_own_incarnation(
                    config, node.id, incarnation)
        if all(own.get(node.id) for node in config.nodes):
            status = cluster_status(config)
            if status is not None and len(status.partitions) == config.partition_count and all(
                    p.leader_node_id for p in status.partitions):
                return EXIT_READY
        time.sleep(POLL_PERIOD_S)
    return EXIT_NOT_READY


def reason_from_log(log_path: Path) -> str:
    """Why a node stopped, from its log: its last `walletctl node start: ...` line, else its
    last error line, else its last line."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(its log {log_path} cannot be read: {exc.strerror or exc})"
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(NODE_START_PREFIX):
            return line[len(NODE_START_PREFIX):][:LOG_REASON_CHARS_MAX]
    for line in reversed(lines):
        if "level=error" in line or line.startswith(("Traceback", "Error")) or "Error:" in line:
            return line[:LOG_REASON_CHARS_MAX]
    return lines[-1][:LOG_REASON_CHARS_MAX] if lines else "(its log is empty)"


def cluster_up(config_path: Path, data_dir: Path, as_json: bool = False) -> int:
    try:
        config = load_cluster_config(config_path)
    except ConfigError as exc:
        print(f"walletctl cluster up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    state_path = data_dir / STATE_FILE
    if state_path.exists() and any(_alive(p["pid"]) for p in _read_state(state_path)):
        print(f"walletctl cluster up: a cluster is already running from {data_dir} "
              "(walletctl cluster down first)", file=sys.stderr)
        return EXIT_USAGE
    data_dir.mkdir(parents=True, exist_ok=True)
    initialised = [(data_dir / node.id / IDENTITY_FILE).exists() for node in config.nodes]
    if any(initialised) and not all(initialised):
        missing = [n.id for n, done in zip(config.nodes, initialised, strict=True) if not done]
        print(f"walletctl cluster up: nodes {', '.join(missing)} have no data in {data_dir} "
              "while the others do. A node that lost its data must not rejoin under its old "
              "id; replace it under a new id (docs/operations.md)", file=sys.stderr)
        return EXIT_USAGE
    bootstrap = not any(initialised)
    node_dirs = [data_dir / node.id for node in config.nodes]
    processes = [start_node(config_path, node.id, node_dir, bootstrap)
                 for node, node_dir in zip(config.nodes, node_dirs, strict=True)]
    nodes = [NodeProcess(node.id, p.pid, data_dir / f"{node.id}.log")
             for node, p in zip(config.nodes, processes, strict=True)]
    state_path.write_text(json.dumps([{"node_id": n.node_id, "pid": n.pid,
                                       "log": str(n.log_path)} for n in nodes]), encoding="utf-8")
    outcome = wait_for_own_cluster(config, processes, node_dirs)
    if outcome == EXIT_NODE_EXITED:
        return _report_exited(config, nodes, processes, state_path, data_dir, as_json)
    ready = outcome == EXIT_READY
    if as_json:
        print(json.dumps({"ready": ready, "data_dir": str(data_dir),
                          "nodes": [{"node_id": n.node_id, "pid": n.pid, "log": str(n.log_path)}
                                    for n in nodes]}))
    else:
        for node in nodes:
            print(f"node {node.node_id}: pid {node.pid}, log {node.log_path}")
        print("every partition has a leader" if ready else
              "partitions did not all elect a leader in time: see the logs above")
    return outcome


def _report_exited(config: ClusterConfig, nodes: list[NodeProcess],
                   processes: list[subprocess.Popen[bytes]], state_path: Path,
                   data_dir: Path, as_json: bool) -> int:
    """A started node exited: give the others EXITED_SETTLE_S to exit too (each failing
    for its own reason), stop the rest, forget the cluster, say why each one ended."""
    deadline = time.monotonic() + EXITED_SETTLE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        time.sleep(POLL_PERIOD_S)
    exited = [p.poll() for p in processes]
    stop_pids([p.pid for p in processes if p.poll() is None])
    for process in processes:
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    state_path.unlink(missing_ok=True)
    report = [{"node_id": n.node_id, "pid": n.pid, "log": str(n.log_path),
               "exit_status": status,
               "reason": reason_from_log(n.log_path) if status is not None else
               "stopped by cluster up after another node exited"}
              for n, status in zip(nodes, exited, strict=True)]
    if as_json:
        print(json.dumps({"ready": False, "data_dir": str(data_dir), "nodes": report}))
    for entry in report:
        print(f"walletctl cluster up: node {entry['node_id']} (pid {entry['pid']}) "
              + (f"exited with status {entry['exit_status']}: "
                 if entry["exit_status"] is not None else "")
              + f"{entry['reason']} (log {entry['log']})", file=sys.stderr)
    print("walletctl cluster up: the cluster did not start; every node it started is stopped",
          file=sys.stderr)
    answering = [node.grpc_address for node in config.nodes if _answers(config, node.id)]
    if answering:
        print(f"walletctl cluster up: another cluster answers on the ports of this cluster file "
              f"({', '.join(answering)}): stop it first (walletctl cluster down --data-dir "
              "ITS_DATA_DIR), or start this one from a file with other ports", file=sys.stderr)
    return EXIT_NODE_EXITED


def _answers(config: ClusterConfig, node_id: str, timeout_s: float = 2.0) -> bool:
    with open_channel(config.node(node_id).grpc_address,
                      node_client_credentials(config)) as channel:
        try:
            wallet_pb2_grpc.WalletServiceStub(channel).GetClusterMap(
                pb.GetClusterMapRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


def cluster_down(data_dir: Path, as_json: bool = False) -> int:
    state_path = data_dir / STATE_FILE
    if not state_path.exists():
        print(f"walletctl cluster down: no cluster state in {data_dir}", file=sys.stderr)
        return 2
    entries = _read_state(state_path)
    stop_pids([int(str(e["pid"])) for e in entries])
    state_path.unlink()
    if as_json:
        print(json.dumps({"stopped": [e["node_id"] for e in entries]}))
    else:
        print("stopped " + ", ".join(str(e["node_id"]) for e in entries))
    return 0


def stop_pids(pids: list[int], grace_s: float = STOP_GRACE_S) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def _read_state(path: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads(path.read_text(encoding="utf-8"))
    return entries


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (ours, not reaped) counts as gone.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True
