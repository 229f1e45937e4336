"""A replica starts only with state that covers everything it ever acknowledged.

A Raft voter that forgot entries it acknowledged can, with one more ordinary
fault, elect a leader without them: acknowledged transfers vanish, and a client
retry applies one again. Checksums catch flipped bytes; this module catches
what a checksum cannot see: a file or directory that is missing, and a log that
is shorter than what this replica already vouched for. Each check refuses to
start (`ReplicaStateMissing`, exit status 3) with a message that says what is
missing and points to the runbook's remove-and-add under a new id.

The facts a replica keeps that outlive a lost file:
- The node's identity file and the cluster map: the map says which groups this
  node is a member of. A member's directory must exist and hold its marker.
- The marker (`raftwallet-replica.json` in the group's directory), written and
  fsynced when the directory is first initialised (the node's bootstrap, or a
  replica added to this node: pre-seeded, then joining). Its absence next to a
  member slot means the directory was deleted or replaced.
- The journal's meta file: term, vote and commit index. node/raft/journal.py refuses
  a journal that ends before the stored commit index, or whose meta is missing.
- The snapshot: a journal compacted past index 1 needs it (the state before the
  journal's first entry lives only there); a snapshot older than the journal's
  first entry leaves a gap.
- The event archive (partitions only): its last record names the Raft log index
  of the last entry this replica applied; the journal or the snapshot must reach
  at least that far (entries once applied cannot be uncommitted).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Final

from node.durable_io import datasync
from node.raft import snapshot_file

log = logging.getLogger(__name__)

MARKER_FILE: Final = "raftwallet-replica.json"
MARKER_FORMAT_VERSION: Final = 1
RUNBOOK_HINT: Final = (
    "Do not delete files and restart under the same node id, and do not wipe the data dir "
    "to let it rejoin: replace the node (`walletctl node remove`, then `node add` under a "
    "NEW id; docs/operations.md, \"Replacing a node\"), or restore the WHOLE data dir from "
    "a backup taken while the node was stopped, and only if the node has not run since that "
    "backup (a node that ran since has acknowledged and voted for what the backup lacks)"
)


class ReplicaStateMissing(Exception):
    """A replica's durable state does not cover what it acknowledged: it must not start."""

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(
            f"replica directory {directory}: {reason}. Refusing to start: this replica "
            f"could vote with forgotten state and lose acknowledged transfers. {RUNBOOK_HINT}")
        self.directory = directory
        self.reason = reason


def group_name(group: int) -> str:
    return "metadata" if group < 0 else f"partition {group}"


def write_marker(directory: Path, group: int, node_id: str) -> None:
    """Mark `directory` as an initialised replica of `group` on `node_id` (durably)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / MARKER_FILE
    temporary = directory / (MARKER_FILE + ".tmp")
    body = json.dumps({"format": MARKER_FORMAT_VERSION, "group": group, "node_id": node_id,
                       "initialised_at": time.time()}, sort_keys=True).encode("utf-8")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
        datasync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, marker)
    snapshot_file.fsync_directory(str(directory))


def has_state(directory: Path) -> bool:
    """True when the directory holds anything of a replica (marker, journal, snapshot)."""
    return any((directory / name).exists() for name in (MARKER_FILE, "journal", "snapshot"))


def check_marker(directory: Path, group: int, node_id: str, *, member: bool,
                 initialising: bool) -> None:
    """Before a replica's files are opened: the directory is this replica's, or may be made so.

    `member`: the cluster map lists this node as a voter of `group` (not a slot
    still being added). `initialising`: this start created the node's data dir
    (bootstrap), so member groups have no state yet. Writes the marker where a
    new replica begins; raises `ReplicaStateMissing` where state was lost.
    """
    name = group_name(group)
    marker_path = directory / MARKER_FILE
    journal_path = directory / "journal"
    if marker_path.exists():
        _check_marker_content(directory, marker_path, group, node_id)
        if member and not journal_path.exists():
            raise ReplicaStateMissing(
                str(directory), f"this node is a voter of {name} but its journal "
                f"{journal_path} is missing (the Raft log and the votes it held are gone)")
        return
    if journal_path.exists():
        # A replica initialised before markers existed: its journal proves it.
        log.info("marking a replica directory initialised before markers existed",
                 extra={"directory": str(directory), "group": group})
        write_marker(directory, group, node_id)
        return
    if member and not initialising:
        raise ReplicaStateMissing(
            str(directory), f"the cluster map lists this node as a voter of {name}, but the "
            "directory holds no replica state (no marker, no journal): it was deleted or "
            "replaced")
    write_marker(directory, group, node_id)


def _check_marker_content(directory: Path, marker_path: Path, group: int, node_id: str) -> None:
    try:
        fields = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReplicaStateMissing(str(directory), f"unreadable marker {marker_path}: {exc}"
                                  ) from None
    if not isinstance(fields, dict) or fields.get("group") != group or (
            fields.get("node_id") != node_id):
        found = (fields.get("group"), fields.get("node_id")) if isinstance(fields, dict) else None
        raise ReplicaStateMissing(
            str(directory), f"the marker {marker_path} belongs to (group, node) {found}, not "
            f"({group}, {node_id!r}): this directory was copied from another replica")


def check_log_covers(directory: str, group: int, journal_first_index: int,
                     journal_last_index: int, snapshot: snapshot_file.RaftMeta | None,
                     archived_log_index: int, commit_index: int = 0) -> None:
    """After the journal was opened: the journal, snapshot and archive fit together.

    `snapshot` is the snapshot file's Raft metadata (None when there is no
    file); `archived_log_index` the Raft index of the event archive's last
    record (0 when empty or when the group has no archive); `commit_index` the
    one the journal's meta file stored (node/raft/journal.py already refuses a
    non-empty journal that ends before it; an emptied one is caught here).
    """
    name = group_name(group)
    snapshot_index = 0 if snapshot is None else int(snapshot.last_entry[1])
    if snapshot is None and journal_first_index > 1:
        raise ReplicaStateMissing(
            directory, f"the snapshot of {name} is missing: the journal starts at log index "
            f"{journal_first_index} (compacted), so the state before it existed only in the "
            "snapshot")
    if snapshot is not None and journal_last_index > snapshot_index and (
            journal_first_index > int(snapshot.prev_entry[1])):
        # The journal must go on from the snapshot's last two entries (the loader finds
        # them there), or lie wholly behind it (then the snapshot replaces it).
        raise ReplicaStateMissing(
            directory, f"the snapshot of {name} ends at log index {snapshot_index} but the "
            f"journal starts at {journal_first_index}, after the snapshot's previous entry: "
            "the two do not join up (an older snapshot was put back, or entries are lost)")
    reached_index = max(journal_last_index, snapshot_index)
    if commit_index > reached_index:
        raise ReplicaStateMissing(
            directory, f"the journal of {name} ends at log index {journal_last_index} (the "
            f"snapshot at {snapshot_index}) but its meta file records commit index "
            f"{commit_index}: durable, acknowledged records are missing")
    if archived_log_index > reached_index:
        raise ReplicaStateMissing(
            directory, f"the event archive of {name} holds entries up to log index "
            f"{archived_log_index}, applied by this replica, but its journal and snapshot "
            f"reach only {reached_index}: the journal was shortened")
