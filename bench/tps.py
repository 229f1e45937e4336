"""Committed transfers per second of a real local cluster: `make bench` (`python -m bench.tps`).

Starts a 3-node cluster on free 127.0.0.1 ports in a temporary directory (every
partition on all three nodes, durable journal: fsync on), creates `--accounts`
accounts with a balance each, then measures each workload:

    workload          mix      calls
    unary             intra    Transfer, `--callers` concurrent callers (closed loop)
    http-unary        intra    POST /v1/wallet/balance_transfer (HTTP gateway), `--callers`
    batch100          intra    TransferBatch of 100 transfers, `--batch-callers` callers
    batch1000         intra    TransferBatch of 1,000 transfers, `--batch-callers` callers
    cross-unary       uniform  Transfer, `--callers` concurrent callers (closed loop)
    cross-batch1000   uniform  TransferBatch of 1,000 transfers, `--batch-callers` callers
    zipf-unary        zipf     Transfer, `--callers` concurrent callers (closed loop)
    zipf-batch1000    zipf     TransferBatch of 1,000 transfers, `--batch-callers` callers
    open-unary        intra    Transfer, open loop: a sweep of offered rates (below)
    open-cross-unary  uniform  Transfer, open loop (not in the default list)

The mix "intra" has from and to on the same partition (one atomic command). The
mix "uniform" draws from and to uniformly from all accounts: with 4 partitions
about 3/4 of the transfers cross partitions and run as a saga (debit on the
source, credit on the destination, settle on the source); `cross_share` in the
results is the share measured. The mix "zipf" draws from and to from a Zipf law
of exponent `--zipf-s` over the accounts ranked by a hash of the id (the same hot
accounts in every run): hot accounts, mostly cross-partition.

Open loop (`open-*` workloads): transfers arrive at an offered rate whatever the
answers (`--arrivals`: Poisson or evenly spaced), spread over the load generator
processes, and each one's latency runs from its INTENDED send time to its final
outcome, so queueing is measured rather than hidden (no coordinated omission).
The rates are `--sweep-pct` percent (default 25,50,75,100) of the closed-loop
maximum of the same mix measured on the same cluster (`unary` for `open-unary`:
taken from this invocation's result, else measured first by one calibration run),
or the single rate `--rate`. Each point is a record with `offered_per_s` (the
target), `offered_measured_per_s` (arrivals in the window / duration),
`transfers_per_s` (committed in the window: the rate achieved) and p50/p99/p999.

Load generator ceiling (`--ceiling`, on by default): before the cluster starts, the
same load generator runs the closed-loop unary and batch workloads against
bench.noop_server (a WalletService answering SUCCEEDED at once, in a process of its
own) and prints "loadgen ceiling: X/s unary, Y/s batch"; every record then carries
`loadgen_ceiling_per_s` and `of_ceiling` (its transfers/s over that ceiling: near 1,
the harness was the limit; add `--client-processes`).

Scaling curve (`--scaling`, on by default in the full run: without --workloads and
--quick): the `--scaling-workloads` (default unary,batch1000) again on fresh
clusters of each of `--scaling-partitions` (default 1,2,4,8; the `--partitions`
cluster's results are reused), plotted to tps-scaling.png (one line per workload); the
open-loop records are plotted to tps-latency.png (p50 and p99 against offered load).
The PNGs go next to the results file, named after it (tps.json -> tps-scaling.png).

Every record reports failures by reason (the ledger's reason, else the gRPC status
name), p50/p99/p999 of the time to final outcome, the nodes' CPU per committed
transfer (user + system time of the node processes from /proc/<pid>/stat over the
measured window) and the load generator's own CPU per transfer.

Target mode (`--config FILE`, or `--target HOST:PORT` repeated): the workloads run
against an ALREADY RUNNING cluster (bench.running_cluster), which the harness
neither starts nor stops. The nodes' addresses and the credentials (tokens, TLS)
come from the cluster file (--target alone: RAFTWALLET_TOKEN / RAFTWALLET_ADMIN_TOKEN);
the partition count and the preferred leaders from the cluster map (GetClusterMap),
the actual leaders and Raft commit indexes from ClusterStatus when the admin token
is there. The accounts are the run's own (`bench-<UTC time>-<random>-NNNNNN`), so
runs against one cluster never collide, and the books checked after every run are
theirs: the sum of their balances comes back to what was deposited into them
(read again, bounded, while transfers still in flight finish) and none is below
zero; other clients' money, outboxes and replica positions are not looked at.
The nodes' CPU per transfer is reported only when every node's process is on this
machine (the one listening on its gRPC port), else "n/a". HTTP workloads and the
scaling curve (which need clusters of the harness's own) are refused; the record
and the report say `"mode": "target"` (else "managed").

Profiles (`--profile DIR`, bench.profiler): during each workload's first run (from
the opening of its measured window, for --duration-s whole seconds), py-spy records
a flame graph of every node process on this machine and of each load generator
process into DIR/<workload>-<process>.svg (n1.., loadgen0..). A process py-spy
cannot attach to, or that was idle throughout, gets no graph and a reason in the
record's `profile_errors`; the benchmark goes on.

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
bench/results/local/tps.json (ignored by git), or to the committed record
bench/results/tps.json with `--record` (`make bench RECORD=1`), or to `--output`.

    make bench          # 3 runs of 10 s per workload, sweep, ceiling, scaling: ~15 min (estimate)
    make bench-quick    # 1 run of 2 s per workload, no scaling: under 2 minutes
                        # (writes bench/results/local/tps-quick.json)
    python -m bench.tps --workloads open-unary --rate 500 --runs 1 --output /tmp/t.json
    python -m bench.tps --workloads zipf-unary --zipf-s 1.3 --runs 1 --output /tmp/t.json
    python -m bench.tps --scaling --workloads unary,batch1000 --output /tmp/t.json
    python -m bench.tps --workloads unary --callers 128 --runs 1 --output /tmp/t.json
    python -m bench.tps --workloads cross-batch1000 --runs 1 --output /tmp/t.json
    python -m bench.tps --workloads unary,http-unary --runs 3 --output /tmp/tps-http.json
    python -m bench.tps --config cluster-configs/local-3node.toml --workloads unary,batch1000
    python -m bench.tps --target 127.0.0.1:7101 --workloads unary --no-ceiling --runs 1
    python -m bench.tps --workloads batch1000 --runs 1 --profile bench/results/local/profiles
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import secrets
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import loadgen, outputs
from bench.environment import describe
from bench.profiler import FlameGraphs, py_spy_path, record_seconds
from bench.running_cluster import RunningCluster, TargetUnavailable, parse_address
from bench.worker_pool import WorkerPool
from client.auth import NO_CREDENTIALS, Credentials, credentials_from_environment
from client.sdk import normalize_targets
from ledger.routing import partition_of

RESULTS_NAME = "tps.json"
QUICK_RESULTS_NAME = "tps-quick.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workload:
    batch_size: int
    """Transfers per call: 1 for unary Transfer calls, else per TransferBatch call."""
    mix: str
    """"intra" (same partition) or "uniform" (random over all accounts): loadgen.MIXES."""
    protocol: str = "grpc"
    """"grpc": the WalletService; "http": POST /v1/wallet/balance_transfer (unary only)."""
    closed_loop_twin: str = ""
    """Set for an open-loop workload (gRPC unary): the closed-loop workload of the same
    mix whose transfers/s its sweep of offered rates is a percentage of."""

    @property
    def open_loop(self) -> bool:
        return bool(self.closed_loop_twin)


WORKLOADS = {
    "unary": Workload(1, "intra"),
    "http-unary": Workload(1, "intra", "http"),
    "batch100": Workload(100, "intra"),
    "batch1000": Workload(1000, "intra"),
    "cross-unary": Workload(1, "uniform"),
    "cross-batch1000": Workload(1000, "uniform"),
    "zipf-unary": Workload(1, "zipf"),
    "zipf-batch1000": Workload(1000, "zipf"),
    "open-unary": Workload(1, "intra", closed_loop_twin="unary"),
    "open-cross-unary": Workload(1, "uniform", closed_loop_twin="cross-unary"),
}
DEFAULT_WORKLOADS = ",".join(w for w in WORKLOADS if w != "open-cross-unary")
DEFAULT_SWEEP_PCT = "25,50,75,100"
QUICK_SWEEP_PCT = "50,100"
DEFAULT_SCALING_PARTITIONS = "1,2,4,8"
DEFAULT_SCALING_WORKLOADS = "unary,batch1000"
NOOP_START_TIMEOUT_S = 30.0
TABLE_WIDTH_MIN = 144
NEAR_CEILING = 0.8
"""A record at this share of the load generator's ceiling or above is flagged."""
"""Columns the result tables are laid out in at least (wider than that on a wide terminal)."""
NODES = 3
PARTITIONS_DEFAULT = 4
CURRENCY = "USD"
DEPOSIT = "1000000.00"
DEPOSIT_MINOR = 100_000_000
"""Per account; transfers are 0.01 to 9.99, so no run comes near INSUFFICIENT_FUNDS."""
LEADERS_TIMEOUT_S = 60.0
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
                        help="measured seconds per run (default 10; 2 with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="unmeasured seconds before each run (default 1; 0.5 with --quick)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per workload; figures are their median (default 3; 1 quick)")
    parser.add_argument("--callers", type=int, default=64,
                        help="concurrent unary callers, closed loop (default 64)")
    parser.add_argument("--batch-callers", type=int, default=4,
                        help="concurrent TransferBatch callers (default 4)")
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=None,
                        help=f"partitions of the cluster the harness starts (default "
                             f"{PARTITIONS_DEFAULT}; with --config/--target: the running "
                             "cluster's own, from its cluster map)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="target mode: measure the ALREADY RUNNING cluster of this cluster "
                             "file (its nodes' addresses, tokens and TLS) instead of starting "
                             "one; nothing is started or stopped")
    parser.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                        help="target mode: a node of an already running cluster (repeatable; "
                             "the others are found from its cluster map); credentials from "
                             "--config, else RAFTWALLET_TOKEN / RAFTWALLET_ADMIN_TOKEN")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="during each workload's first run, record a py-spy flame graph of "
                             "each local node and load generator process into "
                             "DIR/<workload>-<process>.svg")
    parser.add_argument("--workloads", default=None,
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all "
                             "but open-cross-unary)")
    parser.add_argument("--timeout-s", type=float, default=CALL_TIMEOUT_S,
                        help="deadline of each call; a node answers cross-partition transfers "
                             "not final by then PENDING and the load generator follows up "
                             f"with GetTransfer (default {CALL_TIMEOUT_S:.0f})")
    parser.add_argument("--client-processes", "--procs", dest="procs", type=int,
                        default=loadgen.default_procs(),
                        help="load generator processes (default: cores, at most 2); more "
                             "when the ceiling shows one process is the limit")
    parser.add_argument("--rate", type=float, default=None,
                        help="open-loop workloads: offer this many transfers/s (one point) "
                             "instead of the --sweep-pct sweep")
    parser.add_argument("--sweep-pct", default=None,
                        help="open-loop workloads: offered rates as percentages of the "
                             f"closed-loop maximum (default {DEFAULT_SWEEP_PCT}; "
                             f"{QUICK_SWEEP_PCT} with --quick)")
    parser.add_argument("--arrivals", choices=loadgen.ARRIVALS, default="poisson",
                        help="open loop: Poisson (default) or evenly spaced arrivals")
    parser.add_argument("--zipf-s", type=float, default=loadgen.ZIPF_S_DEFAULT,
                        help="exponent of the zipf mix: the k-th hottest account is chosen "
                             f"with weight 1/k**s (default {loadgen.ZIPF_S_DEFAULT})")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the load generator against a no-op server first "
                             "(default on)")
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="also run --scaling-workloads on clusters of each of "
                             "--scaling-partitions (default: on for the full run, that is "
                             "without --workloads and --quick; else off)")
    parser.add_argument("--scaling-partitions", default=DEFAULT_SCALING_PARTITIONS,
                        help=f"partition counts of the scaling curve "
                             f"(default {DEFAULT_SCALING_PARTITIONS})")
    parser.add_argument("--scaling-workloads", default=DEFAULT_SCALING_WORKLOADS,
                        help=f"workloads of the scaling curve (default "
                             f"{DEFAULT_SCALING_WORKLOADS})")
    parser.add_argument("--routing", choices=("leader", "spread"), default="leader",
                        help="send each call to its partition's leader (default), or spread "
                             "calls over all nodes (followers forward to the leader)")
    parser.add_argument("--leader-wait-s", type=float, default=None,
                        help="before measuring, wait up to this long for every partition to "
                             "be led by its preferred node (0: do not wait; default 45, "
                             "10 with --quick)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run the nodes on uvloop (RAFTWALLET_UVLOOP=1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="parent of the temporary cluster directory (default: $TMPDIR)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the cluster directory (logs, journals) after the run")
    outputs.add_output_options(parser, f"{RESULTS_NAME} ({QUICK_RESULTS_NAME} with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="short version (under 2 minutes): 1 run of 2 s per workload, "
                             "a 2-point sweep, no scaling curve")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration_s is None:
        args.duration_s = 2.0 if quick else 10.0
    if args.leader_wait_s is None:
        args.leader_wait_s = 10.0 if quick else 45.0
    if args.warmup_s is None:
        args.warmup_s = 0.5 if quick else 1.0
    if args.runs is None:
        args.runs = 1 if quick else 3
    args.output = outputs.resolve_output(args, QUICK_RESULTS_NAME if quick else RESULTS_NAME)
    full_run = args.workloads is None and not quick
    _parse_target(parser, args)
    default_workloads = DEFAULT_WORKLOADS
    if args.target_mode:  # no gateway addresses in a running cluster's map
        default_workloads = ",".join(w for w in DEFAULT_WORKLOADS.split(",")
                                     if WORKLOADS[w].protocol == "grpc")
    args.workload_list = [w.strip() for w in (args.workloads or default_workloads).split(",")
                          if w.strip()]
    unknown = [w for w in args.workload_list if w not in WORKLOADS]
    if unknown or not args.workload_list:
        parser.error(f"--workloads: unknown {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.target_mode:
        http = [w for w in args.workload_list if WORKLOADS[w].protocol == "http"]
        if http:
            parser.error(f"--workloads {','.join(http)}: HTTP workloads need the gateways the "
                         "harness starts; not available with --config/--target")
        if args.scaling:
            parser.error("--scaling needs a fresh cluster for each partition count, which the "
                         "harness starts itself: not available with --config/--target (run "
                         "it without them)")
        args.scaling = False
    if args.scaling is None:
        args.scaling = full_run
    args.scaling_workload_list = [w.strip() for w in args.scaling_workloads.split(",")
                                  if w.strip()]
    unknown = [w for w in args.scaling_workload_list if w not in WORKLOADS]
    if unknown or (args.scaling and not args.scaling_workload_list):
        parser.error(f"--scaling-workloads: unknown {unknown}; choose from "
                     f"{', '.join(WORKLOADS)}")
    try:
        args.scaling_partition_list = sorted({int(p) for p in
                                              args.scaling_partitions.split(",") if p.strip()})
        args.sweep_fractions = [float(p) / 100 for p in
                                (args.sweep_pct or (QUICK_SWEEP_PCT if quick
                                                    else DEFAULT_SWEEP_PCT)).split(",")
                                if p.strip()]
    except ValueError as error:
        parser.error(f"--scaling-partitions and --sweep-pct take comma-separated numbers: "
                     f"{error}")
    if any(p < 1 for p in args.scaling_partition_list) or (
            args.scaling and args.accounts < 2 * max(args.scaling_partition_list, default=1)):
        parser.error("--scaling-partitions: at least 1 each, and 2 accounts per partition")
    if not args.sweep_fractions or any(not f > 0 for f in args.sweep_fractions):
        parser.error("--sweep-pct: positive percentages")
    if args.rate is not None and not args.rate > 0:
        parser.error("--rate must be positive")
    if not args.zipf_s > 0:
        parser.error("--zipf-s must be positive")
    if args.runs < 1 or args.duration_s <= 0 or args.warmup_s < 0 or args.timeout_s <= 0:
        parser.error("--runs must be at least 1, --duration-s and --timeout-s positive, "
                     "--warmup-s >= 0")
    if args.callers < 1 or args.batch_callers < 1 or args.procs < 1:
        parser.error("--callers, --batch-callers and --procs must be at least 1")
    if args.partitions < 1 or args.accounts < 2 * args.partitions:
        parser.error("need at least 1 partition and 2 accounts per partition")
    if args.profile is not None:
        args.py_spy = py_spy_path()
        if args.py_spy is None:
            parser.error("--profile needs py-spy (pip install py-spy): not found next to "
                         f"{sys.executable} nor on PATH")
    return args


def _parse_target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Target mode (--config / --target): the running cluster's addresses and credentials.

    Sets `args.target_mode`, `args.target_addresses` and `args.credentials` (the
    tokens and TLS the load generators present); resolves `args.partitions`.
    """
    args.target_mode = args.config is not None or bool(args.target)
    args.target_addresses = []
    args.credentials = NO_CREDENTIALS
    if not args.target_mode:
        if args.partitions is None:
            args.partitions = PARTITIONS_DEFAULT
        return
    if args.partitions is not None:
        parser.error("--partitions: with --config/--target the partition count is the running "
                     "cluster's (read from its cluster map)")
    if args.uvloop:
        parser.error("--uvloop applies to nodes the harness starts: not with --config/--target")
    args.partitions = 1  # a placeholder until the cluster map is read (main)
    try:
        if args.config is not None:
            from client.auth import CredentialsError, credentials_from_cluster_file
            from node.config import ConfigError, load_cluster_config

            try:
                config = load_cluster_config(args.config)
                args.credentials = credentials_from_cluster_file(args.config)
            except (ConfigError, CredentialsError) as error:
                parser.error(f"--config {args.config}: {error}")
            args.target_addresses = [node.grpc_address for node in config.nodes]
        else:
            args.credentials = credentials_from_environment()
        if args.target:
            args.target_addresses = list(normalize_targets(args.target))
            for address in args.target_addresses:
                parse_address(address)
    except ValueError as error:
        parser.error(f"--target: {error}")


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
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(dump_cluster_config(self.config), encoding="utf-8")
        env = dict(os.environ)
        env.pop("RAFTWALLET_UNSAFE_NO_FSYNC", None)  # a durable journal, always
        env["RAFTWALLET_UVLOOP"] = "1" if uvloop else "0"
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        from node.cli.launcher import start_node

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
        from node.cli.launcher import wait_for_leaders

        if not wait_for_leaders(self.config, LEADERS_TIMEOUT_S, list(self.processes.values())):
            raise BenchFailed("the cluster did not elect a leader for every partition in "
                              f"{LEADERS_TIMEOUT_S:.0f} s\n{self.log_tails()}")

    def wait_serving(self) -> None:
        """Every node answers and knows the leader of each partition it hosts.

        Two of three nodes elect a leader: the third may still be starting when every
        partition has one, and the accounts' setup or a run's first calls may go to it.
        """
        import grpc

        from client.auth import open_channel
        from node.security.auth import node_client_credentials
        from proto.wallet.v1 import wallet_pb2 as pb
        from proto.wallet.v1 import wallet_pb2_grpc

        credentials = node_client_credentials(self.config)
        deadline = time.monotonic() + LEADERS_TIMEOUT_S
        waiting = [node.id for node in self.config.nodes]
        while waiting:
            self.check_alive()
            for node_id in list(waiting):
                with open_channel(self.config.node(node_id).grpc_address, credentials) as channel:
                    try:
                        view = wallet_pb2_grpc.AdminServiceStub(channel).ClusterStatus(
                            pb.ClusterStatusRequest(local_only=True), timeout=5.0)
                    except grpc.RpcError:
                        continue  # still starting
                if all(p.leader_node_id for p in view.partitions):
                    waiting.remove(node_id)
            if waiting and time.monotonic() >= deadline:
                raise BenchFailed(f"nodes {waiting} not serving after {LEADERS_TIMEOUT_S:.0f} s"
                                  f"\n{self.log_tails()}")
            if waiting:
                time.sleep(0.2)

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
        from node.cli.launcher import stop_pids

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

    def node_addresses(self) -> dict[str, str]:
        """node id -> gRPC address."""
        return {node.id: node.grpc_address for node in self.config.nodes}

    @property
    def all_nodes_local(self) -> bool:
        return True  # the harness started every node itself

    # -- status --------------------------------------------------------------------------------

    def leaders(self) -> tuple[list[str], list[str]]:
        """Per partition: the leader's gRPC address and node id."""
        from node.cli.launcher import cluster_status

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
        from node.cli.launcher import cluster_status

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
        from node.cli.launcher import cluster_status

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

        from client.auth import bearer
        from proto.wallet.v1 import wallet_pb2 as pb
        from proto.wallet.v1 import wallet_pb2_grpc

        seen: dict[int, set[tuple[int, str]]] = {
            p: set() for p in range(self.config.partition_count)}
        answered = 0
        for node in self.config.nodes:
            with grpc.insecure_channel(node.grpc_address) as channel:
                stub = wallet_pb2_grpc.AdminServiceStub(channel)
                try:
                    view = stub.ClusterStatus(pb.ClusterStatusRequest(local_only=True), timeout=5,
                                              metadata=bearer(self.config.admin_token))
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


class Workers(WorkerPool):
    """`count` spawned load generator processes; `close` stops them all.

    Each presents `credentials` (tokens, TLS) on its channels: a running cluster's, in
    target mode; none for the clusters the harness starts (loopback, no wallet token).
    """

    def __init__(self, count: int, credentials: Credentials = NO_CREDENTIALS) -> None:
        super().__init__(count, loadgen.worker_main, (credentials,), "load generator",
                         "bench-loadgen", loadgen.Stop(), loadgen.WorkerFailed, BenchFailed)


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
    """A rich progress bar per run on a terminal; a plain line every few seconds otherwise."""

    PLAIN_EVERY_S = 2.5

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.tty = self.console.is_terminal
        self._bar: Any = None
        self._task: Any = None
        self._last_print = 0.0

    def update(self, label: str, done_s: float, total_s: float, rate: float) -> None:
        done_s = min(max(0.0, done_s), total_s)
        if not self.tty:
            if time.monotonic() - self._last_print >= self.PLAIN_EVERY_S:
                self._last_print = time.monotonic()
                print(f"{label} {done_s:5.1f}/{total_s:.1f} s  {rate:>9,.0f} transfers/s",
                      flush=True)
            return
        if self._bar is None:
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed:5.1f}/{task.total:.1f} s"),
                TextColumn("{task.fields[rate]:>9,.0f} transfers/s"),
                console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total_s, rate=rate)
        self._bar.update(self._task, description=label, completed=done_s, total=total_s,
                         rate=rate)

    def done(self, line: str) -> None:
        self.close()
        print(line, flush=True)

    def close(self) -> None:
        """Take the bar off the terminal (and give the cursor back), if one is shown."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


@dataclass(frozen=True, slots=True)
class Window:
    """What the load generators reported and the harness sampled around one measured window."""

    stats: list[loadgen.RunStats]
    window_s: float
    server_cpu_s: float
    """CPU time of the server processes (the nodes, or the no-op server) in the window."""
    machine_busy_cores: float
    machine_busy_pct: float
    harness_s: float
    raft_entries: int
    """Raft entries committed in the window, all partitions (0 when not sampled)."""


def drive(workers: Workers, progress: Progress, args: argparse.Namespace,
          jobs: Sequence[object | None], label: str, server_pids: Sequence[int],
          check_alive: Callable[[], None],
          commit_indexes: Callable[[], list[int]] | None = None,
          on_measure: Callable[[], None] | None = None) -> Window:
    """Hand the RunJobs to the workers, start them together, show progress, collect stats.

    The server processes' CPU, the machine's and this process's are sampled when the
    measured window opens (after the warm-up) and when it closes; `on_measure` is
    called right after the opening samples (e.g. to start the profilers).
    """
    active = [i for i, job in enumerate(jobs) if job is not None]
    for i in active:
        workers.send(i, jobs[i])
    for i in active:
        workers.receive(i)  # Ready: requests are prepared
    workers.reset_progress()
    start_at = time.monotonic() + 0.1
    go = loadgen.Go(start_at, start_at + args.warmup_s, start_at + args.warmup_s
                    + args.duration_s)
    for i in active:
        workers.send(i, go)
    cpu_from: dict[int, float] = {}
    machine_from = (0.0, 0.0)
    harness_from = 0.0
    commits_from: list[int] = []
    last_total, last_time, rate = workers.progress_total(), time.monotonic(), 0.0
    measuring = False
    while time.monotonic() < go.end_at:
        time.sleep(0.25)
        now = time.monotonic()
        if not measuring and now >= go.measure_from:
            measuring = True
            cpu_from = {pid: process_cpu_s(pid) for pid in server_pids}
            machine_from = machine_cpu()
            harness_from = time.process_time()
            commits_from = commit_indexes() if commit_indexes is not None else []
            if on_measure is not None:
                on_measure()
        total = workers.progress_total()
        if now - last_time >= 0.5:
            rate = max(0.0, (total - last_total) / (now - last_time))
            last_total, last_time = total, now
        progress.update(label, now - go.start_at, go.end_at - go.start_at, rate)
        check_alive()
    cpu_to = {pid: process_cpu_s(pid) for pid in server_pids}
    machine_to = machine_cpu()
    harness_s = time.process_time() - harness_from if measuring else 0.0
    commits_to = commit_indexes() if commit_indexes is not None and measuring else []
    window_s = time.monotonic() - go.measure_from if measuring else 0.0
    stats = [s for s in (workers.receive(i) for i in active) if isinstance(s, loadgen.RunStats)]
    busy = machine_to[0] - machine_from[0]
    total_jiffies = machine_to[1] - machine_from[1]
    return Window(
        stats=stats, window_s=window_s,
        server_cpu_s=sum(cpu_to[p] - cpu_from.get(p, cpu_to[p]) for p in cpu_to),
        machine_busy_cores=(os.cpu_count() or 1) * busy / total_jiffies if total_jiffies
        else 0.0,
        machine_busy_pct=100 * busy / total_jiffies if total_jiffies else 0.0,
        harness_s=harness_s,
        raft_entries=sum(commits_to) - sum(commits_from) if commits_to else 0)


def window_record(window: Window, duration_s: float, mix: str) -> dict[str, Any]:
    """The figures of one run common to the cluster and the no-op server."""
    stats = window.stats
    latencies: array[float] = array("d")
    failures: Counter[str] = Counter()
    for s in stats:
        latencies.extend(s.latencies_s)
        failures.update(s.failures)
    ordered = sorted(latencies)
    committed = sum(s.committed for s in stats)
    transfers = sum(s.transfers for s in stats)
    calls_total = sum(s.calls_total for s in stats)
    transfers_total = sum(s.transfers_total for s in stats)
    client_cpu_s = sum(s.cpu_s for s in stats)
    client_wall_s = max((s.wall_s for s in stats), default=0.0)
    window_s = window.window_s
    return {
        "mix": mix,
        "cross_share": sum(s.cross for s in stats) / transfers if transfers else 0.0,
        "transfers_per_s": committed / duration_s,
        "succeeded_per_s": sum(s.succeeded for s in stats) / duration_s,
        "calls_per_s": sum(s.calls for s in stats) / duration_s,
        "offered_measured_per_s": sum(s.offered for s in stats) / duration_s,
        "dispatch_lag_max_ms": max((s.dispatch_lag_max_s for s in stats), default=0.0) * 1000,
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "p999_ms": percentile(ordered, 0.999) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else 0.0,
        "latency_samples": len(ordered),
        "calls_total": calls_total,
        "failures": dict(failures),
        # Transfers answered PENDING (the node's wait reached the call's deadline) whose
        # outcome the load generator then learnt from GetTransfer.
        "pending_answered": sum(s.followed_up for s in stats),
        "get_transfer_calls": sum(s.follow_up_calls for s in stats),
        "client_cpu_us_per_call": client_cpu_s / calls_total * 1e6 if calls_total else 0.0,
        "client_cpu_us_per_transfer": (client_cpu_s / transfers_total * 1e6
                                       if transfers_total else 0.0),
        "client_cpu_cores": client_cpu_s / client_wall_s if client_wall_s else 0.0,
        "server_cpu_cores": window.server_cpu_s / window_s if window_s else 0.0,
        "server_cpu_us_per_transfer": (window.server_cpu_s / (committed * window_s / duration_s)
                                       * 1e6 if committed and window_s else 0.0),
        "machine_cpu_busy_pct": window.machine_busy_pct,
        "harness_cpu_cores": window.harness_s / window_s if window_s else 0.0,
        # CPU of everything else on the machine (kernel threads, softirq of the
        # loopback traffic, other users' work): a large figure means a disturbed run.
        "other_cpu_cores": max(0.0, window.machine_busy_cores
                               - (window.server_cpu_s + window.harness_s) / window_s
                               - client_cpu_s / client_wall_s)
        if window_s and client_wall_s else 0.0,
    }


def run_line(label: str, record: dict[str, Any]) -> str:
    """The one line printed when a run ends."""
    failures = record["failures"]
    return (f"{label}: {record['transfers_per_s']:>9,.0f} transfers/s  "
            + (f"offered {record['offered_measured_per_s']:,.0f}/s  "
               if record["offered_measured_per_s"] else "")
            + (f"cross {100 * record['cross_share']:.0f} %  " if record["cross_share"] else "")
            + f"p50 {record['p50_ms']:7.1f} ms  p99 {record['p99_ms']:7.1f} ms  "
            f"p999 {record['p999_ms']:7.1f} ms  "
            f"client {record['client_cpu_us_per_transfer']:6.1f} us/transfer"
            + (f"  failures {failures}" if failures else "")
            + (f"  OTHER LOAD {record['other_cpu_cores']:.2f} cores"
               if record["other_cpu_cores"] > OTHER_LOAD_WARN_CORES else ""))


@dataclass(frozen=True, slots=True)
class OpenPoint:
    """One offered rate of an open-loop workload, and where it came from."""

    rate_per_s: float
    fraction_of_closed_max: float | None
    """None when the rate was given (--rate)."""
    closed_max_per_s: float | None


@dataclass(frozen=True, slots=True)
class ClusterShape:
    """What a record says about the cluster it measured (the harness's own, or a running one)."""

    mode: str
    """"managed": started and stopped by the harness; "target": already running (--config,
    --target), its books checked on the harness's own accounts only."""
    nodes: int
    replicas_per_partition: int
    durable_journal: bool | None
    """None: not known (a running cluster's settings are its operator's)."""
    nodes_cpu_measured: bool
    """False when some node process is not on this machine: nodes' CPU is "n/a"."""


MANAGED_SHAPE = ClusterShape("managed", NODES, NODES, True, True)

ClusterUnderTest = BenchCluster | RunningCluster


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: ClusterUnderTest
    workers: Workers
    accounts: list[str]
    account_partitions: list[int]
    progress: Progress
    partitions: int
    profiled: set[str] = field(default_factory=set)
    """Workloads already profiled (--profile): only each one's first run is."""

    @property
    def partition_count(self) -> int:
        return self.partitions

    def accounts_by_partition(self) -> list[list[str]]:
        return group_by_partition(self.accounts, self.account_partitions, self.partitions)

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

    def read_balances(self) -> list[loadgen.BalancesDone]:
        """Every account's balance, read from its partition's leader (linearizable reads)."""
        leaders, _ = self.cluster.leaders()
        n = len(self.workers)
        jobs = [loadgen.BalancesJob(accounts, partitions, leaders, max(1, SETUP_CONCURRENCY // n))
                for accounts, partitions in zip(_split(self.accounts, n),
                                                _split(self.account_partitions, n),
                                                strict=True)]
        return [a for a in self.workers.gather(jobs) if isinstance(a, loadgen.BalancesDone)]

    def check_books(self) -> dict[str, Any]:
        """Read every balance back; the sum must be what was deposited, none below zero.

        The harness's own cluster: first waits (bounded) until no cross-partition
        transfer is in flight (only then is every cent in some account's balance), and
        every replica must reach the same position and state hash. A running cluster
        (target mode): `check_own_books`.
        """
        cluster = self.cluster
        if isinstance(cluster, RunningCluster):
            return self.check_own_books()
        outbox_at_end, drain_s = cluster.wait_for_outboxes(OUTBOX_DRAIN_TIMEOUT_S)
        answers = self.read_balances()
        total = sum(a.total_minor for a in answers)
        found = sum(a.found for a in answers)
        negative = [account for a in answers for account in a.negative]
        expected = DEPOSIT_MINOR * len(self.accounts)
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        agree, seen = cluster.replicas_agree()
        while not agree and time.monotonic() < deadline:
            time.sleep(0.2)
            agree, seen = cluster.replicas_agree()
        books = {
            "passed": (found == len(self.accounts) and total == expected and agree
                       and not negative),
            "scope": "every account of the cluster",
            "accounts_read": found,
            "sum_minor": total,
            "deposited_minor": expected,
            "negative_balances": len(negative),
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
                f"below zero: {negative[:10]}; replicas agree: {agree} {seen}; unread "
                f"accounts (first 10): {missing}")
        return books

    def check_own_books(self) -> dict[str, Any]:
        """Target mode: the books of this harness's own accounts, on a cluster others may use.

        The cluster's totals and outboxes include other clients' money and transfers, so
        they prove nothing here. This run's transfers go only between its own accounts
        (a unique prefix), so the sum of their balances must come back to what was
        deposited into them, and no balance may be below zero. Once the load generators
        have stopped, a transfer still in flight only moves forward (credit, or
        compensation), so the balances are read again (bounded, OUTBOX_DRAIN_TIMEOUT_S)
        until the sum is the deposits; a sum still different then fails the benchmark,
        as does any negative balance. Replicas are not compared (other clients' writes
        keep them at different positions).
        """
        expected = DEPOSIT_MINOR * len(self.accounts)
        started = time.monotonic()
        deadline = started + OUTBOX_DRAIN_TIMEOUT_S
        reads = 0
        while True:
            self.cluster.check_alive()
            answers = self.read_balances()
            reads += 1
            total = sum(a.total_minor for a in answers)
            found = sum(a.found for a in answers)
            negative = [account for a in answers for account in a.negative]
            balanced = found == len(self.accounts) and total == expected
            if negative or balanced or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        books = {
            "passed": balanced and not negative,
            "scope": f"this run's {len(self.accounts)} accounts only (target mode)",
            "accounts_read": found,
            "sum_minor": total,
            "deposited_minor": expected,
            "negative_balances": len(negative),
            "replicas_agree": None,
            "in_flight_at_end": None,
            "balance_reads": reads,
            "outbox_drain_s": round(time.monotonic() - started, 3),
        }
        if not books["passed"]:
            missing = [m for a in answers for m in a.missing][:10]
            raise BenchFailed(
                f"CONSERVATION FAILED (this run's accounts): read {found} of "
                f"{len(self.accounts)} balances, sum {total} minor units, deposited {expected} "
                f"(difference {total - expected}) after {reads} reads in "
                f"{books['outbox_drain_s']:.0f} s; below zero: {negative[:10]}; unread "
                f"accounts (first 10): {missing}")
        return books

    def flame_graphs(self, workload: str, load_generators: int) -> FlameGraphs | None:
        """The py-spy recordings of `workload`'s first run (--profile), else None.

        Every node process on this machine and each of the first `load_generators`
        load generator processes, into DIR/<workload>-<process>.svg (`-p<P>` added on
        the scaling curve's other clusters, whose workloads repeat).
        """
        args = self.args
        stem = workload if self.partitions == args.partitions else (
            f"{workload}-p{self.partitions}")
        if args.profile is None or stem in self.profiled:
            return None
        self.profiled.add(stem)
        pids = dict(self.cluster.pids())
        for index, worker in enumerate(self.workers.workers[:load_generators]):
            if worker.process.pid is not None:
                pids[f"loadgen{index}"] = worker.process.pid
        return FlameGraphs(args.profile, stem, pids, record_seconds(args.duration_s),
                           args.py_spy)

    def finish_flame_graphs(self, graphs: FlameGraphs | None,
                            record: dict[str, Any]) -> None:
        """Wait for the recordings; the SVGs (and why any is missing) go into `record`."""
        if graphs is None:
            return
        written, failed = graphs.finish()
        record["profiles"] = written
        if failed:
            record["profile_errors"] = failed
        for name, why in failed.items():
            print(f"profile: no flame graph of {name} ({why}); continuing without it",
                  flush=True)
        if written:
            print(f"profile: {len(written)} flame graph(s) in {graphs.directory}: "
                  f"{', '.join(Path(p).name for p in written.values())}", flush=True)

    def one_run(self, workload: str, run: int, rate_per_s: float = 0.0,
                label_suffix: str = "") -> dict[str, Any]:
        """One run of `workload` (open loop at `rate_per_s` if it is an open-loop one),
        then the books: every run ends with the conservation check."""
        args = self.args
        spec = WORKLOADS[workload]
        assert spec.open_loop == (rate_per_s > 0), (workload, rate_per_s)
        batch_size = spec.batch_size
        callers = args.callers if batch_size == 1 else args.batch_callers
        # The open loop offers its rate from every load generator process (a share each).
        procs = len(self.workers) if spec.open_loop else min(len(self.workers), callers)
        leaders, leader_ids = self.cluster.leaders()
        if (args.leader_wait_s > 0 and leader_ids != self.cluster.preferred_leaders()
                and self.cluster.wait_for_preferred_leaders(args.leader_wait_s)):
            leaders, leader_ids = self.cluster.leaders()
        node_addresses = self.cluster.node_addresses()
        node_ids = list(node_addresses)
        if args.routing == "leader":
            targets = leaders
            target_ids = leader_ids
        else:
            addresses = list(node_addresses.values())
            targets = [addresses[p % len(addresses)] for p in range(self.partition_count)]
            target_ids = [node_ids[p % len(node_ids)] for p in range(self.partition_count)]
        http_targets: tuple[str, ...] = ()
        if spec.protocol == "http":
            # The gateway in the process of the node each partition's calls go to.
            http_targets = tuple(f"http://{self.cluster.http_addresses[node_id]}"
                                 for node_id in target_ids)
        by_partition = self.accounts_by_partition()
        jobs: list[object | None] = [None] * len(self.workers)
        for index, share in enumerate(_shares(callers, procs)):
            jobs[index] = loadgen.RunJob(workload, batch_size, max(1, share), by_partition,
                                         targets, CURRENCY, args.seed * 1000 + run,
                                         args.timeout_s, spec.mix, http_targets,
                                         zipf_s=args.zipf_s, rate_per_s=rate_per_s / procs,
                                         arrivals=args.arrivals)
        label = (f"{workload:>16}{label_suffix} p{self.partitions} run {run + 1}/"
                 f"{args.runs}")
        graphs = self.flame_graphs(workload, procs)
        try:
            window = drive(self.workers, self.progress, args, jobs, label,
                           list(self.cluster.pids().values()), self.cluster.check_alive,
                           self.cluster.commit_indexes,
                           on_measure=graphs.start if graphs is not None else None)
            record = window_record(window, float(args.duration_s), spec.mix)
            self.finish_flame_graphs(graphs, record)
        finally:
            if graphs is not None:
                graphs.stop()
        _, leader_ids_after = self.cluster.leaders()
        books = self.check_books()
        cpu_measured = self.cluster.all_nodes_local
        nodes_cpu_cores = record.pop("server_cpu_cores")
        nodes_cpu_us = record.pop("server_cpu_us_per_transfer")
        record["nodes_cpu_cores"] = nodes_cpu_cores if cpu_measured else None
        record["nodes_cpu_us_per_transfer"] = nodes_cpu_us if cpu_measured else None
        record["raft_entries_per_s"] = (window.raft_entries / window.window_s
                                        if window.window_s else 0.0)
        record["transfers_per_entry"] = (record["transfers_per_s"] * window.window_s
                                         / window.raft_entries if window.raft_entries else 0.0)
        led = Counter(leader_ids)
        record["leaders"] = leader_ids
        record["most_partitions_led_by_one_node"] = max(led.values()) if led else 0
        record["leader_changed"] = leader_ids != leader_ids_after
        record["books"] = books
        self.progress.done(
            run_line(label, record)
            + f"  nodes {_number(record['nodes_cpu_us_per_transfer'], '6.1f')} us/transfer"
            f"  leaders {'/'.join(leader_ids)}  books ok"
            + (f"  answered PENDING {record['pending_answered']:,}"
               if record["pending_answered"] else "")
            + (f"  in flight at end {sum(books['in_flight_at_end'] or ()):,}, drained in "
               f"{books['outbox_drain_s']:.1f} s" if "balance_reads" not in books
               and books["outbox_drain_s"] >= 0.05 else "")
            + (f"  own books balanced after {books['balance_reads']} reads in "
               f"{books['outbox_drain_s']:.1f} s" if books.get("balance_reads", 1) > 1 else "")
            + ("  LEADER CHANGED" if record["leader_changed"] else ""))
        return record

    def open_points(self, workload: str, records: Sequence[dict[str, Any]]) -> list[OpenPoint]:
        """The offered rates of an open-loop workload on this cluster.

        `--rate`, else `--sweep-pct` of the closed-loop twin's transfers/s: from
        `records` (this cluster's results so far) if it was measured, else from one
        calibration run (its books checked like any run's).
        """
        args = self.args
        if args.rate is not None:
            return [OpenPoint(float(args.rate), None, None)]
        twin = WORKLOADS[workload].closed_loop_twin
        measured = [r for r in records if r["workload"] == twin
                    and r["partitions"] == self.partitions]
        if measured:
            closed_max = float(measured[-1]["transfers_per_s"])
        else:
            closed_max = float(self.one_run(twin, 0, label_suffix=" (calibration)")
                               ["transfers_per_s"])
        if not closed_max > 0:
            raise BenchFailed(f"{twin} committed nothing: no closed-loop maximum to sweep "
                              f"{workload} against")
        return [OpenPoint(closed_max * f, f, closed_max) for f in args.sweep_fractions]


def group_by_partition(accounts: Sequence[str], account_partitions: Sequence[int],
                       partitions: int) -> list[list[str]]:
    grouped: list[list[str]] = [[] for _ in range(partitions)]
    for account, partition in zip(accounts, account_partitions, strict=True):
        grouped[partition].append(account)
    return grouped


# --- the load generator's ceiling -------------------------------------------------------------


class NoopServer:
    """bench.noop_server in a process (and session) of its own on a free 127.0.0.1 port."""

    def __init__(self, log_path: Path) -> None:
        self.address = f"127.0.0.1:{PortAllocator()(1)}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.noop_server", "--listen", self.address],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=REPO_ROOT)

    def wait_ready(self, timeout_s: float = NOOP_START_TIMEOUT_S) -> None:
        """Until it prints its ready line (it then accepts calls); BenchFailed otherwise."""
        from bench.noop_server import READY_LINE

        deadline = time.monotonic() + timeout_s
        while READY_LINE not in self.log_path.read_text(encoding="utf-8", errors="replace"):
            self.check_alive()
            if time.monotonic() >= deadline:
                raise BenchFailed(f"the no-op server did not start in {timeout_s:.0f} s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            log = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise BenchFailed(f"the no-op server exited ({self.process.returncode}):\n{log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_GRACE_S)


def ceiling_name(batch_size: int) -> str:
    return "unary" if batch_size == 1 else f"batch{batch_size}"


def ceiling_batch_sizes(workload_names: Iterable[str]) -> list[int]:
    """The transfers per call of the gRPC workloads among `workload_names`, each once."""
    return sorted({WORKLOADS[w].batch_size for w in workload_names
                   if WORKLOADS[w].protocol == "grpc"})


def measure_ceilings(args: argparse.Namespace, workers: Workers, progress: Progress,
                     noop: NoopServer, batch_sizes: Sequence[int],
                     environment: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per batch size: the closed-loop workload run by the same load generator against the
    no-op server (intra mix, the same accounts, callers and processes as on the cluster)."""
    accounts = [f"bench-{i:06d}" for i in range(args.accounts)]
    by_partition = group_by_partition(accounts, [partition_of(a, args.partitions)
                                                 for a in accounts], args.partitions)
    targets = [noop.address] * args.partitions
    ceilings: dict[int, dict[str, Any]] = {}
    for batch_size in batch_sizes:
        callers = args.callers if batch_size == 1 else args.batch_callers
        procs = min(len(workers), callers)
        runs = []
        for run in range(args.runs):
            jobs: list[object | None] = [None] * len(workers)
            for index, share in enumerate(_shares(callers, procs)):
                jobs[index] = loadgen.RunJob(f"ceiling-{ceiling_name(batch_size)}", batch_size,
                                             share, by_partition, targets, CURRENCY,
                                             args.seed * 1000 + run, args.timeout_s, "intra",
                                             plaintext=True)
            label = f"{'ceiling-' + ceiling_name(batch_size):>16} noop run {run + 1}/{args.runs}"
            window = drive(workers, progress, args, jobs, label, [noop.process.pid],
                           noop.check_alive)
            record = window_record(window, float(args.duration_s), "intra")
            progress.done(run_line(label, record)
                          + f"  client {record['client_cpu_cores']:.2f} cores  no-op server "
                          f"{record['server_cpu_cores']:.2f} cores")
            runs.append(record)
        ceilings[batch_size] = {
            "workload": f"ceiling-{ceiling_name(batch_size)}",
            "target": "bench.noop_server (answers SUCCEEDED at once, own process)",
            "rpc": "Transfer" if batch_size == 1 else "TransferBatch",
            "transfers_per_call": batch_size,
            "callers": callers,
            "load_generator_processes": procs,
            "partitions": args.partitions,
            "runs": len(runs),
            "duration_s": args.duration_s,
            **{key: _median(runs, key) for key in (
                "p50_ms", "p99_ms", "p999_ms", "client_cpu_us_per_transfer",
                "client_cpu_cores", "server_cpu_cores", "machine_cpu_busy_pct",
                "other_cpu_cores")},
            "transfers_per_s": round(statistics.median(r["transfers_per_s"] for r in runs)),
            "failures_total": dict(sum((Counter(r["failures"]) for r in runs), Counter())),
            "environment": environment,
        }
    return ceilings


def ceiling_line(ceilings: dict[int, dict[str, Any]]) -> str:
    unary = ceilings.get(1)
    batches = [c for size, c in sorted(ceilings.items()) if size > 1]
    parts = ([f"{unary['transfers_per_s']:,}/s unary"] if unary else []) + [
        f"{c['transfers_per_s']:,}/s batch ({ceiling_name(c['transfers_per_call'])})"
        for c in batches]
    return "loadgen ceiling: " + ", ".join(parts)


def annotate_ceiling(records: Iterable[dict[str, Any]],
                     ceilings: dict[int, dict[str, Any]]) -> None:
    """Each gRPC record gets the ceiling of its batch size and its share of it."""
    for record in records:
        ceiling = ceilings.get(int(record["transfers_per_call"]))
        if ceiling is None or record["protocol"] != "grpc":
            continue
        record["loadgen_ceiling_per_s"] = ceiling["transfers_per_s"]
        record["of_ceiling"] = (round(record["transfers_per_s"] / ceiling["transfers_per_s"], 3)
                                if ceiling["transfers_per_s"] else None)


# --- one cluster ------------------------------------------------------------------------------


def measure_cluster(args: argparse.Namespace, root: Path, partitions: int,
                    workload_names: Sequence[str], workers: Workers, progress: Progress,
                    environment: dict[str, Any], node_pids: dict[str, int]) -> list[dict[str, Any]]:
    """Start a cluster of `partitions`, set up the accounts, measure every workload, stop it.

    The cluster is stopped whatever happens; its node pids are added to `node_pids`.
    """
    cluster = BenchCluster(root, partitions, args.uvloop,
                           http=any(WORKLOADS[w].protocol == "http" for w in workload_names))
    try:
        cluster.start()
        node_pids.update({f"{node_id}@p{partitions}": pid
                          for node_id, pid in cluster.pids().items()})
        print(f"cluster: {NODES} nodes x {partitions} partitions (3 replicas each, durable "
              f"journal) in {root}; node pids {cluster.pids()}", flush=True)
        cluster.wait_for_leaders()
        cluster.wait_serving()
        cluster.wait_for_gateways()
        if cluster.http_addresses:
            print(f"http gateways: {cluster.http_addresses}", flush=True)
        wait_for_preferred_leaders(args, cluster)
        accounts = [f"bench-{i:06d}" for i in range(args.accounts)]
        bench = Bench(args, cluster, workers, accounts,
                      [partition_of(a, partitions) for a in accounts], progress, partitions)
        return measure_workloads(bench, workload_names, environment, MANAGED_SHAPE)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_for_preferred_leaders(args: argparse.Namespace, cluster: ClusterUnderTest) -> None:
    """With --leader-wait-s, wait (bounded) until every partition has its preferred leader."""
    if args.leader_wait_s <= 0:
        return
    started = time.monotonic()
    settled = cluster.wait_for_preferred_leaders(args.leader_wait_s)
    print(f"leaders {'/'.join(cluster.leaders()[1])} "
          + (f"(the preferred ones, after {time.monotonic() - started:.0f} s)"
             if settled else f"(not all preferred after {args.leader_wait_s:.0f} s: "
             "measuring with these)"), flush=True)


def measure_workloads(bench: Bench, workload_names: Sequence[str],
                      environment: dict[str, Any], shape: ClusterShape) -> list[dict[str, Any]]:
    """Fund the accounts, check the books, then every workload's runs and their records."""
    args = bench.args
    bench.setup_accounts()
    bench.check_books()
    records: list[dict[str, Any]] = []
    for workload in workload_names:
        if not WORKLOADS[workload].open_loop:
            runs = [bench.one_run(workload, run) for run in range(args.runs)]
            records.append(summarize(workload, runs, args, environment, bench.partitions,
                                     shape=shape))
            continue
        for point in bench.open_points(workload, records):
            suffix = f" @{point.rate_per_s:,.0f}/s"
            runs = [bench.one_run(workload, run, point.rate_per_s, suffix)
                    for run in range(args.runs)]
            records.append(summarize(workload, runs, args, environment, bench.partitions,
                                     point, shape))
    return records


def new_run_prefix() -> str:
    """A prefix no other run shares: UTC time to the second and 24 random bits.

    Account ids are `<prefix>-NNNNNN` (at most 40 characters, within the ledger's 64).
    """
    return f"bench-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def target_shape(cluster: RunningCluster) -> ClusterShape:
    return ClusterShape("target", len(cluster.node_addresses()),
                        cluster.replicas_per_partition(), None, cluster.all_nodes_local)


def measure_running(args: argparse.Namespace, cluster: RunningCluster, run_prefix: str,
                    workload_names: Sequence[str], workers: Workers, progress: Progress,
                    environment: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure every workload on an already running cluster (target mode).

    Nothing is started or stopped; the accounts are this run's own (`run_prefix`), so
    several runs against one cluster never share one, and the books checked are theirs.
    """
    partitions = cluster.partition_count
    wait_for_preferred_leaders(args, cluster)
    accounts = [f"{run_prefix}-{i:06d}" for i in range(args.accounts)]
    bench = Bench(args, cluster, workers, accounts,
                  [partition_of(a, partitions) for a in accounts], progress, partitions)
    return measure_workloads(bench, workload_names, environment, target_shape(cluster))


def connect_target(args: argparse.Namespace) -> RunningCluster:
    """The running cluster of --config/--target; sets `args.partitions` to its count."""
    cluster = RunningCluster(args.target_addresses, args.credentials, args.config)
    args.partitions = cluster.partition_count
    if args.accounts < 2 * args.partitions:
        raise BenchFailed(f"--accounts {args.accounts}: the running cluster has "
                          f"{args.partitions} partitions, at least 2 accounts each are needed")
    pids = cluster.pids()
    print(f"target: running cluster of {len(cluster.node_addresses())} nodes x "
          f"{args.partitions} partitions ({cluster.replicas_per_partition()} replicas), map "
          f"version {cluster.map.version}, via {', '.join(cluster.addresses)}; local node pids "
          f"{pids or 'none'}"
          + ("" if cluster.all_nodes_local else " (nodes' CPU per transfer: n/a)")
          + ("" if args.credentials.admin_token else
             "; no admin token: calls go to the preferred leaders, Raft entries not counted"),
          flush=True)
    return cluster


def cluster_plan(args: argparse.Namespace) -> list[tuple[int, list[str]]]:
    """(partitions, workloads) per cluster to start: `--partitions` with `--workloads` first,
    then, with --scaling, the scaling workloads at every other partition count (those at
    `--partitions` join the first cluster's list if missing from it)."""
    main_list = list(args.workload_list)
    plan: list[tuple[int, list[str]]] = [(args.partitions, main_list)]
    if not args.scaling:
        return plan
    for partitions in args.scaling_partition_list:
        if partitions == args.partitions:
            main_list.extend(w for w in args.scaling_workload_list if w not in main_list)
        else:
            plan.append((partitions, list(args.scaling_workload_list)))
    return plan


def _median(runs: Sequence[dict[str, Any]], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in runs), 2)


def _median_or_none(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    """The median, or None when some run has no figure (a node's CPU that was not measured)."""
    if any(r[key] is None for r in runs):
        return None
    return _median(runs, key)


def _number(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or "n/a" for a figure that was not measured."""
    return "n/a" if value is None else format(value, spec)


def summarize(workload: str, runs: list[dict[str, Any]], args: argparse.Namespace,
              environment: dict[str, Any], partitions: int,
              point: OpenPoint | None = None,
              shape: ClusterShape = MANAGED_SHAPE) -> dict[str, Any]:
    def median(key: str) -> float:
        return _median(runs, key)

    failures: Counter[str] = Counter()
    for run in runs:
        failures.update(run["failures"])
    spec = WORKLOADS[workload]
    batch_size = spec.batch_size
    mix = spec.mix
    http = spec.protocol == "http"
    record: dict[str, Any] = {
        "workload": workload,
        "mix": mix,
        **({"zipf_s": args.zipf_s} if mix == "zipf" else {}),
        "rpc": HTTP_RPC if http else "Transfer" if batch_size == 1 else "TransferBatch",
        "protocol": spec.protocol,
        **({"http_gateway": "served in each node's process (--http-listen); calls go to the "
                            "gateway of the node they would go to over gRPC (--routing)",
            "http_client": "httpx.AsyncClient, HTTP/1.1 keep-alive, pool of one connection "
                           "per caller"} if http else {}),
        "loop": "open" if spec.open_loop else "closed",
        "transfers_per_call": batch_size,
        "callers": (None if spec.open_loop else args.callers if batch_size == 1
                    else args.batch_callers),
        "mode": shape.mode,
        "partitions": partitions,
        "nodes": shape.nodes,
        "replicas_per_partition": shape.replicas_per_partition,
        "accounts": args.accounts,
        "durable_journal": shape.durable_journal,
        "routing": args.routing,
        "load_generator_processes": (args.procs if spec.open_loop else
                                     min(args.procs, args.callers if batch_size == 1
                                         else args.batch_callers)),
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
        "latency": ("per transfer, from its intended send time (open loop) until final "
                    "(SUCCEEDED or FAILED; GetTransfer follow-ups included)" if spec.open_loop
                    else "per call, until every transfer in it is final (SUCCEEDED or FAILED; "
                    "GetTransfer follow-ups included)" if mix != "intra" else "per call"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "p999_ms": median("p999_ms"),
        "failures_total": dict(failures),
        "pending_answered_total": sum(int(r["pending_answered"]) for r in runs),
        "client_cpu_us_per_call": median("client_cpu_us_per_call"),
        "client_cpu_us_per_transfer": median("client_cpu_us_per_transfer"),
        "client_cpu_cores": median("client_cpu_cores"),
        # None ("n/a") when some node process was not found on this machine (target mode).
        "nodes_cpu_cores": _median_or_none(runs, "nodes_cpu_cores"),
        "nodes_cpu_us_per_transfer": _median_or_none(runs, "nodes_cpu_us_per_transfer"),
        "raft_entries_per_s": median("raft_entries_per_s"),
        "transfers_per_entry": median("transfers_per_entry"),
        "machine_cpu_busy_pct": median("machine_cpu_busy_pct"),
        "other_cpu_cores": median("other_cpu_cores"),
        "conservation_passed": all(r["books"]["passed"] for r in runs),
        "conservation_scope": runs[0]["books"]["scope"],
        "nodes_cpu_measured": shape.nodes_cpu_measured,
    }
    profiles = {name: path for r in runs for name, path in r.get("profiles", {}).items()}
    if profiles or any("profiles" in r for r in runs):
        record["profiles"] = profiles
    errors = {name: why for r in runs for name, why in r.get("profile_errors", {}).items()}
    if errors:
        record["profile_errors"] = errors
    if point is not None:
        record.update({
            "arrivals": args.arrivals,
            "offered_per_s": round(point.rate_per_s, 1),
            "offered_measured_per_s": median("offered_measured_per_s"),
            "achieved_per_s": record["transfers_per_s"],
            "offered_fraction_of_closed_max": point.fraction_of_closed_max,
            "closed_loop_max_per_s": point.closed_max_per_s,
            "dispatch_lag_max_ms": max(float(r["dispatch_lag_max_ms"]) for r in runs),
        })
    record["environment"] = environment
    record["raw"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                     for r in runs]
    return record


def print_table(records: list[dict[str, Any]], ceilings: dict[int, dict[str, Any]],
                console: Any) -> None:
    """Two rich tables (throughput and latency; CPU) of TABLE_WIDTH_MIN columns, then notes."""
    from rich import box
    from rich.table import Table

    def table(title: str, headers: Sequence[str]) -> Table:
        made = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for header in headers:
            made.add_column(header, justify="left" if header in ("workload", "mix")
                            else "right", no_wrap=header == "workload")
        return made

    def offered(r: dict[str, Any]) -> str:
        return f"{r['offered_per_s']:,.0f}" if "offered_per_s" in r else "closed"

    speed = table("committed transfers/s and time to final outcome (median of runs)",
                  ("workload", "parts", "mix", "cross %", "offered/s", "transfers/s",
                   "of ceiling", "p50 ms", "p99 ms", "p999 ms", "failed", "PENDING"))
    cpu = table("CPU (median of runs)",
                ("workload", "parts", "offered/s", "node us/transfer", "client us/transfer",
                 "nodes cores", "client cores", "entries/s", "transfers/entry"))
    for r in records:
        of_ceiling = r.get("of_ceiling")
        speed.add_row(
            r["workload"], str(r["partitions"]),
            r["mix"] + (f" s={r['zipf_s']}" if "zipf_s" in r else ""),
            f"{100 * r['cross_share']:.0f}", offered(r), f"{r['transfers_per_s']:,}",
            f"{100 * of_ceiling:.0f} %" if of_ceiling is not None else "-",
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['p999_ms']:.1f}",
            f"{sum(r['failures_total'].values()):,}", f"{r['pending_answered_total']:,}")
        cpu.add_row(
            r["workload"], str(r["partitions"]), offered(r),
            _number(r["nodes_cpu_us_per_transfer"], ".1f"),
            f"{r['client_cpu_us_per_transfer']:.1f}",
            _number(r["nodes_cpu_cores"], ".2f"), f"{r['client_cpu_cores']:.2f}",
            f"{r['raft_entries_per_s']:,.0f}", f"{r['transfers_per_entry']:.1f}")
    console.print()
    console.print(speed)
    console.print(cpu)
    for r in records:
        if r["failures_total"]:
            console.print(f"failures of {r['workload']} (p{r['partitions']}) by reason: "
                          f"{r['failures_total']}", markup=False)
    if ceilings:
        console.print(ceiling_line(ceilings) + " (same load generator, no-op server; "
                      "'of ceiling' = cluster transfers/s / ceiling)", markup=False)
    for r in records:
        if (r.get("of_ceiling") or 0.0) >= NEAR_CEILING:
            console.print(f"WARNING: {r['workload']} (p{r['partitions']}) reached "
                          f"{100 * r['of_ceiling']:.0f} % of the load generator's ceiling: the "
                          f"harness may be the limit (more --client-processes, if cores allow)",
                          markup=False)
    if any(r["mix"] != "intra" for r in records):
        console.print("uniform and zipf mixes: transfers/s counts final SUCCEEDED transfers; "
                      "latency is the time to the final outcome of every transfer of a call "
                      "(PENDING: answered PENDING, followed up with GetTransfer)", markup=False)
    if any(r["loop"] == "open" for r in records):
        console.print("open loop: offered = target rate, transfers/s = committed in the window "
                      "(achieved); latency from each transfer's intended send time",
                      markup=False)


def table_console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if console.is_terminal and console.width >= TABLE_WIDTH_MIN:
        return console
    return Console(highlight=False, width=TABLE_WIDTH_MIN)  # never squeezed into ellipses


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


def load_generator_credentials(credentials: Credentials) -> Credentials:
    """What the load generators present: the wallet token and TLS, never the admin token.

    They call WalletService only; without a wallet token their channels carry no
    token interceptor at all (the leanest hot path).
    """
    return dataclasses.replace(credentials, admin_token="")


def target_report(args: argparse.Namespace, cluster: RunningCluster,
                  run_prefix: str) -> dict[str, Any]:
    """The report's account of a running cluster: where it was, what was found of it."""
    return {
        "config": str(args.config) if args.config is not None else None,
        "addresses": list(cluster.addresses),
        "map_version": cluster.map.version,
        "nodes": cluster.node_addresses(),
        "partitions": cluster.partition_count,
        "replicas_per_partition": cluster.replicas_per_partition(),
        "run_prefix": run_prefix,
        "accounts": args.accounts,
        "local_node_pids": cluster.pids(),
        "nodes_cpu": ("measured: every node's process is on this machine (it includes any "
                      "other client's load on the cluster)" if cluster.all_nodes_local else
                      "n/a: not every node's process is on this machine"),
        "leaders_from": ("ClusterStatus (admin token)" if args.credentials.admin_token
                         else "the cluster map's preferred leaders (no admin token)"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    environment = describe()
    root = Path(tempfile.mkdtemp(prefix="raftwallet-bench-", dir=args.data_dir))
    workers: Workers | None = None
    noop: NoopServer | None = None
    progress = Progress()
    status = 1
    started = time.monotonic()
    with _terminate_on_sigterm():
        try:
            # Load generators first: spawned, so they share nothing with this process.
            workers = Workers(args.procs, load_generator_credentials(args.credentials))
            print(f"load generator pids {workers.pids()}", flush=True)
            target: RunningCluster | None = None
            run_prefix = ""
            if args.target_mode:
                target = connect_target(args)
                run_prefix = new_run_prefix()
                print(f"target: this run's accounts are {run_prefix}-000000 .. "
                      f"{run_prefix}-{args.accounts - 1:06d}", flush=True)
            plan = cluster_plan(args)
            processes: dict[str, Any] = {"nodes": {}, "load_generators": workers.pids()}
            ceilings: dict[int, dict[str, Any]] = {}
            if args.ceiling:
                noop = NoopServer(root / "noop-server.log")
                processes["noop_server"] = [noop.process.pid]
                noop.wait_ready()
                print(f"no-op server pid {noop.process.pid} on {noop.address}", flush=True)
                ceilings = measure_ceilings(
                    args, workers, progress, noop,
                    ceiling_batch_sizes(w for _, names in plan for w in names), environment)
                noop.stop()
                print(ceiling_line(ceilings), flush=True)
            records: list[dict[str, Any]] = []
            if target is not None:
                records.extend(measure_running(args, target, run_prefix, args.workload_list,
                                               workers, progress, environment))
            else:
                for partitions, names in plan:
                    records.extend(measure_cluster(args, root / f"p{partitions}", partitions,
                                                   names, workers, progress, environment,
                                                   processes["nodes"]))
            annotate_ceiling(records, ceilings)
            report = {
                "benchmark": "tps",
                "mode": "managed" if target is None else "target",
                "what": ("committed transfers/s of a local 3-node cluster (3 replicas per "
                         "partition, durable journal)" if target is None else
                         "committed transfers/s of an already running cluster (target mode: "
                         "not started or stopped by the harness; books checked on this run's "
                         "own accounts)")
                        + ", median of runs: intra-partition "
                        "transfers (mix intra), a uniform random mix over all partitions "
                        "whose cross-partition transfers run as a saga (mix uniform), a Zipf "
                        "hot-account mix (mix zipf); closed loop, and open loop at offered "
                        "rates (latency from the intended send time); the load generator's "
                        "own ceiling against a no-op server",
                **({} if target is None else {"target": target_report(args, target,
                                                                      run_prefix)}),
                "records": records,
                "loadgen_ceiling": [ceilings[size] for size in sorted(ceilings)],
                "conservation_passed": all(r["conservation_passed"] for r in records),
                "processes": processes,
                "elapsed_s": round(time.monotonic() - started, 1),
                "environment": environment,
            }
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            from bench.plot import latency_plot, plot_paths, scaling_plot

            scaling_png, latency_png = plot_paths(args.output)
            plots = [p for p in (scaling_plot(records, scaling_png),
                                 latency_plot(records, latency_png)) if p is not None]
            print_table(records, ceilings, table_console())
            books = ("every run's balances sum to the deposits" if target is None else
                     f"the balances of this run's {args.accounts:,} accounts ({run_prefix}-*) "
                     "sum to their deposits after every run")
            print(f"\nconservation: {books}; written to "
                  f"{args.output}" + "".join(f", {p}" for p in plots)
                  + f" in {time.monotonic() - started:.0f} s")
            status = 0
        except (BenchFailed, TargetUnavailable) as failure:
            print(f"\nbench FAILED: {failure}", file=sys.stderr, flush=True)
            status = 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the cluster", file=sys.stderr, flush=True)
            status = 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
            progress.close()
            try:
                if noop is not None:
                    noop.stop()
                if workers is not None:
                    workers.close(hurry=status != 0)
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                if (args.keep_data or status not in (0, 130)) and any(root.iterdir()):
                    print(f"cluster directory kept: {root}", file=sys.stderr)
                else:
                    shutil.rmtree(root, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
