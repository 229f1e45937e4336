"""A data dir written by an older build loads and replays with today's code.

tests/fixtures/data-dir-v1/ holds the data dirs of a 3-node cluster of 2 partitions,
made by tests/make_data_dir_fixture.py with the code of integration at 8b731e6 (before
node/ became packages, issue #14) and never regenerated: journals with their meta
files, partition 0's snapshots, event archives, the metadata group's journal, the cached
cluster maps, the identity and replica marker files. Its expected.json recorded each
partition's position and state hash and every account's balance as the cluster served
them.

What is checked: every archive replays to the recorded state (`walletctl replay`); every
journal opens (`DurableJournal`) and every command in it unpickles as pysyncobj
unpickles it, naming no class or function of ours (pickles name classes by module path,
so a moved module must never be named in a persisted pickle); the snapshots load and
join the journals; the metadata group's journal rebuilds the cached cluster map; the
identity and marker files are accepted. Then (a cluster test) the three nodes start on
a copy, elect leaders, serve the recorded balances, pass `Verify`, and their archives
still replay to the recorded state hashes at the recorded positions.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.codec import decode_entry
from ledger.state import StateMachine
from node.archive.event_archive import EventArchive
from node.archive.replay_cli import main as replay_main
from node.cluster_map import META, ClusterMap, MapChangeRefused, apply_command, decode_map
from node.config import ClusterConfig, load_cluster_config
from node.membership.reconciler import MAP_FILE, MapCache
from node.raft import replica_guard, snapshot_file
from node.raft.journal import DurableJournal
from node.server import check_identity
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import LocalCluster, bindable, converged, wait_until

FIXTURE = Path(__file__).parent / "fixtures" / "data-dir-v1"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
NODES: list[str] = EXPECTED["nodes"]
PARTITIONS = sorted(int(p) for p in EXPECTED["partitions"])
OURS = ("ledger", "node", "client", "proto", "bench", "tests")
"""Our top-level packages: no persisted pickle may name a module of these."""
REGULAR, NO_OP, MEMBERSHIP, VERSION = 0, 1, 2, 3
"""pysyncobj's command types: the first byte of each journal command."""


def extract(root: Path) -> Path:
    """A writable copy of the fixture's data dirs under `root`: root/n1, root/n2, root/n3."""
    with tarfile.open(FIXTURE / "data.tar.gz") as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="module")
def config() -> ClusterConfig:
    return load_cluster_config(FIXTURE / "cluster.toml")


def group_dirs(node_dir: Path) -> Iterator[tuple[int, Path]]:
    yield META, node_dir / "meta"
    for partition in PARTITIONS:
        yield partition, node_dir / f"partition-{partition}"


class _RecordingUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, named: set[str]) -> None:
        import io
        super().__init__(io.BytesIO(data))
        self._named = named

    def find_class(self, module: str, name: str) -> Any:
        self._named.add(f"{module}.{name}")
        return super().find_class(module, name)


def unpickle(data: bytes, named: set[str]) -> Any:
    return _RecordingUnpickler(data, named).load()


# -- offline: the files themselves -----------------------------------------------------------


@pytest.mark.parametrize("node_id", NODES)
def test_every_archive_replays_to_the_recorded_state_hash(
        data_root: Path, node_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main(["--data-dir", str(data_root / node_id), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    replayed = {p["partition"]: p for p in document["partitions"]}
    assert sorted(replayed) == PARTITIONS
    for partition in PARTITIONS:
        expected = EXPECTED["partitions"][str(partition)]
        found = replayed[partition]
        assert (found["position"], found["state_hash"]) == (
            expected["position"], expected["state_hash"])
        assert found["results_mismatches"] == 0
        balances = {b["account"]: (b["balance"], b["currency"]) for b in found["balances"]}
        assert balances == {
            account: (b["balance"], b["currency"])
            for account, b in EXPECTED["balances"].items() if b["partition"] == partition}
        assert replay_main(["--data-dir", str(data_root / node_id), "--partition",
                            str(partition), "--compare-with-hash",
                            expected["state_hash"]]) == 0


@pytest.mark.parametrize("node_id", NODES)
def test_every_journal_opens_and_its_pickles_name_nothing_of_ours(
        data_root: Path, node_id: str) -> None:
    named: set[str] = set()
    for group, directory in group_dirs(data_root / node_id):
        journal = DurableJournal(str(directory / "journal"), fsync=False)
        try:
            entries = [journal[i] for i in range(len(journal))]
            indexes = [int(idx) for _, idx, _ in entries]
            assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
            assert journal.getRaftCommitIndex() <= indexes[-1]
            assert journal.getCurrentTerm() >= max(int(term) for _, _, term in entries)
        finally:
            journal._destroy()
        kinds = set()
        for command, _, _ in entries:
            kind = command[0]
            kinds.add(kind)
            if kind == NO_OP:
                continue
            assert kind in (REGULAR, MEMBERSHIP, VERSION), kind
            call = unpickle(bytes(command[1:]), named)
            if kind == REGULAR:  # (method number, args): our one replicated method each
                method, (blob,) = call
                assert method == 0
                if group == META:
                    assert isinstance(json.loads(blob), dict)
                else:
                    decode_entry(blob)
        assert REGULAR in kinds
    assert not [n for n in named if n.split(".")[0] in OURS], named


@pytest.mark.parametrize("node_id", NODES)
def test_snapshots_load_and_join_their_journals_and_archives(
        data_root: Path, node_id: str, config: ClusterConfig) -> None:
    for partition in PARTITIONS:
        directory = data_root / node_id / f"partition-{partition}"
        path = directory / "snapshot"
        if partition != EXPECTED["snapshot_partition"]:
            assert not path.exists()
            meta = None
        else:
            meta, ledger_snapshot = snapshot_file.read(str(path))
            state = StateMachine.restore(ledger_snapshot)
            assert state.partition == partition
            assert 0 < state.position <= EXPECTED["partitions"][str(partition)]["position"]
            assert meta.archive_position == state.position
            assert set(meta.members) == {
                config.node(node_id).raft_address(partition) for node_id in NODES}
        journal = DurableJournal(str(directory / "journal"), fsync=False)
        archive = EventArchive(str(directory / "archive"), partition, fsync=False)
        try:
            assert archive.last_position == EXPECTED["partitions"][str(partition)]["position"]
            replica_guard.check_log_covers(
                str(directory), partition, int(journal[0][1]), int(journal[-1][1]), meta,
                archive.last_log_index, journal.getRaftCommitIndex())
        finally:
            journal._destroy()
            archive.close()


@pytest.mark.parametrize("node_id", NODES)
def test_the_metadata_journal_rebuilds_the_cached_cluster_map(
        data_root: Path, node_id: str) -> None:
    node_dir = data_root / node_id
    journal = DurableJournal(str(node_dir / "meta" / "journal"), fsync=False)
    try:
        commands = [json.loads(unpickle(bytes(command[1:]), set())[1][0])
                    for command, _, _ in (journal[i] for i in range(len(journal)))
                    if command[0] == REGULAR]
    finally:
        journal._destroy()
    current: ClusterMap | None = None
    for command in commands:  # as MetadataGroup._apply, refusals skipped
        if command.get("op") == "bootstrap":
            current = current or decode_map(command["map"].encode())
            continue
        if current is None:
            continue  # refused: the map is not bootstrapped yet
        try:
            current = apply_command(current, command)
        except MapChangeRefused:
            continue
    cached = MapCache.load(node_dir / MAP_FILE)
    assert cached is not None and current == cached
    assert decode_map((node_dir / MAP_FILE).read_bytes()).name == "fixture"


@pytest.mark.parametrize("node_id", NODES)
def test_identity_and_replica_markers_are_accepted(
        data_root: Path, node_id: str, config: ClusterConfig) -> None:
    node_dir = data_root / node_id
    incarnation, first_start_open = check_identity(node_dir, config, node_id, bootstrap=False)
    assert incarnation and not first_start_open
    for group, directory in group_dirs(node_dir):
        replica_guard.check_marker(directory, group, node_id, member=True, initialising=False)


# -- online: the nodes start on it -----------------------------------------------------------


def _ports_free(config: ClusterConfig) -> bool:
    return all(bindable(port) for node in config.nodes
               for port in (node.grpc_port, node.metrics_port,
                            *(node.raft_port_base + p for p in range(config.partition_count + 1)))
               if port is not None)


@pytest.mark.cluster
def test_the_nodes_start_on_it_and_serve_the_recorded_state(
        tmp_path: Path, config: ClusterConfig) -> None:
    """A new leader's LeaderStart entry and each linearizable read's barrier extend the
    logs: the recorded state must be the prefix of what the nodes then hold."""
    # Raft addresses are in the snapshots and the map: the fixture's own ports it must be.
    deadline = time.monotonic() + 60
    while not _ports_free(config):
        assert time.monotonic() < deadline, "the fixture's ports 61400-61414 stay in use"
        time.sleep(1)
    extract(tmp_path / "data")
    cluster = LocalCluster(tmp_path, config=config)
    try:
        cluster.start_all(bootstrap=False)
        for node_id, view in cluster.local_views().items():
            for found in view.partitions:
                expected = EXPECTED["partitions"][str(found.partition)]
                assert found.applied_position >= expected["position"], (node_id, found)
        for node_id in NODES:
            for account, expected in EXPECTED["balances"].items():
                response = cluster.wallet(node_id).GetBalance(
                    pb.GetBalanceRequest(account_id=account), timeout=30)
                assert (response.balance, response.currency) == (
                    expected["balance"], expected["currency"]), (node_id, account)
        wait_until(lambda: converged(cluster), "replicas to converge")
        for node_id in NODES:
            verdict = cluster.admin(node_id).Verify(pb.VerifyRequest(), timeout=60)
            assert verdict.ok, (node_id, verdict)
    finally:
        cluster.stop_all()
    for node_id, process in cluster.processes.items():
        assert process.returncode == 0, f"{node_id}:\n{cluster.log(node_id)[-3000:]}"
    for node_id in NODES:
        for partition in PARTITIONS:
            expected = EXPECTED["partitions"][str(partition)]
            assert replay_main([
                "--data-dir", str(cluster.node_dir(node_id)), "--partition", str(partition),
                "--until-position", str(expected["position"]),
                "--compare-with-hash", expected["state_hash"]]) == 0, (node_id, partition)
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
