"""Property tests of the cross-partition saga on three in-process partitions.

A random schedule interleaves deposits, transfers (intra and cross), credit
deliveries (duplicated, reordered, with stale progress, from deposed leaders)
and resolutions. Money is checked per partition after every step, per pair of
partitions, and over the whole cluster once everything is driven to the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import commands as c
from ledger.results import CREDIT_REJECTIONS, Code, Result
from ledger.state import OutboxEntry, StateMachine

PARTITIONS = 3
ACCOUNTS = {f"u{i}": i % PARTITIONS for i in range(6)} | {"ghost": 2}  # ghost never exists


@dataclass
class Cluster:
    states: list[StateMachine] = field(
        default_factory=lambda: [StateMachine(p) for p in range(PARTITIONS)]
    )
    log_index: list[int] = field(default_factory=lambda: [0] * PARTITIONS)
    stamp_ms: int = 1_000
    # (destination, source, sequence) -> outcome the source has learnt from the destination
    learnt: dict[tuple[int, int, int], Code] = field(default_factory=dict)
    # every credit ever sent, for redelivery by a deposed leader
    sent: list[tuple[int, c.CreditForTransfer]] = field(default_factory=list)

    def apply(self, partition: int, *commands: c.Command) -> tuple[Result, ...]:
        self.stamp_ms += 1
        self.log_index[partition] += 1
        outcome = self.states[partition].apply_entry(
            c.Entry(self.stamp_ms, tuple(commands)), self.log_index[partition]
        )
        assert outcome is not None
        self.states[partition].check_invariants()
        return outcome.results

    def deliver(self, source: int, destination: int, reverse: bool, stale: bool) -> None:
        """Send credits for the source's open outbox entries, as a (maybe deposed) driver."""
        state = self.states[source]
        pending = list(state.outbox_for(destination))
        if reverse:
            pending.reverse()
        resolved_through = 0 if stale else state.resolved_through(destination)
        credits = [self._credit(source, key, entry, resolved_through) for key, entry in pending]
        if not credits:
            return
        self.sent.extend((destination, credit) for credit in credits)
        results = self.apply(destination, *credits)
        for credit, outcome in zip(credits, results, strict=True):
            if outcome.code is Code.OK or outcome.code in CREDIT_REJECTIONS:
                self.learnt[(destination, source, credit.sequence)] = outcome.code

    @staticmethod
    def _credit(source: int, key: tuple[str, bytes], entry: OutboxEntry,
                resolved_through: int) -> c.CreditForTransfer:
        return c.CreditForTransfer(source, entry.sequence, key[0], entry.to_account,
                                   entry.amount_minor, entry.currency, key[1], resolved_through)

    def redeliver(self, index: int) -> None:
        """A deposed leader re-sends a credit it sent long ago; it must never credit twice."""
        if self.sent:
            destination, credit = self.sent[index % len(self.sent)]
            outcome = self.apply(destination, credit)[0]
            assert outcome.replayed or outcome.code is Code.STALE_CREDIT, outcome

    def resolve(self, source: int, destination: int) -> None:
        """Settle or compensate every outbox entry whose credit outcome is known."""
        commands: list[c.Command] = []
        for key, entry in self.states[source].outbox_for(destination):
            code = self.learnt.get((destination, source, entry.sequence))
            if code is not None:
                commands.append(c.ResolveTransfer(key[0], key[1], code is Code.OK, code))
        if commands:
            self.apply(source, *commands)

    def check_pairs(self) -> None:
        """Credits received by Q from P never fall behind transfers settled by P to Q."""
        for p, source in enumerate(self.states):
            for q, outgoing in source.outgoing.items():
                incoming = self.states[q].incoming.get(p)
                for currency, settled in outgoing.settled_minor.items():
                    credited = 0 if incoming is None else incoming.credited_minor.get(currency, 0)
                    assert credited >= settled, (p, q, currency)


transfer = st.tuples(st.just("transfer"), st.sampled_from(sorted(ACCOUNTS)),
                     st.sampled_from(sorted(ACCOUNTS)), st.integers(1, 800), st.integers(0, 40))
deliver = st.tuples(st.just("deliver"), st.integers(0, PARTITIONS - 1),
                    st.integers(0, PARTITIONS - 1), st.booleans(), st.booleans())
resolve = st.tuples(st.just("resolve"), st.integers(0, PARTITIONS - 1),
                    st.integers(0, PARTITIONS - 1))
operation = st.one_of(
    transfer, transfer, transfer, deliver, deliver, resolve, resolve,
    st.tuples(st.just("deposit"), st.sampled_from(sorted(ACCOUNTS)), st.integers(1, 500)),
    st.tuples(st.just("withdraw"), st.sampled_from(sorted(ACCOUNTS)), st.integers(1, 500)),
    st.tuples(st.just("redeliver"), st.integers(0, 1_000)),
    st.tuples(st.just("abort_credit"), st.integers(0, PARTITIONS - 1),
              st.integers(0, PARTITIONS - 1), st.integers(1, 5)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=80))
def test_saga_conserves_money_across_partitions_under_any_schedule(
    operations: list[tuple[object, ...]],
) -> None:
    cluster = Cluster()
    for account, partition in ACCOUNTS.items():
        if account != "ghost":
            request_id = account.encode().ljust(16, b".")
            cluster.apply(partition, c.CreateAccount(account, "USD", 2, request_id),
                          c.Deposit(account, 1_000, "USD", request_id))
    fresh_ids = iter(range(10**6, 2 * 10**6))
    for op in operations:
        match op:
            case ("deposit", str(account), int(amount)):
                cluster.apply(ACCOUNTS[account],
                              c.Deposit(account, amount, "USD", next(fresh_ids).to_bytes(16)))
            case ("withdraw", str(account), int(amount)):
                cluster.apply(ACCOUNTS[account],
                              c.Withdraw(account, amount, "USD", next(fresh_ids).to_bytes(16)))
            case ("transfer", str(src), str(dst), int(amount), int(n)):
                transaction_id = n.to_bytes(16, "big")
                p, q = ACCOUNTS[src], ACCOUNTS[dst]
                command: c.Command = (
                    c.Transfer(src, dst, amount, "USD", transaction_id) if p == q
                    else c.DebitForTransfer(src, dst, amount, "USD", transaction_id, q)
                )
                cluster.apply(p, command)
            case ("deliver", int(p), int(q), bool(reverse), bool(stale)) if p != q:
                cluster.deliver(p, q, reverse, stale)
            case ("redeliver", int(index)):
                cluster.redeliver(index)
            case ("resolve", int(p), int(q)) if p != q:
                cluster.resolve(p, q)
            case ("abort_credit", int(p), int(q), int(sequence)) if p != q:
                results = cluster.apply(q, c.AbortCredit(p, sequence))
                if results[0].code is Code.ABORTED:
                    cluster.learnt[(q, p, sequence)] = Code.ABORTED
        cluster.check_pairs()
    # Drive every saga to its end, as the drivers of healthy leaders would.
    for _ in range(3):
        for p in range(PARTITIONS):
            for q in range(PARTITIONS):
                if p != q:
                    cluster.deliver(p, q, reverse=False, stale=False)
                    cluster.resolve(p, q)
    assert all(not s.outbox for s in cluster.states), "an outbox did not drain"
    # One more transfer per pair carries each source's progress to its destinations.
    accounts_by_partition = {p: a for a, p in reversed(ACCOUNTS.items()) if a != "ghost"}
    for p in range(PARTITIONS):
        for q in range(PARTITIONS):
            if p != q:
                cluster.apply(p, c.Deposit(accounts_by_partition[p], 1, "USD",
                                           next(fresh_ids).to_bytes(16)))
                cluster.apply(p, c.DebitForTransfer(accounts_by_partition[p],
                                                    accounts_by_partition[q], 1, "USD",
                                                    next(fresh_ids).to_bytes(16), q))
                cluster.deliver(p, q, reverse=False, stale=False)
                cluster.resolve(p, q)
    # Deposed leaders may redeliver any credit ever sent: none may credit again.
    hashes = [s.content_hash() for s in cluster.states]
    for index in range(len(cluster.sent)):
        cluster.redeliver(index)
    assert [s.content_hash() for s in cluster.states] == hashes
    balances = sum(a.balance_minor for s in cluster.states for a in s.accounts.values())
    deposited = sum(s.totals["USD"].deposited_minor for s in cluster.states)
    withdrawn = sum(s.totals["USD"].withdrawn_minor for s in cluster.states)
    assert balances == deposited - withdrawn
    for p, source in enumerate(cluster.states):
        for q, outgoing in source.outgoing.items():
            incoming = cluster.states[q].incoming[p]
            assert incoming.credited_minor.get("USD", 0) == outgoing.settled_minor.get("USD", 0)
