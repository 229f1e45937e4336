"""Binary encoding of log entries (proto/ledger/v1/ledger.proto) to and from `ledger.commands`.

The encoding is versioned (`Entry.version`) and evolves by protobuf's rules, so
a log written today replays with tomorrow's code. Decoding something this
code does not understand raises `UnsupportedEntry`: a replica must halt rather
than skip an entry it cannot read.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, cast

from google.protobuf.message import DecodeError

from ledger import commands as c
from proto.ledger.v1 import ledger_pb2 as pb


class UnsupportedEntry(Exception):
    """A log entry that this code cannot decode (unknown version or command, bad bytes)."""


# Command class <-> name of its case in `Command.kind`. Field names are the same
# on both sides, so one table drives encoding and decoding.
_CASE_BY_CLASS: dict[type[Any], str] = {
    c.CreateAccount: "create_account",
    c.Deposit: "deposit",
    c.Withdraw: "withdraw",
    c.Transfer: "transfer",
    c.DebitForTransfer: "debit_for_transfer",
    c.CreditForTransfer: "credit_for_transfer",
    c.ResolveTransfer: "resolve_transfer",
    c.Abort: "abort",
    c.AbortCredit: "abort_credit",
    c.LeaderStart: "leader_start",
    c.CloseAccount: "close_account",
    c.PruneDedup: "prune_dedup",
    c.Barrier: "barrier",
}
_CLASS_BY_CASE = {case: cls for cls, case in _CASE_BY_CLASS.items()}
assert set(_CLASS_BY_CASE) == {
    field.name for field in pb.Command.DESCRIPTOR.oneofs_by_name["kind"].fields
}, "every kind of command in ledger.proto has its class, and no class is missing from it"
_FIELDS_BY_CLASS = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _CASE_BY_CLASS
}


def command_to_proto(command: c.Command, out: pb.Command) -> None:
    """Fill `out` (a fresh pb.Command) from a ledger command."""
    case = _CASE_BY_CLASS[type(command)]
    target = getattr(out, case)
    fields = _FIELDS_BY_CLASS[type(command)]
    if not fields:
        target.SetInParent()
    for name in fields:
        setattr(target, name, getattr(command, name))


def command_from_proto(message: pb.Command) -> c.Command:
    case = message.WhichOneof("kind")
    if case is None:
        raise UnsupportedEntry("command of an unknown kind (written by newer code?)")
    if case == "transfer":  # the hot path: skip the generic field loop
        t = message.transfer
        return c.Transfer(
            t.from_account, t.to_account, t.amount_minor, t.currency, t.transaction_id
        )
    cls = _CLASS_BY_CASE[case]
    sub = getattr(message, case)
    return cls(*(getattr(sub, name) for name in _FIELDS_BY_CLASS[cls]))  # type: ignore[no-any-return]


def encode_entry(entry: c.Entry) -> bytes:
    message = pb.Entry(version=entry.version, stamp_ms=entry.stamp_ms)
    add = message.commands.add
    for command in entry.commands:
        command_to_proto(command, add())
    return message.SerializeToString()


def decode_entry(blob: bytes) -> c.Entry:
    message = pb.Entry()
    try:
        message.ParseFromString(blob)
    except DecodeError as exc:
        raise UnsupportedEntry(f"entry does not decode: {exc}") from None
    if message.version != c.ENTRY_VERSION:
        raise UnsupportedEntry(
            f"entry version {message.version}; this code reads version {c.ENTRY_VERSION}"
        )
    return c.Entry(
        stamp_ms=message.stamp_ms,
        commands=tuple(command_from_proto(m) for m in message.commands),
        version=message.version,
    )


_kind_of = operator.methodcaller("WhichOneof", "kind")
"""The case of a protobuf `Command`'s `kind` (None for a kind this code does not know)."""


@dataclass(frozen=True, slots=True)
class WireEntry:
    """A log entry parsed from its bytes but not converted to `ledger.commands` objects.

    Only `parse_entry` makes these. What is guaranteed: the entry is of the
    version this code reads and every command is of a kind it knows
    (`runs` gives their kinds in order, consecutive commands of one kind as
    (kind, count): the kind of `commands[0]` is `runs[0][0]`), so applying it
    (`StateMachine.apply_wire_entry`) can no longer fail to decode half way.
    It reads exactly like `decode_entry(blob)`; it exists because building one
    Python object per command is a large share of a replay's time.
    """

    stamp_ms: int
    commands: Sequence[pb.Command]
    runs: tuple[tuple[str, int], ...]


def parse_entry(blob: bytes) -> WireEntry:
    """Parse an encoded entry for `StateMachine.apply_wire_entry`.

    Refuses exactly what `decode_entry` refuses, with the same `UnsupportedEntry`.
    """
    message = pb.Entry()
    try:
        message.ParseFromString(blob)
    except DecodeError as exc:
        raise UnsupportedEntry(f"entry does not decode: {exc}") from None
    if message.version != c.ENTRY_VERSION:
        raise UnsupportedEntry(
            f"entry version {message.version}; this code reads version {c.ENTRY_VERSION}"
        )
    commands = list(message.commands)  # one wrapper per command, made once
    cases = tuple(map(_kind_of, commands))
    if None in cases:
        raise UnsupportedEntry("command of an unknown kind (written by newer code?)")
    runs = tuple([(case, len(list(run))) for case, run in groupby(cast("tuple[str, ...]", cases))])
    return WireEntry(message.stamp_ms, commands, runs)
