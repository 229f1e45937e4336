"""The node process: `walletctl node start --config FILE --node-id ID --data-dir DIR`.

Hosts one replica of each partition the cluster file assigns to this node,
serves WalletService and AdminService on its gRPC port with gRPC health
checking and server reflection, and stops cleanly on SIGTERM.

A data dir is bound to a node id: bootstrapping (`--bootstrap`, or
`walletctl cluster up`) writes an identity file into an EMPTY data dir. A plain
start on a data dir without one is refused: a blank node that rejoined under its
old id would have forgotten its log and its vote, which can lose acknowledged
transfers. The cure for a lost disk is to add a node under a new id.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger import commands as c
from node import journal as journal_patch
from node import logs, snapshot_file
from node.admin_service import AdminService
from node.api import DEDUP_WINDOW_S
from node.archive import ArchiveCorrupt
from node.config import ClusterConfig, ConfigError, load_cluster_config
from node.host import CHANNEL_OPTIONS, NodeHost
from node.journal import JournalCorrupt
from node.proposer import ProposerSettings
from node.replica import PartitionReplica, RaftSettings
from node.saga_driver import PeerService, SagaDriver
from node.wallet_service import WalletService
from proto.wallet.v1 import wallet_pb2, wallet_pb2_grpc

log = logging.getLogger("node")

IDENTITY_FILE = "raftwallet-node.json"
EXIT_REFUSED = 3
HEALTH_PERIOD_S = 0.5
LEADER_STABLE_S = 3.0
LEADER_MOVE_PERIOD_S = 30.0
"""A partition's leadership is moved to its preferred node at most this often."""
PRUNE_PERIOD_S = 3600.0
PRUNE_MARGIN_S = 24 * 3600
"""Records are kept a day longer than the API's window, to cover clock skew."""
GRACE_S = 2.0
SHUTDOWN_DEADLINE_S = 20.0
EXIT_SHUTDOWN_TIMEOUT = 4


class StartRefused(Exception):
    """The node must not start; the message says why and what to do."""


def check_identity(data_dir: Path, config: ClusterConfig, node_id: str, bootstrap: bool) -> None:
    identity_path = data_dir / IDENTITY_FILE
    if identity_path.exists():
        identity = json.loads(identity_path.read_text(encoding="utf-8"))
        if identity.get("node_id") != node_id or identity.get("cluster") != config.name:
            raise StartRefused(
                f"data dir {data_dir} belongs to node {identity.get('node_id')!r} of cluster "
                f"{identity.get('cluster')!r}, not node {node_id!r} of {config.name!r}")
        return
    if not bootstrap:
        raise StartRefused(
            f"data dir {data_dir} has no RaftWallet identity: this node has no log and no vote. "
            "To create a NEW cluster, start every node with --bootstrap (or run `walletctl "
            "cluster up`). To replace a node whose disk was lost, do not reuse its id: remove "
            "it and add a node under a new id (docs/operations.md)")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise StartRefused(f"--bootstrap needs an empty data dir; {data_dir} is not empty")
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = identity_path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"cluster": config.name, "node_id": node_id,
                                     "created_at": time.time()}), encoding="utf-8")
    os.replace(temporary, identity_path)
    snapshot_file.fsync_directory(str(data_dir))


def build_replicas(config: ClusterConfig, node_id: str, data_dir: Path,
                   settings: RaftSettings) -> dict[int, PartitionReplica]:
    node = config.node(node_id)
    replicas: dict[int, PartitionReplica] = {}
    for partition in sorted(config.partitions_of(node_id)):
        peers = [config.node(other).raft_address(partition)
                 for other in config.replicas_of(partition) if other != node_id]
        replicas[partition] = PartitionReplica(
            partition=partition,
            self_address=node.raft_address(partition),
            peer_addresses=peers,
            bind_address=node.raft_address(partition),
            data_dir=str(data_dir / f"partition-{partition}"),
            secret=config.secret or None,
            settings=settings,
        )
    return replicas


async def _serve(config: ClusterConfig, node_id: str, replicas: dict[int, PartitionReplica],
                 proposer_settings: ProposerSettings, http_listen: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    host = NodeHost(config, node_id, replicas, loop, proposer_settings)
    for replica in replicas.values():
        replica._on_applied = host.on_applied
        replica.start()
    host.start()
    driver = SagaDriver(host)
    host.applied_listeners.append(lambda partition: driver.wake())
    driver.start()
    server = grpc.aio.server(options=(*CHANNEL_OPTIONS,
                                      ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                                      ("grpc.max_concurrent_streams", 1000)))
    wallet_pb2_grpc.add_WalletServiceServicer_to_server(WalletService(host), server)
    wallet_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(host), server)
    wallet_pb2_grpc.add_PeerServiceServicer_to_server(PeerService(host), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = (
        wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
        wallet_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(services, server)
    node = config.node(node_id)
    address = node.grpc_address
    if server.add_insecure_port(address) == 0:
        raise StartRefused(f"cannot bind the gRPC port {address}")
    await server.start()
    log.info("node serving", extra={"grpc": address, "partitions": sorted(replicas)})
    gateway_task: asyncio.Task[None] | None = None
    gateway = None
    if http_listen is not None:
        from node.http_gateway import embedded_gateway

        own = node.grpc_address
        targets = [own, *(n.grpc_address for n in config.nodes if n.grpc_address != own)]
        gateway = embedded_gateway(targets, http_listen)
        gateway_task = loop.create_task(gateway.serve(), name="http-gateway")
        log.info("http gateway serving", extra={"http": http_listen})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    leaders: dict[int, tuple[str | None, int]] = {}
    leader_since: dict[int, float] = {}
    moved_at: dict[int, float] = {}
    # Python's cyclic GC pauses every thread, and a long pause on a Raft tick thread
    # causes elections: move everything loaded at start out of its reach.
    gc.freeze()
    last_prune = time.monotonic()
    while not stop.is_set():
        if time.monotonic() - last_prune > PRUNE_PERIOD_S:
            last_prune = time.monotonic()
            _propose_prune(host)
        serving = True
        for partition, replica in replicas.items():
            status = replica.status()
            leader = replica.leader_address()
            term = int(status.get("raft_term", 0))
            if leader is None:
                serving = False
            if leaders.get(partition) != (leader, term):
                leaders[partition] = (leader, term)
                leader_since[partition] = time.monotonic()
                leader_node = config.node_by_raft_address(leader) if leader else None
                log.info("leader changed", extra={
                    "partition": partition, "term": term,
                    "leader": leader_node.id if leader_node else "none"})
        _move_to_preferred_leaders(config, node_id, replicas, leader_since, moved_at)
        await health_servicer.set(
            "", health_pb2.HealthCheckResponse.SERVING if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await asyncio.wait_for(stop.wait(), timeout=HEALTH_PERIOD_S)
        except TimeoutError:
            pass
    log.info("stopping")
    # Everything acknowledged is already durable, so a shutdown that hangs can end the
    # process like kill -9 would: bounded, never stuck waiting for a peer or a call.
    watchdog = threading.Timer(SHUTDOWN_DEADLINE_S, _exit_after_slow_shutdown)
    watchdog.daemon = True
    watchdog.start()
    await driver.stop()
    if gateway is not None and gateway_task is not None:
        gateway.should_exit = True
        await asyncio.wait({gateway_task}, timeout=GRACE_S + 1)
    try:
        await asyncio.wait_for(server.stop(GRACE_S), timeout=GRACE_S + 2)
    except TimeoutError:
        log.warning("gRPC server did not stop in time")
    await host.stop()


def _move_to_preferred_leaders(config: ClusterConfig, node_id: str,
                               replicas: dict[int, PartitionReplica],
                               leader_since: dict[int, float], moved_at: dict[int, float]) -> None:
    """Spread leaders as the cluster file says: hand a led partition to its preferred node.

    The preferred node is the first replica in the placement. Only a leadership
    stable for a while is moved, at most every LEADER_MOVE_PERIOD_S per
    partition, and pysyncobj refuses unless the target is fully caught up.
    """
    now = time.monotonic()
    for partition, replica in replicas.items():
        preferred = config.replicas_of(partition)[0]
        if (preferred == node_id or not replica.is_leader()
                or now - leader_since.get(partition, now) < LEADER_STABLE_S
                or now - moved_at.get(partition, -LEADER_MOVE_PERIOD_S) < LEADER_MOVE_PERIOD_S):
            continue
        moved_at[partition] = now
        log.info("moving leadership to the preferred node",
                 extra={"partition": partition, "to": preferred})
        replica.transfer_leadership(config.node(preferred).raft_address(partition))


def _exit_after_slow_shutdown() -> None:
    log.error("shutdown took longer than %.0f s: exiting now", SHUTDOWN_DEADLINE_S)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_SHUTDOWN_TIMEOUT)


def _propose_prune(host: NodeHost) -> None:
    """Leaders forget resolved dedup records older than the window (through the log)."""
    before_ms = int((time.time() - DEDUP_WINDOW_S - PRUNE_MARGIN_S) * 1000)
    for partition, replica in host.replicas.items():
        if replica.is_leader():
            try:
                proposal = host.proposers[partition].submit([c.PruneDedup(before_ms)])
                proposal.add_done_callback(
                    lambda future: None if future.cancelled() else future.exception())
            except Exception:
                log.exception("prune proposal failed", extra={"partition": partition})


def run_node(config_path: Path, node_id: str, data_dir: Path, bootstrap: bool = False,
             insecure_dev_mode: bool = False, http_listen: str | None = None) -> int:
    """Run a node until SIGTERM; returns the process exit status."""
    logs.configure(node_id)
    try:
        config = load_cluster_config(config_path)
        config.node(node_id)
        if not config.secret and not (config.insecure_dev_mode or insecure_dev_mode):
            raise StartRefused("the cluster file has no secret: Raft ports would accept "
                               "unauthenticated pickled messages. Set cluster.secret, or use "
                               "--insecure-dev-mode on a development machine only")
        check_identity(data_dir, config, node_id, bootstrap)
        settings = RaftSettings(fsync=os.environ.get("RAFTWALLET_UNSAFE_NO_FSYNC") != "1",
                                archive=os.environ.get("RAFTWALLET_ARCHIVE") != "off")
        journal_patch.install(fsync=settings.fsync)
        replicas = build_replicas(config, node_id, data_dir, settings)
    except (ConfigError, KeyError, StartRefused, JournalCorrupt, ArchiveCorrupt,
            snapshot_file.SnapshotFileCorrupt) as exc:
        log.error("node refused to start", extra={"reason": str(exc)})
        print(f"walletctl node start: {exc}", flush=True)
        return EXIT_REFUSED
    try:
        try:
            import uvloop
            runner = uvloop.run if os.environ.get("RAFTWALLET_UVLOOP") == "1" else asyncio.run
        except ImportError:
            runner = asyncio.run
        runner(_serve(config, node_id, replicas, ProposerSettings(), http_listen))
    except StartRefused as exc:
        log.error("node refused to start", extra={"reason": str(exc)})
        return EXIT_REFUSED
    finally:
        for replica in replicas.values():
            replica.destroy()
        logging.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m node.server",
                                     description="Run one RaftWallet node.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--bootstrap", action="store_true")
    parser.add_argument("--insecure-dev-mode", action="store_true")
    parser.add_argument("--http-listen", metavar="HOST:PORT", default=None,
                        help="also serve the HTTP/JSON gateway in this process")
    args = parser.parse_args(argv)
    return run_node(args.config, args.node_id, args.data_dir, args.bootstrap,
                    args.insecure_dev_mode, args.http_listen)


if __name__ == "__main__":
    raise SystemExit(main())
