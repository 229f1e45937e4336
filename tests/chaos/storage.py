"""Storage faults of the chaos suite: lost files, shortened journals, full disks.

What a node must do about each (node/raft/replica_guard.py, node/raft/journal.py,
node/fail_stop.py):
- a damaged data dir of a stopped node (`DAMAGES`) must be refused at start (status 3),
  never rejoin; the operator then replaces the node under a new id (the runbook);
- a full disk must end the node (status 74) as soon as a journal or archive write fails,
  so that a leader hands over within the election timeout; once space is freed, a
  restart catches up.

The disk of a node is a tmpfs of its own (`mount_small_fs`), mounted on its data dir
before the node first starts and unmounted at the end of the run: filling it fills
nothing else. Needs root (the chaos suite's netns network does too).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from node.fail_stop import STORAGE_FAILED_EXIT_CODE
from node.membership.reconciler import MAP_FILE
from node.raft.journal import DurableJournal
from node.server import EXIT_REFUSED as REFUSED_EXIT_STATUS
from node.server import IDENTITY_FILE
from tests.chaos.runbook import RunbookStepFailed, Walletctl

DAMAGES: Final = ("partition_dir", "journal", "meta", "journal_cut_boundary",
                  "journal_cut_mid_record", "snapshot", "all_but_identity")
"""What a storage fault of kind `damage` destroys in a stopped node's data dir."""
DISK_MIB: Final = 256
"""Size of each node's own filesystem when disk faults are planned."""
FILLER: Final = "filler"
NODE_STOP_GRACE_S: Final = 10.0
REFUSAL_WAIT_S: Final = 60.0
"""How long a damaged node may take to refuse (it may ask the other nodes for the map)."""
COMPACTION_WAIT_S: Final = 30.0


def pick_damage(pick: float) -> str:
    """The damage of a planned fault, from its pick (no draw from the schedule's stream)."""
    return random.Random(pick).choice(DAMAGES)


def journal_facts(journal_path: Path) -> tuple[list[int], int, int]:
    """(byte offset of each record, first log index, stored commit index) of a journal,
    read from a copy (opening a journal may repair it; the original stays as it is)."""
    inspect = journal_path.parent / "inspect.tmp"
    inspect.mkdir()
    try:
        shutil.copy(journal_path, inspect / "journal")
        meta = Path(str(journal_path) + ".meta")
        if meta.exists():
            shutil.copy(meta, inspect / "journal.meta")
        journal = DurableJournal(str(inspect / "journal"))
        try:
            return (list(journal._record_offsets_bytes), int(journal[0][1]),
                    journal.getRaftCommitIndex())
        finally:
            journal._destroy()
    finally:
        shutil.rmtree(inspect)


def cut_journal(partition_dir: Path, mid_record: bool) -> str:
    """Cut the journal from its last committed record (on its first byte, or 7 bytes in):
    every removed record was durable and acknowledged, so the node must refuse."""
    journal = partition_dir / "journal"
    offsets, first_index, commit_index = journal_facts(journal)
    position = commit_index - first_index
    assert 0 <= position < len(offsets), (commit_index, first_index, len(offsets))
    cut_bytes = offsets[position] + (7 if mid_record else 0)
    os.truncate(journal, cut_bytes)
    return (f"journal of {partition_dir.name} cut at byte {cut_bytes} (from log index "
            f"{commit_index}, committed; {'mid-record' if mid_record else 'on a boundary'})")


def snapshot_is_needed(partition_dir: Path) -> bool:
    """True when the journal was compacted, so the state before it lives in the snapshot."""
    return journal_facts(partition_dir / "journal")[1] > 1


def damage(node_dir: Path, what: str, partition: int) -> str:
    """Destroy `what` in a stopped node's data dir; says what was done."""
    partition_dir = node_dir / f"partition-{partition}"
    if what == "partition_dir":
        shutil.rmtree(partition_dir)
        return f"{partition_dir.name}/ deleted"
    if what == "journal":
        for name in ("journal", "journal.meta"):
            (partition_dir / name).unlink()
        return f"{partition_dir.name}/journal and journal.meta deleted"
    if what == "meta":
        (partition_dir / "journal.meta").unlink()
        return f"{partition_dir.name}/journal.meta deleted"
    if what in ("journal_cut_boundary", "journal_cut_mid_record"):
        return cut_journal(partition_dir, mid_record=what == "journal_cut_mid_record")
    if what == "snapshot":
        (partition_dir / "snapshot").unlink()
        return f"{partition_dir.name}/snapshot deleted (its journal was compacted)"
    assert what == "all_but_identity", what
    for path in node_dir.iterdir():
        if path.name not in (IDENTITY_FILE, MAP_FILE, FILLER):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return "everything but the identity and map files deleted"


def mount_small_fs(directory: Path, size_mib: int = DISK_MIB) -> None:
    """Mount a tmpfs of `size_mib` on `directory` (created empty). RuntimeError if refused."""
    directory.mkdir(parents=True, exist_ok=False)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                              str(directory)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        raise RuntimeError(f"disk faults need `mount -t tmpfs` (root): {mounted.stderr.strip()}")


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def fill(directory: Path) -> int:
    """Write a file until its filesystem is full (unbuffered); the bytes written."""
    fd = os.open(directory / FILLER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written = 0
    try:
        for chunk_bytes in (1 << 20, 4096, 512, 1):
            chunk = bytes(chunk_bytes)
            try:
                while True:
                    written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return written


def free(directory: Path) -> None:
    (directory / FILLER).unlink(missing_ok=True)


class StorageFaults:
    """The storage faults of `runner.Nodes` (the nemesis' `Target`): a mixin of Nodes,
    which provides what is declared here."""

    out: Path
    grpc_addresses: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    expected_down: set[str]
    problems: list[str]
    disk_mib: int | None
    mounted: list[Path]
    _lock: threading.Lock
    _walletctl: Walletctl

    def _spawn(self, node_id: str, *flags: str) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def node_dir(self, node_id: str) -> Path:
        return self.out / "data" / node_id

    def prepare_disk(self, node_id: str) -> None:
        """Before a node's first start: its own small filesystem, when disk faults run."""
        directory = self.node_dir(node_id)
        if self.disk_mib is not None and not directory.exists():
            mount_small_fs(directory, self.disk_mib)
            self.mounted.append(directory)

    def unmount_all(self) -> None:
        for directory in self.mounted:
            unmount(directory)
        self.mounted.clear()

    def _stop(self, node_id: str) -> None:
        """An orderly stop (SIGTERM): the node persists its commit index on the way out."""
        with self._lock:
            self.expected_down.add(node_id)
            process = self.processes[node_id]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=NODE_STOP_GRACE_S)

    def damage(self, node_id: str, what: str, pick: float) -> str:
        node_dir = self.node_dir(node_id)
        hosted = sorted(int(p.name.removeprefix("partition-"))
                        for p in node_dir.glob("partition-*") if p.is_dir())
        partition = hosted[int(pick * len(hosted))]
        compacted = what == "snapshot" and self._compact(node_id, partition)
        self._stop(node_id)
        if what == "snapshot" and not (
                compacted and snapshot_is_needed(node_dir / f"partition-{partition}")):
            what = "journal"  # no compacted journal to take the snapshot away from
        done = damage(node_dir, what, partition)
        log_path = self.out / "logs" / f"{node_id}.log"
        log_bytes = log_path.stat().st_size
        process = self._spawn(node_id)
        with self._lock:
            self.processes[node_id] = process
        try:
            status = process.wait(timeout=REFUSAL_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=NODE_STOP_GRACE_S)
            self.problems.append(f"{node_id} started with {done} and was NOT refused")
            return f"{done}; NOT refused"
        if status != REFUSED_EXIT_STATUS:
            self.problems.append(f"{node_id} started with {done} exited {status}, not "
                                 f"{REFUSED_EXIT_STATUS} (refused)")
        with open(log_path, "rb") as log:
            log.seek(log_bytes)
            said = [line for line in log.read().decode("utf-8", "replace").splitlines()
                    if line.startswith("walletctl node start:")]
        reason = said[-1].split(": ", 2)[-1][:160] if said else "?"
        return f"{done}; refused (status {status}): {reason}"

    def _compact(self, node_id: str, partition: int) -> bool:
        """Make the node snapshot `partition` and trim its journal; False if it could not."""
        address = self.grpc_addresses.get(node_id)
        if address is None:
            return False
        try:
            self._walletctl.run("node", "snapshot", "--partition", str(partition),
                                "--target", address)
        except RunbookStepFailed:
            return False
        snapshot = self.node_dir(node_id) / f"partition-{partition}" / "snapshot"
        deadline = time.monotonic() + COMPACTION_WAIT_S
        while not snapshot.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the journal is trimmed on a tick after the snapshot is written
        return snapshot.exists()

    def fill_disk(self, node_id: str) -> str:
        with self._lock:
            self.expected_down.add(node_id)  # it must end itself at its first failed write
        written = fill(self.node_dir(node_id))
        return f"disk full ({written / 2**20:.0f} MiB written)"

    def free_disk(self, node_id: str, led_partitions: Sequence[int]) -> str:
        free(self.node_dir(node_id))
        process = self.processes[node_id]
        status = process.poll()
        if status is None:
            if led_partitions:
                self.problems.append(f"{node_id} led {list(led_partitions)} with a full disk "
                                     "and was still running at the end of the fault")
            with self._lock:
                self.expected_down.discard(node_id)
            return "space freed; the node was still running"
        if status != STORAGE_FAILED_EXIT_CODE:
            self.problems.append(f"{node_id} with a full disk exited {status}, not "
                                 f"{STORAGE_FAILED_EXIT_CODE} (storage failed)")
        self._spawn_member(node_id)
        return f"space freed; it had ended with status {status}; restarted"

    def _spawn_member(self, node_id: str) -> None:
        process = self._spawn(node_id)
        with self._lock:
            self.processes[node_id] = process
            self.expected_down.discard(node_id)
