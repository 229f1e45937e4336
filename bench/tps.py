"""Committed transfers per second of a real local cluster: `make bench` (`python -m bench.tps`).

Starts a 3-node cluster on free 127.0.0.1 ports in a temporary directory (every
partition on all three nodes, durable journal: fsync on), creates `--accounts`
accounts with a balance each, then measures each workload:

    workload         mix      calls
    unary            intra    Transfer, `--callers` concurrent callers (closed loop)
    http-unary       intra    POST /v1/wallet/balance_transfer (HTTP gateway), `--callers`
    batch100         intra    TransferBatch of 100 transfers, `--batch-callers` callers
    batch1000        intra    TransferBatch of 1,000 transfers, `--batch-callers` callers
    cross-unary      uniform  Transfer, `--callers` concurrent callers (closed loop)
    cross-batch1000  uniform  TransferBatch of 1,000 transfers, `--batch-callers` callers

The mix "intra" has from and to on the same partition (one atomic command). The
mix "uniform" draws from and to uniformly from all accounts: with 4 partitions
about 3/4 of the transfers cross partitions and run as a saga (debit on the
source, credit on the destination, settle on the source); `cross_share` in the
results is the share measured.

With an HTTP workload selected, every node also serves the HTTP gateway in its own
process (`--http-listen 127.0.0.1:<free port>`). `http-unary` sends the transfers of
`unary` as JSON requests (pre-built bodies, httpx.AsyncClient with HTTP/1.1 keep-alive,
one connection per caller at most); each goes to the gateway of the node leading the
from_account's partition (`--routing spread`: to the nodes' gateways in turn), whose
gateway then calls its own node's gRPC service. HTTP 200 counts as succeeded, any
other answer as a failure by status and error code.

Unary calls go to the leader of the from_account's partition; TransferBatch calls
of the intra mix to their partition's leader, those of the uniform mix (whose
items span every partition) to the partitions' leaders in turn (leaders learnt
from ClusterStatus before each run). Calls come from `--procs` load generator
processes (`bench.loadgen`). Before measuring, the harness waits
(`--leader-wait-s`) until every partition is led by its preferred node, which
the nodes arrange themselves. A run is `--warmup-s` of warm-up then
`--duration-s` measured. Each workload's figures are the median of `--runs` runs.

A call is complete when every transfer in it is final: SUCCEEDED or FAILED. The
node waits for a cross-partition transfer's outcome until shortly before the
call's deadline (`--timeout-s`) and answers PENDING if it is still in flight;
the load generator then asks GetTransfer until it is final. Latency is per call
(per batch for batches), until then: for the uniform mix it is the time to the
final outcome. Transfers count when their call completed inside the measured
window: intra, the committed ones (SUCCEEDED, or refused with an outcome
recorded under the id); uniform, the final SUCCEEDED ones.

After every run the harness waits (bounded) until no partition has a transfer
in flight (ClusterStatus `outbox_depth` 0 everywhere), then reads the balances
of all accounts back (linearizable reads): their sum must equal the sum
deposited, and every replica of every partition must reach the same position
and state hash. Otherwise the benchmark has failed and exits 1. Results go to
bench/results/tps.json (`--output`).

    make bench          # 3 runs of 10 s per workload
    make bench-quick    # 1 run of 3 s per workload (writes bench/results/tps-quick.json)
    python -m bench.tps --workloads unary --callers 128 --runs 1 --output /tmp/t.json
    python -m bench.tps --workloads cross-batch1000 --runs 1 --output /tmp/t.json
    python -m bench.tps --workloads unary,http-unary --runs 3 --output bench/results/tps-http.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from bench import loadgen
from bench.environment import describe
from ledger.routing import partition_of

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_PATH = RESULTS_DIR / "tps.json"
QUICK_RESULTS_PATH = RESULTS_DIR / "tps-quick.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workload:
    batch_size: int
    """Transfers per call: 1 for unary Transfer calls, else per TransferBatch call."""
    mix: str
    """"intra" (same partition) or "uniform" (random over all accounts): loadgen.MIXES."""
    protocol: str = "grpc"
    """"grpc": the WalletService; "http": POST /v1/wallet/balance_transfer (unary only)."""


WORKLOADS = {
    "unary": Workload(1, "intra"),
    "http-unary": Workload(1, "intra", "http"),
    "batch100": Workload(100, "intra"),
    "batch1000": Workload(1000, "intra"),
    "cross-unary": Workload(1, "uniform"),
    "cross-batch1000": Workload(1000, "uniform"),
}
DEFAULT_WORKLOADS = ",".join(WORKLOADS)
NODES = 3
CURRENCY = "USD"
DEPOSIT = "1000000.00"
DEPOSIT_MINOR = 100_000_000
"""Per account; transfers are 0.01 to 9.99, so no run comes near INSUFFICIENT_FUNDS."""
LEADERS_TIMEOUT_S = 60.0
WORKER_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S = 60.0
OUTBOX_DRAIN_TIMEOUT_S = 120.0
"""After a run, how long cross-partition transfers still in flight may take to finish."""
CALL_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
SETUP_CONCURRENCY = 64
OTHER_LOAD_WARN_CORES = 0.25
"""A run during which other processes used more CPU than this is flagged as disturbed."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
GATEWAY_TIMEOUT_S = 30.0
HTTP_RPC = f"POST {loadgen.HTTP_TRANSFER_PATH}"


class BenchFailed(Exception):
    """The benchmark cannot go on or its result is invalid (lost money, stuck cluster)."""


# --- options ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tps",
        description="Committed transfers/s of a local 3-node cluster: intra-partition, and "
                    "a uniform random mix over all partitions (cross-partition sagas).")
    parser.add_argument("--duration-s", type=float, default=None,
                        help="measured seconds per run (default 10; 3 with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="unmeasured seconds before each run (default 1; 0.5 with --quick)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per workload; figures are their median (default 3; 1 quick)")
    parser.add_argument("--callers", type=int, default=64,
                        help="concurrent unary callers, closed loop (default 64)")
    parser.add_argument("--batch-callers", type=int, default=4,
                        help="concurrent TransferBatch callers (default 4)")
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--timeout-s", type=float, default=CALL_TIMEOUT_S,
                        help="deadline of each call; a node answers cross-partition transfers "
                             "not final by then PENDING and the load generator follows up "
                             f"with GetTransfer (default {CALL_TIMEOUT_S:.0f})")
    parser.add_argument("--procs", type=int, default=loadgen.default_procs(),
                        help="load generator processes (default: cores, at most 2)")
    parser.add_argument("--routing", choices=("leader", "spread"), default="leader",
                        help="send each call to its partition's leader (default), or spread "
                             "calls over all nodes (followers forward to the leader)")
    parser.add_argument("--leader-wait-s", type=float, default=45.0,
                        help="before measuring, wait up to this long for every partition to "
                             "be led by its preferred node (0: do not wait; default 45)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run the nodes on uvloop (RAFTWALLET_UVLOOP=1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="parent of the temporary cluster directory (default: $TMPDIR)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the cluster directory (logs, journals) after the run")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default bench/results/tps.json; "
                             "bench/results/tps-quick.json with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="short version: 1 run of 3 s per workload")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration_s is None:
        args.duration_s = 3.0 if quick else 10.0
    if args.warmup_s is None:
        args.warmup_s = 0.5 if quick else 1.0
    if args.runs is None:
        args.runs = 1 if quick else 3
    if args.output is None:
        args.output = QUICK_RESULTS_PATH if quick else RESULTS_PATH
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workload_list if w not in WORKLOADS]
    if unknown or not args.workload_list:
        parser.error(f"--workloads: unknown {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.runs < 1 or args.duration_s <= 0 or args.warmup_s < 0 or args.timeout_s <= 0:
        parser.error("--runs must be at least 1, --duration-s and --timeout-s positive, "
                     "--warmup-s >= 0")
    if args.callers < 1 or args.batch_callers < 1 or args.procs < 1:
        parser.error("--callers, --batch-callers and --procs must be at least 1")
    if args.partitions < 1 or args.accounts < 2 * args.partitions:
        parser.error("need at least 1 partition and 2 accounts per partition")
    return args


# --- the cluster ------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """First of `count` consecutive free 127.0.0.1 ports, never the same block twice."""

    def __init__(self) -> None:
        self._handed_out: set[int] = set()
        self._rng = random.Random()

    def __call__(self, count: int) -> int:
        for _ in range(500):
            base = self._rng.randrange(20_000, 60_000 - count)
            block = range(base, base + count)
            if any(p in self._handed_out for p in block):
                continue
            if all(_bindable(p) for p in block):
                self._handed_out.update(block)
                return base
        raise BenchFailed(f"no {count} consecutive free ports found")


class BenchCluster:
    """Three node processes, each in its own session; `stop` ends every one of them."""

    def __init__(self, root: Path, partitions: int, uvloop: bool, http: bool = False) -> None:
        from node.config import dump_cluster_config, local_cluster_config

        self.root = root
        ports = PortAllocator()
        self.config = local_cluster_config("bench", NODES, partitions, ports,
                                           replication_factor=NODES)
        self.http_addresses: dict[str, str] = {}
        """Per node id, where its HTTP gateway listens (none without an HTTP workload)."""
        if http:
            first = ports(NODES)
            self.http_addresses = {node.id: f"127.0.0.1:{first + k}"
                                   for k, node in enumerate(self.config.nodes)}
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(dump_cluster_config(self.config), encoding="utf-8")
        env = dict(os.environ)
        env.pop("RAFTWALLET_UNSAFE_NO_FSYNC", None)  # a durable journal, always
        env["RAFTWALLET_UVLOOP"] = "1" if uvloop else "0"
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        from node.launcher import start_node

        for node in self.config.nodes:
            http = self.http_addresses.get(node.id)
            self.processes[node.id] = start_node(
                self.config_path, node.id, self.root / "data" / node.id, bootstrap=True,
                env=self.env, extra_args=("--http-listen", http) if http else ())

    def wait_for_gateways(self) -> None:
        """Every node's HTTP gateway answers GET /healthz 200 (if gateways were started)."""
        import httpx

        deadline = time.monotonic() + GATEWAY_TIMEOUT_S
        waiting = dict(self.http_addresses)
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while waiting:
                self.check_alive()
                for node_id, address in list(waiting.items()):
                    try:
                        if client.get(f"http://{address}/healthz").status_code == 200:
                            del waiting[node_id]
                    except httpx.HTTPError:
                        pass
                if waiting and time.monotonic() >= deadline:
                    raise BenchFailed(f"HTTP gateways not answering after "
                                      f"{GATEWAY_TIMEOUT_S:.0f} s: {waiting}\n"
                                      f"{self.log_tails()}")
                if waiting:
                    time.sleep(0.2)

    def wait_for_leaders(self) -> None:
        from node.launcher import wait_for_leaders

        if not wait_for_leaders(self.config, LEADERS_TIMEOUT_S, list(self.processes.values())):
            raise BenchFailed("the cluster did not elect a leader for every partition in "
                              f"{LEADERS_TIMEOUT_S:.0f} s\n{self.log_tails()}")

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise BenchFailed(f"node processes exited: {dead}\n{self.log_tails()}")

    def log_tails(self, chars: int = 2000) -> str:
        tails = []
        for node_id in self.processes:
            path = self.root / "data" / f"{node_id}.log"
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace")[-chars:]
                tails.append(f"--- {node_id}.log (end) ---\n{text}")
        return "\n".join(tails)

    def stop(self) -> None:
        from node.launcher import stop_pids

        running = [p for p in self.processes.values() if p.poll() is None]
        stop_pids([p.pid for p in running], grace_s=STOP_GRACE_S)  # SIGTERM, then SIGKILL
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)

    def pids(self) -> dict[str, int]:
        return {node_id: p.pid for node_id, p in self.processes.items()}

    # -- status --------------------------------------------------------------------------------

    def leaders(self) -> tuple[list[str], list[str]]:
        """Per partition: the leader's gRPC address and node id."""
        from node.launcher import cluster_status

        deadline = time.monotonic() + LEADERS_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            status = cluster_status(self.config, timeout_s=5.0)
            if status is not None and len(status.partitions) == self.config.partition_count:
                views = sorted(status.partitions, key=lambda p: p.partition)
                if all(p.leader_address for p in views):
                    return ([p.leader_address for p in views], [p.leader_node_id for p in views])
            time.sleep(0.2)
        raise BenchFailed("no leader known for every partition")

    def preferred_leaders(self) -> list[str]:
        """Per partition, its preferred leader: the first node of its placement."""
        return [self.config.replicas_of(p)[0] for p in range(self.config.partition_count)]

    def wait_for_preferred_leaders(self, timeout_s: float) -> bool:
        """Wait until every partition is led by its preferred node; False on timeout.

        Nodes hand a stable leadership over to the partition's preferred node
        (node/server.py), which spreads the leaders; waiting for it keeps such a
        move (a short unavailability of the partition) out of the measured runs.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            _, leader_ids = self.leaders()
            if leader_ids == self.preferred_leaders():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def commit_indexes(self) -> list[int]:
        """Per partition, the Raft commit index (0 where no status came back)."""
        from node.launcher import cluster_status

        status = cluster_status(self.config, timeout_s=5.0)
        found = [0] * self.config.partition_count
        for partition in status.partitions if status is not None else ():
            found[partition.partition] = int(partition.commit_index)
        return found

    def outbox_depths(self) -> list[int] | None:
        """Per partition, the transfers in flight in its outbox, as its leader reports them.

        None while some partition has no view from its leader (the one that drives
        its sagas): a follower's view may lag behind.
        """
        from node.launcher import cluster_status

        status = cluster_status(self.config, timeout_s=5.0)
        if status is None or len(status.partitions) != self.config.partition_count:
            return None
        views = sorted(status.partitions, key=lambda p: p.partition)
        if not all(view.reporter_is_leader for view in views):
            return None
        return [int(view.outbox_depth) for view in views]

    def wait_for_outboxes(self, timeout_s: float) -> tuple[list[int] | None, float]:
        """Wait until no partition has a transfer in flight: (depths at the start, seconds).

        Cross-partition transfers debited during a run may still be on their way
        (credit or settle not yet committed) when it ends; until they finish, the
        money in flight is in no account's balance. Raises BenchFailed on timeout.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        first: list[int] | None = None
        while True:
            self.check_alive()
            depths = self.outbox_depths()
            if first is None:
                first = depths
            if depths is not None and not any(depths):
                return first, time.monotonic() - started
            if time.monotonic() >= deadline:
                raise BenchFailed(f"cross-partition transfers still in flight after "
                                  f"{timeout_s:.0f} s: outbox depths per partition {depths} "
                                  f"(at the start of the wait: {first})\n{self.log_tails()}")
            time.sleep(0.1)

    def replicas_agree(self) -> tuple[bool, dict[int, set[tuple[int, str]]]]:
        """Every replica of each partition at the same position with the same state hash."""
        import grpc

        from proto.wallet.v1 import wallet_pb2 as pb
        from proto.wallet.v1 import wallet_pb2_grpc

        seen: dict[int, set[tuple[int, str]]] = {
            p: set() for p in range(self.config.partition_count)}
        answered = 0
        for node in self.config.nodes:
            with grpc.insecure_channel(node.grpc_address) as channel:
                stub = wallet_pb2_grpc.AdminServiceStub(channel)
                try:
                    view = stub.ClusterStatus(pb.ClusterStatusRequest(local_only=True), timeout=5)
                except grpc.RpcError:
                    continue
            answered += 1
            for partition in view.partitions:
                seen[partition.partition].add((partition.applied_position, partition.state_hash))
        agree = answered == NODES and all(len(s) == 1 for s in seen.values())
        return agree, seen


# --- CPU accounting ---------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


# --- the load generator processes -------------------------------------------------------------


@dataclass
class Worker:
    process: SpawnProcess
    conn: Connection


class Workers:
    """`count` spawned load generator processes; `close` stops them all."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process using gRPC
        self.progress = context.RawArray("q", count)
        self.workers: list[Worker] = []
        for index in range(count):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=loadgen.worker_main,
                                      args=(child_end, index, self.progress),
                                      name=f"bench-loadgen-{index}", daemon=True)
            process.start()
            child_end.close()
            self.workers.append(Worker(process, parent_end))

    def __len__(self) -> int:
        return len(self.workers)

    def send(self, index: int, job: object) -> None:
        self.workers[index].conn.send(job)

    def receive(self, index: int, timeout_s: float = WORKER_TIMEOUT_S) -> object:
        worker = self.workers[index]
        deadline = time.monotonic() + timeout_s
        while not worker.conn.poll(0.2):
            if not worker.process.is_alive():
                raise BenchFailed(f"load generator {index} exited "
                                  f"({worker.process.exitcode})")
            if time.monotonic() > deadline:
                raise BenchFailed(f"load generator {index} did not answer in {timeout_s:.0f} s")
        answer = worker.conn.recv()
        if isinstance(answer, loadgen.WorkerFailed):
            raise BenchFailed(answer.message)
        return answer

    def gather(self, jobs: Sequence[object | None]) -> list[object]:
        """Send job i to worker i (None: nothing) and collect the answers in order."""
        active = [i for i, job in enumerate(jobs) if job is not None]
        for i in active:
            self.send(i, jobs[i])
        return [self.receive(i) for i in active]

    def reset_progress(self) -> None:
        for index in range(len(self.progress)):
            self.progress[index] = 0

    def progress_total(self) -> int:
        return int(sum(self.progress))

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process.pid is not None]

    def close(self, hurry: bool = False) -> None:
        """Stop every worker: politely when idle, at once (SIGTERM) when `hurry`.

        A worker in the middle of a run reads no job until the run ends, so after an
        interrupt or a failure it is terminated rather than asked.
        """
        for worker in self.workers:
            if hurry:
                worker.process.terminate()
                continue
            try:
                worker.conn.send(loadgen.Stop())
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=2 if hurry else 10)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    return [list(items[i::parts]) for i in range(parts)]


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --- measuring --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last_print = 0.0

    def update(self, label: str, done_s: float, total_s: float, rate: float) -> None:
        width = 30
        filled = int(width * min(1.0, max(0.0, done_s / total_s)))
        line = (f"{label} [{'#' * filled}{'.' * (width - filled)}] "
                f"{min(done_s, total_s):5.1f}/{total_s:.1f} s  {rate:>9,.0f} transfers/s")
        if self.tty:
            print(f"\r{line}", end="", flush=True)
        elif time.monotonic() - self._last_print >= 2.5:
            self._last_print = time.monotonic()
            print(line, flush=True)

    def done(self, line: str) -> None:
        print(f"\r{line}{' ' * 30}" if self.tty else line, flush=True)


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: BenchCluster
    workers: Workers
    accounts: list[str]
    account_partitions: list[int]
    progress: Progress

    @property
    def partition_count(self) -> int:
        return int(self.args.partitions)

    def accounts_by_partition(self) -> list[list[str]]:
        grouped: list[list[str]] = [[] for _ in range(self.partition_count)]
        for account, partition in zip(self.accounts, self.account_partitions, strict=True):
            grouped[partition].append(account)
        return grouped

    def setup_accounts(self) -> None:
        leaders, _ = self.cluster.leaders()
        started = time.monotonic()
        n = len(self.workers)
        jobs = [loadgen.SetupJob(accounts, partitions, leaders, CURRENCY, DEPOSIT,
                                 max(1, SETUP_CONCURRENCY // n))
                for accounts, partitions in zip(_split(self.accounts, n),
                                                _split(self.account_partitions, n),
                                                strict=True)]
        answers = [a for a in self.workers.gather(jobs) if isinstance(a, loadgen.SetupDone)]
        created = sum(a.created for a in answers)
        deposited = sum(a.deposited for a in answers)
        errors: Counter[str] = Counter()
        for answer in answers:
            errors.update(answer.errors)
        if created != len(self.accounts) or deposited != len(self.accounts):
            raise BenchFailed(f"setup: {created} accounts created and {deposited} deposits of "
                              f"{len(self.accounts)}; errors {dict(errors)}")
        print(f"setup: {created:,} accounts of {DEPOSIT} {CURRENCY} in "
              f"{time.monotonic() - started:.1f} s"
              + (f" (retried: {dict(errors)})" if errors else ""), flush=True)

    def check_books(self) -> dict[str, Any]:
        """Read every balance back; the sum must be what was deposited. Replicas must agree.

        First waits (bounded) until no cross-partition transfer is in flight: only then
        is every cent in some account's balance.
        """
        outbox_at_end, drain_s = self.cluster.wait_for_outboxes(OUTBOX_DRAIN_TIMEOUT_S)
        leaders, _ = self.cluster.leaders()
        n = len(self.workers)
        jobs = [loadgen.BalancesJob(accounts, partitions, leaders, max(1, SETUP_CONCURRENCY // n))
                for accounts, partitions in zip(_split(self.accounts, n),
                                                _split(self.account_partitions, n),
                                                strict=True)]
        answers = [a for a in self.workers.gather(jobs) if isinstance(a, loadgen.BalancesDone)]
        total = sum(a.total_minor for a in answers)
        found = sum(a.found for a in answers)
        expected = DEPOSIT_MINOR * len(self.accounts)
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        agree, seen = self.cluster.replicas_agree()
        while not agree and time.monotonic() < deadline:
            time.sleep(0.2)
            agree, seen = self.cluster.replicas_agree()
        books = {
            "passed": found == len(self.accounts) and total == expected and agree,
            "accounts_read": found,
            "sum_minor": total,
            "deposited_minor": expected,
            "replicas_agree": agree,
            "positions": {str(p): sorted(position for position, _ in s) for p, s in seen.items()},
            "in_flight_at_end": outbox_at_end,
            "outbox_drain_s": round(drain_s, 3),
        }
        if not books["passed"]:
            missing = [m for a in answers for m in a.missing][:10]
            raise BenchFailed(
                f"CONSERVATION FAILED: read {found} of {len(self.accounts)} balances, sum "
                f"{total} minor units, deposited {expected} (difference {total - expected}); "
                f"replicas agree: {agree} {seen}; unread accounts (first 10): {missing}")
        return books

    def one_run(self, workload: str, run: int) -> dict[str, Any]:
        args = self.args
        batch_size = WORKLOADS[workload].batch_size
        callers = args.callers if batch_size == 1 else args.batch_callers
        procs = min(len(self.workers), callers)
        leaders, leader_ids = self.cluster.leaders()
        if (args.leader_wait_s > 0 and leader_ids != self.cluster.preferred_leaders()
                and self.cluster.wait_for_preferred_leaders(args.leader_wait_s)):
            leaders, leader_ids = self.cluster.leaders()
        node_ids = [node.id for node in self.cluster.config.nodes]
        if args.routing == "leader":
            targets = leaders
            target_ids = leader_ids
        else:
            addresses = [node.grpc_address for node in self.cluster.config.nodes]
            targets = [addresses[p % len(addresses)] for p in range(self.partition_count)]
            target_ids = [node_ids[p % len(node_ids)] for p in range(self.partition_count)]
        http_targets: tuple[str, ...] = ()
        if WORKLOADS[workload].protocol == "http":
            # The gateway in the process of the node each partition's calls go to.
            http_targets = tuple(f"http://{self.cluster.http_addresses[node_id]}"
                                 for node_id in target_ids)
        by_partition = self.accounts_by_partition()
        jobs: list[object | None] = [None] * len(self.workers)
        for index, share in enumerate(_shares(callers, procs)):
            jobs[index] = loadgen.RunJob(workload, batch_size, share, by_partition, targets,
                                         CURRENCY, args.seed * 1000 + run, args.timeout_s,
                                         WORKLOADS[workload].mix, http_targets)
        active = [i for i, job in enumerate(jobs) if job is not None]
        for i in active:
            self.workers.send(i, jobs[i])
        for i in active:
            self.workers.receive(i)  # Ready: requests are prepared
        self.workers.reset_progress()
        start_at = time.monotonic() + 0.1
        go = loadgen.Go(start_at, start_at + args.warmup_s,
                        start_at + args.warmup_s + args.duration_s)
        for i in active:
            self.workers.send(i, go)
        label = f"{workload:>15} run {run + 1}/{args.runs}"
        pids = list(self.cluster.pids().values())
        node_cpu_from: dict[int, float] = {}
        machine_from = (0.0, 0.0)
        harness_from = 0.0
        commits_from: list[int] = []
        last_total, last_time, rate = self.workers.progress_total(), time.monotonic(), 0.0
        measuring = False
        while time.monotonic() < go.end_at:
            time.sleep(0.25)
            now = time.monotonic()
            if not measuring and now >= go.measure_from:
                measuring = True
                node_cpu_from = {pid: process_cpu_s(pid) for pid in pids}
                machine_from = machine_cpu()
                harness_from = time.process_time()
                commits_from = self.cluster.commit_indexes()
            total = self.workers.progress_total()
            if now - last_time >= 0.5:
                rate = max(0.0, (total - last_total) / (now - last_time))
                last_total, last_time = total, now
            self.progress.update(label, now - go.start_at, go.end_at - go.start_at, rate)
            self.cluster.check_alive()
        node_cpu_to = {pid: process_cpu_s(pid) for pid in pids}
        machine_to = machine_cpu()
        harness_s = time.process_time() - harness_from if measuring else 0.0
        commits_to = self.cluster.commit_indexes()
        window_s = time.monotonic() - go.measure_from if measuring else 0.0
        entries = sum(commits_to) - sum(commits_from) if measuring else 0
        stats = [s for s in (self.workers.receive(i) for i in active)
                 if isinstance(s, loadgen.RunStats)]
        _, leader_ids_after = self.cluster.leaders()
        books = self.check_books()
        record = self._run_record(workload, stats, window_s, node_cpu_from, node_cpu_to,
                                  machine_from, machine_to, harness_s, leader_ids,
                                  leader_ids_after, books, label)
        record["raft_entries_per_s"] = entries / window_s if window_s else 0.0
        record["transfers_per_entry"] = (record["transfers_per_s"] * window_s / entries
                                         if entries else 0.0)
        return record

    def _run_record(self, workload: str, stats: list[loadgen.RunStats], window_s: float,
                    node_cpu_from: dict[int, float], node_cpu_to: dict[int, float],
                    machine_from: tuple[float, float], machine_to: tuple[float, float],
                    harness_s: float, leader_ids: list[str], leader_ids_after: list[str],
                    books: dict[str, Any], label: str) -> dict[str, Any]:
        duration = float(self.args.duration_s)
        latencies: array[float] = array("d")
        failures: Counter[str] = Counter()
        for s in stats:
            latencies.extend(s.latencies_s)
            failures.update(s.failures)
        ordered = sorted(latencies)
        committed = sum(s.committed for s in stats)
        succeeded = sum(s.succeeded for s in stats)
        calls = sum(s.calls for s in stats)
        transfers = sum(s.transfers for s in stats)
        cross = sum(s.cross for s in stats)
        followed_up = sum(s.followed_up for s in stats)
        calls_total = sum(s.calls_total for s in stats)
        transfers_total = sum(s.transfers_total for s in stats)
        client_cpu_s = sum(s.cpu_s for s in stats)
        client_wall_s = max((s.wall_s for s in stats), default=0.0)
        node_cpu_s = sum(node_cpu_to[p] - node_cpu_from.get(p, node_cpu_to[p])
                         for p in node_cpu_to)
        busy = machine_to[0] - machine_from[0]
        total_jiffies = machine_to[1] - machine_from[1]
        cores = os.cpu_count() or 1
        machine_busy_cores = cores * busy / total_jiffies if total_jiffies else 0.0
        led = Counter(leader_ids)
        record: dict[str, Any] = {
            "mix": WORKLOADS[workload].mix,
            "cross_share": cross / transfers if transfers else 0.0,
            "transfers_per_s": committed / duration,
            "succeeded_per_s": succeeded / duration,
            "calls_per_s": calls / duration,
            "p50_ms": percentile(ordered, 0.50) * 1000,
            "p99_ms": percentile(ordered, 0.99) * 1000,
            "max_ms": (ordered[-1] * 1000) if ordered else 0.0,
            "failures": dict(failures),
            # Transfers answered PENDING (the node's wait reached the call's deadline) whose
            # outcome the load generator then learnt from GetTransfer.
            "pending_answered": followed_up,
            "get_transfer_calls": sum(s.follow_up_calls for s in stats),
            "client_cpu_us_per_call": client_cpu_s / calls_total * 1e6 if calls_total else 0.0,
            "client_cpu_us_per_transfer": (client_cpu_s / transfers_total * 1e6
                                           if transfers_total else 0.0),
            "client_cpu_cores": client_cpu_s / client_wall_s if client_wall_s else 0.0,
            "nodes_cpu_cores": node_cpu_s / window_s if window_s else 0.0,
            "nodes_cpu_us_per_transfer": (node_cpu_s / (committed * window_s / duration) * 1e6
                                          if committed and window_s else 0.0),
            "machine_cpu_busy_pct": 100 * busy / total_jiffies if total_jiffies else 0.0,
            "harness_cpu_cores": harness_s / window_s if window_s else 0.0,
            # CPU of everything else on the machine (kernel threads, softirq of the
            # loopback traffic, other users' work): a large figure means a disturbed run.
            "other_cpu_cores": max(0.0, machine_busy_cores - (node_cpu_s + harness_s) / window_s
                                   - client_cpu_s / client_wall_s)
            if window_s and client_wall_s else 0.0,
            "leaders": leader_ids,
            "most_partitions_led_by_one_node": max(led.values()) if led else 0,
            "leader_changed": leader_ids != leader_ids_after,
            "books": books,
        }
        failed = sum(failures.values())
        self.progress.done(
            f"{label}: {record['transfers_per_s']:>9,.0f} transfers/s  "
            + (f"cross {100 * record['cross_share']:.0f} %  " if record["cross_share"] else "")
            + f"p50 {record['p50_ms']:7.1f} ms  p99 {record['p99_ms']:7.1f} ms  "
            f"client {record['client_cpu_us_per_call']:6.0f} us/call  "
            f"leaders {'/'.join(leader_ids)}  books ok"
            + (f"  failures {dict(failures)}" if failed else "")
            + (f"  answered PENDING {followed_up:,}" if followed_up else "")
            + (f"  in flight at end {sum(books['in_flight_at_end'] or ()):,}, drained in "
               f"{books['outbox_drain_s']:.1f} s" if books["outbox_drain_s"] >= 0.05 else "")
            + (f"  OTHER LOAD {record['other_cpu_cores']:.2f} cores"
               if record["other_cpu_cores"] > OTHER_LOAD_WARN_CORES else "")
            + ("  LEADER CHANGED" if record["leader_changed"] else ""))
        return record


def summarize(workload: str, runs: list[dict[str, Any]], args: argparse.Namespace,
              environment: dict[str, Any]) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(statistics.median(float(r[key]) for r in runs), 2)

    failures: Counter[str] = Counter()
    for run in runs:
        failures.update(run["failures"])
    batch_size = WORKLOADS[workload].batch_size
    mix = WORKLOADS[workload].mix
    http = WORKLOADS[workload].protocol == "http"
    return {
        "workload": workload,
        "mix": mix,
        "rpc": HTTP_RPC if http else "Transfer" if batch_size == 1 else "TransferBatch",
        "protocol": WORKLOADS[workload].protocol,
        **({"http_gateway": "served in each node's process (--http-listen); calls go to the "
                            "gateway of the node they would go to over gRPC (--routing)",
            "http_client": "httpx.AsyncClient, HTTP/1.1 keep-alive, pool of one connection "
                           "per caller"} if http else {}),
        "transfers_per_call": batch_size,
        "callers": args.callers if batch_size == 1 else args.batch_callers,
        "partitions": args.partitions,
        "nodes": NODES,
        "replicas_per_partition": NODES,
        "accounts": args.accounts,
        "durable_journal": True,
        "routing": args.routing,
        "load_generator_processes": min(args.procs, args.callers if batch_size == 1
                                        else args.batch_callers),
        "runs": len(runs),
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "transfers_per_s": round(statistics.median(r["transfers_per_s"] for r in runs)),
        "succeeded_per_s": round(statistics.median(r["succeeded_per_s"] for r in runs)),
        # Share of the transfers (in the measured windows) whose accounts are on two
        # partitions: they run as a saga.
        "cross_share": round(statistics.median(r["cross_share"] for r in runs), 3),
        "cross_transfers_per_s": round(statistics.median(
            r["transfers_per_s"] * r["cross_share"] for r in runs)),
        "latency": ("per call, until every transfer in it is final (SUCCEEDED or FAILED; "
                    "GetTransfer follow-ups included)" if mix == "uniform" else "per call"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "failures_total": dict(failures),
        "pending_answered_total": sum(int(r["pending_answered"]) for r in runs),
        "client_cpu_us_per_call": median("client_cpu_us_per_call"),
        "client_cpu_cores": median("client_cpu_cores"),
        "nodes_cpu_cores": median("nodes_cpu_cores"),
        "nodes_cpu_us_per_transfer": median("nodes_cpu_us_per_transfer"),
        "raft_entries_per_s": median("raft_entries_per_s"),
        "transfers_per_entry": median("transfers_per_entry"),
        "machine_cpu_busy_pct": median("machine_cpu_busy_pct"),
        "other_cpu_cores": median("other_cpu_cores"),
        "conservation_passed": all(r["books"]["passed"] for r in runs),
        "environment": environment,
        "raw": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                for r in runs],
    }


def print_table(records: list[dict[str, Any]]) -> None:
    headers = ("workload", "mix", "cross %", "transfers/s", "p50 ms", "p99 ms", "failed",
               "PENDING", "client us/call", "client cores", "nodes cores", "node us/transfer",
               "entries/s", "transfers/entry")
    rows = [(r["workload"], r["mix"], f"{100 * r['cross_share']:.0f}",
             f"{r['transfers_per_s']:,}", f"{r['p50_ms']:.1f}",
             f"{r['p99_ms']:.1f}", f"{sum(r['failures_total'].values()):,}",
             f"{r['pending_answered_total']:,}",
             f"{r['client_cpu_us_per_call']:.0f}", f"{r['client_cpu_cores']:.2f}",
             f"{r['nodes_cpu_cores']:.2f}", f"{r['nodes_cpu_us_per_transfer']:.1f}",
             f"{r['raft_entries_per_s']:,.0f}", f"{r['transfers_per_entry']:.1f}")
            for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    if any(r["mix"] == "uniform" for r in records):
        print("uniform mix: transfers/s counts final SUCCEEDED transfers; p50/p99 are the time "
              "to the final outcome of every transfer of a call (PENDING: answered PENDING, "
              "followed up with GetTransfer)")


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM (e.g. make being stopped) unwinds like Ctrl-C, so every process is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    environment = describe()
    root = Path(tempfile.mkdtemp(prefix="raftwallet-bench-", dir=args.data_dir))
    workers: Workers | None = None
    cluster: BenchCluster | None = None
    progress = Progress()
    status = 1
    with _terminate_on_sigterm():
        try:
            # Load generators first: spawned, so they share nothing with this process.
            workers = Workers(args.procs)
            cluster = BenchCluster(root, args.partitions, args.uvloop,
                                   http=any(WORKLOADS[w].protocol == "http"
                                            for w in args.workload_list))
            cluster.start()
            print(f"cluster: {NODES} nodes x {args.partitions} partitions (3 replicas each, "
                  f"durable journal) in {root}; node pids {cluster.pids()}; load generator "
                  f"pids {workers.pids()}", flush=True)
            cluster.wait_for_leaders()
            cluster.wait_for_gateways()
            if cluster.http_addresses:
                print(f"http gateways: {cluster.http_addresses}", flush=True)
            if args.leader_wait_s > 0:
                started = time.monotonic()
                settled = cluster.wait_for_preferred_leaders(args.leader_wait_s)
                print(f"leaders {'/'.join(cluster.leaders()[1])} "
                      + (f"(the preferred ones, after {time.monotonic() - started:.0f} s)"
                         if settled else f"(not all preferred after {args.leader_wait_s:.0f} s: "
                         "measuring with these)"), flush=True)
            accounts = [f"bench-{i:06d}" for i in range(args.accounts)]
            bench = Bench(args, cluster, workers, accounts,
                          [partition_of(a, args.partitions) for a in accounts], progress)
            bench.setup_accounts()
            bench.check_books()
            records = []
            for workload in args.workload_list:
                runs = [bench.one_run(workload, run) for run in range(args.runs)]
                records.append(summarize(workload, runs, args, environment))
            report = {
                "benchmark": "tps",
                "what": "committed transfers/s of a local 3-node cluster (3 replicas per "
                        "partition, durable journal), median of runs: intra-partition "
                        "transfers (mix intra) and a uniform random mix over all partitions "
                        "whose cross-partition transfers run as a saga (mix uniform; latency "
                        "and transfers/s to the final outcome)",
                "records": records,
                "conservation_passed": all(r["conservation_passed"] for r in records),
                "processes": {"nodes": cluster.pids(), "load_generators": workers.pids()},
                "environment": environment,
            }
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print_table(records)
            print(f"\nconservation: every run's balances sum to the deposits; written to "
                  f"{args.output}")
            status = 0
        except BenchFailed as failure:
            print(f"\nbench FAILED: {failure}", file=sys.stderr, flush=True)
            status = 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the cluster", file=sys.stderr, flush=True)
            status = 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
            try:
                if workers is not None:
                    workers.close(hurry=status != 0)
                if cluster is not None:
                    cluster.stop()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                if args.keep_data or status not in (0, 130):
                    print(f"cluster directory kept: {root}", file=sys.stderr)
                else:
                    shutil.rmtree(root, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
