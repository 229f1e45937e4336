"""Pre-vote before every election (node.raft.prevote), driven through the library's own tick
and message handler: the peers are addresses nobody listens on, messages to them are
recorded, and their answers are fed to the handler as the transport would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.syncobj import _RAFT_STATE

from node.raft.log_matching import LogMatchingSyncObj
from node.raft.prevote import PRE_VOTE, PRE_VOTE_HELLO, PRE_VOTE_RESPONSE, PreVoteSyncObj
from tests.cluster_harness import allocate_ports

MIN_TIMEOUT_S = 1.0


class _Raft(PreVoteSyncObj, LogMatchingSyncObj):
    """The combination the node runs (node/raft/replica.py, node/raft/metadata_group.py)."""


class Member:
    """One group member with two silent peers; `sent` records what it sends them."""

    def __init__(self, kind: type[SyncObj] = _Raft) -> None:
        port = allocate_ports(3)
        # Our address is the lowest: the transport never dials the (absent) peers.
        conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True, journalFile=None,
                           raftMinTimeout=MIN_TIMEOUT_S, raftMaxTimeout=2 * MIN_TIMEOUT_S)
        self.obj = kind(f"127.0.0.1:{port}",
                        [f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}"], conf)
        self.peers = sorted(self.obj.otherNodes, key=lambda node: str(node.id))
        self.sent: list[tuple[str, dict[str, Any]]] = []

        def record(node: Any, message: Any) -> bool:
            self.sent.append((str(node.id), message))
            return True

        self.obj._SyncObj__transport.send = record
        self.obj.doTick(0.0)  # binds the port and loads the (absent) dump
        self.obj._SyncObj__connectedNodes.update(self.peers)

    @property
    def term(self) -> int:
        return int(self.obj.raftCurrentTerm)

    @property
    def voted_for(self) -> Any:
        return self.obj._SyncObj__votedForNodeId

    @property
    def state(self) -> int:
        return int(self.obj._SyncObj__raftState)

    def receive(self, peer: Any, message: dict[str, Any]) -> None:
        self.obj._SyncObj__onMessageReceived(peer, message)

    def timer_runs_out(self) -> None:
        self.obj._SyncObj__raftElectionDeadline = 0.0
        self.obj.doTick(0.0)

    def sent_of(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(to, message) for to, message in self.sent if message.get("type") == kind]

    def heartbeat_from(self, leader: Any, term: int, entries: int = 0) -> None:
        """A leader's AppendEntries with `entries` new entries of `term` after index 1."""
        log = [(b"\x00entry", index, term) for index in range(2, 2 + entries)]
        self.receive(leader, {"type": "append_entries", "term": term, "prevLogIdx": 1,
                              "prevLogTerm": 0, "entries": log, "commit_index": 1})

    def greeted_by_every_peer(self) -> None:
        for peer in self.peers:
            self.receive(peer, {"type": PRE_VOTE_HELLO})

    def leader_silent_for(self, seconds: float) -> None:
        self.obj._leader_heard_at_s -= seconds

    def destroy(self) -> None:
        self.obj.destroy()


@pytest.fixture
def member() -> Iterator[Member]:
    created = Member()
    try:
        yield created
    finally:
        created.destroy()


def pre_vote(term: int, last_log_index: int, last_log_term: int,
             round_number: int = 1) -> dict[str, Any]:
    return {"type": PRE_VOTE, "term": term, "round": round_number,
            "last_log_index": last_log_index, "last_log_term": last_log_term}


def answer(request: dict[str, Any], granted: bool) -> dict[str, Any]:
    return {"type": PRE_VOTE_RESPONSE, "term": request["term"], "round": request["round"],
            "granted": granted}


def test_a_timer_that_runs_out_asks_a_pre_vote_and_changes_neither_term_nor_vote(
    member: Member,
) -> None:
    term, vote = member.term, member.voted_for
    member.timer_runs_out()
    requests = member.sent_of(PRE_VOTE)
    assert sorted(to for to, _ in requests) == [str(peer.id) for peer in member.peers]
    assert all(message["term"] == term + 1 for _, message in requests)
    assert (requests[0][1]["last_log_index"], requests[0][1]["last_log_term"]) == (1, 0)
    assert (member.term, member.voted_for, member.state) == (term, vote, _RAFT_STATE.FOLLOWER)
    assert member.sent_of("request_vote") == []


def test_answering_a_pre_vote_changes_nothing_on_the_peer(member: Member) -> None:
    candidate = member.peers[0]
    deadline_s = member.obj._SyncObj__raftElectionDeadline
    member.receive(candidate, pre_vote(term=5, last_log_index=9, last_log_term=4))
    ((to, reply),) = member.sent_of(PRE_VOTE_RESPONSE)
    assert (to, reply["granted"], reply["term"]) == (str(candidate.id), True, 5)
    assert (member.term, member.voted_for, member.state) == (0, None, _RAFT_STATE.FOLLOWER)
    assert member.obj._SyncObj__raftElectionDeadline == deadline_s


def test_a_peer_that_heard_from_a_leader_within_the_minimum_timeout_refuses(
    member: Member,
) -> None:
    leader, candidate = member.peers
    member.heartbeat_from(leader, term=3)
    member.receive(candidate, pre_vote(term=4, last_log_index=1, last_log_term=0))
    member.leader_silent_for(MIN_TIMEOUT_S)
    member.receive(candidate, pre_vote(term=4, last_log_index=1, last_log_term=0, round_number=2))
    assert [m["granted"] for _, m in member.sent_of(PRE_VOTE_RESPONSE)] == [False, True]
    assert member.term == 3


def test_a_leader_refuses_pre_votes(member: Member) -> None:
    member.timer_runs_out()
    for to, request in member.sent_of(PRE_VOTE):
        member.receive(next(p for p in member.peers if str(p.id) == to), answer(request, True))
    member.obj.doTick(0.0)
    member.receive(member.peers[0], {"type": "response_vote", "term": member.term})
    assert member.state == _RAFT_STATE.LEADER
    member.receive(member.peers[0], pre_vote(term=member.term + 1, last_log_index=99,
                                             last_log_term=member.term))
    ((_, reply),) = member.sent_of(PRE_VOTE_RESPONSE)
    assert reply["granted"] is False


def test_a_stale_log_is_refused(member: Member) -> None:
    leader, candidate = member.peers
    member.heartbeat_from(leader, term=2, entries=3)  # log: index 1 (term 0), 2-4 (term 2)
    member.leader_silent_for(MIN_TIMEOUT_S)
    member.receive(candidate, pre_vote(term=3, last_log_index=3, last_log_term=2))  # shorter
    member.receive(candidate, pre_vote(term=3, last_log_index=9, last_log_term=1))  # older term
    member.receive(candidate, pre_vote(term=3, last_log_index=4, last_log_term=2))  # as long
    assert [m["granted"] for _, m in member.sent_of(PRE_VOTE_RESPONSE)] == [False, False, True]


def test_a_term_the_peer_already_voted_in_is_refused(member: Member) -> None:
    candidate, other = member.peers
    member.receive(other, {"type": "request_vote", "term": 2, "last_log_index": 1,
                           "last_log_term": 0})
    assert member.voted_for == str(other.id)
    member.receive(candidate, pre_vote(term=2, last_log_index=1, last_log_term=0))
    ((_, reply),) = member.sent_of(PRE_VOTE_RESPONSE)
    assert reply["granted"] is False


def test_an_up_to_date_candidate_with_a_majority_of_grants_starts_a_real_election(
    member: Member,
) -> None:
    member.timer_runs_out()
    (to, request), _ = member.sent_of(PRE_VOTE)
    granting = next(p for p in member.peers if str(p.id) == to)
    member.receive(granting, answer(request, True))
    assert member.sent_of("request_vote") == [], "the election starts on the tick"
    member.obj.doTick(0.0)
    votes = member.sent_of("request_vote")
    assert len(votes) == 2 and all(m["term"] == request["term"] for _, m in votes)
    assert (member.term, member.state) == (request["term"], _RAFT_STATE.CANDIDATE)


def test_refusals_from_a_majority_keep_the_node_a_follower_at_its_term(member: Member) -> None:
    for _ in range(3):
        member.sent.clear()
        member.timer_runs_out()
        for to, request in member.sent_of(PRE_VOTE):
            member.receive(next(p for p in member.peers if str(p.id) == to),
                           answer(request, False))
    assert member.sent_of("request_vote") == []
    assert (member.term, member.state) == (0, _RAFT_STATE.FOLLOWER)


def test_an_answer_to_an_older_round_does_not_count(member: Member) -> None:
    member.greeted_by_every_peer()
    member.timer_runs_out()
    (to, old), _ = member.sent_of(PRE_VOTE)
    member.timer_runs_out()
    member.receive(next(p for p in member.peers if str(p.id) == to), answer(old, True))
    member.obj.doTick(0.0)
    assert member.sent_of("request_vote") == []


def test_peers_without_pre_vote_that_stay_silent_for_a_round_count_as_grants(
    member: Member,
) -> None:
    """Mixed versions: old peers drop the unknown message; the cluster must still elect."""
    member.timer_runs_out()
    assert member.sent_of("request_vote") == []
    member.timer_runs_out()
    assert len(member.sent_of("request_vote")) == 2
    assert member.term == 1


def test_silent_peers_known_to_run_pre_vote_never_count_as_grants(member: Member) -> None:
    member.greeted_by_every_peer()
    for _ in range(3):
        member.timer_runs_out()
    assert member.sent_of("request_vote") == []
    assert member.term == 0


def test_a_leadership_transfer_skips_the_pre_vote(member: Member) -> None:
    leader = member.peers[0]
    member.heartbeat_from(leader, term=3)
    member.receive(leader, {"type": "timeout_now", "term": 3})
    member.obj.doTick(0.0)
    assert member.sent_of(PRE_VOTE) == []
    assert {m["term"] for _, m in member.sent_of("request_vote")} == {4}


def test_a_stale_leader_is_told_the_newer_term_once_per_minimum_timeout(member: Member) -> None:
    stale, current = member.peers
    member.heartbeat_from(current, term=5)
    member.heartbeat_from(stale, term=4)
    member.heartbeat_from(stale, term=4)
    ((to, notice),) = member.sent_of("request_vote")
    assert (to, notice["term"], notice["last_log_index"]) == (str(stale.id), 5, 1)
    assert member.term == 5 and member.obj._getLeader() == current


def test_plain_pysyncobj_ignores_the_pre_vote_messages() -> None:
    """What a peer on old code does with them: nothing (no answer, no error). The
    mixed-version rule above relies on it."""
    old = Member(LogMatchingSyncObj)
    try:
        old.receive(old.peers[0], pre_vote(term=5, last_log_index=9, last_log_term=4))
        old.receive(old.peers[0], {"type": PRE_VOTE_HELLO})
        assert old.sent == [] and old.term == 0
    finally:
        old.destroy()


def test_plain_pysyncobj_raises_its_term_as_soon_as_its_timer_runs_out() -> None:
    """Why the subclass exists; when an upgrade changes the election, this test says so."""
    old = Member(LogMatchingSyncObj)
    try:
        old.timer_runs_out()
        assert old.term == 1 and len(old.sent_of("request_vote")) == 2
    finally:
        old.destroy()


def test_the_library_still_calls_every_method_the_subclass_overrides(member: Member) -> None:
    """pysyncobj 0.3.17's private names: an upgrade that renames one would leave an
    override dead (no greeting, or no pre-vote at all), so it must fail here."""
    for name in ("_onTick", "_SyncObj__onMessageReceived", "_SyncObj__onNodeConnected",
                 "_SyncObj__generateRaftTimeout", "_SyncObj__connectedToAnyone",
                 "_SyncObj__getCurrentLogIndex", "_SyncObj__getCurrentLogTerm"):
        assert callable(getattr(SyncObj, name, None)), name
    transport = member.obj._SyncObj__transport
    ours = PreVoteSyncObj.__dict__
    assert transport._onNodeConnectedCallback.__func__ is ours["_SyncObj__onNodeConnected"]
    assert transport._onMessageReceivedCallback.__func__ is ours["_SyncObj__onMessageReceived"]
    for name in ("raftElectionDeadline", "raftState", "raftCurrentTerm", "votedForNodeId",
                 "transferInProgress", "needLoadDumpFile", "otherNodes", "selfNode", "conf"):
        assert hasattr(member.obj, f"_SyncObj__{name}"), name


def test_a_connected_peer_is_greeted(member: Member) -> None:
    member.obj._SyncObj__onNodeConnected(member.peers[0])
    assert member.sent_of(PRE_VOTE_HELLO) == [(str(member.peers[0].id), {"type": PRE_VOTE_HELLO})]


def test_every_raft_group_of_a_node_runs_pre_vote() -> None:
    from node.raft.metadata_group import _MetadataSyncObj
    from node.raft.replica import _PartitionSyncObj

    for kind in (_PartitionSyncObj, _MetadataSyncObj):
        assert issubclass(kind, PreVoteSyncObj) and issubclass(kind, LogMatchingSyncObj)


def test_a_refusal_from_a_peer_at_a_newer_term_teaches_that_term(member: Member) -> None:
    """B (this member) has the best log but an old term; A is two terms ahead: A refuses
    B by term, B refuses A by log. Learning A's term lets B's next round succeed."""
    member.timer_runs_out()
    (to, request), _ = member.sent_of(PRE_VOTE)
    peer = next(p for p in member.peers if str(p.id) == to)
    member.receive(peer, dict(answer(request, False), responder_term=request["term"] + 2))
    assert (member.term, member.voted_for, member.state) == (
        request["term"] + 2, None, _RAFT_STATE.FOLLOWER)
    member.sent.clear()
    member.timer_runs_out()
    assert {m["term"] for _, m in member.sent_of(PRE_VOTE)} == {request["term"] + 3}


def test_a_pre_vote_answer_carries_the_responders_term(member: Member) -> None:
    member.receive(member.peers[0], pre_vote(term=1, last_log_index=1, last_log_term=0))
    ((_, response),) = member.sent_of(PRE_VOTE_RESPONSE)
    assert response["responder_term"] == member.term
