"""The operator's side of a replacement: `walletctl` as an operator runs it, and the map
reading that decides which node may be replaced.

The chaos runner replaces a node whose disk was lost exactly as the runbook says
(docs/cluster.md, "The cluster map"): `walletctl node add` under a new id, the new node
started with `--join`, for each group of the old node `walletctl replica add` of the new
one (which waits until it is a caught-up voter) then `replica remove` of the old one,
then `walletctl node remove`. Every command runs as its own process through the
network's client wrapper (in a netns run only the client namespace reaches the nodes),
with the cluster file for its tokens, and its output goes to the run's runbook log.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.cluster_map import META, VOTER, ClusterMap, decode_map

RPC_TIMEOUT_S = 20.0
"""walletctl --timeout: each call retries transient failures (a leader change) this long."""
CONVERGE_WAIT_S = 150.0
"""walletctl --wait-s: how long a replica add/remove may take to converge."""
PROCESS_SLACK_S = 60.0
"""A walletctl process is killed this long after its own deadlines have all passed."""


class RunbookStepFailed(Exception):
    """A walletctl command exited non-zero or hung; the message has its output."""


def group_label(group: int) -> str:
    return "meta" if group == META else f"p{group}"


def group_flags(group: int) -> tuple[str, ...]:
    return ("--metadata",) if group == META else ("--partition", str(group))


def replaceable(cluster_map: ClusterMap) -> tuple[str, ...]:
    """The nodes that may be lost and replaced now, by the map alone:

    - membership is settled: no group has a joining or leaving slot (pysyncobj changes a
      group one server at a time, and the runbook's changes must not be refused);
    - the node's incarnation is recorded (otherwise the old id would not be refused);
    - every group the node is in keeps a majority of its voters without it (the runbook
      changes each group through its leader; a group of one could not lose its only
      replica, nor could the metadata group its only voter).
    """
    if any(slot.state != VOTER for group in cluster_map.group_ids()
           for slot in cluster_map.slots(group)):
        return ()
    chosen = []
    for node in cluster_map.nodes:
        if cluster_map.incarnation_of(node.id) is None:
            continue
        groups = cluster_map.groups_of(node.id)
        if all(len(cluster_map.slots(g)) - 1 >= len(cluster_map.slots(g)) // 2 + 1
               for g in groups):
            chosen.append(node.id)
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    seconds: float


class Walletctl:
    """Runs `python -m node.cli.walletctl ARGS --config FILE` through `wrap` (the network's
    client_command), logging each command and its output to `log_path`."""

    def __init__(self, wrap: Callable[[Sequence[str]], list[str]], config_path: Path,
                 log_path: Path, cwd: Path) -> None:
        self.wrap, self.config_path, self.log_path, self.cwd = wrap, config_path, log_path, cwd

    def run(self, *args: str, wait_s: float = 0.0, rpc_timeout_s: float = RPC_TIMEOUT_S) -> str:
        """The command's stdout; RunbookStepFailed unless it exits 0 within its deadlines."""
        argv = [sys.executable, "-m", "node.cli.walletctl", *args,
                "--config", str(self.config_path), "--timeout", f"{rpc_timeout_s:g}"]
        command = self.wrap(argv)
        timeout_s = rpc_timeout_s + wait_s + PROCESS_SLACK_S
        started = time.monotonic()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                    check=False, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, PYTHONPATH=str(self.cwd)))
            code, stdout, stderr = result.returncode, result.stdout, result.stderr
        except subprocess.TimeoutExpired as expired:  # run() has killed it
            code, stdout, stderr = None, _text(expired.stdout), _text(expired.stderr)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"$ walletctl {shlex.join(args)}  # exit {code} after "
                      f"{time.monotonic() - started:.1f} s\n{stdout}{stderr}\n")
        if code != 0:
            what = "hung" if code is None else f"exited {code}"
            raise RunbookStepFailed(f"walletctl {shlex.join(args)} {what}: "
                                    f"{(stderr or stdout).strip()[-500:]}")
        return stdout

    def cluster_map(self) -> ClusterMap:
        return decode_map(self.run("--json", "cluster", "map").encode())

    def serves(self, grpc_address: str, rpc_timeout_s: float) -> bool:
        """True when the node at `grpc_address` answers GetClusterMap."""
        try:
            self.run("--json", "cluster", "map", "--target", grpc_address,
                     rpc_timeout_s=rpc_timeout_s)
        except RunbookStepFailed:
            return False
        return True


def _text(output: bytes | str | None) -> str:
    if output is None:
        return ""
    return output if isinstance(output, str) else output.decode("utf-8", "replace")
