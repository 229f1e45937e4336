"""Prometheus metrics of one node, served over HTTP on the node's `metrics_port`.

Everything lives in a per-node `CollectorRegistry` (never prometheus_client's
global one), so two nodes in one process, as in tests, never share a series.
Three kinds of instruments, chosen by where the number is cheapest to get:

- **Counters and histograms updated on the path** (transfer outcomes, RPC
  latency, commands per Raft entry, journal fsync latency): each update is one
  pre-bound child's `inc`/`observe` (prometheus_client's own per-value lock,
  nothing more). The instrumented modules do not import prometheus_client:
  they expose a plain hook (`Proposer.observe_entry_commands`,
  `DurableJournal.observe_fsync_s`) that `NodeMetrics.attach` points at a
  histogram child.
- **Values read at scrape time** (`PartitionCollector`): Raft term, commit
  index, leadership, replication lag, money and transfers in flight, and
  counters the node already keeps (entries proposed, saga compensations).
  No background thread; a scrape costs what one `ClusterStatus` costs.
- **prometheus_client's process, platform and GC collectors**.

Every metric name starts with `raftwallet_`; docs/cluster.md ("Metrics")
lists them all with their meaning.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.results import Code
from node.raft import wire

if TYPE_CHECKING:
    from node.host import NodeHost
    from node.raft.replica import PartitionReplica
    from node.saga.driver import SagaDriver

log = logging.getLogger(__name__)

PREFIX: Final = "raftwallet_"

RPC_LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""From a cached read (under a millisecond) to a call that runs into its deadline."""

FSYNC_LATENCY_BUCKETS_S: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                  0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""A page-cache-only fsync is tens of microseconds; a struggling disk is 100 ms and more."""

ENTRY_COMMANDS_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4000)
"""Commands per Raft entry; the proposer caps an entry at 4,000 commands."""

RPC_METHODS_MAX: Final = 256
"""Bound of the interceptor's per-method cache (and so of the method label's values)."""

OUTCOME_SUCCEEDED: Final = "succeeded"
OUTCOME_FAILED: Final = "failed"
OUTCOME_PENDING: Final = "pending"
OUTCOME_ERROR: Final = "error"
"""No ledger outcome reached the caller: no leader, overloaded, or outcome still unknown."""
KIND_INTRA: Final = "intra"
KIND_CROSS: Final = "cross"


# -- transfers --------------------------------------------------------------------------------


class TransferOutcomes:
    """`raftwallet_transfers_total{outcome, reason, kind}`: transfers whose answer is known.

    Counted by the node that proposed the transfer (never by a node that only
    forwarded it), once per answer given: a client's retry with the same
    transaction_id is counted again, like any answered request. `reason` is
    the ledger code for failed transfers and the API reason for errors, and
    empty otherwise. Called on the event loop only.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._counter = Counter(
            f"{PREFIX}transfers", "Transfers answered by this node, by outcome, reason and kind "
            "(intra: one partition; cross: a saga across two)",
            ("outcome", "reason", "kind"), registry=registry)
        self._by_code: dict[tuple[Code, bool], Any] = {}
        self._by_error: dict[tuple[str, bool], Any] = {}
        # Bind the common series up front: they exist (at 0) before the first transfer,
        # so rate() over them works from the start.
        for cross in (False, True):
            for code in (Code.OK, Code.PENDING, Code.INSUFFICIENT_FUNDS):
                self._child_for_code(code, cross)

    def record(self, code: Code, cross: bool, count: int = 1) -> None:
        """`count` transfers answered with the ledger outcome `code`."""
        child = self._by_code.get((code, cross))
        if child is None:
            child = self._child_for_code(code, cross)
        child.inc(count)

    def record_error(self, reason: str, cross: bool, count: int = 1) -> None:
        """`count` transfers answered with an error status instead of an outcome."""
        child = self._by_error.get((reason, cross))
        if child is None:
            child = self._by_error[(reason, cross)] = self._counter.labels(
                OUTCOME_ERROR, reason, KIND_CROSS if cross else KIND_INTRA)
        child.inc(count)

    def record_many(self, answers: Iterable[tuple[Code | str, bool]]) -> None:
        """Many answers at once, e.g. a TransferBatch's: (ledger code or error reason, cross).

        One `inc` per distinct (answer, kind), not one per transfer.
        """
        for (answer, cross), count in collections.Counter(answers).items():
            if isinstance(answer, Code):
                self.record(answer, cross, count)
            else:
                self.record_error(answer, cross, count)

    def _child_for_code(self, code: Code, cross: bool) -> Any:
        if code is Code.OK:
            outcome, reason = OUTCOME_SUCCEEDED, ""
        elif code is Code.PENDING:
            outcome, reason = OUTCOME_PENDING, ""
        else:
            outcome, reason = OUTCOME_FAILED, code.name
        child = self._counter.labels(outcome, reason, KIND_CROSS if cross else KIND_INTRA)
        self._by_code[(code, cross)] = child
        return child


# -- RPC latency -------------------------------------------------------------------------------

_Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_code_of(context: grpc.aio.ServicerContext, failure: BaseException | None,
                   ) -> grpc.StatusCode:
    """The status a unary call ends with: what the handler set or aborted with, else derived."""
    if isinstance(failure, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if failure is not None:
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Observes each unary call's server-side latency by method and final status code.

    `raftwallet_grpc_server_handling_seconds{grpc_service, grpc_method, grpc_code}`.
    The wrapped handler of a method is built once and reused (keyed by the
    handler object the server returns), and its per-code histogram children
    are bound once, so a call costs one `perf_counter` pair, a dict lookup and
    an `observe`. Streaming methods (reflection, health Watch) pass through
    unmeasured: their duration is the client's session, not a latency.
    Put it first in the server's interceptor list, so that calls refused by a
    later interceptor (authentication) are measured with their status too.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._histogram = Histogram(
            f"{PREFIX}grpc_server_handling_seconds",
            "Time from receiving a unary gRPC call to its answer, by method and status code",
            ("grpc_service", "grpc_method", "grpc_code"), buckets=RPC_LATENCY_BUCKETS_S,
            registry=registry)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = str(handler_call_details.method)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if not inspect.iscoroutinefunction(handler.unary_unary):
            return handler
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < RPC_METHODS_MAX or method in self._wrapped:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        histogram = self._histogram
        children: dict[grpc.StatusCode, Any] = {
            grpc.StatusCode.OK: histogram.labels(service, name, grpc.StatusCode.OK.name)}
        behavior: _Behavior = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started_s = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                elapsed_s = time.perf_counter() - started_s
                code = status_code_of(context, failure)
                child = children.get(code)
                if child is None:
                    child = children[code] = histogram.labels(service, name, code.name)
                child.observe(elapsed_s)

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


# -- per-partition state, read at scrape time ----------------------------------------------------


class PartitionCollector(Collector):
    """Raft and saga state of every replica on this node, read when Prometheus scrapes.

    Holds each replica's lock only to read a few numbers (like `ClusterStatus`).
    A replica whose status cannot be read right now (pysyncobj's structures
    changing under a membership change) is left out of that one scrape.
    """

    def __init__(self, host: NodeHost, driver: SagaDriver | None) -> None:
        self.host = host
        self.driver = driver

    def collect(self) -> Iterator[Metric]:
        labels = ["partition"]
        term = GaugeMetricFamily(f"{PREFIX}raft_term", "Current Raft term of the partition's "
                                 "replica on this node", labels=labels)
        commit = GaugeMetricFamily(f"{PREFIX}raft_commit_index", "Highest Raft log index known "
                                   "to be committed", labels=labels)
        applied = GaugeMetricFamily(f"{PREFIX}raft_last_applied_index", "Highest Raft log index "
                                    "applied to the state machine", labels=labels)
        log_entries = GaugeMetricFamily(f"{PREFIX}raft_log_entries", "Entries in the Raft log "
                                        "(since the last snapshot)", labels=labels)
        leader = GaugeMetricFamily(f"{PREFIX}raft_is_leader", "1 if this node's replica leads "
                                   "the partition, else 0", labels=labels)
        quorum = GaugeMetricFamily(f"{PREFIX}raft_has_quorum", "1 if the replica sees a quorum "
                                   "of its group, else 0", labels=labels)
        lag = GaugeMetricFamily(f"{PREFIX}raft_follower_lag_entries", "On the leader: committed "
                                "entries a follower has not acknowledged yet",
                                labels=[*labels, "follower"])
        position = GaugeMetricFamily(f"{PREFIX}ledger_applied_position", "Position of the last "
                                     "entry applied to the ledger state", labels=labels)
        journal = GaugeMetricFamily(f"{PREFIX}journal_size_bytes", "Size of the partition's "
                                    "Raft journal file", labels=labels)
        outbox = GaugeMetricFamily(f"{PREFIX}saga_transfers_in_flight", "Cross-partition "
                                   "transfers debited here and not yet settled or compensated "
                                   "(outbox depth)", labels=labels)
        money = GaugeMetricFamily(f"{PREFIX}saga_money_in_flight_minor", "Money debited here "
                                  "and not yet settled or compensated, in minor units",
                                  labels=[*labels, "currency"])
        entries = CounterMetricFamily(f"{PREFIX}proposer_entries", "Raft entries proposed by "
                                      "this node's group commit", labels=labels)
        commands = CounterMetricFamily(f"{PREFIX}proposer_commands", "Commands proposed by "
                                       "this node's group commit", labels=labels)
        for partition, replica in sorted(self.host.replicas.items()):
            label = str(partition)
            try:
                snapshot = _read_partition(self.host, replica)
            except RuntimeError as exc:  # "dictionary changed size during iteration"
                log.warning("partition metrics skipped", extra={"partition": partition,
                                                                "reason": str(exc)})
                continue
            term.add_metric([label], snapshot.term)
            commit.add_metric([label], snapshot.commit_index)
            applied.add_metric([label], snapshot.last_applied_index)
            log_entries.add_metric([label], snapshot.log_entries)
            leader.add_metric([label], 1 if snapshot.is_leader else 0)
            quorum.add_metric([label], 1 if snapshot.has_quorum else 0)
            for follower, follower_lag in snapshot.follower_lag_entries:
                lag.add_metric([label, follower], follower_lag)
            position.add_metric([label], snapshot.applied_position)
            journal.add_metric([label], snapshot.journal_size_bytes)
            outbox.add_metric([label], snapshot.outbox_depth)
            for currency, in_flight_minor in snapshot.in_flight_minor:
                money.add_metric([label, currency], in_flight_minor)
            proposer = self.host.proposers.get(partition)
            if proposer is not None:
                entries.add_metric([label], proposer.entries_proposed)
                commands.add_metric([label], proposer.commands_proposed)
        yield from (term, commit, applied, log_entries, leader, quorum, lag, position, journal,
                    outbox, money, entries, commands)
        if self.driver is not None:
            yield CounterMetricFamily(
                f"{PREFIX}saga_compensations", "Cross-partition transfers this node's saga "
                "driver compensated (the destination refused the credit)",
                value=self.driver.compensations)
            yield CounterMetricFamily(
                f"{PREFIX}saga_credits_sent", "Credits this node's saga driver sent to "
                "destination partitions (retries included)", value=self.driver.credits_sent)
        yield CounterMetricFamily(
            f"{PREFIX}raft_connections_dropped_oversize", "Raft connections this node closed "
            "because a frame's length prefix was over the bound (node/raft/wire.py)",
            value=wire.counters.connections_dropped_oversize)
        yield CounterMetricFamily(
            f"{PREFIX}raft_transmission_parts_refused", "Parts of multi-part AppendEntries "
            "this node refused (never applied)",
            value=wire.counters.transmission_parts_refused)


@dataclass(frozen=True, slots=True)
class PartitionReading:
    """One replica's numbers at one scrape."""

    term: int
    commit_index: int
    last_applied_index: int
    log_entries: int
    is_leader: bool
    has_quorum: bool
    follower_lag_entries: tuple[tuple[str, int], ...]
    applied_position: int
    journal_size_bytes: int
    outbox_depth: int
    in_flight_minor: tuple[tuple[str, int], ...]


def _read_partition(host: NodeHost, replica: PartitionReplica) -> PartitionReading:
    status: dict[str, Any] = replica.status()
    commit_index = int(status.get("commit_idx", 0))
    is_leader = replica.is_leader()
    lags: list[tuple[str, int]] = []
    if is_leader:
        for node_id in host.config.replicas_of(replica.partition):
            if node_id == host.node_id:
                continue
            address = host.config.node(node_id).raft_address(replica.partition)
            match_index = status.get(f"match_idx_server_{address}")
            if match_index is not None:
                lags.append((node_id, max(0, commit_index - int(match_index))))
    with replica.lock:
        state = replica.state
        applied_position = state.position
        outbox_depth = len(state.outbox)
        in_flight = tuple(sorted((currency, totals.in_flight_minor)
                                 for currency, totals in state.totals.items()))
    return PartitionReading(
        term=int(status.get("raft_term", 0)), commit_index=commit_index,
        last_applied_index=int(status.get("last_applied", 0)),
        log_entries=int(status.get("log_len", 0)), is_leader=is_leader,
        has_quorum=bool(status.get("has_quorum", False)),
        follower_lag_entries=tuple(lags), applied_position=applied_position,
        journal_size_bytes=replica.journal.size_bytes, outbox_depth=outbox_depth,
        in_flight_minor=in_flight)


# -- the node's registry and its HTTP server ---------------------------------------------------


class MetricsServer:
    """prometheus_client's HTTP server for one registry; `close()` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class NodeMetrics:
    """Every metric of one node, in its own registry.

    Built before the node's services (they take `transfers` and the gRPC
    server takes `rpc_interceptor`); `attach` then hooks the proposers,
    journals and saga driver in; `serve` exposes the registry over HTTP.
    Instruments work whether or not the registry is ever served.
    """

    def __init__(self, node_id: str, cluster_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        info = Gauge(f"{PREFIX}node_info", "Always 1; labels name the node and its cluster",
                     ("node", "cluster"), registry=self.registry)
        info.labels(node_id, cluster_name).set(1)
        self.transfers = TransferOutcomes(self.registry)
        self.rpc_interceptor = RpcMetricsInterceptor(self.registry)
        self._entry_commands = Histogram(
            f"{PREFIX}proposer_entry_commands", "Commands per Raft entry proposed by this "
            "node (the group-commit batch size)", ("partition",),
            buckets=ENTRY_COMMANDS_BUCKETS, registry=self.registry)
        self._fsync_s = Histogram(
            f"{PREFIX}journal_fsync_seconds", "Duration of the group-commit fsync of a "
            "partition's Raft journal", ("partition",), buckets=FSYNC_LATENCY_BUCKETS_S,
            registry=self.registry)

    def attach(self, host: NodeHost, driver: SagaDriver | None) -> None:
        """Point the proposers' and journals' hooks at this registry; read the rest at scrape."""
        for partition, proposer in host.proposers.items():
            proposer.observe_entry_commands = self._entry_commands.labels(str(partition)).observe
        for partition, replica in host.replicas.items():
            replica.journal.observe_fsync_s = self._fsync_s.labels(str(partition)).observe
        self.registry.register(PartitionCollector(host, driver))

    def serve(self, host_address: str, port: int) -> MetricsServer:
        """Serve `/metrics` on `host_address:port` from a daemon thread; OSError if unbindable."""
        httpd, thread = start_http_server(port, addr=host_address, registry=self.registry)
        return MetricsServer(httpd, thread)


__all__ = [
    "MetricsServer",
    "NodeMetrics",
    "PartitionCollector",
    "RpcMetricsInterceptor",
    "TransferOutcomes",
    "status_code_of",
]
