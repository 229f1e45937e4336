"""`walletctl cluster up|down`: run every node of a local cluster file as background processes.

`cluster up` starts one `node.server` process per `[[nodes]]` entry, each with its
data dir `DATA_DIR/<node-id>` (bootstrapped on first use), writes the process
ids to `DATA_DIR/cluster.json`, and waits until every partition has a leader.
`cluster down` stops them (SIGTERM, then SIGKILL after a grace period).
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
from node.auth import node_client_credentials
from node.config import ClusterConfig, ConfigError, load_cluster_config
from node.server import IDENTITY_FILE
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

STATE_FILE = "cluster.json"
LEADERS_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
POLL_PERIOD_S = 0.2


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


def cluster_up(config_path: Path, data_dir: Path, as_json: bool = False) -> int:
    try:
        config = load_cluster_config(config_path)
    except ConfigError as exc:
        print(f"walletctl cluster up: {exc}", file=sys.stderr)
        return 2
    state_path = data_dir / STATE_FILE
    if state_path.exists() and any(_alive(p["pid"]) for p in _read_state(state_path)):
        print(f"walletctl cluster up: a cluster is already running from {data_dir} "
              "(walletctl cluster down first)", file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    initialised = [(data_dir / node.id / IDENTITY_FILE).exists() for node in config.nodes]
    if any(initialised) and not all(initialised):
        missing = [n.id for n, done in zip(config.nodes, initialised, strict=True) if not done]
        print(f"walletctl cluster up: nodes {', '.join(missing)} have no data in {data_dir} "
              "while the others do. A node that lost its data must not rejoin under its old "
              "id; replace it under a new id (docs/operations.md)", file=sys.stderr)
        return 2
    bootstrap = not any(initialised)
    processes = [start_node(config_path, node.id, data_dir / node.id, bootstrap)
                 for node in config.nodes]
    nodes = [NodeProcess(node.id, p.pid, data_dir / f"{node.id}.log")
             for node, p in zip(config.nodes, processes, strict=True)]
    state_path.write_text(json.dumps([{"node_id": n.node_id, "pid": n.pid,
                                       "log": str(n.log_path)} for n in nodes]), encoding="utf-8")
    ready = wait_for_leaders(config, processes=processes)
    if as_json:
        print(json.dumps({"ready": ready, "data_dir": str(data_dir),
                          "nodes": [{"node_id": n.node_id, "pid": n.pid, "log": str(n.log_path)}
                                    for n in nodes]}))
    else:
        for node in nodes:
            print(f"node {node.node_id}: pid {node.pid}, log {node.log_path}")
        print("every partition has a leader" if ready else
              "partitions did not all elect a leader in time: see the logs above")
    return 0 if ready else 1


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
