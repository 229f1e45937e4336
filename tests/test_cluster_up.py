"""`walletctl cluster up` and `cluster down` as a user runs them: subprocesses, real nodes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import dump_cluster_config, local_cluster_config
from tests.cluster_harness import WAIT_S, LocalCluster, allocate_ports

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

REPO = Path(__file__).resolve().parent.parent
EXIT_NODE_EXITED = 3


def walletctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli.walletctl", *argv], cwd=REPO, capture_output=True,
        text=True, timeout=2 * WAIT_S, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def exited_nodes(stderr: str) -> dict[str, tuple[int, str]]:
    """node id -> (pid, reason) of each `node N (pid P) exited with status 3: REASON` line."""
    return {m["node"]: (int(m["pid"]), m["reason"]) for m in re.finditer(
        r"node (?P<node>\S+) \(pid (?P<pid>\d+)\) exited with status 3: (?P<reason>.+)", stderr)}


@pytest.fixture
def other_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster already serving on the ports of its cluster file."""
    (tmp_path / "other").mkdir()
    cluster = LocalCluster(tmp_path / "other", nodes=3, partitions=1)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def test_cluster_up_on_the_ports_of_a_running_cluster_fails_with_its_nodes_reasons(
        other_cluster: LocalCluster, tmp_path: Path) -> None:
    data_dir = tmp_path / "second"

    done = walletctl("cluster", "up", "--config", str(other_cluster.config_path),
                     "--data-dir", str(data_dir))

    assert done.returncode == EXIT_NODE_EXITED, done.stdout + done.stderr
    assert "every partition has a leader" not in done.stdout
    exited = exited_nodes(done.stderr)
    assert set(exited) == {"n1", "n2", "n3"}, done.stderr
    for node_id, (pid, reason) in exited.items():
        assert gone(pid), node_id
        assert f"(log {data_dir / f'{node_id}.log'})" in reason
    assert "another cluster answers on the ports of this cluster file" in done.stderr
    assert not (data_dir / "cluster.json").exists()
    # The running cluster was not disturbed.
    assert other_cluster.wait_for_leaders().partitions[0].leader_node_id


def test_a_node_whose_raft_port_is_held_names_it_and_cluster_up_stops_the_others(
        tmp_path: Path) -> None:
    config = local_cluster_config("held", 3, 1, allocate_ports)
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(dump_cluster_config(config), encoding="utf-8")
    held_port = config.node("n2").raft_port_base
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", held_port))
        holder.listen()

        done = walletctl("cluster", "up", "--config", str(config_path),
                         "--data-dir", str(tmp_path / "data"), "--json")

    assert done.returncode == EXIT_NODE_EXITED, done.stdout + done.stderr
    _, reason = exited_nodes(done.stderr)["n2"]
    assert reason.startswith(f"cannot bind the Raft port 127.0.0.1:{held_port} of partition 0: "
                             "it is in use"), reason
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", done.stderr)]
    assert len(pids) == 3 and all(gone(p) for p in pids)
    assert '"ready": false' in done.stdout


def test_cluster_up_then_down_with_the_global_options_after_the_command(tmp_path: Path) -> None:
    config = local_cluster_config("updown", 3, 1, allocate_ports)
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(dump_cluster_config(config), encoding="utf-8")
    data_dir = tmp_path / "data"

    up = walletctl("cluster", "up", "--data-dir", str(data_dir), "--config", str(config_path))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.splitlines()[-1] == "every partition has a leader"
    finally:
        down = walletctl("cluster", "down", "--data-dir", str(data_dir),
                         "--config", str(config_path), "--json")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == '{"stopped": ["n1", "n2", "n3"]}'
