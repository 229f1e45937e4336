"""Raft pre-vote (thesis §9.6) for pysyncobj 0.3.17, which has none.

Without it, a node that stopped hearing its leader for one election timeout (a
SIGSTOP, a long GC-like stall, a cut link) calls an election the moment it can
talk again: it raises its term, and every peer that sees that term, the
healthy leader included, steps down. The group is leaderless for an election
(~2 s here), for nothing: the returning node's log is behind, it cannot win.

`PreVoteSyncObj` puts a pre-vote round in front of every election:
- when the election timer of a follower or candidate runs out, it asks its
  peers `rw_pre_vote` (term + 1, its last log index and term) without changing
  its term, vote, state or known leader, and re-arms its timer;
- a peer grants only if it would grant that RequestVote (term high enough, log
  at least as up to date, the same vote rule as pysyncobj's) AND it has not
  heard from a current leader within the minimum election timeout (a leader
  never grants). Answering changes nothing on the peer, not even its timer;
- with a majority of grants (its own included) the node runs the library's
  real election (term + 1, RequestVote) at once; otherwise it waits for its
  next timeout and asks again.
A leadership transfer (`timeout_now`) skips the round: the leader asked for it.

Peers running code without pre-vote ignore the unknown message types (pysyncobj
dispatches on `type` and drops the rest), so they never answer. To keep such a
mixed cluster able to elect (a rolling upgrade), every node greets each peer it
connects to with `rw_pre_vote_hello`; a connected peer that never greeted nor
answered, and stays silent for a whole round, counts as a grant (it will decide
the real RequestVote by itself, as it always did). Peers known to speak
pre-vote never count when silent: a cut-off node stays quiet instead of raising
its term. Old nodes still call real elections on their own, as before.

A term higher than the leader's can still arise legitimately (an election that
a majority pre-voted for, whose RequestVote never reached a leader elected
meanwhile). pysyncobj's replies carry no term, and a follower silently drops
AppendEntries of a lower term, so that node would ignore the leader forever
while its pre-votes are refused. So a node that receives AppendEntries of a
lower term tells the sender its term with a RequestVote at its current term
(at most once per minimum election timeout per peer): the stale leader steps
down, as Raft's term rule wants. Pre-vote keeps a returning node's term where
it was, so this never fires for a paused follower.

No leader stickiness on RequestVote: a real RequestVote now only follows a
majority of pre-vote grants (or a transfer, or an old node), and refusing
higher terms could leave a node at a higher term stranded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.syncobj import _RAFT_STATE

__all__ = ["PRE_VOTE", "PRE_VOTE_HELLO", "PRE_VOTE_RESPONSE", "PreVoteSyncObj"]

log = logging.getLogger(__name__)

PRE_VOTE = "rw_pre_vote"
PRE_VOTE_RESPONSE = "rw_pre_vote_response"
PRE_VOTE_HELLO = "rw_pre_vote_hello"
"""Message types; prefixed so that a future pysyncobj pre-vote cannot collide with ours."""


@dataclass(slots=True)
class _Round:
    """One pre-vote round: the term it asks for, and what each asked peer said."""

    number: int
    term: int
    asked: set[str] = field(default_factory=set)
    granted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)


class PreVoteSyncObj(SyncObj):  # type: ignore[misc]
    """SyncObj whose elections start only after a majority granted a pre-vote."""

    _SyncObj__raftElectionDeadline: float
    """The library's election timer (monotonic seconds); we move it, as it does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before the library's constructor: its transport may call back into us.
        self._prevote_round: _Round | None = None
        self._prevote_rounds_started = 0
        self._prevote_approved_term: int | None = None
        """Term from which the real election may start (a majority granted)."""
        self._prevote_speakers: set[str] = set()
        """Peers known to run pre-vote (they greeted or answered); kept across reconnects."""
        self._leader_heard_at_s = float("-inf")
        """monotonic time of the last AppendEntries accepted from a current leader."""
        self._term_told_at_s: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    # -- the tick: every election goes through a pre-vote round ------------------------

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._before_election_check()
        super()._onTick(timeToWait)

    def _before_election_check(self) -> None:
        """Runs just before the library's own check of the election timer: whenever that
        check would start an election we have not approved, push the timer forward and
        run (or evaluate) a pre-vote round instead."""
        if self._SyncObj__selfNode is None or self._SyncObj__raftState == _RAFT_STATE.LEADER:
            self._prevote_round = None
            return
        now = time.monotonic()
        if self._SyncObj__raftElectionDeadline >= now:
            return
        if self._SyncObj__transferInProgress:
            return  # TimeoutNow from the leader: a real election, at once (Raft §3.10)
        if self._prevote_approved_term == self._SyncObj__raftCurrentTerm:
            self._prevote_approved_term = None
            return  # a majority granted: the library's election runs in this tick
        self._prevote_approved_term = None
        if self._self_vote_is_majority() or self._old_peers_complete_majority():
            self._prevote_round = None
            return
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        self._prevote_round = None
        if (not self._SyncObj__transport.ready or self._SyncObj__needLoadDumpFile
                or not self._SyncObj__connectedToAnyone()):
            return  # the library would not elect now either; ask on the next timeout
        self._start_round()

    def _start_round(self) -> None:
        self._prevote_rounds_started += 1
        round_ = _Round(self._prevote_rounds_started, self._SyncObj__raftCurrentTerm + 1)
        self._prevote_round = round_
        request = {
            "type": PRE_VOTE,
            "term": round_.term,
            "round": round_.number,
            "last_log_index": self._SyncObj__getCurrentLogIndex(),
            "last_log_term": self._SyncObj__getCurrentLogTerm(),
        }
        transport = self._SyncObj__transport
        for node in list(self._SyncObj__otherNodes):
            if transport.send(node, request):
                round_.asked.add(str(node.id))
        log.debug("pre-vote round started",
                  extra={"self": str(self._SyncObj__selfNode.id), "term": round_.term,
                         "asked": len(round_.asked)})

    def _majority_reached(self, votes: int) -> bool:
        return votes > (len(self._SyncObj__otherNodes) + 1) / 2

    def _self_vote_is_majority(self) -> bool:
        return self._majority_reached(1)

    def _old_peers_complete_majority(self) -> bool:
        """The round that just ended: its grants plus the peers that never spoke pre-vote
        and did not answer (old code: they judge the real RequestVote themselves) make a
        majority. Peers known to run pre-vote never count here."""
        round_ = self._prevote_round
        if round_ is None or round_.term != self._SyncObj__raftCurrentTerm + 1:
            return False
        silent_old = round_.asked - round_.granted - round_.refused - self._prevote_speakers
        if not silent_old or not self._majority_reached(1 + len(round_.granted) + len(silent_old)):
            return False
        log.info("pre-vote: peers without pre-vote make up the majority, real election",
                 extra={"self": str(self._SyncObj__selfNode.id), "term": round_.term,
                        "silent_peers": sorted(silent_old)})
        return True

    # -- messages ----------------------------------------------------------------------

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == PRE_VOTE:
            self._answer_pre_vote(node, message)
            return
        if kind == PRE_VOTE_RESPONSE:
            self._count_pre_vote(node, message)
            return
        if kind == PRE_VOTE_HELLO:
            self._prevote_speakers.add(str(node.id))
            return
        if kind == "append_entries":
            if int(message["term"]) >= self._SyncObj__raftCurrentTerm:
                # The library takes the sender as the current leader.
                self._leader_heard_at_s = time.monotonic()
                self._prevote_round = None
                self._prevote_approved_term = None
            else:
                self._tell_stale_leader_our_term(node)
        super()._SyncObj__onMessageReceived(node, message)

    def _SyncObj__onNodeConnected(self, node: Any) -> None:
        super()._SyncObj__onNodeConnected(node)
        self._SyncObj__transport.send(node, {"type": PRE_VOTE_HELLO})

    def _would_grant(self, message: dict[str, Any]) -> bool:
        """The pre-vote rule: the RequestVote would be granted, and no current leader
        has been heard from within the minimum election timeout."""
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:
            return False
        since_leader_s = time.monotonic() - self._leader_heard_at_s
        if since_leader_s < self._SyncObj__conf.raftMinTimeout:
            return False
        term, current_term = int(message["term"]), self._SyncObj__raftCurrentTerm
        if term < current_term:
            return False
        if term == current_term and self._SyncObj__votedForNodeId is not None:
            return False  # pysyncobj grants one vote per term, this one is taken
        last_term, last_index = int(message["last_log_term"]), int(message["last_log_index"])
        own_term = int(self._SyncObj__getCurrentLogTerm())
        if last_term != own_term:
            return last_term > own_term
        return last_index >= int(self._SyncObj__getCurrentLogIndex())

    def _answer_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        """Answer without changing any state: term, vote, timer and leader stay as they are."""
        if self._SyncObj__selfNode is None:
            return  # a read-only node has no vote
        self._prevote_speakers.add(str(node.id))
        self._SyncObj__transport.send(node, {
            "type": PRE_VOTE_RESPONSE,
            "term": message["term"],
            "round": message["round"],
            "granted": self._would_grant(message),
            "responder_term": self._SyncObj__raftCurrentTerm,
        })

    def _count_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        peer = str(node.id)
        self._prevote_speakers.add(peer)
        responder_term = int(message.get("responder_term", 0))
        if (responder_term > self._SyncObj__raftCurrentTerm
                and self._SyncObj__raftState != _RAFT_STATE.LEADER):
            # A peer is at a newer term (as etcd does): learn it, as Raft's term rule
            # wants. Without this, a node whose log is the most up to date but whose term
            # is behind would be refused by term forever, while it refuses the others by
            # log: no leader, with a majority up.
            self._SyncObj__setCurrentTerm(responder_term, None)
            self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None
            self._prevote_round = None
            self._prevote_approved_term = None
            return
        round_ = self._prevote_round
        if (round_ is None or message.get("round") != round_.number
                or message.get("term") != round_.term
                or round_.term != self._SyncObj__raftCurrentTerm + 1
                or self._SyncObj__raftState == _RAFT_STATE.LEADER):
            return  # a late answer to an older round, or the term moved meanwhile
        (round_.granted if message.get("granted") else round_.refused).add(peer)
        if self._majority_reached(1 + len(round_.granted)):
            log.info("pre-vote granted by a majority, real election",
                     extra={"self": str(self._SyncObj__selfNode.id), "term": round_.term,
                            "granted": sorted(round_.granted)})
            self._prevote_round = None
            self._prevote_approved_term = self._SyncObj__raftCurrentTerm
            self._SyncObj__raftElectionDeadline = 0.0  # the next tick elects

    def _tell_stale_leader_our_term(self, node: Any) -> None:
        """AppendEntries of a lower term: its sender leads an old term. pysyncobj drops
        the message without a word; Raft wants the leader to learn the newer term."""
        if self._SyncObj__selfNode is None:
            return
        now = time.monotonic()
        peer = str(node.id)
        if now - self._term_told_at_s.get(peer, float("-inf")) < self._SyncObj__conf.raftMinTimeout:
            return
        self._term_told_at_s[peer] = now
        term = self._SyncObj__raftCurrentTerm
        log.info("AppendEntries from a stale leader: telling it our term",
                 extra={"self": str(self._SyncObj__selfNode.id), "peer": peer, "term": term})
        self._SyncObj__transport.send(node, {
            "type": "request_vote",
            "term": term,
            "last_log_index": self._SyncObj__getCurrentLogIndex(),
            "last_log_term": self._SyncObj__getCurrentLogTerm(),
        })
