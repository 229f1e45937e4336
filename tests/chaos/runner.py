"""One chaos run, end to end: nodes, workload, nemesis, healing, settle, verdict.

    python -m tests.chaos.runner --duration-s 120 --seed 7 --network auto \\
        --nodes 3 --partitions 4 --out /tmp/chaos

1. builds the cluster on the chosen network (`network.py`: netns or proxy, which can cut
   and slow links; or "loopback": plain 127.0.0.1, process faults only) and starts one
   node process per node (their logs in OUT/logs/);
2. starts the workload (`workload.py run`) as a client process; once its accounts are
   open (OUT/setup.json), runs the nemesis' seeded schedule for `duration_s`;
3. heals everything (SIGCONT, restart the dead, network healed), lets the workload run
   `recovery_s` more, stops it, runs `workload.py settle`, then the checker;
4. prints the summary (and the seed, to replay), stops every process it started, tears
   the network down. Exit status 0 only on a passing verdict.

A node that exits without the nemesis having killed it (e.g. a halted apply, status 70)
is a violation (OUT/runner-problems.json), and so is a replacement whose runbook failed
or whose old id was not refused (`Nodes.replace`; its walletctl commands and their
output are in OUT/logs/runbook.log). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from node.cli.launcher import node_command
from node.config import ClusterConfig, NodeConfig, dump_cluster_config, local_cluster_config
from tests.chaos.checker import RUNNER_PROBLEMS_FILE, Report, check_dir, render
from tests.chaos.history import SAMPLES_FILE, SETUP_FILE, Sample, sample_from_json
from tests.chaos.hostile import HostileFaults
from tests.chaos.nemesis import (
    ALL_FAULTS,
    NEMESIS_FILE,
    NETWORK_FAULTS,
    FaultFailed,
    FaultKind,
    Nemesis,
    ScheduleShape,
    plan,
)
from tests.chaos.network import ChaosNetwork, open_network, raft_port_count
from tests.chaos.runbook import (
    CONVERGE_WAIT_S,
    RunbookStepFailed,
    Step,
    Walletctl,
    group_flags,
    group_label,
    replaceable,
)
from tests.chaos.storage import DISK_MIB, StorageFaults
from tests.cluster_harness import allocate_ports

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SETUP_TIMEOUT_S = 180.0
"""Cluster start, leader election and account setup, on a loaded machine."""
WORKLOAD_STOP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 240.0
NODE_STOP_GRACE_S = 10.0
LEADER_SAMPLE_TAIL_BYTES = 65_536
"""How much of the end of samples.jsonl is read to learn the current leaders."""
REFUSED_EXIT_STATUS = 3
"""node.server's exit status when it refuses to start (node.server.EXIT_REFUSED)."""
REFUSAL_WAIT_S = 60.0
"""How long the old id may take to be refused (it asks the other nodes for the map)."""
JOIN_ATTEMPTS_MAX = 5
"""Starts of a new node with --join before the runbook gives up. A node that finds no
peer answering GetClusterMap within its 1 s timeout refuses to start (status 3): on a
loaded machine the operator (or systemd) starts it again."""
JOIN_SERVE_WAIT_S = 60.0
"""How long one start of the new node may take to serve gRPC."""
SERVES_RPC_TIMEOUT_S = 2.0
"""Deadline of one "does the new node serve yet" call."""
NEMESIS_END_WAIT_S = 300.0
"""After the run's duration, how long the fault in progress may take to end (a
replacement's runbook runs to its end: half a membership change is not healed)."""
RUNBOOK_LOG = "runbook.log"


class LoopbackNetwork:
    """No network faults: every node on 127.0.0.1, clients run as they are."""

    kind = "loopback"

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self._raft_ports = 0
        self._metrics = False

    def build_config(self, node_ids: Sequence[str], partitions: int,
                     name: str) -> ClusterConfig:
        config = local_cluster_config(name, len(node_ids), partitions, allocate_ports,
                                      replication_factor=min(3, len(node_ids)))
        assert tuple(n.id for n in config.nodes) == tuple(node_ids), "nodes are n1..nN"
        self._raft_ports = raft_port_count(config)
        self._metrics = any(node.metrics_port is not None for node in config.nodes)
        return config

    def add_node(self, node_id: str) -> NodeConfig:
        assert self._raft_ports, "add_node comes after build_config"
        return NodeConfig(node_id, "127.0.0.1", allocate_ports(1),
                          allocate_ports(self._raft_ports),
                          allocate_ports(1) if self._metrics else None)

    def node_command(self, node_id: str, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def node_extra_args(self, node_id: str) -> tuple[str, ...]:
        return ()

    def client_command(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def isolate(self, node_id: str) -> None:
        raise NotImplementedError("the loopback network injects no network faults")

    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        raise NotImplementedError("the loopback network injects no network faults")

    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None:
        raise NotImplementedError("the loopback network injects no network faults")

    def heal(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def __enter__(self) -> LoopbackNetwork:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.teardown()


def make_network(kind: str) -> ChaosNetwork | LoopbackNetwork:
    return LoopbackNetwork() if kind == "loopback" else open_network(kind)


class Nodes(StorageFaults, HostileFaults):
    """The node processes of a run, and the nemesis' handle on them (its `Target`)."""

    def __init__(self, network: ChaosNetwork | LoopbackNetwork, config: ClusterConfig,
                 config_path: Path, out: Path, disk_mib: int | None = None) -> None:
        self.network, self.config, self.config_path, self.out = network, config, config_path, out
        self.disk_mib = disk_mib
        """Each node's data dir is a tmpfs of this size (disk faults), or a plain dir."""
        self.mounted: list[Path] = []
        self.grpc_addresses = {n.id: n.grpc_address for n in config.nodes}
        self._attacks: dict[str, subprocess.Popen[bytes]] = {}
        self.node_ids = tuple(n.id for n in config.nodes)
        """The current members: a replacement swaps the old id for the new one."""
        self.ids_used = set(self.node_ids)
        """Every id this run has given a node: a new node never reuses one."""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.expected_down: set[str] = set()
        self.paused: set[str] = set()
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._walletctl = Walletctl(network.client_command, config_path,
                                    out / "logs" / RUNBOOK_LOG, REPO_ROOT)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "data").mkdir(parents=True, exist_ok=True)

    def _spawn(self, node_id: str, *flags: str) -> subprocess.Popen[bytes]:
        self.prepare_disk(node_id)
        argv = [*node_command(self.config_path, node_id, self.out / "data" / node_id, False),
                *flags, *self.network.node_extra_args(node_id)]
        with open(self.out / "logs" / f"{node_id}.log", "ab") as log:
            return subprocess.Popen(self.network.node_command(node_id, argv), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=REPO_ROOT)

    def start(self, node_id: str, bootstrap: bool = False, join: bool = False) -> None:
        assert not (bootstrap and join)
        flags = ("--bootstrap",) if bootstrap else ("--join",) if join else ()
        process = self._spawn(node_id, *flags)
        with self._lock:
            self.processes[node_id] = process
            self.expected_down.discard(node_id)

    def check_alive(self) -> None:
        """Record every node that died without the nemesis killing it."""
        with self._lock:
            for node_id, process in self.processes.items():
                code = process.poll()
                if code is not None and node_id not in self.expected_down:
                    self.problems.append(f"node {node_id} exited on its own with status {code} "
                                         f"(see {self.out / 'logs' / (node_id + '.log')})")
                    self.expected_down.add(node_id)  # reported once; restarted by heal

    # -- Target

    def leaders(self) -> dict[int, str]:
        sample = _last_sample(self.out / SAMPLES_FILE)
        if sample is None:
            return {}
        return {p: leader for p in range(self.config.partition_count)
                if (leader := sample.leader_of(p)) is not None and leader not in
                self.expected_down | self.paused}

    def kill(self, node_id: str) -> None:
        self.check_alive()
        with self._lock:
            self.expected_down.add(node_id)
            process = self.processes[node_id]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=NODE_STOP_GRACE_S)

    def restart(self, node_id: str) -> None:
        process = self.processes[node_id]
        if process.poll() is None:
            return
        self.start(node_id)

    def pause(self, node_id: str) -> None:
        self.paused.add(node_id)
        self.processes[node_id].send_signal(signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        process = self.processes[node_id]
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
        self.paused.discard(node_id)

    def isolate(self, node_id: str) -> None:
        self.network.isolate(node_id)

    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        self.network.split(side_a, side_b)

    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None:
        self.network.slow(node_id, delay_ms, drop_rate)

    def heal_network(self) -> None:
        self.network.heal()

    def replaceable(self) -> tuple[str, ...]:
        try:
            cluster_map = self._walletctl.cluster_map()
        except RunbookStepFailed:
            return ()
        up = set(self.node_ids) - self.expected_down - self.paused
        candidates = set(replaceable(cluster_map))
        # Every other member must be up: the runbook needs each group's majority.
        return tuple(n for n in self.node_ids
                     if n in candidates and up >= set(self.node_ids) - {n})

    def wipe(self, node_id: str) -> None:
        with self._lock:
            process = self.processes[node_id]
        assert process.poll() is not None, f"{node_id} must be dead before its disk is wiped"
        self._lose_disk(node_id)

    def _lose_disk(self, node_id: str) -> None:
        data_dir = self.node_dir(node_id)
        if data_dir in self.mounted:  # a filesystem of its own: empty it
            for path in data_dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif data_dir.exists():
            shutil.rmtree(data_dir)

    def replace(self, node_id: str) -> str:
        """The runbook for a node whose disk was lost; see runbook.py and nemesis.py."""
        try:
            return self._replace(node_id)
        except (RunbookStepFailed, FaultFailed, OSError, ValueError, RuntimeError) as error:
            problem = f"replacing {node_id} failed: {error} (see {self.out / 'logs'})"
            self.problems.append(problem)
            raise FaultFailed(problem) from error

    def _start_joining(self, node: NodeConfig) -> int:
        """Start the new node with --join, again if it refuses for want of a peer's answer,
        until it serves gRPC; a member from then on. Returns how many starts it took."""
        with self._lock:
            self.node_ids = (*self.node_ids, node.id)
        for attempt in range(1, JOIN_ATTEMPTS_MAX + 1):
            process = self._spawn(node.id, "--join")
            with self._lock:  # expected down until it serves: a refusal here is retried
                self.processes[node.id] = process
                self.expected_down.add(node.id)
            deadline = time.monotonic() + JOIN_SERVE_WAIT_S
            while process.poll() is None and time.monotonic() < deadline:
                if self._walletctl.serves(node.grpc_address, SERVES_RPC_TIMEOUT_S):
                    with self._lock:
                        self.expected_down.discard(node.id)
                    return attempt
                time.sleep(0.5)
            if process.poll() is None:
                process.kill()
                process.wait(timeout=NODE_STOP_GRACE_S)
                raise FaultFailed(f"{node.id} did not serve within {JOIN_SERVE_WAIT_S:.0f} s "
                                  "of its start with --join")
            if process.returncode != REFUSED_EXIT_STATUS:
                raise FaultFailed(f"{node.id} started with --join exited {process.returncode}")
        raise FaultFailed(f"{node.id} refused to start with --join {JOIN_ATTEMPTS_MAX} times")

    def _replace(self, old_id: str) -> str:
        started = time.monotonic()
        steps: list[Step] = []

        def step(name: str, *args: str, wait_s: float = 0.0) -> None:
            began = time.monotonic()
            self._walletctl.run(*args, wait_s=wait_s)
            steps.append(Step(name, time.monotonic() - began))

        new_id = f"n{max(int(n[1:]) for n in self.ids_used) + 1}"
        self.ids_used.add(new_id)
        node = self.network.add_node(new_id)
        self.grpc_addresses[new_id] = node.grpc_address
        metrics = ("--metrics-port", str(node.metrics_port)) if node.metrics_port else ()
        step("node add", "node", "add", "--id", new_id, "--host", node.host, "--grpc-port",
             str(node.grpc_port), "--raft-port-base", str(node.raft_port_base), *metrics)
        began = time.monotonic()
        attempts = self._start_joining(node)
        steps.append(Step(f"start --join ({attempts} attempts)" if attempts > 1 else
                          "start --join", time.monotonic() - began))
        groups = self._walletctl.cluster_map().groups_of(old_id)
        wait = ("--wait-s", f"{CONVERGE_WAIT_S:g}")
        for group in groups:
            step(f"{group_label(group)} add", "replica", "add", *group_flags(group), "--node",
                 new_id, *wait, wait_s=CONVERGE_WAIT_S)
            step(f"{group_label(group)} remove", "replica", "remove", *group_flags(group),
                 "--node", old_id, *wait, wait_s=CONVERGE_WAIT_S)
        step("node remove", "node", "remove", old_id)
        with self._lock:
            self.node_ids = tuple(n for n in self.node_ids if n != old_id)
            self.processes.pop(old_id)
            self.expected_down.discard(old_id)
            self.paused.discard(old_id)
        runbook_s = time.monotonic() - started
        self._lose_disk(old_id)  # (a damaged one is given up: the node was replaced)
        refused = self._spawn(old_id, "--bootstrap")  # a new empty disk under the old id
        try:
            status = refused.wait(timeout=REFUSAL_WAIT_S)
        except subprocess.TimeoutExpired:
            refused.kill()
            refused.wait(timeout=NODE_STOP_GRACE_S)
            raise FaultFailed(f"{old_id} came back under its old id with an empty disk and "
                              f"was NOT refused (still running after {REFUSAL_WAIT_S:.0f} s)"
                              ) from None
        if status != REFUSED_EXIT_STATUS:
            raise FaultFailed(f"{old_id} restarted with an empty disk exited {status}, not "
                              f"{REFUSED_EXIT_STATUS} (refused)")
        timings = ", ".join(f"{s.name} {s.seconds:.1f} s" for s in steps)
        summary = (f"-> {new_id} in {runbook_s:.1f} s ({timings}); {old_id} refused "
                   f"(status {status})")
        return summary

    # -- the end

    def heal_all(self) -> None:
        """Everything back: network healed, paused nodes resumed, dead members restarted."""
        self.network.heal()
        for node_id in list(self.paused):
            self.resume(node_id)
        self.check_alive()
        for node_id in self.node_ids:
            self.restart(node_id)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + NODE_STOP_GRACE_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=NODE_STOP_GRACE_S)
        self.unmount_all()


def _last_sample(path: Path) -> Sample | None:
    if not path.exists():
        return None
    with open(path, "rb") as samples:
        samples.seek(max(0, path.stat().st_size - LEADER_SAMPLE_TAIL_BYTES))
        lines = samples.read().decode("utf-8", "replace").split("\n")
    for line in reversed(lines[1:] if len(lines) > 1 else lines):
        try:
            return sample_from_json(line)
        except (ValueError, TypeError):
            continue
    return None


@dataclass(frozen=True, slots=True)
class RunOptions:
    duration_s: float
    seed: int
    network: str
    nodes: int
    partitions: int
    out: Path
    faults: tuple[FaultKind, ...]
    workers: int = 4
    recovery_s: float = 5.0
    shape: ScheduleShape = field(default_factory=ScheduleShape)


class Client:
    """A client process (workload, settle) run through the network's client wrapper."""

    def __init__(self, network: ChaosNetwork | LoopbackNetwork, argv: Sequence[str],
                 log_path: Path) -> None:
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 (closed in wait/kill)
        self.process = subprocess.Popen(
            network.client_command([sys.executable, *argv]), stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))

    def wait(self, timeout_s: float) -> int:
        """Its exit status; -1 if it had to be killed after `timeout_s`."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return -1
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=NODE_STOP_GRACE_S)
        self._log.close()


def _wait_for(path: Path, client: Client, nodes: Nodes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if client.process.poll() is not None:
            raise RuntimeError(f"the workload exited with {client.process.returncode} "
                               f"before {path.name} (see {path.parent / 'workload.log'})")
        nodes.check_alive()
        if nodes.problems:
            raise RuntimeError("; ".join(nodes.problems))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {path.name} after {timeout_s:.0f} s")
        time.sleep(0.2)


def run(options: RunOptions, say: Callable[[str], None] = print) -> Report:
    """One whole run; returns the checker's report (the verdict is `report.ok`)."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    network = make_network(options.network)
    kinds = [k for k in options.faults
             if k not in NETWORK_FAULTS or network.kind != "loopback"]
    schedule = plan(options.seed, options.duration_s, kinds, options.shape)
    say(f"chaos: seed {options.seed} network {network.kind} nodes {options.nodes} partitions "
        f"{options.partitions} duration {options.duration_s:.0f} s faults "
        f"{','.join(kinds)} ({len(schedule)} planned); records in {out}")
    say(f"chaos: replay with: python -m tests.chaos.runner --seed {options.seed} "
        f"--duration-s {options.duration_s:g} --network {options.network} --nodes "
        f"{options.nodes} --partitions {options.partitions} --faults {','.join(kinds)}")
    workload: Client | None = None
    nodes: Nodes | None = None
    try:
        config = network.build_config([f"n{i}" for i in range(1, options.nodes + 1)],
                                      options.partitions, "chaos")
        config_path = out / "cluster.toml"
        config_path.write_text(dump_cluster_config(config), encoding="utf-8")
        nodes = Nodes(network, config, config_path, out,
                      DISK_MIB if FaultKind.DISK_FULL in kinds else None)
        for node_id in nodes.node_ids:
            nodes.start(node_id, bootstrap=True)
        workload = Client(network, [
            "-m", "tests.chaos.workload", "run", "--config", str(config_path), "--out",
            str(out), "--seed", str(options.seed), "--workers", str(options.workers),
            "--max-duration-s", str(options.duration_s + SETUP_TIMEOUT_S)],
            out / "workload.log")
        _wait_for(out / SETUP_FILE, workload, nodes, SETUP_TIMEOUT_S)
        say("chaos: accounts open, the nemesis starts")
        nemesis = Nemesis(nodes, schedule, out / NEMESIS_FILE, say)
        stop = threading.Event()
        runner = threading.Thread(target=nemesis.run, args=(time.monotonic(), stop),
                                  daemon=True)
        runner.start()
        deadline = time.monotonic() + options.duration_s
        while time.monotonic() < deadline:
            runner.join(timeout=0.5)
            nodes.check_alive()
        stop.set()
        runner.join(timeout=NEMESIS_END_WAIT_S)
        if runner.is_alive():
            nodes.problems.append(f"the nemesis' last fault did not end within "
                                  f"{NEMESIS_END_WAIT_S:.0f} s of the run's end")
        else:
            nemesis.heal()
        nodes.heal_all()
        say(f"chaos: healed; the workload runs {options.recovery_s:.0f} s more")
        time.sleep(options.recovery_s)  # deliberate: the recovery period itself is measured
        (out / "stop").touch()
        if workload.wait(WORKLOAD_STOP_TIMEOUT_S) != 0:
            nodes.problems.append(f"the workload failed (see {out / 'workload.log'})")
        nodes.check_alive()
        say("chaos: settling (resolving unknown outcomes, waiting for quiescence)")
        settle_s = SETTLE_TIMEOUT_S + options.duration_s / 2  # every write is resolved
        settler = Client(network, ["-m", "tests.chaos.workload", "settle", "--config",
                                   str(config_path), "--out", str(out), "--timeout-s",
                                   str(settle_s - 30)], out / "settle.log")
        if settler.wait(settle_s) != 0:
            nodes.problems.append(f"the settle step failed (see {out / 'settle.log'})")
        nodes.check_alive()
        (out / RUNNER_PROBLEMS_FILE).write_text(json.dumps(nodes.problems), encoding="utf-8")
        report = check_dir(out)
    finally:
        if workload is not None:
            workload.kill()
        if nodes is not None:
            nodes.stop_all()
        network.teardown()
    say(render(report))
    say(f"chaos: history {out / 'history.jsonl'}, verdict {out / 'verdict.json'}, "
        f"summary {out / 'summary.txt'}")
    return report


def parse_faults(text: str) -> tuple[FaultKind, ...]:
    if text == "all":
        return ALL_FAULTS
    return tuple(FaultKind(name.strip()) for name in text.split(",") if name.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.runner",
                                     description="A seeded chaos run and its verdict.")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--network", choices=("auto", "netns", "proxy", "loopback"),
                        default="auto")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--faults", default="all",
                        help="comma-separated kinds (kill,pause,kill_all,isolate,split,slow,"
                        "replace,damage,disk_full,hostile) or all; network kinds are dropped "
                        "on the loopback network; disk_full needs root (a tmpfs per node)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: a new directory under /tmp")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    out = args.out or Path(f"/tmp/raftwallet-chaos-{seed}-{int(time.time())}")
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty: every run needs a fresh directory")
    options = RunOptions(args.duration_s, seed, args.network, args.nodes, args.partitions, out,
                         parse_faults(args.faults), args.workers)
    report = run(options)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
