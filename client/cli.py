"""`walletctl`: the RaftWallet command line.

    walletctl --config cluster-configs/local-3node.toml account create alice --currency USD
    walletctl --target 127.0.0.1:7101 deposit alice 100.00 --currency USD
    walletctl --target 127.0.0.1:7101 --json transfer alice bob 12.34 --currency USD
    walletctl --config cluster-configs/local-3node.toml cluster status

Global options (--target, --config, --json, --timeout, --attempt-timeout, and
the credentials --token, --admin-token, --tls-ca, --tls-cert, --tls-key) go
before or after the command. With --json every command prints exactly one JSON object on stdout
(an `{"error": {...}}` object when it fails); amounts are decimal strings next
to their `currency`. Exit status: 0 done, 1 the cluster refused the request
(or a transfer, deposit or withdrawal FAILED), 2 usage, configuration or
connection problem (including an outcome that stayed unknown). Errors go to
stderr as `walletctl: error: STATUS: message`, never as a traceback.

This module is the client's half: it never imports `node`. The commands that
run node code on this machine (`cluster up`, `cluster down`, `node start`,
`gateway`, `replay`) are added by node.cli.walletctl, the `walletctl` entry point,
through `main(argv, extra_commands)`: each `ExtraCommand` names the command group
it joins and the command it follows there, so `walletctl --help` lists every
command in one order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from client import membership_cli
from client.auth import (
    ENV_ADMIN_TOKEN,
    ENV_TOKEN,
    Credentials,
    CredentialsError,
    TlsOptions,
    credentials_from_cluster_file,
    credentials_from_environment,
    open_channel,
)
from client.errors import OutcomeUnknown, Unavailable, WalletError
from client.sdk import DEFAULT_TIMEOUT_S as SDK_ATTEMPT_TIMEOUT_S
from client.sdk import (
    Account,
    Balance,
    ClusterStatus,
    MovementResult,
    Route,
    TransferRecord,
    TransferResult,
    TransferStatus,
    WalletClient,
    normalize_targets,
)
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

PROG = "walletctl"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_TIMEOUT_S = 10.0
"""--timeout: each command gives up after this long, retrying transient failures until then."""
DEFAULT_ATTEMPT_TIMEOUT_S = SDK_ATTEMPT_TIMEOUT_S
"""--attempt-timeout: one attempt at one node gets at most this long (within --timeout)
before the command tries the next node with the same ids: a paused node costs one slice."""
HISTORY_LIMIT_MAX = 10_000
STATE_HASH_PREFIX_CHARS = 12
TABLE_WIDTH_NOT_A_TTY = 160


class UsageError(Exception):
    """A problem with the command line or the cluster file (exit 2)."""


# --- targets --------------------------------------------------------------------------


def targets_from_config(path: Path) -> tuple[str, ...]:
    """`host:grpc_port` of every `[[nodes]]` entry of a cluster TOML file.

    The file is also checked for what would make the nodes refuse it at their next
    restart and that a client can see without the node's loader (client/ never
    imports node/): every `[[partitions]]` table must name only nodes of the file.
    The message is the one `node.config` gives (a test pins it), so an operator who
    edits the file learns it from walletctl at once, not from a node refusing to start.
    """
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise UsageError(f"{path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: {error}") from None
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise UsageError(f"{path}: no [[nodes]] entries")
    targets: list[str] = []
    node_ids: list[str] = []
    for index, node in enumerate(nodes):
        host = node.get("host") if isinstance(node, dict) else None
        port = node.get("grpc_port") if isinstance(node, dict) else None
        if not isinstance(host, str) or not host:
            raise UsageError(f"{path}: nodes[{index}].host: missing or not a string")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise UsageError(f"{path}: nodes[{index}].grpc_port: missing or not a port number")
        node_id = node.get("id")
        if isinstance(node_id, str):
            node_ids.append(node_id)
        targets.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    _check_placement_names_known_nodes(path, data.get("partitions"), node_ids)
    return normalize_targets(targets)


def _check_placement_names_known_nodes(
    path: Path, partitions: object, node_ids: Sequence[str]
) -> None:
    """Each `[[partitions]]` table's replicas are ids of `[[nodes]]` tables of the file.

    Same field path and wording as node.config's `_read_replicas`.
    """
    if partitions is None:
        return
    if not isinstance(partitions, list) or not all(isinstance(t, dict) for t in partitions):
        raise UsageError(f"{path}: partitions: expected an array of tables ([[partitions]])")
    known = ", ".join(node_ids)
    for index, table in enumerate(partitions):
        replicas = table.get("replicas")
        if not isinstance(replicas, list):
            raise UsageError(f"{path}: partitions[{index}].replicas: missing or not an array")
        for position, value in enumerate(replicas):
            if not isinstance(value, str):
                raise UsageError(f"{path}: partitions[{index}].replicas[{position}]: "
                                 "expected a node id string")
            if value not in node_ids:
                raise UsageError(f"{path}: partitions[{index}].replicas[{position}]: "
                                 f"unknown node {value!r} (nodes: {known})")


def resolve_targets(target_args: Sequence[str], config: str | None) -> tuple[str, ...]:
    """--target values win; else every node of --config; else a usage error."""
    if target_args:
        try:
            return normalize_targets(target_args)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if config:
        return targets_from_config(Path(config))
    raise UsageError("no cluster to talk to: pass --target HOST:PORT or --config FILE")


def resolve_credentials(args: argparse.Namespace) -> Credentials:
    """Each part from its flag, else from the --config cluster file, else from the
    environment (RAFTWALLET_TOKEN, RAFTWALLET_ADMIN_TOKEN)."""
    try:
        tls = None
        ca, cert, key = (getattr(args, name, None) for name in ("tls_ca", "tls_cert", "tls_key"))
        if ca or cert or key:
            tls = TlsOptions.from_files(ca, cert, key)
        given = Credentials(getattr(args, "token", None) or "",
                            getattr(args, "admin_token", None) or "", tls)
        if args.config:
            given = given.with_defaults(credentials_from_cluster_file(args.config))
        return given.with_defaults(credentials_from_environment())
    except CredentialsError as error:
        raise UsageError(str(error)) from None


# --- JSON objects ---------------------------------------------------------------------


def _with_reason(obj: dict[str, Any], status: TransferStatus, reason: str) -> dict[str, Any]:
    if reason or status is TransferStatus.FAILED:
        obj["reason"] = reason
    return obj


def account_json(a: Account) -> dict[str, Any]:
    return {
        "account": a.account_id,
        "currency": a.currency,
        "position": a.position,
        "request_id": a.request_id,
    }


def balance_json(b: Balance) -> dict[str, Any]:
    return {
        "account": b.account_id,
        "balance": b.balance,
        "currency": b.currency,
        "position": b.position,
        "stale": b.stale,
    }


def movement_json(kind: str, m: MovementResult) -> dict[str, Any]:
    obj: dict[str, Any] = {"transaction_id": m.transaction_id, "status": str(m.status)}
    _with_reason(obj, m.status, m.reason)
    obj.update(
        kind=kind,
        account=m.account_id,
        amount=m.amount,
        currency=m.currency,
        balance=m.balance,
        position=m.position,
    )
    return obj


def transfer_json(t: TransferResult) -> dict[str, Any]:
    obj: dict[str, Any] = {"transaction_id": t.transaction_id, "status": str(t.status)}
    _with_reason(obj, t.status, t.reason)
    obj.update(
        from_account=t.from_account,
        to_account=t.to_account,
        amount=t.amount,
        currency=t.currency,
        position=t.position,
    )
    if t.message:
        obj["message"] = t.message
    return obj


def record_json(r: TransferRecord) -> dict[str, Any]:
    obj: dict[str, Any] = {"transaction_id": r.transaction_id, "status": str(r.status)}
    _with_reason(obj, r.status, r.reason)
    obj.update(
        from_account=r.from_account,
        to_account=r.to_account,
        amount=r.amount,
        currency=r.currency,
        stale=r.stale,
        steps=[dataclasses.asdict(step) for step in r.steps],
    )
    return obj


def route_json(r: Route) -> dict[str, Any]:
    return {
        "account": r.account_id,
        "partition": r.partition,
        "partition_count": r.partition_count,
        "leader_node_id": r.leader_node_id,
        "leader_address": r.leader_address,
    }


def error_json(error: WalletError) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "status": error.status_name,
        "reason": error.reason,
        "message": error.message,
    }
    if isinstance(error, OutcomeUnknown):
        obj["outcome_unknown"] = True
        obj["transaction_id"] = error.transaction_id
    return {"error": obj}


# --- output ---------------------------------------------------------------------------


class Output:
    """Where a command writes: one JSON object, or text for people."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def emit(self, obj: dict[str, Any], text: str) -> None:
        if self.as_json:
            self.out.write(json.dumps(obj) + "\n")
        else:
            self.out.write(text + "\n")

    def error(self, message: str) -> None:
        self.err.write(f"{PROG}: error: {message}\n")

    def console(self) -> Console:
        tty = self.out.isatty()
        return Console(file=self.out, width=None if tty else TABLE_WIDTH_NOT_A_TTY)


def _exit_of(status: TransferStatus) -> int:
    return EXIT_REFUSED if status is TransferStatus.FAILED else EXIT_OK


def _status_text(status: TransferStatus, reason: str) -> str:
    return f"{status} ({reason})" if reason else str(status)


# --- commands -------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Output], int]


def _client(args: argparse.Namespace) -> WalletClient:
    targets = resolve_targets([*(args.target or []), *getattr(args, "target_after", [])],
                              args.config)
    credentials = resolve_credentials(args)
    # One request per run: a ClusterStatus look-up for routing would only add a round trip.
    # Each attempt gets a slice of --timeout, so that a silent first node leaves time
    # for the others (nodes that do not answer a health check within 1 s get nothing).
    return WalletClient(
        targets, timeout_s=min(args.attempt_timeout, args.timeout),
        retry_deadline_s=args.timeout, learn_routes=False,
        token=credentials.wallet_token, admin_token=credentials.admin_token,
        tls=credentials.tls,
    )


def cmd_account_create(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        account = wallet.create_account(args.account, args.currency, request_id=args.id)
    out.emit(
        account_json(account),
        f"created account {account.account_id} ({account.currency}) at position "
        f"{account.position}, request id {account.request_id}",
    )
    return EXIT_OK


def _cmd_movement(kind: str, args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        move = wallet.deposit if kind == "deposit" else wallet.withdraw
        result = move(args.account, args.amount, args.currency, transaction_id=args.id)
    sign = "+" if kind == "deposit" else "-"
    out.emit(
        movement_json(kind, result),
        f"{_status_text(result.status, result.reason)} {kind} {result.transaction_id}: "
        f"{result.account_id} {sign}{result.amount} {result.currency}"
        + (f", balance {result.balance} {result.currency}" if result.balance else ""),
    )
    return _exit_of(result.status)


def cmd_deposit(args: argparse.Namespace, out: Output) -> int:
    return _cmd_movement("deposit", args, out)


def cmd_withdraw(args: argparse.Namespace, out: Output) -> int:
    return _cmd_movement("withdraw", args, out)


def cmd_transfer(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        result = wallet.transfer(
            args.from_account, args.to_account, args.amount, args.currency, args.id
        )
    out.emit(
        transfer_json(result),
        f"{_status_text(result.status, result.reason)} transfer {result.transaction_id}: "
        f"{result.from_account} -> {result.to_account} {result.amount} {result.currency}"
        f" (position {result.position})",
    )
    return _exit_of(result.status)


def _parse_time_ms(text: str) -> int:
    """An ISO 8601 time with a zone (e.g. 2026-11-25T18:00:00Z) as Unix milliseconds."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at: {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise UsageError("--at: give a time zone (e.g. ...Z or +01:00)")
    return int(moment.timestamp() * 1000)


def cmd_balance(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        if args.at is not None:
            balance = wallet.balance_at(args.account, time_ms=_parse_time_ms(args.at))
        else:
            balance = wallet.balance(
                args.account,
                consistency="stale" if args.stale else "linearizable",
                min_position=args.min_position,
            )
    if args.at is not None:
        as_of = f"as of position {balance.position}, the last entry at or before --at"
    elif balance.stale:
        as_of = f"as of position {balance.position} of this replica, stale"
    else:
        as_of = f"as of position {balance.position}: this read's own barrier entry in the log"
    out.emit(
        balance_json(balance),
        f"{balance.account_id}: {balance.balance} {balance.currency} ({as_of})",
    )
    return EXIT_OK


def _record_line(r: TransferRecord) -> str:
    return (
        f"{r.transaction_id}  {_status_text(r.status, r.reason)}  "
        f"{r.from_account} -> {r.to_account}  {r.amount} {r.currency}"
    )


def cmd_get_transfer(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        record = wallet.get_transfer(args.from_account, args.transaction_id)
    steps = "".join(
        f"\n  {s.name} at position {s.position} of partition {s.partition}" for s in record.steps
    )
    out.emit(record_json(record), _record_line(record) + steps)
    return EXIT_OK


def cmd_abort_transfer(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        record = wallet.abort_transfer(args.from_account, args.transaction_id)
    out.emit(record_json(record), _record_line(record))
    return EXIT_OK


def cmd_history(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        page = wallet.list_transfers(
            args.account, args.page_token, args.limit, newest_first=args.newest_first
        )
    lines = [_record_line(r) for r in page.transfers] or [f"no transfers of {args.account}"]
    if page.next_page_token:
        lines.append(f"more: --page-token {page.next_page_token}")
    out.emit(
        {
            "account": args.account,
            "transfers": [record_json(r) for r in page.transfers],
            "next_page_token": page.next_page_token,
        },
        "\n".join(lines),
    )
    return EXIT_OK


def cmd_route(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        route = wallet.route(args.account)
    leader = (
        f"leader {route.leader_node_id or '?'} at {route.leader_address}"
        if route.leader_address
        else "no leader known"
    )
    out.emit(
        route_json(route),
        f"{route.account_id}: partition {route.partition} of {route.partition_count}, {leader}",
    )
    return EXIT_OK


STATUS_CAPTION = (
    "raft commit counts Raft log entries, Raft's own included (each new leader's first "
    "entry), so it runs ahead of ledger position, the ledger entries applied: the two differ "
    "on a healthy cluster. match/lag: each replica's Raft log index and its distance behind "
    "raft commit. snapshot: the ledger position of the last snapshot."
)
"""Why `cluster status` shows two different numbers for one log (a new cluster: raft commit
3, ledger position 1, lag 0): they count different things, neither is a lagging apply."""


def cluster_tables(status: ClusterStatus) -> tuple[Table, Table]:
    partitions = Table(title=f"{status.partition_count} partitions", caption=STATUS_CAPTION,
                       caption_justify="left")
    for name in ("partition", "leader", "term", "raft commit", "ledger position",
                 "replicas (match/lag)", "in flight", "outbox", "snapshot", "state hash"):
        left = name.startswith(("leader", "replicas", "state"))
        partitions.add_column(name, justify="left" if left else "right")
    for p in status.partitions:
        leader = f"{p.leader_node_id} {p.leader_address}".strip() or "[red]none[/red]"
        replicas = " ".join(f"{r.node_id}:{r.match_index}/{r.lag}" for r in p.replicas)
        partitions.add_row(
            str(p.partition), leader, str(p.term), str(p.commit_index),
            str(p.applied_position), replicas, p.money_in_flight or "0", str(p.outbox_depth),
            str(p.last_snapshot_position), p.state_hash[:STATE_HASH_PREFIX_CHARS],
        )
    nodes = Table(title="nodes")
    for name in ("node", "address", "up", "partitions", "leader of"):
        nodes.add_column(name)
    for n in status.nodes:
        nodes.add_row(
            n.node_id, n.address, "yes" if n.up else "[red]DOWN[/red]",
            ",".join(map(str, n.partitions)), ",".join(map(str, n.leader_of)),
        )
    return partitions, nodes


VERIFY_SETTLE_S = 10.0
"""How long verify waits for every replica of a partition to reach its peers' position."""


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    """Each replica against a replay of its archive, and against its peers.

    1. Every node replays each local archive and compares with its live state.
    2. For each partition, the highest position any replica reported is the
       target: every replica must reach it within VERIFY_SETTLE_S (a replica
       stuck behind, say at position 0 with empty state, fails here).
    3. Every replica then reports the archive's chain hash at the target: one
       hash pins the whole history up to it, so equal hashes mean identical
       histories, and replicas at the same position must have the same state hash.
    """
    targets = resolve_targets([*(args.target or []), *getattr(args, "target_after", [])],
                              args.config)
    credentials = resolve_credentials(args)
    unreachable: list[str] = []
    verdicts: list[dict[str, Any]] = []
    first = _verify_round(targets, credentials, pb.VerifyRequest(), max(args.timeout, 60.0),
                          unreachable)
    for target, answer in first.items():
        verdicts += [{"node": target, "partition": v.partition,
                      "replay_matches": v.replay_matches, "detail": v.detail}
                     for v in answer.partitions]
    goal: dict[int, int] = {}
    for answer in first.values():
        for v in answer.partitions:
            goal[v.partition] = max(goal.get(v.partition, 0), v.position)
    deadline = time.monotonic() + VERIFY_SETTLE_S
    while True:
        second = _verify_round(tuple(first), credentials, pb.VerifyRequest(
            skip_replay=True, chain_hash_at=goal), args.timeout, unreachable)
        behind = _replicas_behind(second, goal)
        if not behind or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    problems = [(p, f"partition {p} on {node}: at position {position}, its peers reached "
                    f"{goal[p]}; it did not catch up within {VERIFY_SETTLE_S:.0f} s "
                    "(lagging, or its state was lost)") for node, p, position in behind]
    problems += _disagreements(second, goal)
    failing = sorted({p for p, _ in problems})
    ok = not unreachable and not problems and all(v["replay_matches"] for v in verdicts)
    lines = [f"{v['node']} partition {v['partition']}: replay "
             f"{'== live' if v['replay_matches'] else '!= live'} ({v['detail']})"
             for v in verdicts]
    lines += [f"partition {p}: replicas agree on the history to position {position}"
              for p, position in sorted(goal.items()) if position and p not in failing]
    lines += [problem for _, problem in problems]
    lines += [f"unreachable: {u}" for u in sorted(set(unreachable))]
    lines.append("verify: OK" if ok else "verify: FAILED")
    out.emit({"ok": ok, "replicas": verdicts, "positions": goal,
              "disagreeing_partitions": failing, "problems": [x for _, x in problems],
              "unreachable": sorted(set(unreachable))},
             "\n".join(lines))
    return EXIT_OK if ok else EXIT_REFUSED


def _verify_round(targets: Sequence[str], credentials: Credentials, request: pb.VerifyRequest,
                  timeout_s: float, unreachable: list[str]) -> dict[str, pb.VerifyResponse]:
    answers: dict[str, pb.VerifyResponse] = {}
    for target in targets:
        channel = open_channel(target, credentials)
        try:
            stub = wallet_pb2_grpc.AdminServiceStub(channel)
            answers[target] = stub.Verify(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            unreachable.append(f"{target}: {exc.code().name}")
        finally:
            channel.close()
    return answers


def _replicas_behind(answers: dict[str, pb.VerifyResponse], goal: dict[int, int]
                     ) -> list[tuple[str, int, int]]:
    return [(target, v.partition, v.position) for target, answer in answers.items()
            for v in answer.partitions if v.position < goal.get(v.partition, 0)]


def _grouped(nodes_by_hash: dict[str, list[str]]) -> str:
    return "; ".join(f"{', '.join(nodes)} {digest[:16]}" for digest, nodes in
                     nodes_by_hash.items())


def _disagreements(answers: dict[str, pb.VerifyResponse], goal: dict[int, int]
                   ) -> list[tuple[int, str]]:
    """(partition, message) where replicas report different histories at the goal position."""
    found: list[tuple[int, str]] = []
    for partition, position in sorted(goal.items()):
        chains: dict[str, list[str]] = {}
        states: dict[str, list[str]] = {}
        for target, answer in sorted(answers.items()):
            for v in answer.partitions:
                if v.partition != partition:
                    continue
                if v.chain_hash:
                    chains.setdefault(v.chain_hash, []).append(target)
                if v.position == position:
                    states.setdefault(v.state_hash, []).append(target)
        if len(chains) > 1:
            found.append((partition, f"partition {partition}: replicas DISAGREE on the history "
                          f"to position {position}: {_grouped(chains)}"))
        if len(states) > 1:
            found.append((partition, f"partition {partition}: replicas at position {position} "
                          f"DISAGREE on the state: {_grouped(states)}"))
    return found


def cmd_cluster_status(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as wallet:
        status = wallet.cluster_status()
    if out.as_json:
        out.emit(dataclasses.asdict(status), "")
        return EXIT_OK
    console = out.console()
    for table in cluster_tables(status):
        console.print(table)
    console.print(f"cluster map v{status.map_version}")
    for difference in status.membership_differences:
        console.print(f"[yellow]membership difference:[/yellow] {difference}")
    return EXIT_OK


def _admin_client(args: argparse.Namespace) -> membership_cli.AdminClient:
    targets = resolve_targets([*(args.target or []), *getattr(args, "target_after", [])],
                              args.config)
    return membership_cli.AdminClient(targets, resolve_credentials(args), args.timeout)


def _membership(args: argparse.Namespace, out: Output,
                run: Callable[[membership_cli.AdminClient, Callable[[str], None]], object]
                ) -> int:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if not out.as_json:
            out.out.write(line + "\n")
            out.out.flush()

    try:
        result = run(_admin_client(args), say)
    except membership_cli.MembershipError as error:
        out.error(str(error))
        if out.as_json:
            out.emit({"ok": False, "error": str(error), "progress": lines}, "")
        return EXIT_REFUSED
    if out.as_json:
        out.emit({"ok": True, "map_version": result, "progress": lines}, "")
    return EXIT_OK


def cmd_node_add(args: argparse.Namespace, out: Output) -> int:
    request = pb.AddNodeRequest(node_id=args.id, host=args.host, grpc_port=args.grpc_port,
                                raft_port_base=args.raft_port_base,
                                metrics_port=args.metrics_port or 0)

    def run(client: membership_cli.AdminClient, say: Callable[[str], None]) -> int:
        response = client.admin("AddNode", request)
        say(f"{response.detail} (map v{response.map_version})")
        return int(response.map_version)

    return _membership(args, out, run)


def cmd_node_remove(args: argparse.Namespace, out: Output) -> int:
    def run(client: membership_cli.AdminClient, say: Callable[[str], None]) -> int:
        response = client.admin("RemoveNode", pb.RemoveNodeRequest(node_id=args.node))
        say(f"{response.detail} (map v{response.map_version})")
        return int(response.map_version)

    return _membership(args, out, run)


def cmd_node_drain(args: argparse.Namespace, out: Output) -> int:
    return _membership(args, out, lambda client, say: membership_cli.drain(
        client, args.node, args.wait_s, say))


def _replica_group(args: argparse.Namespace) -> int:
    if args.metadata == (args.partition is not None):
        raise UsageError("give exactly one of --partition P and --metadata")
    return membership_cli.META if args.metadata else int(args.partition)


def cmd_replica_add(args: argparse.Namespace, out: Output) -> int:
    group = _replica_group(args)
    return _membership(args, out, lambda client, say: membership_cli.add_replica(
        client, group, args.node, not args.no_wait, args.wait_s, say))


def cmd_replica_remove(args: argparse.Namespace, out: Output) -> int:
    group = _replica_group(args)
    return _membership(args, out, lambda client, say: membership_cli.remove_replica(
        client, group, args.node, not args.no_wait, args.wait_s, say))


def cmd_cluster_map(args: argparse.Namespace, out: Output) -> int:
    try:
        view = _admin_client(args).cluster_map()
    except membership_cli.MembershipError as error:
        out.error(str(error))
        return EXIT_USAGE
    if out.as_json:
        out.emit(view.raw, "")
        return EXIT_OK
    table = Table(title=f"cluster map v{view.version}")
    table.add_column("group")
    table.add_column("replicas (preferred leader first)")
    for name, slots in membership_cli.map_rows(view):
        table.add_row(name, slots)
    nodes = Table(title="nodes")
    for name in ("node", "address", "replicas of"):
        nodes.add_column(name)
    for row in membership_cli.node_rows(view):
        nodes.add_row(*row)
    console = out.console()
    console.print(table)
    console.print(nodes)
    return EXIT_OK


def cmd_node_snapshot(args: argparse.Namespace, out: Output) -> int:
    targets = resolve_targets([*(args.target or []), *getattr(args, "target_after", [])],
                              args.config)
    if len(targets) != 1:
        raise UsageError("node snapshot needs exactly one --target HOST:PORT (the node whose "
                         "replicas take the snapshot)")
    channel = open_channel(targets[0], resolve_credentials(args))
    positions: dict[str, int] = {}
    try:
        admin = wallet_pb2_grpc.AdminServiceStub(channel)
        for partition in args.partition:
            try:
                answer = admin.Snapshot(pb.SnapshotRequest(partition=partition),
                                        timeout=max(args.timeout, 60.0))
            except grpc.RpcError as exc:
                out.error(f"partition {partition}: {exc.code().name}: {exc.details()}")
                return EXIT_REFUSED
            positions[str(partition)] = int(answer.position)
            if not out.as_json:
                out.out.write(f"partition {partition}: snapshot requested at position "
                              f"{answer.position}\n")
    finally:
        channel.close()
    if out.as_json:
        out.emit({"target": targets[0], "positions": positions}, "")
    return EXIT_OK


def cmd_rebalance_leaders(args: argparse.Namespace, out: Output) -> int:
    def run(client: membership_cli.AdminClient, say: Callable[[str], None]) -> int:
        response = client.admin("RebalanceLeaders", pb.RebalanceLeadersRequest())
        say(f"{response.detail} (map v{response.map_version})")
        return int(response.map_version)

    return _membership(args, out, run)


# --- the parser -----------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= HISTORY_LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {HISTORY_LIMIT_MAX}")
    return value


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


_TARGET_HELP = "a node's gRPC address; repeat it or separate with commas (default: --config)"
_CONFIG_HELP = "cluster TOML file: without --target, talk to every [[nodes]] host:grpc_port"
_JSON_HELP = "print exactly one JSON object on stdout"
_TOKEN_HELP = (
    f"WalletService token (default: --config's wallet_token, else ${ENV_TOKEN}); "
    "prefer the variable: a flag shows in the process list"
)
_ADMIN_TOKEN_HELP = (
    f"AdminService token, for cluster status and verify (default: --config's admin_token, "
    f"else ${ENV_ADMIN_TOKEN})"
)
_TLS_CA_HELP = "connect with TLS, verifying the nodes with this CA (default: --config's [tls])"
_TIMEOUT_HELP = (
    f"give up after SECONDS, retrying transient failures until then (default {DEFAULT_TIMEOUT_S:g})"
)
_ATTEMPT_TIMEOUT_HELP = (
    "wait at most SECONDS for one node's answer (within --timeout) before trying the next "
    "node with the same ids; a node that does not answer a health check within 1 s is "
    f"skipped at once (default {DEFAULT_ATTEMPT_TIMEOUT_S:g}; account, money, balance, "
    "transfer, route, cluster status and gateway commands)"
)


def global_options(parser: argparse.ArgumentParser, *, top: bool,
                   config_help: str = _CONFIG_HELP) -> None:
    """The global options; on a command they may also follow it (top=False: no defaults).

    Every command declares them (a test checks it), so that each one may be given
    before or after the command.
    """
    default: Any = None if top else argparse.SUPPRESS
    options = parser.add_argument_group("global options")
    options.add_argument(
        "--target", action="append", metavar="HOST:PORT", help=_TARGET_HELP,
        dest="target" if top else "target_after", default=default,
    )
    options.add_argument("--config", metavar="FILE", help=config_help, default=default)
    options.add_argument(
        "--json", action="store_true", help=_JSON_HELP, default=False if top else default
    )
    options.add_argument(
        "--timeout", type=_positive_float, metavar="SECONDS", help=_TIMEOUT_HELP,
        default=DEFAULT_TIMEOUT_S if top else default,
    )
    options.add_argument(
        "--attempt-timeout", type=_positive_float, metavar="SECONDS",
        help=_ATTEMPT_TIMEOUT_HELP, default=DEFAULT_ATTEMPT_TIMEOUT_S if top else default,
    )
    options.add_argument("--token", metavar="TOKEN", help=_TOKEN_HELP, default=default)
    options.add_argument(
        "--admin-token", metavar="TOKEN", help=_ADMIN_TOKEN_HELP, default=default
    )
    options.add_argument("--tls-ca", metavar="FILE", help=_TLS_CA_HELP, default=default)
    options.add_argument(
        "--tls-cert", metavar="FILE", default=default,
        help="client certificate (PEM) for clusters that require one (mTLS); with --tls-key",
    )
    options.add_argument("--tls-key", metavar="FILE", help="its private key", default=default)


def set_handler(parser: argparse.ArgumentParser, handler: Handler, *,
                reads_config_itself: bool = False, parses_own_arguments: bool = False) -> None:
    """Make `handler` run the command of `parser`.

    reads_config_itself: main does not check --config first (node.config checks every
    rule of the file, or the command refuses --config). parses_own_arguments: the parser
    declares none of the command's options; the handler gets what follows the command
    as `args.own_arguments`, and the rest of the line is not parsed strictly.
    """
    parser.set_defaults(handler=handler, reads_config_itself=reads_config_itself,
                        parses_own_arguments=parses_own_arguments)


@dataclass(frozen=True)
class ExtraCommand:
    """A command that a layer above the client adds to walletctl (node.cli.walletctl adds
    those that run node code), and where `walletctl --help` lists it."""

    group: tuple[str, ...]
    """The command group it joins: () the top level, ("cluster",), ("node",), ..."""
    after: str | None
    """The command of that group it follows in the listing; None: it comes first."""
    add: Callable[[CommandGroup], None]
    """Adds its parser(s) to the group, with `add_command` or `CommandGroup.add_parser`."""


class CommandGroup:
    """The commands of one level of walletctl (the top level, `cluster`, `node`, ...).

    Adding a command also adds the extra commands that follow it, so that the client's
    and the extra commands are listed in one order whichever module declares them.
    """

    def __init__(self, path: tuple[str, ...], subparsers: Any,
                 pending: list[ExtraCommand]) -> None:
        self.path = path
        self._subparsers = subparsers
        self._pending = pending
        self._add_extras_after(None)

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._subparsers.add_parser(name, **kwargs)
        self._add_extras_after(name)
        return parser

    def group(self, name: str, help_text: str, description: str) -> CommandGroup:
        """A command that has commands of its own."""
        parser = self.add_parser(name, help=help_text, description=description)
        subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
        return CommandGroup((*self.path, name), subparsers, self._pending)

    def _add_extras_after(self, name: str | None) -> None:
        for extra in [e for e in self._pending if (e.group, e.after) == (self.path, name)]:
            self._pending.remove(extra)
            extra.add(self)


def add_command(
    commands: CommandGroup, name: str, help_text: str, handler: Handler, description: str = "",
    usage: str | None = None, *, reads_config_itself: bool = False,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help_text, description=description or help_text, usage=usage
    )
    set_handler(parser, handler, reads_config_itself=reads_config_itself)
    return parser


NIL_UUID = "00000000-0000-0000-0000-000000000000"


def _new_id(text: str) -> str:
    """--id: a canonical UUID, not the nil one (the node refuses both the same way)."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != text.lower():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a UUID like '0f8fad5b-d9cb-469f-a165-70867728950e'")
    if parsed.int == 0:
        raise argparse.ArgumentTypeError(
            f"the nil UUID {NIL_UUID} is not a usable id: leave --id out for a fresh one, "
            "or give a UUID of your own")
    return text


def _id_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--id", metavar="UUID", default=None, type=_new_id,
        help=f"{what} (idempotency key); default: a new UUIDv7. Reuse it to retry safely",
    )


def build_parser(extra_commands: Sequence[ExtraCommand] = ()) -> argparse.ArgumentParser:
    """The client's commands, and `extra_commands` each where it says."""
    pending = list(extra_commands)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Talk to a RaftWallet cluster: accounts, money movements, balances, "
        "transfers and the cluster's state; start and stop local clusters.",
        epilog="exit status: 0 done; 1 the cluster refused the request (or the transfer, "
        "deposit or withdrawal FAILED); 2 usage, configuration or connection problem, "
        "or an outcome that stayed unknown (retry with the same --id).",
    )
    global_options(parser, top=True)
    commands = CommandGroup(
        (), parser.add_subparsers(title="commands", metavar="COMMAND", required=True), pending)

    account_commands = commands.group("account", "manage accounts", "Manage accounts.")
    p = add_command(account_commands, "create", "open an account holding one currency",
                    cmd_account_create,
                    "Open ACCOUNT holding CUR. Retrying with the same --id returns the same "
                    "answer; another id for an existing account is refused (ALREADY_EXISTS).")
    p.add_argument("account", metavar="ACCOUNT", help="account id")
    p.add_argument("--currency", required=True, metavar="CUR",
                   help="ISO 4217 code, upper case (USD, EUR, JPY...)")
    _id_option(p, "request id")
    global_options(p, top=False)

    for name, verb, handler in (("deposit", "put money into", cmd_deposit),
                                ("withdraw", "take money out of", cmd_withdraw)):
        p = add_command(commands, name, f"{verb} an account from/to the outside world", handler,
                        f"{verb.capitalize()} ACCOUNT: AMOUNT of CUR, exactly once per --id. "
                        "Prints the outcome and the balance after it.")
        p.add_argument("account", metavar="ACCOUNT", help="account id")
        p.add_argument("amount", metavar="AMOUNT",
                       help="decimal amount in major units, e.g. 12.34 (no sign, no exponent)")
        p.add_argument("--currency", required=True, metavar="CUR",
                       help="ISO 4217 code; must be the account's currency")
        _id_option(p, "transaction id")
        global_options(p, top=False)

    p = add_command(commands, "transfer", "move money from one account to another",
                    cmd_transfer,
                    "Move AMOUNT of CUR from FROM to TO, exactly once per --id. Prints the "
                    "outcome: SUCCEEDED, FAILED (with the reason; exit 1) or PENDING (the "
                    "credit is in flight: ask get-transfer later).")
    p.add_argument("from_account", metavar="FROM", help="account debited")
    p.add_argument("to_account", metavar="TO", help="account credited")
    p.add_argument("amount", metavar="AMOUNT", help="decimal amount in major units, e.g. 12.34")
    p.add_argument("--currency", required=True, metavar="CUR",
                   help="ISO 4217 code; both accounts must hold it")
    _id_option(p, "transaction id")
    global_options(p, top=False)

    p = add_command(commands, "balance", "show an account's balance", cmd_balance,
                    "Show ACCOUNT's balance. By default a linearizable read (sees every "
                    "acknowledged write); --stale answers from any replica, labelled stale. "
                    "The position shown is the log position of the account's partition that "
                    "the balance is as of. A linearizable read is ordered by a barrier entry "
                    "appended to the log, so its position is that entry's and grows with every "
                    "read, writes or not; pass it as --min-position to another read to see at "
                    "least that state.")
    p.add_argument("account", metavar="ACCOUNT", help="account id")
    p.add_argument("--stale", action="store_true",
                   help="read from any replica (faster, may lag; labelled stale)")
    p.add_argument("--min-position", type=_position, default=0, metavar="N",
                   help="answer only once the partition has applied log position N")
    p.add_argument("--at", metavar="ISO8601", default=None,
                   help="the balance as it was at that time (e.g. 2026-11-25T18:00:00Z), "
                        "rebuilt from the event archive")
    global_options(p, top=False)

    p = add_command(commands, "get-transfer", "show one transfer and its steps", cmd_get_transfer,
                    "Show the transfer ID debited from --from ACCOUNT: status, reason, steps.")
    p.add_argument("transaction_id", metavar="ID", help="the transfer's transaction id")
    p.add_argument("--from", dest="from_account", required=True, metavar="ACCOUNT",
                   help="the debited account (transfers are keyed by it and the id)")
    global_options(p, top=False)

    p = add_command(commands, "verify", "check every replica against a replay of its archive",
                    cmd_verify,
                    "Ask every node to replay each of its partitions' event archives from "
                    "position 0 to its applied position and compare with its live state hash; "
                    "then check each replica against its peers: every replica must reach the "
                    "highest position any of them reported (within 10 s), and all must have "
                    "the same archive chain hash (the whole history) and state hash there. "
                    "Exit 1 on any mismatch, lagging replica or unreachable node. "
                    "(`walletctl replay --data-dir DIR ...` rebuilds balances offline from a "
                    "node's data dir; see `walletctl replay --help`.)")
    global_options(p, top=False)

    p = add_command(commands, "abort-transfer", "close a transfer's unknown outcome for good",
                    cmd_abort_transfer,
                    "Commit an abort for the transfer ID from --from ACCOUNT. If it was applied "
                    "first, prints its outcome; otherwise it ends FAILED (reason ABORTED) and the "
                    "original request is refused should it still arrive.")
    p.add_argument("transaction_id", metavar="ID", help="the transfer's transaction id")
    p.add_argument("--from", dest="from_account", required=True, metavar="ACCOUNT",
                   help="the debited account")
    global_options(p, top=False)

    p = add_command(commands, "history", "list an account's transfers, a page at a time",
                    cmd_history,
                    "List ACCOUNT's transfers (sent and received), oldest first, a page at a "
                    "time; pass the printed page token back with --page-token for the next page.")
    p.add_argument("account", metavar="ACCOUNT", help="account id")
    p.add_argument("--limit", type=_limit, default=100, metavar="N",
                   help="transfers per page (default 100)")
    p.add_argument("--page-token", default="", metavar="T",
                   help="continue after a previous page")
    p.add_argument("--newest-first", action="store_true", help="newest transfers first")
    global_options(p, top=False)

    p = add_command(commands, "route", "show an account's partition and its leader", cmd_route,
                    "Show which partition owns ACCOUNT (ledger.routing.partition_of over the "
                    "cluster's partition count) and that partition's current leader.")
    p.add_argument("account", metavar="ACCOUNT", help="account id")
    global_options(p, top=False)

    cluster_commands = commands.group("cluster", "inspect, start or stop a cluster",
                                      "Inspect, start or stop a cluster.")
    p = add_command(cluster_commands, "status", "per partition: leader, term, indexes, replicas",
                    cmd_cluster_status,
                    "Show per partition the leader, term, Raft commit index, ledger position "
                    "(entries applied; it is not the commit index: Raft's own entries are not "
                    "ledger entries, so the two differ on a healthy cluster), each replica's "
                    "Raft match index and lag, money in flight, outbox depth, last snapshot and "
                    "a state hash prefix; then every node and whether it answers.")
    global_options(p, top=False)

    node_commands = commands.group("node", "run one node", "Run one RaftWallet node.")
    p = add_command(node_commands, "add", "register a new node in the cluster map",
                    cmd_node_add,
                    "Register node ID in the cluster map (through the metadata group). Then start "
                    "it on its host with `node start --join`, and move replicas onto it with "
                    "`replica add` (docs/operations.md).")
    p.add_argument("--id", required=True, metavar="ID", help="the new node's id (never reuse "
                   "the id of a node whose disk was lost)")
    p.add_argument("--host", required=True, metavar="HOST", help="its host name or IPv4 address")
    p.add_argument("--grpc-port", required=True, type=int, metavar="PORT")
    p.add_argument("--raft-port-base", required=True, type=int, metavar="PORT",
                   help="partition p listens on PORT + p, the metadata group on PORT + "
                        "partitions")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT")
    global_options(p, top=False)
    p = add_command(node_commands, "remove", "remove a node that hosts no replica",
                    cmd_node_remove,
                    "Remove NODE from the cluster map; refused while it still hosts a replica "
                    "(run `node drain` first).")
    p.add_argument("node", metavar="NODE")
    global_options(p, top=False)
    p = add_command(node_commands, "snapshot", "make a node's replicas take a snapshot now",
                    cmd_node_snapshot,
                    "Ask the node of --target to compact the log of each given partition now "
                    "(AdminService.Snapshot): its snapshot is written in the background, and "
                    "its journal shrinks to the entries after it. Useful before a cold backup.")
    p.add_argument("--partition", type=int, action="append", required=True, metavar="P",
                   help="a partition the node hosts (repeat for several)")
    global_options(p, top=False)
    p = add_command(node_commands, "drain", "move every replica of a node to other nodes",
                    cmd_node_drain,
                    "For each replica of NODE (partitions and metadata group): add a replica on "
                    "the least loaded other node, wait until it has caught up and votes, then "
                    "remove NODE's (its leadership is handed over first). One group at a time.")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--wait-s", type=float, default=membership_cli.DEFAULT_WAIT_S,
                   metavar="SECONDS", help="how long to wait for each step (default "
                   f"{membership_cli.DEFAULT_WAIT_S:g})")
    global_options(p, top=False)

    replica_commands = commands.group("replica", "add or remove one replica",
                                      "Add or remove one replica of a partition or of the "
                                      "metadata group (one change per group at a time).")
    for name, handler, text in (
            ("add", cmd_replica_add, "add a replica on NODE; it catches up (snapshot, then "
             "log) and becomes a voter"),
            ("remove", cmd_replica_remove, "remove NODE's replica (leadership is handed over "
             "first if NODE leads)")):
        p = add_command(replica_commands, name, text, handler)
        p.add_argument("--partition", type=int, default=None, metavar="P")
        p.add_argument("--metadata", action="store_true",
                       help="the metadata group (cluster map) instead of a partition")
        p.add_argument("--node", required=True, metavar="NODE")
        membership_cli.add_arguments_for_target(p)
        global_options(p, top=False)

    p = add_command(cluster_commands, "map", "the cluster map: nodes and each group's replicas",
                    cmd_cluster_map,
                    "Show the cluster map as the answering node knows it: each partition's and "
                    "the metadata group's replicas, preferred leader first, with their state "
                    "(joining, leaving) when not a plain voter; then every node of the map with "
                    "its address and groups (`none` for a node that holds no replica yet, such "
                    "as one just added).")
    global_options(p, top=False)
    p = add_command(cluster_commands, "rebalance-leaders", "spread partition leaders evenly",
                    cmd_rebalance_leaders,
                    "Choose a preferred leader per partition so that nodes lead equally many, "
                    "and record it in the cluster map; each leader then hands over to its "
                    "preferred node (within about a minute, proposals paused briefly).")
    global_options(p, top=False)
    if pending:
        raise ValueError("extra commands with no place among walletctl's commands: "
                         + ", ".join(f"{' '.join(e.group) or 'top level'} after {e.after}"
                                     for e in pending))
    return parser


def _exit_status(code: object) -> int:
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def main(argv: list[str] | None = None,
         extra_commands: Sequence[ExtraCommand] = ()) -> int:
    """Run walletctl with `argv` (default sys.argv[1:]) and the client's commands plus
    `extra_commands`; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    parser = build_parser(extra_commands)
    try:
        # A command that parses its own arguments (`replay`) declares none of them here:
        # it gets what follows it; any other command's line is parsed strictly.
        args, rest = parser.parse_known_args(arguments)
        if args.parses_own_arguments:
            args.own_arguments = rest
        else:
            args = parser.parse_args(arguments)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return _exit_status(exit_.code)
    out = Output(bool(args.json), sys.stdout, sys.stderr)
    handler: Handler = args.handler
    try:
        if getattr(args, "config", None) and not args.reads_config_itself:
            targets_from_config(Path(args.config))  # an invalid file is refused at once
        return handler(args, out)
    except WalletError as error:
        out.error(str(error))
        if isinstance(error, OutcomeUnknown):
            out.error(f"retry the same request with --id {error.transaction_id}")
        if out.as_json:
            out.emit(error_json(error), "")
        return EXIT_USAGE if isinstance(error, (Unavailable, OutcomeUnknown)) else EXIT_REFUSED
    except UsageError as error:
        out.error(str(error))
        if out.as_json:
            out.emit({"error": {"status": "USAGE", "reason": "", "message": str(error)}}, "")
        return EXIT_USAGE
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # never a traceback: report it as a problem of this run
        out.error(f"unexpected {type(error).__name__}: {error}")
        return EXIT_USAGE

