"""walletctl is put together from client.cli and node.cli.walletctl: every command, in one order."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client import cli
from node.cli import walletctl

REPO = Path(__file__).resolve().parent.parent

NODE_MODULES = ("node.cli.launcher", "node.server", "node.gateway.app", "node.archive.replay_cli")
"""What the node commands run; the client's commands must start without them."""


def _commands(parser: argparse.ArgumentParser, *path: str) -> list[str]:
    """The commands of the group at `path`, in the order `--help` lists them."""
    for name in path:
        parser = _subcommands(parser).choices[name]
    return [action.dest for action in _subcommands(parser)._choices_actions]


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[
        argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action


def test_walletctl_lists_the_node_commands_among_the_clients_where_they_always_were() -> None:
    parser = walletctl.build_parser()

    assert _commands(parser) == [
        "account", "deposit", "withdraw", "transfer", "balance", "get-transfer", "verify",
        "replay", "abort-transfer", "history", "route", "cluster", "gateway", "node", "replica"]
    assert _commands(parser, "cluster") == ["status", "up", "down", "map", "rebalance-leaders"]
    assert _commands(parser, "node") == ["start", "add", "remove", "snapshot", "drain"]


def test_the_client_half_alone_has_no_command_that_runs_node_code() -> None:
    parser = cli.build_parser()

    assert "replay" not in _commands(parser) and "gateway" not in _commands(parser)
    assert _commands(parser, "cluster") == ["status", "map", "rebalance-leaders"]
    assert _commands(parser, "node") == ["add", "remove", "snapshot", "drain"]


def test_an_extra_command_with_no_place_is_refused_not_dropped() -> None:
    lost = cli.ExtraCommand(group=("cluster",), after="no-such-command",
                            add=lambda commands: None)

    with pytest.raises(ValueError, match="cluster after no-such-command"):
        cli.build_parser([lost])


def test_the_clients_commands_start_without_loading_the_node_modules() -> None:
    probe = ("import json, sys\n"
             "from node.cli import walletctl\n"
             "walletctl.main(['--target', '127.0.0.1:1', 'route', 'alice', '--timeout', '0.1'])\n"
             f"print(json.dumps([m for m in {NODE_MODULES!r} if m in sys.modules]))\n")

    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})

    assert json.loads(done.stdout.splitlines()[-1]) == [], done.stderr
