"""A stateful model of the cross-partition saga on three in-process partitions.

Hypothesis plays the saga driver (`node/saga/driver.py`), the network between
partitions, the operator and crashes, with rules: start a transfer (the debit at
its source), let the driver build credits (`ledger.saga.credits_for`) and
resolutions (`ledger.saga.resolutions`) from what it has learnt, deliver any step
built so far (in order, out of order, again, or with its answer lost), crash the
driver (it forgets what it learnt), force-fail a transfer as an operator does
(`AbortCredit` at the destination), open and close the account a transfer goes
to, and restart a partition from its snapshot.

A reference model predicts the exact result of every step: the destination
credits once per transfer, refuses a missing, closed or foreign-currency account
for good, and answers a redelivered credit with its recorded outcome (or
STALE_CREDIT once the source has resolved it); the source settles or compensates
once. After every step, money is conserved per partition and across them
(counting money in flight), every transfer has ended at most once (SETTLED xor
COMPENSATED) and reads so, and each pair of partitions agrees on what was
credited and settled. Delivering every step the driver can still produce ends
every transfer.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from ledger import commands as c
from ledger.codec import decode_entry, encode_entry
from ledger.replay import replay
from ledger.results import CREDIT_REJECTIONS, Code, Result, result
from ledger.saga import credits_for, resolutions
from ledger.state import StateMachine
from node.proposer import Applied
from node.saga.driver import credit_outcomes
from tests.support import stateful_settings

pytestmark = pytest.mark.timeout(900)
"""A passing run takes seconds; shrinking a failure to a short example may take minutes."""

PARTITIONS = 3
PAIRS = [(p, q) for p in range(PARTITIONS) for q in range(PARTITIONS) if p != q]


def payers(p: int) -> tuple[str, str]:
    """The two USD accounts of partition p that every run opens with money."""
    return (f"u{p}a", f"u{p}b")


def foreign(p: int) -> str:
    """A EUR account on partition p: a USD credit to it is CURRENCY_MISMATCH."""
    return f"e{p}"


def late(p: int) -> str:
    """A USD account on partition p that does not exist until `late_account` opens it."""
    return f"late{p}"


PARTITION_OF = {account: p for p in range(PARTITIONS)
                for account in (*payers(p), foreign(p), late(p))}
DEFINITIVE = frozenset({Code.OK, *CREDIT_REJECTIONS})
"""Credit outcomes the driver acts on (as `node.saga.driver` does); any other resolves nothing."""

SETTLED, COMPENSATED = "SETTLED", "COMPENSATED"
networks = st.sampled_from(("delivered", "delivered", "answer lost", "held"))
"""What the network does with a batch of steps the driver sends."""


@dataclass
class Saga:
    """The model of one cross-partition transfer."""

    from_account: str
    transaction_id: bytes
    to_account: str
    amount_minor: int
    source: int
    destination: int
    sequence: int
    at_destination: Code | None = None
    """The outcome the destination recorded for the credit (or a force-fail), once it has."""
    ended: str | None = None
    """SETTLED or COMPENSATED, once the source has resolved it."""


@dataclass
class ModelAccount:
    currency: str
    balance_minor: int = 0
    closed: bool = False


class SagaModel(RuleBasedStateMachine):
    """Three partitions, a driver that may crash, a network that may lose, delay, reorder
    and repeat its steps, and an operator."""

    sagas_bundle = Bundle("sagas")

    def __init__(self) -> None:
        super().__init__()
        self.states = [StateMachine(p) for p in range(PARTITIONS)]
        self.logs: list[list[tuple[int, bytes]]] = [[] for _ in range(PARTITIONS)]
        self.stamp_ms = 1_700_000_000_000
        self.fresh_ids = itertools.count(1)
        # The reference model.
        self.accounts: dict[str, ModelAccount] = {}
        self.deposited = 0
        self.sagas: dict[tuple[str, bytes], Saga] = {}
        self.by_sequence: dict[tuple[int, int, int], Saga] = {}
        self.next_sequence = dict.fromkeys(PAIRS, 1)
        # The driver's memory (lost when it crashes) and the network.
        self.learnt: dict[tuple[int, int, int], Code] = {}
        self.network: list[tuple[int, c.Command]] = []
        """Every step the driver ever built, with the partition it goes to: any may come again."""
        self.undelivered: list[int] = []
        """Indexes into `network` of the steps never delivered yet, oldest first."""

    # ------------------------------------------------------------ applying

    def fresh_id(self) -> bytes:
        return next(self.fresh_ids).to_bytes(16, "big")

    def apply(self, partition: int, commands: list[c.Command]) -> tuple[Result, ...]:
        """One log entry on `partition`, encoded and decoded as the node does."""
        self.stamp_ms += 3
        blob = encode_entry(c.Entry(self.stamp_ms, tuple(commands)))
        log = self.logs[partition]
        log_index = len(log) + 1
        applied = self.states[partition].apply_entry(decode_entry(blob), log_index)
        assert applied is not None
        log.append((log_index, blob))
        return applied.results

    def run(self, partition: int, commands: list[c.Command],
            answer_lost: bool = False) -> tuple[Result, ...]:
        """Apply `commands` as one entry on `partition`; each result must be the model's
        prediction. Unless the answer is lost, the driver learns the credits' outcomes as
        `node.saga.driver` does (`credit_outcomes`: the definitive ones only)."""
        expected = [self.predict(partition, command) for command in commands]
        results = self.apply(partition, commands)
        assert len(results) == len(expected)
        for outcome, acceptable in zip(results, expected, strict=True):
            assert outcome in acceptable, (partition, commands, results, expected)
        if answer_lost:
            return results
        for source in range(PARTITIONS):  # (one entry may carry the credits of several sources)
            credits = [(command, Applied(outcome, self.states[partition].position,
                                         self.stamp_ms))
                       for command, outcome in zip(commands, results, strict=True)
                       if isinstance(command, c.CreditForTransfer)
                       and command.source_partition == source]
            learnt = credit_outcomes([credit for credit, _ in credits],
                                     [applied for _, applied in credits])
            assert set(learnt.values()) <= DEFINITIVE
            self.learnt.update({(source, partition, seq): code for seq, code in learnt.items()})
        return results

    # ------------------------------------------------------------ the reference model

    def predict(self, partition: int, command: c.Command) -> tuple[Result, ...]:
        """The results `partition` may answer for `command` (nearly always exactly one);
        updates the model with its outcome."""
        match command:
            case c.CreateAccount():
                if command.account_id in self.accounts:
                    return (result(Code.OK, replayed=True),)
                self.accounts[command.account_id] = ModelAccount(command.currency)
                return (result(Code.OK),)
            case c.CloseAccount():
                return (self._predict_close(command),)
            case c.Deposit():
                self.accounts[command.account_id].balance_minor += command.amount_minor
                self.deposited += command.amount_minor
                return (result(Code.OK),)
            case c.DebitForTransfer():
                return (self._predict_debit(partition, command),)
            case c.CreditForTransfer():
                saga = self.by_sequence[(command.source_partition, partition, command.sequence)]
                assert (saga.from_account, saga.transaction_id, saga.to_account,
                        saga.amount_minor) == (command.from_account, command.transaction_id,
                                               command.to_account, command.amount_minor)
                return self._predict_outcome_at_destination(saga, self._credit_outcome)
            case c.AbortCredit():
                saga = self.by_sequence[(command.source_partition, partition, command.sequence)]
                return self._predict_outcome_at_destination(saga, lambda _: Code.ABORTED)
            case c.ResolveTransfer():
                return (self._predict_resolve(command),)
        raise AssertionError(f"the model does not know {command!r}")

    def _predict_close(self, cmd: c.CloseAccount) -> Result:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return result(Code.ACCOUNT_NOT_FOUND)
        if account.closed:
            return result(Code.OK, replayed=True)
        if account.balance_minor:  # (late accounts never send: TRANSFER_IN_FLIGHT cannot occur)
            return result(Code.ACCOUNT_NOT_EMPTY)
        account.closed = True
        return result(Code.OK)

    def _predict_debit(self, partition: int, cmd: c.DebitForTransfer) -> Result:
        key = (cmd.from_account, cmd.transaction_id)
        saga = self.sagas.get(key)
        if saga is not None:  # (refused starts are never retried here: their ids are fresh)
            if (saga.to_account, saga.amount_minor) != (cmd.to_account, cmd.amount_minor):
                return result(Code.ID_CONFLICT)
            return result(self.transfer_code(saga), replayed=True)
        source = self.accounts[cmd.from_account]
        if source.balance_minor < cmd.amount_minor:
            return result(Code.INSUFFICIENT_FUNDS)
        source.balance_minor -= cmd.amount_minor
        pair = (partition, cmd.destination_partition)
        saga = Saga(cmd.from_account, cmd.transaction_id, cmd.to_account, cmd.amount_minor,
                    partition, cmd.destination_partition, self.next_sequence[pair])
        self.next_sequence[pair] += 1
        self.sagas[key] = saga
        self.by_sequence[(*pair, saga.sequence)] = saga
        return result(Code.PENDING)

    def _credit_outcome(self, saga: Saga) -> Code:
        """What the destination answers the first time it sees the credit."""
        account = self.accounts.get(saga.to_account)
        if account is None:
            return Code.ACCOUNT_NOT_FOUND
        if account.currency != "USD":
            return Code.CURRENCY_MISMATCH
        if account.closed:
            return Code.ACCOUNT_CLOSED
        account.balance_minor += saga.amount_minor
        return Code.OK

    def _predict_outcome_at_destination(self, saga: Saga, first: Callable[[Saga], Code],
                                        ) -> tuple[Result, ...]:
        """A credit or a force-fail is decided once, by whichever arrives first; later ones
        answer that outcome (replayed), or STALE_CREDIT once the source has resolved the
        transfer (the destination may then forget), never before."""
        if saga.at_destination is None:
            saga.at_destination = first(saga)
            return (result(saga.at_destination),)
        recorded = result(saga.at_destination, replayed=True)
        return (recorded, result(Code.STALE_CREDIT)) if saga.ended else (recorded,)

    def _predict_resolve(self, cmd: c.ResolveTransfer) -> Result:
        """The source ends a transfer once: settle (the destination credited it) or give the
        money back (it refused, for good). A resolution that comes again is UNKNOWN_TRANSFER."""
        saga = self.sagas[(cmd.from_account, cmd.transaction_id)]
        if saga.ended is not None:
            return result(Code.UNKNOWN_TRANSFER)
        assert saga.at_destination in DEFINITIVE, "resolved before the destination decided"
        assert cmd.credited == (saga.at_destination is Code.OK)
        if cmd.credited:
            saga.ended = SETTLED
        else:
            assert cmd.reason == saga.at_destination
            saga.ended = COMPENSATED
            self.accounts[saga.from_account].balance_minor += saga.amount_minor
        return result(Code.OK)

    @staticmethod
    def transfer_code(saga: Saga) -> Code:
        """The transfer's outcome as its dedup record (and the API) must tell it."""
        if saga.ended is None:
            return Code.PENDING
        if saga.ended == SETTLED:
            return Code.OK
        assert saga.at_destination is not None
        return saga.at_destination

    def open_sagas(self, source: int, destination: int) -> list[Saga]:
        return sorted((s for s in self.sagas.values() if s.ended is None
                       and (s.source, s.destination) == (source, destination)),
                      key=lambda s: s.sequence)

    # ------------------------------------------------------------ rules: clients

    @initialize(balance=st.integers(1, 3_000),
                late_accounts=st.lists(st.sampled_from(("missing", "open", "closed")),
                                       min_size=PARTITIONS, max_size=PARTITIONS))
    def open_accounts(self, balance: int, late_accounts: list[str]) -> None:
        """Each partition has two USD accounts with `balance` on them, one EUR account, and
        its late account missing, open or closed."""
        for p, late_account in enumerate(late_accounts):
            commands: list[c.Command] = []
            for account in payers(p):
                commands += [c.CreateAccount(account, "USD", 2, self.fresh_id()),
                             c.Deposit(account, balance, "USD", self.fresh_id())]
            commands.append(c.CreateAccount(foreign(p), "EUR", 2, self.fresh_id()))
            self.run(p, commands)
            if late_account != "missing":
                self.late_account(p, "open")
            if late_account == "closed":
                self.late_account(p, "close")

    @rule(target=sagas_bundle, transfers=st.lists(st.tuples(
        st.sampled_from([a for p in range(PARTITIONS) for a in payers(p)]),
        st.integers(1, PARTITIONS - 1),
        st.sampled_from(("a", "b", "a", "b", "foreign", "late")),
        st.integers(1, 700)), min_size=1, max_size=3))
    def start_transfers(self, transfers: list[tuple[str, int, str, int]],
                        ) -> MultipleResults[tuple[str, bytes]]:
        """Each (source account, hop to the destination partition, destination account, amount)
        is one debit at the source: it takes the money out of the account into flight
        (PENDING), with the next sequence towards its destination; without the funds it is
        INSUFFICIENT_FUNDS and nothing moves."""
        started = []
        for source, hop, to, amount in transfers:
            p = PARTITION_OF[source]
            q = (p + hop) % PARTITIONS
            target = {"a": payers(q)[0], "b": payers(q)[1], "foreign": foreign(q),
                      "late": late(q)}[to]
            command = c.DebitForTransfer(source, target, amount, "USD", self.fresh_id(), q)
            (outcome,) = self.run(p, [command])
            key = (source, command.transaction_id)
            if outcome.code is Code.PENDING:
                (entry,) = [e for k, e in self.states[p].outbox_for(q) if k == key]
                assert entry.sequence == self.sagas[key].sequence
                started.append(key)
        return multiple(*started)

    @rule(key=sagas_bundle, same=st.booleans())
    def client_retries_the_transfer(self, key: tuple[str, bytes], same: bool) -> None:
        """A client's retry with the same id and content answers the transfer's outcome so
        far (PENDING, OK or the reason it was compensated) and moves nothing; with another
        amount it is ID_CONFLICT."""
        saga = self.sagas[key]
        amount = saga.amount_minor if same else saga.amount_minor + 1
        (outcome,) = self.run(saga.source, [c.DebitForTransfer(
            saga.from_account, saga.to_account, amount, "USD", saga.transaction_id,
            saga.destination)])
        assert outcome == (result(self.transfer_code(saga), replayed=True) if same
                           else result(Code.ID_CONFLICT))

    @rule(p=st.integers(0, PARTITIONS - 1), action=st.sampled_from(("open", "close")))
    def late_account(self, p: int, action: str) -> None:
        """The late account opens (credits that reach it from then on are accepted), or closes
        if it is empty (credits that reach it from then on are refused for good,
        ACCOUNT_CLOSED, and their transfers compensated)."""
        if action == "open":
            request_id = f"late-{p}".encode().ljust(16, b".")
            self.run(p, [c.CreateAccount(late(p), "USD", 2, request_id)])
        else:
            self.run(p, [c.CloseAccount(late(p), self.fresh_id())])

    # ------------------------------------------------------------ rules: the driver

    def pairs_with_work(self) -> list[tuple[int, int]]:
        """(source, destination) with open transfers, as the driver finds them in the state."""
        return [(p, q) for p, state in enumerate(self.states)
                for q, outgoing in sorted(state.outgoing.items()) if outgoing.open_by_sequence]

    @precondition(lambda self: any(saga.ended is None for saga in self.sagas.values()))
    @rule(which=st.integers(0, 5), limit=st.integers(1, 4), network=networks)
    def driver_sends_credits(self, which: int, limit: int, network: str) -> None:
        """The driver works on each (source, destination) with open transfers. Its credits are
        the source's open transfers towards the destination in sequence order (at most
        `limit`), each carrying the source's resolved-through sequence. They arrive at once
        as one entry, with their answers or with the answers lost, or stay in the network."""
        work = self.pairs_with_work()
        assert work == sorted({(s.source, s.destination) for s in self.sagas.values()
                               if s.ended is None})
        pair = work[which % len(work)]
        p, q = pair
        credits = credits_for(self.states[p], q, limit)
        expected = self.open_sagas(p, q)
        assert [(x.sequence, x.from_account, x.transaction_id, x.to_account, x.amount_minor)
                for x in credits] == [
            (s.sequence, s.from_account, s.transaction_id, s.to_account, s.amount_minor)
            for s in expected[:limit]]
        resolved_through = (expected[0].sequence if expected else self.next_sequence[pair]) - 1
        assert all(x.source_resolved_through == resolved_through for x in credits)
        self.send(q, credits, network)

    @precondition(lambda self: bool(self.learnt))
    @rule(which=st.integers(0, 5), network=networks)
    def driver_sends_resolutions(self, which: int, network: str) -> None:
        """For a (source, destination) it has learnt outcomes from, the driver settles each
        open transfer whose credit it learnt was OK and compensates each it learnt was
        refused for good; it resolves nothing else. They arrive at once as one entry, or
        stay in the network. (`resolutions` itself ignores any other answer: STALE_CREDIT,
        PENDING, a refusal of the command, whatever the driver may pass it.)"""
        learnt_pairs = sorted({(p, q) for p, q, _ in self.learnt})
        pair = learnt_pairs[which % len(learnt_pairs)]
        p, q = pair
        learnt = {seq: code for (pp, qq, seq), code in self.learnt.items() if (pp, qq) == pair}
        steps = resolutions(self.states[p], q, learnt)
        expected = [s for s in self.open_sagas(p, q) if s.sequence in learnt]
        assert [(r.from_account, r.transaction_id, r.credited, r.reason) for r in steps] == [
            (s.from_account, s.transaction_id, learnt[s.sequence] is Code.OK,
             0 if learnt[s.sequence] is Code.OK else learnt[s.sequence]) for s in expected]
        others = [Code.STALE_CREDIT, Code.PENDING, Code.INVALID_COMMAND, Code.INVALID_PARTITION]
        noise = {s.sequence: others[s.sequence % len(others)] for s in self.open_sagas(p, q)
                 if s.sequence not in learnt}
        assert resolutions(self.states[p], q, noise | learnt) == steps
        self.send(p, steps, network)

    def send(self, partition: int, steps: list[c.CreditForTransfer] | list[c.ResolveTransfer],
             network: str) -> None:
        """Put `steps` on the network; unless it holds them, they arrive at once."""
        indexes = list(range(len(self.network), len(self.network) + len(steps)))
        self.network += [(partition, step) for step in steps]
        self.undelivered += indexes
        if steps and network != "held":
            self.deliver(indexes, answer_lost=network == "answer lost")

    @rule()
    def driver_crashes(self) -> None:
        """A crashed driver forgets every outcome it learnt; steps it sent may still arrive."""
        self.learnt.clear()

    # ------------------------------------------------------------ rules: the network

    @precondition(lambda self: bool(self.undelivered))
    @rule(batch=st.integers(1, 4), overtaking=st.integers(0, 100), answer_lost=st.booleans())
    def deliver_held_steps(self, batch: int, overtaking: int, answer_lost: bool) -> None:
        """Held steps arrive: the oldest ones to one partition, up to `batch` in one entry in
        the order they were sent, or (`overtaking` > 0) one that overtakes older ones (a
        deposed driver's batch). With `answer_lost` the driver never hears the outcomes."""
        if overtaking:
            self.deliver([self.undelivered[overtaking % len(self.undelivered)]], answer_lost)
            return
        partition = self.network[self.undelivered[0]][0]
        chosen = [i for i in self.undelivered if self.network[i][0] == partition][:batch]
        self.deliver(chosen, answer_lost)

    @precondition(lambda self: bool(self.network))
    @rule(kind=st.sampled_from((c.CreditForTransfer, c.ResolveTransfer)),
          which=st.integers(0, 1_000), answer_lost=st.booleans())
    def redeliver(self, kind: type[c.Command], which: int, answer_lost: bool) -> None:
        """Any step ever sent may arrive again, however old: it never moves money twice (a
        credit answers its recorded outcome or STALE_CREDIT; a resolution UNKNOWN_TRANSFER)."""
        sent = [i for i, (_, step) in enumerate(self.network) if isinstance(step, kind)]
        if sent:
            self.deliver([sent[which % len(sent)]], answer_lost)

    def deliver(self, indexes: list[int], answer_lost: bool) -> None:
        partitions = {self.network[i][0] for i in indexes}
        assert len(partitions) == 1
        self.undelivered = [i for i in self.undelivered if i not in indexes]
        self.run(partitions.pop(), [self.network[i][1] for i in indexes], answer_lost)

    # ------------------------------------------------------------ rules: operator, restarts

    @rule(key=sagas_bundle)
    def operator_force_fails(self, key: tuple[str, bytes]) -> None:
        """Force-fail, as the admin API's ForceFailTransfer does it: if the transfer is still
        in the source's outbox, `AbortCredit` at the destination decides ABORTED unless the
        credit was decided first (then that outcome stands). The driver learns it by sending
        the credit again."""
        saga = self.sagas[key]
        entry = self.states[saga.source].outbox.get(key)
        assert (entry is None) == (saga.ended is not None)
        if entry is not None:
            self.run(saga.destination, [c.AbortCredit(saga.source, entry.sequence)])

    @rule(p=st.integers(0, PARTITIONS - 1))
    def restart_a_partition(self, p: int) -> None:
        """A replica restarts from a snapshot of its frozen copy (as the node writes it) and
        carries on; replaying its log from the start reaches the same state."""
        before = self.states[p].state_hash()
        self.states[p] = StateMachine.restore(self.states[p].frozen_copy().snapshot())
        assert self.states[p].state_hash() == before
        assert replay(self.logs[p], p).state_hash() == before

    @precondition(lambda self: not self.undelivered)
    @rule()
    def healthy_driver_round(self) -> None:
        """Once every step sent has been delivered, one round of a healthy driver (credits,
        then resolutions, for every pair) ends every transfer. (At the end of a run, the
        network first delivers what it still holds.)"""
        for p, q in PAIRS:
            credits = credits_for(self.states[p], q)
            if credits:
                self.run(q, list(credits))
        for p, q in PAIRS:
            learnt = {s: code for (pp, qq, s), code in self.learnt.items() if (pp, qq) == (p, q)}
            steps = resolutions(self.states[p], q, learnt)
            if steps:
                self.run(p, list(steps))
        unended = [saga for saga in self.sagas.values() if saga.ended is None]
        assert not unended, unended
        assert not any(state.outbox for state in self.states)

    def teardown(self) -> None:
        # Unless a step has failed already (its error is the one to report), every run ends
        # by driving everything to its end.
        if sys.exc_info()[1] is None:
            while self.undelivered:
                self.deliver_held_steps(batch=4, overtaking=0, answer_lost=False)
            self.healthy_driver_round()
            self.check_everything()

    # ------------------------------------------------------------ invariants

    @invariant()
    def check_everything(self) -> None:
        """Per partition, per pair, per transfer and over the cluster: see the docstrings."""
        self.each_partition_balances_its_books()
        self.money_is_conserved_across_partitions()
        self.each_transfer_ended_at_most_once()
        self.pairs_agree()

    def each_partition_balances_its_books(self) -> None:
        """Every balance is the model's and never negative; per partition, balances + in
        flight == deposited - withdrawn + credited in - settled out (the core re-derives it all
        too, `check_invariants`)."""
        for account, model in self.accounts.items():
            found = self.states[PARTITION_OF[account]].balance(account)
            assert found is not None
            assert (found.balance_minor, found.currency) == (model.balance_minor, model.currency)
            assert found.balance_minor >= 0
        for state in self.states:
            state.check_invariants()
            for t in state.totals.values():
                assert t.balance_minor + t.in_flight_minor == (
                    t.deposited_minor - t.withdrawn_minor + t.credited_in_minor
                    - t.settled_out_minor)

    def money_is_conserved_across_partitions(self) -> None:
        """Over the cluster: balances + money in flight == deposits, where in flight is what
        was debited and is neither credited nor given back. A source counts a credited but
        unsettled transfer as in flight while its destination already holds it: that
        difference is credited in - settled out."""
        usd = [state.totals.get("USD") for state in self.states]
        balances = sum(t.balance_minor for t in usd if t)
        in_flight = sum(t.in_flight_minor for t in usd if t)
        credited_not_settled = sum(t.credited_in_minor - t.settled_out_minor for t in usd if t)
        deposited = sum(t.deposited_minor - t.withdrawn_minor for t in usd if t)
        assert balances + in_flight - credited_not_settled == deposited == self.deposited
        open_amount = sum(s.amount_minor for s in self.sagas.values() if s.ended is None)
        assert in_flight == open_amount
        assert credited_not_settled == sum(
            s.amount_minor for s in self.sagas.values()
            if s.ended is None and s.at_destination is Code.OK)

    def each_transfer_ended_at_most_once(self) -> None:
        """A transfer reads PENDING until it ends, then OK (SETTLED, only if the destination
        credited it) or the refusal's reason (COMPENSATED, only if the destination refused
        it); it is in its source's outbox exactly while it has not ended."""
        for key, saga in self.sagas.items():
            record = self.states[saga.source].transfer_record(*key)
            assert record is not None
            assert record.code is self.transfer_code(saga), (saga, record)
            assert (key in self.states[saga.source].outbox) == (saga.ended is None)
            if saga.ended == SETTLED:
                assert saga.at_destination is Code.OK
            elif saga.ended == COMPENSATED:
                assert saga.at_destination in CREDIT_REJECTIONS

    def pairs_agree(self) -> None:
        """What Q credited from P is the sum of P's transfers to Q that Q accepted; what P
        settled to Q is the sum of those that ended SETTLED, never more than Q credited."""
        for p, q in PAIRS:
            outgoing, incoming = self.states[p].outgoing.get(q), self.states[q].incoming.get(p)
            settled = 0 if outgoing is None else outgoing.settled_minor.get("USD", 0)
            credited = 0 if incoming is None else incoming.credited_minor.get("USD", 0)
            sagas = [s for s in self.sagas.values() if (s.source, s.destination) == (p, q)]
            assert credited == sum(s.amount_minor for s in sagas if s.at_destination is Code.OK)
            assert settled == sum(s.amount_minor for s in sagas if s.ended == SETTLED)
            assert settled <= credited



TestSagaModel = SagaModel.TestCase
TestSagaModel.settings = stateful_settings(max_examples=300, stateful_step_count=50)
