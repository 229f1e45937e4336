"""Followers truncate their log only from a conflicting entry (node.raft.log_matching).

Messages are fed straight to a follower's message handler, as its transport
would: the leader is a peer address nobody listens on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf

from node.raft.log_matching import LogMatchingSyncObj, LogMatchingViolated
from tests.cluster_harness import allocate_ports

TERM = 1


def entry(index: int, term: int = TERM, tag: bytes = b"") -> tuple[bytes, int, int]:
    # Command type 0 (a replicated call) followed by anything: never applied here.
    return b"\x00" + f"entry-{index}".encode() + tag, index, term


def append(prev_index: int, prev_term: int, entries: list[tuple[bytes, int, int]],
           commit_index: int, term: int = TERM) -> dict[str, Any]:
    return {"type": "append_entries", "term": term, "prevLogIdx": prev_index,
            "prevLogTerm": prev_term, "entries": entries, "commit_index": commit_index}


def follower(kind: type[SyncObj]) -> tuple[SyncObj, Any]:
    port = allocate_ports(2)
    conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True, journalFile=None)
    obj = kind(f"127.0.0.1:{port}", [f"127.0.0.1:{port + 1}"], conf)
    (leader,) = obj.otherNodes
    return obj, leader


@pytest.fixture
def patched() -> Iterator[tuple[SyncObj, Any]]:
    obj, leader = follower(LogMatchingSyncObj)
    try:
        yield obj, leader
    finally:
        obj.destroy()


def receive(obj: SyncObj, leader: Any, message: dict[str, Any]) -> None:
    obj._SyncObj__onMessageReceived(leader, message)


def last_index(obj: SyncObj) -> int:
    return int(obj._SyncObj__raftLog[-1][1])


def test_a_shorter_resend_keeps_the_entries_the_follower_already_holds(
    patched: tuple[SyncObj, Any],
) -> None:
    obj, leader = patched
    receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
    receive(obj, leader, append(1, 0, [entry(2)], commit_index=4))
    assert last_index(obj) == 4
    assert obj.raftCommitIndex == 2, "only what this message vouched for may commit"


def test_a_lagging_heartbeat_does_not_truncate(patched: tuple[SyncObj, Any]) -> None:
    obj, leader = patched
    receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
    receive(obj, leader, append(2, TERM, [], commit_index=4))
    assert last_index(obj) == 4
    assert obj.raftCommitIndex == 2


def test_the_kept_tail_commits_once_the_leader_vouches_for_it(
    patched: tuple[SyncObj, Any],
) -> None:
    obj, leader = patched
    receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
    receive(obj, leader, append(1, 0, [entry(2)], commit_index=4))
    receive(obj, leader, append(2, TERM, [entry(3), entry(4)], commit_index=4))
    assert (last_index(obj), obj.raftCommitIndex) == (4, 4)


def test_a_conflicting_entry_still_truncates_from_the_conflict(
    patched: tuple[SyncObj, Any],
) -> None:
    obj, leader = patched
    receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
    newer = TERM + 1
    receive(obj, leader, append(1, 0, [entry(2), entry(3, newer, b"-new")], commit_index=1,
                                term=newer))
    assert last_index(obj) == 3
    assert int(obj._SyncObj__raftLog[-1][2]) == newer


def test_the_same_index_and_term_with_another_command_stops_the_follower(
    patched: tuple[SyncObj, Any],
) -> None:
    obj, leader = patched
    receive(obj, leader, append(1, 0, [entry(2), entry(3)], commit_index=1))
    with pytest.raises(LogMatchingViolated):
        receive(obj, leader, append(1, 0, [entry(2, tag=b"-other")], commit_index=1))


def test_plain_pysyncobj_truncates_matching_entries() -> None:
    """Why the patch exists; when an upgrade fixes the library, this test says so."""
    obj, leader = follower(SyncObj)
    try:
        receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
        receive(obj, leader, append(1, 0, [entry(2)], commit_index=4))
        assert last_index(obj) == 2
    finally:
        obj.destroy()


def test_replacing_an_applied_entry_stops_the_follower(patched: tuple[SyncObj, Any]) -> None:
    obj, leader = patched
    receive(obj, leader, append(1, 0, [entry(2), entry(3)], commit_index=3))
    obj._SyncObj__raftLastApplied = 3  # as if the tick had applied them
    newer = TERM + 1
    with pytest.raises(LogMatchingViolated, match="already applied"):
        receive(obj, leader, append(2, TERM, [entry(3, newer, b"-new")], commit_index=3,
                                    term=newer))


def snapshot_chunk(commit_index: int, term: int) -> dict[str, Any]:
    """The first of several chunks of a snapshot: AppendEntries without prevLogIdx."""
    return {"type": "append_entries", "term": term, "commit_index": commit_index,
            "serialized": (b"chunk", True, False)}


def test_a_snapshot_chunk_commits_nothing_of_the_followers_own_unconfirmed_tail(
    patched: tuple[SyncObj, Any],
) -> None:
    obj, leader = patched
    # Entries 2-4 of term 1 never committed (a deposed leader's tail, say) ...
    receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
    # ... and the new leader (term 2), far ahead, starts sending its snapshot.
    receive(obj, leader, snapshot_chunk(commit_index=100, term=2))
    assert obj.raftCommitIndex == 1, "the leader vouched for none of entries 2-4"


def test_plain_pysyncobj_commits_the_unconfirmed_tail_on_a_snapshot_chunk() -> None:
    obj, leader = follower(SyncObj)
    try:
        receive(obj, leader, append(1, 0, [entry(2), entry(3), entry(4)], commit_index=1))
        receive(obj, leader, snapshot_chunk(commit_index=100, term=2))
        assert obj.raftCommitIndex == 4  # the bug LogMatchingSyncObj fixes
    finally:
        obj.destroy()
