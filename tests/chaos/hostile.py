"""Hostile bytes on Raft ports: the chaos suite's `hostile` fault, as its own process.

    python -m tests.chaos.hostile --duration-s 5 HOST:PORT [HOST:PORT ...]

For `duration_s`, keeps one connection open to each address that announces a message
of 2 GiB (a length prefix no unauthenticated peer may send) and then streams junk as
fast as the socket takes it; when the server closes a connection, it opens another.
Needs no secret: that is the point. Prints one JSON line at the end: connections
opened, closed by the server, and bytes sent. Runs through the network's client
wrapper (network.py), like the workload, so it reaches the nodes in a netns run too.
Bounded: it stops by itself after `duration_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tests.chaos.runbook import Walletctl

if TYPE_CHECKING:
    from tests.chaos.network import ChaosNetwork
    from tests.chaos.runner import LoopbackNetwork

HUGE_LENGTH_PREFIX: Final = struct.pack("i", 2**31 - 1)
JUNK: Final = bytes(range(256)) * 256
CONNECT_TIMEOUT_S: Final = 1.0
SEND_PAUSE_S: Final = 0.01
ATTACK_END_WAIT_S: Final = 30.0
REPO_ROOT: Final = Path(__file__).resolve().parent.parent.parent


def _connect(address: str) -> socket.socket | None:
    host, _, port = address.rpartition(":")
    try:
        connection = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return None
    connection.setblocking(False)
    try:
        connection.send(HUGE_LENGTH_PREFIX)
    except OSError:
        connection.close()
        return None
    return connection


def attack(addresses: list[str], duration_s: float) -> dict[str, int]:
    tally = {"opened": 0, "closed_by_server": 0, "bytes_sent": 0}
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + duration_s
    live: dict[str, socket.socket] = {}
    try:
        while time.monotonic() < deadline:
            for address in addresses:
                if address not in live and (connection := _connect(address)) is not None:
                    live[address] = connection
                    selector.register(connection, selectors.EVENT_WRITE, address)
                    tally["opened"] += 1
            for key, _ in selector.select(timeout=0.05):
                address = key.data
                writing = live[address]
                try:
                    tally["bytes_sent"] += writing.send(JUNK)
                except OSError:  # reset or closed by the server
                    selector.unregister(writing)
                    writing.close()
                    del live[address]
                    tally["closed_by_server"] += 1
            time.sleep(SEND_PAUSE_S)  # bounded pressure: ~6 MB/s a connection
    finally:
        for connection in live.values():
            selector.unregister(connection)
            connection.close()
        selector.close()
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.hostile",
                                     description="Stream hostile bytes at Raft ports.")
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    print(json.dumps(attack(args.addresses, args.duration_s)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class HostileFaults:
    """The `hostile` fault of `runner.Nodes` (the nemesis' `Target`): a mixin of Nodes,
    which provides what is declared here."""

    out: Path
    network: ChaosNetwork | LoopbackNetwork
    problems: list[str]
    _walletctl: Walletctl
    _attacks: dict[str, subprocess.Popen[bytes]]

    def hostile(self, node_id: str, duration_s: float) -> str:
        """Hostile bytes on every Raft port of the node for `duration_s` (its own process)."""
        cluster_map = self._walletctl.cluster_map()
        addresses = [cluster_map.raft_address(group, node_id)
                     for group in cluster_map.groups_of(node_id)]
        argv = [sys.executable, "-m", "tests.chaos.hostile", "--duration-s", f"{duration_s:g}",
                *addresses]
        self._attacks[node_id] = subprocess.Popen(
            self.network.client_command(argv), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), start_new_session=True)
        return f"on {len(addresses)} Raft ports"

    def end_hostile(self, node_id: str) -> str:
        attack = self._attacks.pop(node_id)
        try:
            stdout, _ = attack.communicate(timeout=ATTACK_END_WAIT_S)
        except subprocess.TimeoutExpired:
            attack.kill()
            attack.communicate(timeout=ATTACK_END_WAIT_S)
            self.problems.append(f"the hostile client against {node_id} did not end")
            return "the hostile client did not end"
        lines = stdout.decode("utf-8", "replace").strip().splitlines()
        tally = json.loads(lines[-1]) if lines else {}
        if tally.get("opened", 0) and not tally.get("closed_by_server", 0):
            self.problems.append(f"{node_id} never closed a hostile Raft connection: {tally}")
        return (f"{tally.get('opened', 0)} connections, {tally.get('closed_by_server', 0)} "
                f"closed by the node, {tally.get('bytes_sent', 0) / 2**20:.1f} MiB sent")
