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
import dataclasses
import fcntl
import gc
import json
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from client.auth import Credentials
from ledger import commands as c
from node import fail_stop, logs
from node.api import DEDUP_WINDOW_S
from node.archive.event_archive import ArchiveCorrupt
from node.archive.seeding import ArchiveSeeder
from node.cluster_map import ADDING, JOINING, LEAVING, META, ClusterMap, bootstrap_map
from node.config import ClusterConfig, ConfigError, load_cluster_config
from node.host import SERVER_OPTIONS, NodeHost
from node.membership.preseed import Preseeder, has_local_state
from node.membership.reconciler import MAP_FILE, MapCache, MapFileCorrupt, Membership, fetch_map
from node.metrics import NodeMetrics
from node.proposer import ProposerSettings
from node.raft import journal as journal_patch
from node.raft import outcomes, replica_guard, snapshot_file, wire
from node.raft.journal import JournalCorrupt
from node.raft.metadata_group import MetadataGroup
from node.raft.replica import PartitionReplica, RaftSettings
from node.raft.replica_guard import ReplicaStateMissing
from node.saga.driver import SagaDriver
from node.security.auth import (
    PEER_TOKEN_METADATA_KEY,
    AccessPolicy,
    AuthInterceptor,
    node_client_credentials,
    peer_token,
    server_credentials,
)
from node.services.admin_service import AdminService
from node.services.peer_service import PeerService
from node.services.request_guard import RequestGuard
from node.services.wallet_service import WalletService
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


JOIN_WAIT_S = 30.0
"""How long a --join node asks the cluster file's nodes for the map before refusing."""
SILENT_SEED_WAIT_S = 30.0
"""How long a starting node without a cached map waits for seeds that are up but silent."""


class StartRefused(Exception):
    """The node must not start; the message says why and what to do."""


def check_identity(data_dir: Path, config: ClusterConfig, node_id: str, bootstrap: bool,
                   join: bool = False) -> tuple[str, bool]:
    """Bind the data dir to this node id: (its incarnation, whether its first start is open).

    `bootstrap` (a new cluster) and `join` (a node registered with `walletctl node
    add`) both need an EMPTY data dir and write its identity file; a plain start
    needs one. The incarnation lets the cluster map refuse a node whose data dir
    was lost and that comes back under its old id. The identity says
    `"initialised": false` until the first start has created the node's replicas
    (`mark_initialised`): until then the node has voted for nothing and
    acknowledged nothing, so a first start cut short may be retried and creates
    its replicas afresh; after it, `--bootstrap` is refused.
    """
    identity_path = data_dir / IDENTITY_FILE
    if identity_path.exists():
        identity = json.loads(identity_path.read_text(encoding="utf-8"))
        first_start_open = identity.get("initialised") is False
        if bootstrap and not first_start_open:
            raise StartRefused(
                f"--bootstrap creates a NEW cluster and needs an empty data dir; {data_dir} "
                "already belongs to a node that has started (its identity file exists). Start "
                "it without --bootstrap")
        if identity.get("node_id") != node_id or identity.get("cluster") != config.name:
            raise StartRefused(
                f"data dir {data_dir} belongs to node {identity.get('node_id')!r} of cluster "
                f"{identity.get('cluster')!r}, not node {node_id!r} of {config.name!r}")
        if "incarnation" not in identity:  # a data dir from before incarnations
            identity["incarnation"] = uuid.uuid4().hex
            _write_identity(data_dir, identity)
        return str(identity["incarnation"]), first_start_open
    if not (bootstrap or join):
        raise StartRefused(
            f"data dir {data_dir} has no RaftWallet identity: this node has no log and no vote. "
            "To create a NEW cluster, start every node with --bootstrap (or run `walletctl "
            "cluster up`); to start a node added with `walletctl node add`, use --join. To "
            "replace a node whose disk was lost, do not reuse its id: remove it and add a node "
            "under a new id (docs/operations.md)")
    flag = "--bootstrap" if bootstrap else "--join"
    if data_dir.exists() and any(data_dir.iterdir()):
        raise StartRefused(f"{flag} needs an empty data dir; {data_dir} is not empty")
    data_dir.mkdir(parents=True, exist_ok=True)
    incarnation = uuid.uuid4().hex
    _write_identity(data_dir, {"cluster": config.name, "node_id": node_id,
                               "incarnation": incarnation, "created_at": time.time(),
                               "initialised": False})
    return incarnation, True


def mark_initialised(data_dir: Path) -> None:
    """The node's first start created its replicas: from now on they must keep their state."""
    identity_path = data_dir / IDENTITY_FILE
    identity = json.loads(identity_path.read_text(encoding="utf-8"))
    if identity.get("initialised") is False:
        identity["initialised"] = True
        _write_identity(data_dir, identity)


def _write_identity(data_dir: Path, identity: dict[str, object]) -> None:
    identity_path = data_dir / IDENTITY_FILE
    temporary = identity_path.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(json.dumps(identity))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, identity_path)
    snapshot_file.fsync_directory(str(data_dir))


def lock_data_dir(data_dir: Path) -> int:
    """Take the data dir's exclusive lock before anything in it is opened; returns its fd.

    A second process on a live data dir would open (and might trim) the live
    files. The lock is an flock on the directory itself (no file is created, so
    a bootstrap still sees an empty dir); the kernel releases it when the
    process ends, however it ends.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartRefused(
            f"data dir {data_dir} is in use by another process (a node is already running on "
            "it); stop that node first") from None
    return fd


def initial_map(config: ClusterConfig, node_id: str, data_dir: Path, incarnation: str,
                credentials: Credentials, join: bool = False) -> ClusterMap:
    """The map this node starts from: its cached copy, else the newest a peer serves,
    else (a new cluster) version 1 built from the cluster file. Refuses a node the
    map does not know, and a node whose id already runs with another data dir."""
    cluster_map = MapCache.load(data_dir / MAP_FILE)
    if cluster_map is None:
        seeds = [n.grpc_address for n in config.nodes if n.id != node_id]
        # A joining node needs the map: it asks for a while. Any node waits while a seed is
        # there but silent (paused, overloaded): a wiped node restarted with --bootstrap
        # must learn that its id already ran, not build a new map and vote with an empty
        # log. Seeds that are not listening at all (a new cluster starting) are not waited
        # for.
        cluster_map = fetch_map(seeds, credentials,
                                must_answer_s=JOIN_WAIT_S if join else 0.0,
                                silent_wait_s=SILENT_SEED_WAIT_S)
        if cluster_map is None and join:
            raise StartRefused(
                f"--join needs the cluster map from a running node, and no node of the "
                f"cluster file answered in {JOIN_WAIT_S:.0f} s: start it when the cluster "
                "is up")
        if cluster_map is None:
            if node_id not in {n.id for n in config.nodes}:
                raise StartRefused(
                    f"no node of the cluster file answered with the cluster map, and node "
                    f"{node_id!r} is not in the file: start it when the cluster is up")
            cluster_map = bootstrap_map(config)
    if cluster_map.name != config.name:
        raise StartRefused(f"the cluster map is of cluster {cluster_map.name!r}, "
                           f"not {config.name!r}")
    if not cluster_map.has_node(node_id):
        raise StartRefused(
            f"node {node_id!r} is not in the cluster map (version {cluster_map.version}): "
            f"register it first with `walletctl node add --id {node_id} ...`, or it was "
            "removed from the cluster")
    known = cluster_map.incarnation_of(node_id)
    if known is not None and known != incarnation:
        raise StartRefused(
            f"node {node_id!r} already ran with another data dir (incarnation {known}): a "
            "node whose disk was lost must not come back under its old id (it forgot its "
            "log and votes); remove it and add a node under a new id (docs/operations.md)")
    return cluster_map


@dataclasses.dataclass(frozen=True)
class NodeGroupFactory:
    """Creates the Raft groups the cluster map assigns to this node.

    Each advertises its Raft address from the map and binds `raft_bind_port_offset`
    ports higher (0 but for fault-injection proxies, which listen on the advertised
    port and forward to the bound one).
    """

    node_id: str
    data_dir: Path
    secret: str | None
    settings: RaftSettings
    raft_bind_port_offset: int = 0
    initialising: bool = False
    """True only while the node's first start creates its first replicas (bootstrap, or a
    first start cut short and retried): no state is expected yet."""

    def create(self, group: int, cluster_map: ClusterMap, joining: bool
               ) -> PartitionReplica | MetadataGroup | None:
        """Open (or initialise) this node's replica of `group`.

        Raises ReplicaStateMissing when the map makes this node a voter of the
        group but the group's directory lost its state (node/raft/replica_guard.py).
        """
        directory = self.data_dir / ("meta" if group == META else f"partition-{group}")
        slot = cluster_map.slot_of(group, self.node_id)
        # Every slot but a JOINING one is a Raft member: a SEEDED one was added (it
        # votes and acknowledges), a LEAVING one is still in the group.
        member = slot is not None and slot.state != JOINING
        if slot is not None and slot.state == LEAVING and not replica_guard.has_state(directory):
            # An addition cancelled before this replica ever started: nothing to host.
            log.info("not starting a leaving replica that never had state",
                     extra={"group": group})
            return None
        replica_guard.check_marker(directory, group, self.node_id, member=member,
                                   initialising=self.initialising)
        address = cluster_map.raft_address(group, self.node_id)
        host, _, port = address.rpartition(":")
        bind_address = f"{host}:{int(port) + self.raft_bind_port_offset}"
        peers = [cluster_map.raft_address(group, slot.node_id)
                 for slot in cluster_map.slots(group) if slot.node_id != self.node_id]
        try:
            return self._open(group, directory, address, peers, bind_address, joining)
        except Exception as exc:
            if not outcomes.is_port_in_use(exc):
                raise
            name = "the metadata group" if group == META else f"partition {group}"
            raise StartRefused(
                f"cannot bind the Raft port {bind_address} of {name}: it is in use (another "
                "node, or another cluster started from the same cluster file, holds it)"
            ) from None

    def _open(self, group: int, directory: Path, address: str, peers: list[str],
              bind_address: str, joining: bool) -> PartitionReplica | MetadataGroup:
        if group == META:
            meta = MetadataGroup(address, peers, bind_address, str(directory),
                                 self.secret, self.settings)
            meta.joining = joining
            return meta
        replica = PartitionReplica(
            partition=group,
            self_address=address,
            peer_addresses=peers,
            bind_address=bind_address,
            data_dir=str(directory),
            secret=self.secret,
            settings=self.settings,
        )
        replica.joining = joining
        return replica


def build_groups(cluster_map: ClusterMap, factory: NodeGroupFactory
                 ) -> tuple[dict[int, PartitionReplica], MetadataGroup | None]:
    """The partition replicas and metadata replica the map assigns to this node."""
    replicas: dict[int, PartitionReplica] = {}
    meta: MetadataGroup | None = None
    for group in cluster_map.groups_of(factory.node_id):
        slot = cluster_map.slot_of(group, factory.node_id)
        assert slot is not None
        if (slot.state == JOINING and group != META
                and not has_local_state(factory.data_dir / f"partition-{group}")):
            continue  # the reconciler pre-seeds it from a peer's snapshot first
        created = factory.create(group, cluster_map, joining=slot.state in ADDING)
        if isinstance(created, MetadataGroup):
            meta = created
        elif created is not None:
            replicas[group] = created
    return replicas, meta


async def _serve(base_config: ClusterConfig, node_id: str, cache: MapCache,
                 groups: tuple[dict[int, PartitionReplica], MetadataGroup | None],
                 factory: NodeGroupFactory, incarnation: str,
                 proposer_settings: ProposerSettings, http_listen: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    replicas, meta = groups
    config = cache.current.as_config(base_config)
    host = NodeHost(config, node_id, replicas, loop, proposer_settings)
    host.group_factory = factory
    host.meta = meta
    for replica in replicas.values():
        replica._on_applied = host.on_applied
        replica.start()
    if meta is not None:
        meta.start()
    host.start()
    peer_metadata = ((PEER_TOKEN_METADATA_KEY, peer_token(config.secret)),) if config.secret else ()
    membership = Membership(host, base_config, cache, lambda: host.meta, incarnation,
                            peer_metadata)
    host.membership = membership
    membership.preseeder = Preseeder(node_id, factory.data_dir, host.channel, peer_metadata,
                                     fsync=factory.settings.fsync)
    driver = SagaDriver(host)
    host.applied_listeners.append(lambda partition: driver.wake())
    driver.start()
    seeder = ArchiveSeeder(host, peer_metadata)  # lagging archives, from peers
    seeder.start()
    metrics = NodeMetrics(node_id, config.name)
    metrics.attach(host, driver)
    # The metrics interceptor goes first: it then also measures calls refused by later ones.
    interceptors: list[grpc.aio.ServerInterceptor] = [metrics.rpc_interceptor]
    interceptors.append(AuthInterceptor(AccessPolicy.from_config(config)))
    interceptors.append(RequestGuard())  # last: it wraps the servicers' own handlers
    server = grpc.aio.server(interceptors=interceptors,
                             options=(*SERVER_OPTIONS,
                                      ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                                      ("grpc.max_concurrent_streams", 1000)))
    wallet_pb2_grpc.add_WalletServiceServicer_to_server(WalletService(host, metrics.transfers),
                                                        server)
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
    tls_credentials = server_credentials(config)
    try:
        bound_port = (server.add_insecure_port(address) if tls_credentials is None
                      else server.add_secure_port(address, tls_credentials))
    except RuntimeError:  # grpcio raises where older releases returned 0
        bound_port = 0
    if bound_port == 0:
        raise StartRefused(f"cannot bind the gRPC port {address}: it is in use (another node, "
                           "or another cluster started from the same cluster file, holds it)")
    metrics_server = None
    if node.metrics_port is not None:
        try:
            metrics_server = metrics.serve(node.host, node.metrics_port)
        except OSError as exc:
            raise StartRefused(f"cannot bind the metrics port {node.host}:{node.metrics_port}: "
                               f"{exc}") from None
        log.info("metrics serving", extra={"metrics": f"{node.host}:{metrics_server.port}"})
    await server.start()
    log.info("node serving", extra={"grpc": address, "partitions": sorted(replicas),
                                    "map_version": cache.current.version})
    gateway_task: asyncio.Task[None] | None = None
    gateway = None
    if http_listen is not None:
        from node.gateway.app import embedded_gateway

        own = node.grpc_address
        targets = [own, *(n.grpc_address for n in config.nodes if n.grpc_address != own)]
        gateway = embedded_gateway(targets, http_listen, node_client_credentials(config))
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
    reconciler = loop.create_task(membership.run(stop), name="membership")
    while not stop.is_set():
        config = host.config
        if time.monotonic() - last_prune > PRUNE_PERIOD_S:
            last_prune = time.monotonic()
            _propose_prune(host)
        serving = True
        for partition, replica in list(host.replicas.items()):
            status = replica.status()
            leader = replica.leader_address()
            term = int(status.get("raft_term", 0))
            if leader is None:
                serving = False
            if leaders.get(partition) != (leader, term):
                leaders[partition] = (leader, term)
                leader_since[partition] = time.monotonic()
                try:
                    leader_node = config.node_by_raft_address(leader) if leader else None
                except KeyError:
                    leader_node = None
                log.info("leader changed", extra={
                    "partition": partition, "term": term,
                    "leader": leader_node.id if leader_node else "none"})
        _move_to_preferred_leaders(host, leader_since, moved_at)
        await health_servicer.set(
            "", health_pb2.HealthCheckResponse.SERVING if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await asyncio.wait_for(stop.wait(), timeout=HEALTH_PERIOD_S)
        except TimeoutError:
            pass
    log.info("stopping")
    reconciler.cancel()
    exit_code = 0
    if membership.refused is not None:
        log.error("node refused to run", extra={"reason": membership.refused})
        exit_code = EXIT_REFUSED
    elif membership.removed is not None:  # the operator's `node remove`: a clean stop
        log.warning("removed from the cluster map: stopping", extra={"reason": membership.removed})
    # Everything acknowledged is already durable, so a shutdown that hangs can end the
    # process like kill -9 would: bounded, never stuck waiting for a peer or a call.
    watchdog = threading.Timer(SHUTDOWN_DEADLINE_S, _exit_after_slow_shutdown)
    watchdog.daemon = True
    watchdog.start()
    await driver.stop()
    await seeder.stop()
    if gateway is not None and gateway_task is not None:
        gateway.should_exit = True
        await asyncio.wait({gateway_task}, timeout=GRACE_S + 1)
    try:
        await asyncio.wait_for(server.stop(GRACE_S), timeout=GRACE_S + 2)
    except TimeoutError:
        log.warning("gRPC server did not stop in time")
    await host.stop()
    if host.meta is not None:
        host.meta.destroy()
    if metrics_server is not None:
        metrics_server.close()
    return exit_code


def _move_to_preferred_leaders(host: NodeHost, leader_since: dict[int, float],
                               moved_at: dict[int, float]) -> None:
    """Spread leaders as the cluster map says: hand a led partition to its preferred node.

    The preferred node is the first voter of the partition in the map (the cluster
    file's first replica until `walletctl cluster rebalance-leaders` changes it;
    never a joining or leaving replica). Only a leadership
    stable for a while is moved, at most every LEADER_MOVE_PERIOD_S per
    partition, and pysyncobj refuses unless the target is fully caught up.
    """
    now = time.monotonic()
    config, node_id = host.config, host.node_id
    for partition, replica in list(host.replicas.items()):
        preferred = config.replicas_of(partition)[0]
        if (preferred == node_id or not replica.is_leader()
                or now - leader_since.get(partition, now) < LEADER_STABLE_S
                or now - moved_at.get(partition, -LEADER_MOVE_PERIOD_S) < LEADER_MOVE_PERIOD_S):
            continue
        moved_at[partition] = now
        log.info("moving leadership to the preferred node",
                 extra={"partition": partition, "to": preferred})
        host.transfer_leadership(partition, config.node(preferred).raft_address(partition))


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
             insecure_dev_mode: bool = False, http_listen: str | None = None,
             raft_bind_port_offset: int = 0, join: bool = False) -> int:
    """Run a node until SIGTERM; returns the process exit status."""
    logs.configure(node_id)
    try:
        config = load_cluster_config(config_path)
        if not config.secret and not (config.insecure_dev_mode or insecure_dev_mode):
            raise StartRefused("the cluster file has no secret: Raft ports would accept "
                               "unauthenticated pickled messages. Set cluster.secret, or use "
                               "--insecure-dev-mode on a development machine only")
        if bootstrap:
            config.node(node_id)  # a typo in --node-id fails here, before the data dir
        # Otherwise the node may be one added later (`node add`): the cluster map, not
        # the bootstrap file, says whether it belongs (initial_map below).
        data_dir_lock_fd = lock_data_dir(data_dir)  # noqa: F841 (held until the process ends)
        incarnation, first_start_open = check_identity(data_dir, config, node_id, bootstrap,
                                                      join)
        cache = MapCache(data_dir / MAP_FILE, initial_map(
            config, node_id, data_dir, incarnation, node_client_credentials(config), join))
        cache.save()
        settings = RaftSettings(fsync=os.environ.get("RAFTWALLET_UNSAFE_NO_FSYNC") != "1",
                                archive=os.environ.get("RAFTWALLET_ARCHIVE") != "off")
        journal_patch.install(fsync=settings.fsync)
        wire.install()
        fail_stop.halt_on_storage_failure()
        factory = NodeGroupFactory(node_id, data_dir, config.secret or None, settings,
                                   raft_bind_port_offset, initialising=first_start_open)
        groups = build_groups(cache.current, factory)
        mark_initialised(data_dir)  # before any replica starts (they start in _serve)
        factory = dataclasses.replace(factory, initialising=False)
    except (ConfigError, KeyError, StartRefused, JournalCorrupt, ArchiveCorrupt,
            snapshot_file.SnapshotFileCorrupt, MapFileCorrupt, ReplicaStateMissing) as exc:
        log.error("node refused to start", extra={"reason": str(exc)})
        print(f"walletctl node start: {exc}", flush=True)
        return EXIT_REFUSED
    host_replicas = groups[0]  # grows and shrinks with the map while serving
    try:
        try:
            import uvloop
            runner = uvloop.run if os.environ.get("RAFTWALLET_UVLOOP") == "1" else asyncio.run
        except ImportError:
            runner = asyncio.run
        exit_code = runner(_serve(config, node_id, cache, groups, factory, incarnation,
                                  ProposerSettings(), http_listen))
    except StartRefused as exc:
        log.error("node refused to start", extra={"reason": str(exc)})
        print(f"walletctl node start: {exc}", flush=True)
        return EXIT_REFUSED
    finally:
        for replica in host_replicas.values():
            replica.destroy()
        logging.shutdown()
    return int(exit_code)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m node.server",
                                     description="Run one RaftWallet node.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--bootstrap", action="store_true",
                        help="create a NEW cluster: this node's data dir must be empty")
    parser.add_argument("--join", action="store_true",
                        help="first start of a node registered with `walletctl node add` "
                             "(empty data dir; the cluster map is fetched from the nodes of "
                             "the cluster file)")
    parser.add_argument("--insecure-dev-mode", action="store_true")
    parser.add_argument("--http-listen", metavar="HOST:PORT", default=None,
                        help="also serve the HTTP/JSON gateway in this process")
    parser.add_argument("--raft-bind-port-offset", type=int, default=0, metavar="N",
                        help="TESTS ONLY (fault-injection proxies, tests/chaos): bind each Raft "
                             "port N higher than the cluster file says, so that a proxy can "
                             "listen on the advertised port; default 0")
    args = parser.parse_args(argv)
    if args.bootstrap and args.join:
        parser.error("--bootstrap and --join exclude each other")
    return run_node(args.config, args.node_id, args.data_dir, args.bootstrap,
                    args.insecure_dev_mode, args.http_listen,
                    raft_bind_port_offset=args.raft_bind_port_offset, join=args.join)


if __name__ == "__main__":
    raise SystemExit(main())
