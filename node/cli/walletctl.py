"""`walletctl`, the RaftWallet command line: the client's commands and those that run
node code on this machine.

The client's commands are client.cli's, which never imports `node`. This module,
the `walletctl` entry point (`python -m node.cli.walletctl` works too), adds the
commands that start servers or read a node's files, each where `walletctl --help`
lists it (client.cli.ExtraCommand):

    cluster up, cluster down   node.cli.launcher: a local cluster's node processes
    node start                 node.server: one node in the foreground
    gateway                    node.gateway.app: the HTTP/JSON API
    replay                     node.archive.replay_cli: balances from a data dir, offline

Each handler imports its node module when it runs, so that the client's commands
start without loading the server's packages (pysyncobj, FastAPI, uvicorn).
`replay` reads a node's data dir offline: of the global options only --json
applies to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from client.cli import (
    DEFAULT_ATTEMPT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    PROG,
    CommandGroup,
    ExtraCommand,
    Output,
    UsageError,
    add_command,
    global_options,
    set_handler,
)
from client.cli import build_parser as build_client_parser
from client.cli import main as client_main

CONFIG_REQUIRED_HELP = "the cluster TOML file (required; before or after the command)"


def _config_path(args: argparse.Namespace, command: str) -> Path:
    if not args.config:
        raise UsageError(f"{command} needs --config FILE (a cluster file)")
    return Path(args.config)


# --- handlers ---------------------------------------------------------------------------


def cmd_cluster_up(args: argparse.Namespace, out: Output) -> int:
    config_path = _config_path(args, "cluster up")
    from node.cli.launcher import cluster_up

    return cluster_up(config_path=config_path, data_dir=args.data_dir, as_json=out.as_json)


def cmd_cluster_down(args: argparse.Namespace, out: Output) -> int:
    from node.cli.launcher import cluster_down

    return cluster_down(data_dir=args.data_dir, as_json=out.as_json)


def cmd_node_start(args: argparse.Namespace, out: Output) -> int:
    config_path = _config_path(args, "node start")
    from node.server import run_node

    return run_node(
        config_path=config_path,
        node_id=args.node_id,
        data_dir=args.data_dir,
        bootstrap=args.bootstrap,
        join=args.join,
        insecure_dev_mode=args.insecure_dev_mode,
        http_listen=args.http_listen,
    )


def cmd_gateway(args: argparse.Namespace, out: Output) -> int:
    targets = [*(args.target or []), *getattr(args, "target_after", [])]
    if not targets and not args.config:
        raise UsageError("gateway needs --config FILE or --target HOST:PORT")
    from node.gateway.app import run_gateway

    return run_gateway(
        config_path=Path(args.config) if args.config else None,
        targets=targets,
        listen=args.listen,
        timeout_s=args.timeout,
        attempt_timeout_s=args.attempt_timeout,
    )


_NOT_FOR_REPLAY = (("--target", "target"), ("--config", "config"), ("--token", "token"),
                   ("--admin-token", "admin_token"), ("--tls-ca", "tls_ca"),
                   ("--tls-cert", "tls_cert"), ("--tls-key", "tls_key"))


def cmd_replay(args: argparse.Namespace, out: Output) -> int:
    """Offline, from a node's data dir (node.archive.replay_cli parses the rest of the line)."""
    given = [flag for flag, name in _NOT_FOR_REPLAY if getattr(args, name, None)]
    given += [flag for flag, name, default in (
        ("--timeout", "timeout", DEFAULT_TIMEOUT_S),
        ("--attempt-timeout", "attempt_timeout", DEFAULT_ATTEMPT_TIMEOUT_S))
        if getattr(args, name) != default]
    if given:
        raise UsageError(f"replay reads a node's data dir offline, without a cluster: "
                         f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not "
                         "apply to it")
    from node.archive import replay_cli

    return replay_cli.main([*args.own_arguments, *(["--json"] if out.as_json else [])])


# --- their parsers ----------------------------------------------------------------------


def _add_replay(commands: CommandGroup) -> None:
    # Offline, no cluster involved: node.archive.replay_cli parses everything after `replay`
    # (`walletctl replay --help` is its help); --json may also come before the command.
    p = commands.add_parser("replay", add_help=False,
                            help="rebuild balances offline from a node's data dir "
                                 "(walletctl replay --help)")
    # --config is refused by cmd_replay itself.
    set_handler(p, cmd_replay, reads_config_itself=True, parses_own_arguments=True)


def _add_cluster_up_and_down(cluster_commands: CommandGroup) -> None:
    # node.config reads the --config of `cluster up` and checks every rule of the file (exit 2).
    p = add_command(cluster_commands, "up", "start every node of a cluster file locally",
                    cmd_cluster_up,
                    "Start one node process per [[nodes]] entry of the cluster file --config, "
                    "with data under DIR/<node-id>, and wait until every partition has a "
                    "leader and every node answering on the file's ports is one this command "
                    "started (node.cli.launcher). Exit status: 0 ready; 1 no leader everywhere "
                    "within 60 s (the nodes keep running); 2 usage, an invalid file, or a "
                    "cluster already running from DIR; 3 a node it started exited (each "
                    "node's reason from its log is printed, and the others are stopped), e.g. "
                    "because another cluster holds the file's ports.",
                    usage=f"{PROG} cluster up --config FILE --data-dir DIR [--json] "
                          "[global options]",
                    reads_config_itself=True)
    p.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                   help="where the nodes keep their data and the cluster's process ids")
    global_options(p, top=False, config_help=CONFIG_REQUIRED_HELP)

    p = add_command(cluster_commands, "down", "stop the nodes started by cluster up",
                    cmd_cluster_down,
                    "Stop the node processes that `cluster up` started with this --data-dir "
                    "(node.cli.launcher).")
    p.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                   help="the --data-dir given to cluster up")
    global_options(p, top=False)


def _add_gateway(commands: CommandGroup) -> None:
    p = add_command(commands, "gateway", "serve the HTTP/JSON API in front of a cluster",
                    cmd_gateway,
                    "Serve the HTTP/JSON API (POST /v1/wallet/balance_transfer, accounts, "
                    "deposits, withdrawals, balances, transfer status; OpenAPI at "
                    "/openapi.json, docs at /docs, /healthz and /readyz) on --listen until "
                    "SIGTERM, talking to the cluster of --config (every [[nodes]] "
                    "host:grpc_port) or --target through the client SDK (node.gateway.app). "
                    "--timeout bounds each HTTP request's cluster calls, retries included; "
                    "--attempt-timeout each attempt at one node.")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve HTTP on (default 127.0.0.1:8080)")
    global_options(p, top=False)


def _add_node_start(node_commands: CommandGroup) -> None:
    # node.config reads --config and checks every rule of the file (exit 3: "refused, do
    # not restart in a loop").
    p = add_command(node_commands, "start", "run one node in the foreground until SIGTERM",
                    cmd_node_start,
                    "Run node ID of the cluster file --config in the foreground, keeping its "
                    "data in DIR, until SIGTERM (node.server).",
                    usage=f"{PROG} node start --config FILE --node-id ID --data-dir DIR "
                          "[--bootstrap | --join] [--insecure-dev-mode] "
                          "[--http-listen HOST:PORT] [global options]",
                    reads_config_itself=True)
    p.add_argument("--node-id", required=True, metavar="ID", help="this node's id in the file")
    p.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                   help="this node's data directory")
    p.add_argument("--bootstrap", action="store_true",
                   help="initialise an empty data dir (first start of a new cluster)")
    p.add_argument("--join", action="store_true",
                   help="initialise an empty data dir for a node registered with `node add` "
                        "(the cluster map is fetched from the nodes of --config)")
    p.add_argument("--insecure-dev-mode", action="store_true",
                   help="allow a cluster file without secret: unencrypted Raft, loopback only")
    p.add_argument("--http-listen", metavar="HOST:PORT", default=None,
                   help="also serve the HTTP/JSON gateway in this process (see "
                        "`walletctl gateway`)")
    global_options(p, top=False, config_help=CONFIG_REQUIRED_HELP)


NODE_COMMANDS: tuple[ExtraCommand, ...] = (
    ExtraCommand(group=(), after="verify", add=_add_replay),
    ExtraCommand(group=("cluster",), after="status", add=_add_cluster_up_and_down),
    ExtraCommand(group=(), after="cluster", add=_add_gateway),
    ExtraCommand(group=("node",), after=None, add=_add_node_start),
)
"""The commands of this module, each after the client command it was always listed after."""


def build_parser() -> argparse.ArgumentParser:
    """walletctl's whole parser: the client's commands and NODE_COMMANDS."""
    return build_client_parser(NODE_COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Run walletctl with `argv` (default sys.argv[1:]); returns the exit status."""
    return client_main(argv, NODE_COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
