"""Raft's log-matching rule on followers, which pysyncobj 0.3.17 does not follow.

On an AppendEntries, pysyncobj truncates the follower's log right after the
leader's `prevLogIdx` whenever the log goes further, then appends the entries
the message carries, even when the truncated entries are the very ones the
leader sends again (same index, same term). Leaders send older entries again
after a nextIndex reset, after a leader change, or when a batch is cut by
`appendEntriesBatchSizeBytes`, and heartbeats carry a `prevLogIdx` that may lag
the follower's log. Each time, the follower drops entries it has acknowledged,
and often applied (pysyncobj then logs CRITICAL "truncating already-applied log
entries"). An acknowledged entry counts towards a commit on the leader; if the
follower drops it and the leader then fails, an entry the cluster acknowledged
can be missing from the new majority: a lost transfer.

Raft (§5.3): "If an existing entry conflicts with a new one (same index but
different terms), delete the existing entry and all that follow it", and only
then. `LogMatchingSyncObj` rewrites each regular AppendEntries before pysyncobj
sees it:
- entries the log already holds with the same term are dropped from the
  message (an equal term at an equal index means an equal entry; the command
  bytes are compared too, and a difference halts the node);
- when that leaves nothing to append and the log goes further, the message
  becomes "nothing new after the last entry the leader vouched for", and the
  log's tail is kept: no truncation, no rollback of membership changes in it;
- the commit index then moves no further than the last entry the leader's
  message vouched for (Raft: min(leaderCommit, index of last new entry)); the
  tail beyond it is checked by the next messages, truncated from the first
  conflict if it has one.
A conflict (an equal index with another term) still goes to pysyncobj, which
truncates from there: the Raft behaviour.

A snapshot sent in chunks travels in AppendEntries without `prevLogIdx`, and
for each chunk pysyncobj sets the commit index to min(leaderCommit, the last
index of the follower's own log), a log the leader has not vouched for at all:
a deposed leader holding entries that never committed would apply them while
receiving the new leader's snapshot. Such a message moves the commit index no
further than the snapshot it completes (`raftLastApplied` after the install).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pysyncobj import SyncObj

__all__ = ["LogMatchingSyncObj", "LogMatchingViolated"]

_keeping = threading.local()


class LogMatchingViolated(AssertionError):
    """Raft's guarantees do not hold here (two entries with the same index and term but
    different commands, or an applied entry being replaced): the node must stop."""


class _HideTruncationWarning(logging.Filter):
    """pysyncobj logs CRITICAL before the truncation we turn off; hide only that one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_keeping, "active", False)
                    and "truncating already-applied" in str(record.msg))


logging.getLogger("pysyncobj.syncobj").addFilter(_HideTruncationWarning())


class LogMatchingSyncObj(SyncObj):  # type: ignore[misc]
    """SyncObj whose followers truncate their log only from a conflicting entry."""

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if _is_snapshot_append(message):
            commit_before = self.raftCommitIndex
            super()._SyncObj__onMessageReceived(node, message)
            capped = max(commit_before, int(self.raftLastApplied))
            if self.raftCommitIndex > capped:
                self._SyncObj__raftCommitIndex = capped
                self._SyncObj__raftLog.setRaftCommitIndex(capped)
            return
        rewritten = self._matched(message) if _is_regular_append(message, self) else None
        if rewritten is None:
            super()._SyncObj__onMessageReceived(node, message)
            return
        message, vouched_to, keep_tail = rewritten
        commit_before = self.raftCommitIndex
        _keeping.active = keep_tail
        try:
            super()._SyncObj__onMessageReceived(node, message)
        finally:
            _keeping.active = False
        # Raft: the commit index moves to min(leaderCommit, last entry vouched for), never
        # onto a kept tail the leader has not confirmed yet.
        if self.raftCommitIndex > max(commit_before, vouched_to):
            capped = max(commit_before, min(int(message["commit_index"]), vouched_to))
            self._SyncObj__raftCommitIndex = capped
            self._SyncObj__raftLog.setRaftCommitIndex(capped)

    def _SyncObj__deleteEntriesFrom(self, from_index: int) -> None:
        if getattr(_keeping, "active", False):
            return  # the tail matches the leader's entries so far: keep it
        super()._SyncObj__deleteEntriesFrom(from_index)

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:
        if reverse and getattr(_keeping, "active", False):
            return False  # the kept tail's membership changes stay in force
        return bool(super()._SyncObj__doChangeCluster(request, reverse))

    def _matched(self, message: dict[str, Any]) -> tuple[dict[str, Any], int, bool] | None:
        """The message without the entries the log already holds, the last index the
        leader vouched for, and whether the log's tail beyond it must be kept; None to
        let pysyncobj handle the message as it is."""
        log = self._SyncObj__raftLog
        if len(log) == 0:
            return None
        first_index, last_index = int(log[0][1]), int(log[-1][1])
        prev_index = int(message["prevLogIdx"])
        if not first_index <= prev_index <= last_index:
            return None
        if int(log[prev_index - first_index][2]) != int(message["prevLogTerm"]):
            return None  # no match at prevLogIdx: pysyncobj answers "go back"
        entries = list(message.get("entries", ()))
        matched = 0
        for command, index, term in entries:
            if index > last_index:
                break
            local = log[index - first_index]
            if int(local[2]) != int(term):
                if index <= int(self.raftLastApplied):
                    raise LogMatchingViolated(
                        f"the leader replaces log entry {index}, already applied here, with "
                        f"one of term {term}: a committed entry would change")
                break  # a conflict: pysyncobj truncates from here (Raft)
            if bytes(local[0]) != bytes(command):
                raise LogMatchingViolated(
                    f"log entry {index} of term {term} differs from the leader's")
            matched += 1
        vouched_to = prev_index + matched
        if matched == len(entries) and vouched_to == last_index and matched == 0:
            return None  # the usual case: nothing to rewrite
        if matched < len(entries):
            if matched == 0:
                return None
            _, kept_index, kept_term = entries[matched - 1]
            # The next entry conflicts or is new: pysyncobj truncates from it (Raft).
            return (dict(message, prevLogIdx=kept_index, prevLogTerm=kept_term,
                         entries=entries[matched:]), int(entries[-1][1]), False)
        # Everything the leader sent is already here, and the log may go further.
        vouched_term = entries[-1][2] if entries else message["prevLogTerm"]
        return (dict(message, prevLogIdx=vouched_to, prevLogTerm=vouched_term, entries=[]),
                vouched_to, True)


def _is_regular_append(message: Any, syncobj: SyncObj) -> bool:
    return (isinstance(message, dict) and message.get("type") == "append_entries"
            and "prevLogIdx" in message and message.get("transmission") is None
            and int(message.get("term", -1)) >= int(syncobj.raftCurrentTerm))


def _is_snapshot_append(message: Any) -> bool:
    """An AppendEntries that carries (a chunk of) a snapshot instead of entries."""
    return (isinstance(message, dict) and message.get("type") == "append_entries"
            and "prevLogIdx" not in message)
