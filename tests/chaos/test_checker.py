"""The chaos checker on hand-made runs: it passes a sound one and names each kind of fault."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tests.chaos.checker import Report, availability, check
from tests.chaos.history import (
    CurrencyTotals,
    Event,
    EventType,
    FinalState,
    NodeVerify,
    OpKind,
    PairTotal,
    ReplicaView,
    Resolution,
    Sample,
    Setup,
)
from tests.chaos.nemesis import FaultRecord

ACCOUNTS = ("alice", "bob")


@dataclass
class Run:
    """A one-partition, one-replica run built op by op; `final()` is the state a correct
    ledger would end in, and each test breaks one thing."""

    events: list[Event] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCOUNTS, 0))
    deposited_minor: int = 0
    clock_s: float = 100.0
    count: int = 0

    def _op(self, f: OpKind, account: str, outcome: EventType, **fields: object) -> None:
        self.count += 1
        op_id = f"0:{self.count}"
        for kind in (EventType.INVOKE, outcome):
            self.clock_s += 0.1
            values = {k: v for k, v in fields.items()
                      if kind is not EventType.INVOKE or k not in ("status", "balance_minor")}
            self.events.append(Event(op_id, kind, f, 0, self.clock_s, int(self.clock_s * 1000),
                                     account, **values))  # type: ignore[arg-type]

    def deposit(self, account: str, amount_minor: int) -> None:
        transaction_id = f"d{self.count}"
        self._op(OpKind.DEPOSIT, account, EventType.OK, amount_minor=amount_minor,
                 transaction_id=transaction_id, status="SUCCEEDED")
        self.resolutions.append(Resolution(account, transaction_id, "SUCCEEDED"))
        self.balances[account] += amount_minor
        self.deposited_minor += amount_minor

    def transfer(self, source: str, target: str, amount_minor: int,
                 answered: EventType = EventType.OK, outcome: str = "SUCCEEDED") -> str:
        transaction_id = f"t{self.count}"
        self._op(OpKind.TRANSFER, source, answered, to_account=target,
                 amount_minor=amount_minor, transaction_id=transaction_id,
                 status="SUCCEEDED" if answered is EventType.OK else None)
        self.resolutions.append(Resolution(source, transaction_id, outcome))
        if outcome == "SUCCEEDED":
            self.balances[source] -= amount_minor
            self.balances[target] += amount_minor
        return transaction_id

    def read(self, account: str, balance_minor: int) -> None:
        self._op(OpKind.READ, account, EventType.OK, balance_minor=balance_minor)

    def view(self, node_id: str = "n1", balance_minor: int | None = None,
             position: int = 10, state_hash: str = "h") -> ReplicaView:
        held = sum(self.balances.values()) if balance_minor is None else balance_minor
        return ReplicaView(node_id, 0, True, 1, position, state_hash, 0, totals=(
            CurrencyTotals("USD", held, 0, self.deposited_minor, 0, 0, 0),))

    def sample(self) -> Sample:
        return Sample(self.clock_s, int(self.clock_s * 1000), ("n1",), (self.view(),))

    def final(self, **changes: object) -> FinalState:
        state = FinalState(self.clock_s + 1, True, tuple(self.resolutions), dict(self.balances),
                           (self.view(),), (NodeVerify("n1", True, ""),))
        return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


SETUP = Setup(partition_count=1, replication_factor=1, currency="USD", accounts=ACCOUNTS,
              node_ids=("n1",), seed=7, workers=1, run_start_mono_s=100.0)


def funded() -> Run:
    run = Run()
    run.deposit("alice", 1_000)
    run.deposit("bob", 500)
    return run


def checks_failed(report: Report) -> set[str]:
    return {violation.check for violation in report.violations}


def test_a_sound_run_passes() -> None:
    run = funded()
    run.transfer("alice", "bob", 300)
    run.transfer("bob", "alice", 5_000, EventType.FAIL, "FAILED")
    run.transfer("alice", "bob", 7, EventType.UNKNOWN, "NOT_APPLIED")
    run.transfer("alice", "bob", 9, EventType.UNKNOWN, "SUCCEEDED")
    run.read("bob", 809)
    report = check(SETUP, run.events, [run.sample()], run.final())
    assert report.ok, report.violations
    assert report.summary["unknown_resolved_as"] == {"NOT_APPLIED": 1, "SUCCEEDED": 1}


def test_a_lost_acknowledged_transfer_fails_the_run() -> None:
    run = funded()
    run.transfer("alice", "bob", 300, outcome="NOT_APPLIED")  # acknowledged, then gone
    report = check(SETUP, run.events, [], run.final())
    assert checks_failed(report) == {"acknowledged applied"}


def test_a_transfer_applied_twice_fails_the_run() -> None:
    run = funded()
    run.transfer("alice", "bob", 300)
    twice = dict(run.balances, alice=run.balances["alice"] - 300, bob=run.balances["bob"] + 300)
    report = check(SETUP, run.events, [], run.final(balances_minor=twice))
    assert checks_failed(report) == {"exactly once"}
    assert len(report.violations) == 2  # both accounts differ from the history


def test_a_definitively_failed_transfer_that_was_applied_fails_the_run() -> None:
    run = funded()
    run.transfer("alice", "bob", 100, EventType.FAIL, "SUCCEEDED")
    report = check(SETUP, run.events, [], run.final())
    assert checks_failed(report) == {"failed not applied"}


def test_an_unknown_outcome_left_unresolved_fails_the_run() -> None:
    run = funded()
    run.transfer("alice", "bob", 100, EventType.UNKNOWN, "UNRESOLVED (UNAVAILABLE: gone)")
    report = check(SETUP, run.events, [], run.final())
    assert checks_failed(report) == {"resolved"}


def test_a_negative_balance_seen_by_a_read_fails_the_run() -> None:
    run = funded()
    run.read("alice", -1)
    report = check(SETUP, run.events, [], run.final())
    assert checks_failed(report) == {"no negative balance"}


def test_a_sample_whose_partition_does_not_balance_fails_the_run() -> None:
    run = funded()
    broken = Sample(run.clock_s, 0, ("n1",), (run.view(balance_minor=1_499),))
    report = check(SETUP, run.events, [run.sample(), broken], run.final())
    assert checks_failed(report) == {"partition conserved"}


def test_money_created_at_the_end_breaks_cluster_conservation() -> None:
    run = funded()
    report = check(SETUP, run.events, [], run.final(views=(run.view(balance_minor=1_600),)))
    assert "cluster conserved" in checks_failed(report)


def test_a_settle_never_covered_by_a_credit_fails_the_run() -> None:
    run = funded()
    setup = dataclasses.replace(SETUP, partition_count=2, replication_factor=1)
    source = ReplicaView("n1", 0, True, 1, 5, "h0", 0, totals=(
        CurrencyTotals("USD", 1_000, 0, 1_500, 0, 0, 500),),
        settled_to=(PairTotal(1, "USD", 500),))
    destination = ReplicaView("n1", 1, True, 1, 5, "h1", 0, totals=(
        CurrencyTotals("USD", 400, 0, 0, 0, 400, 0),),
        credited_from=(PairTotal(0, "USD", 400),))
    sample = Sample(run.clock_s, 0, ("n1",), (source, destination))
    report = check(setup, run.events, [sample], run.final(views=(source, destination)))
    assert "credits cover settles" in checks_failed(report)
    assert "cluster conserved" in checks_failed(report)  # 100 settled but never credited


def test_replicas_at_different_states_fail_the_run() -> None:
    run = funded()
    setup = dataclasses.replace(SETUP, replication_factor=2, node_ids=("n1", "n2"))
    views = (run.view("n1"), run.view("n2", state_hash="other"))
    verify = (NodeVerify("n1", True, ""), NodeVerify("n2", True, ""))
    report = check(setup, run.events, [], run.final(views=views, verify=verify))
    assert checks_failed(report) == {"replicas agree"}


def test_a_replay_that_differs_from_live_fails_the_run() -> None:
    run = funded()
    report = check(SETUP, run.events, [], run.final(
        verify=(NodeVerify("n1", False, "p0: replay != live"),)))
    assert checks_failed(report) == {"replay = live"}


def test_availability_reports_the_longest_window_without_a_leader() -> None:
    run = funded()
    led = run.view()
    leaderless = dataclasses.replace(led, is_leader=False)
    samples = [Sample(100.0 + t, 0, ("n1",), (view,)) for t, view in
               [(0, led), (1, leaderless), (2, leaderless), (4, led), (5, leaderless)]]
    figures = availability(SETUP, [], samples, 100.0, 106.0)["0"]
    assert figures["longest_leaderless_s"] == 3.0
    assert figures["longest_leaderless_at_s"] == 1.0
    assert figures["leader_share"] == round(2 / 6, 5)  # led during [0, 1) and [4, 5)


def test_the_summary_times_a_new_leader_after_a_leader_kill() -> None:
    run = funded()
    old = run.view("n1")
    new = dataclasses.replace(old, node_id="n2", term=2)
    samples = [Sample(200.0, 0, ("n1",), (old,)), Sample(201.0, 0, ("n2",), ()),
               Sample(203.5, 0, ("n2",), (new,))]
    kill = FaultRecord("kill", ("n1",), "", (0,), 200.5, 0, 205.0, 0)
    setup = dataclasses.replace(SETUP, node_ids=("n1", "n2"))
    report = check(setup, run.events, samples, run.final(), [kill])
    assert report.summary["worst_after_leader_kill_s"] == {"new_leader": 3.0,
                                                          "first_write": None}


def test_after_a_replacement_the_new_node_is_judged_and_the_removed_one_is_not() -> None:
    run = funded()
    final = run.final(views=(run.view("n4"),), verify=(NodeVerify("n4", True, ""),),
                      node_ids=("n4",), map_version=9)
    report = check(SETUP, run.events, [], final)  # the setup's node was n1
    assert report.ok, report.violations


def test_a_node_of_the_final_map_that_was_not_verified_fails_the_run() -> None:
    run = funded()
    report = check(SETUP, run.events, [], run.final(node_ids=("n1", "n4")))
    assert checks_failed(report) == {"replay = live"}


def test_a_final_view_from_a_node_removed_from_the_map_fails_the_run() -> None:
    run = funded()
    final = run.final(views=(run.view("n1"),), verify=(NodeVerify("n4", True, ""),),
                      node_ids=("n4",))
    report = check(SETUP, run.events, [], final)
    assert checks_failed(report) == {"replicas agree"}
