"""The chaos checker: judges a run from its records alone (no cluster needed).

Inputs (see history.py): the history of client ops, the periodic samples of every
replica's view, the final state written by the settle step after healing, and the
nemesis log. `check(...)` returns a `Report`: the verdict (the list of violations; empty
means pass) and a summary (ops by outcome, faults, availability).

What is checked, and why it is sound:
- every acknowledged write (ok, SUCCEEDED) is applied: its key is SUCCEEDED at the end;
  an ok PENDING transfer ended (SUCCEEDED or FAILED, never "not applied");
- every write that failed definitively is not applied;
- every unknown write was resolved (AbortTransfer made "not applied" final);
- applied exactly once: each account's final balance equals its deposits plus the
  transfers in minus the transfers out that the ledger says were applied. A write
  applied twice, lost or invented makes some account differ;
- no negative balance in any read, in any sampled partition total, or at the end;
- during the run, every replica's view satisfied its partition's own equation, and
  for every pair, what P had settled to Q was later seen credited on Q (the settle is
  only ever proposed after the credit committed; credits only grow);
- at quiescence: per currency, money in the cluster = deposits - withdrawals, nothing
  in flight, settled = credited; every outbox empty; every replica of each partition
  at one position with one state hash; every node's replay of its archive = live.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ledger.routing import partition_of
from tests.chaos.history import (
    FINAL_FILE,
    HISTORY_FILE,
    SAMPLES_FILE,
    SETUP_FILE,
    Event,
    EventType,
    FinalState,
    OpKind,
    ReplicaView,
    Sample,
    Setup,
    read_final,
    read_history,
    read_samples,
    read_setup,
)
from tests.chaos.nemesis import NEMESIS_FILE, FaultKind, FaultRecord, read_faults

VERDICT_FILE = "verdict.json"
SUMMARY_FILE = "summary.txt"
RUNNER_PROBLEMS_FILE = "runner-problems.json"
VIOLATIONS_SHOWN_MAX = 20
"""Violations of one check listed in full; the rest are counted."""
APPLIED, FAILED, NOT_APPLIED = "SUCCEEDED", "FAILED", "NOT_APPLIED"
WRITES = (OpKind.DEPOSIT, OpKind.TRANSFER)


@dataclass(frozen=True, slots=True)
class Op:
    """An invoke joined with its completion; `outcome` None: the client never answered."""

    op_id: str
    f: OpKind
    worker: int
    account: str
    to_account: str | None
    amount_minor: int | None
    transaction_id: str | None
    invoke_s: float
    outcome: EventType | None
    status: str | None
    balance_minor: int | None
    complete_s: float | None


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    detail: str


@dataclass(slots=True)
class Report:
    violations: list[Violation] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, check: str, detail: str) -> None:
        self.violations.append(Violation(check, detail))


def join_ops(events: Iterable[Event]) -> list[Op]:
    """Pair each invoke with its completion (the history writes at most one per op)."""
    invokes: dict[str, Event] = {}
    completions: dict[str, Event] = {}
    for event in events:
        if event.type is EventType.INVOKE:
            assert event.op_id not in invokes, f"op id {event.op_id} invoked twice"
            invokes[event.op_id] = event
        else:
            assert event.op_id not in completions, f"op id {event.op_id} completed twice"
            completions[event.op_id] = event
    assert set(completions) <= set(invokes), "a completion without its invoke"
    ops = []
    for op_id, invoke in invokes.items():
        done = completions.get(op_id)
        ops.append(Op(op_id, invoke.f, invoke.worker, invoke.account, invoke.to_account,
                      invoke.amount_minor, invoke.transaction_id, invoke.mono_s,
                      done.type if done else None, done.status if done else None,
                      done.balance_minor if done else None, done.mono_s if done else None))
    return sorted(ops, key=lambda op: op.invoke_s)


# --- the checks ---------------------------------------------------------------------------


def check_outcomes(ops: Sequence[Op], resolved: dict[tuple[str, str], str],
                   report: Report) -> None:
    keys = Counter((op.account, op.transaction_id) for op in ops if op.f in WRITES)
    for key, count in keys.items():
        if count > 1:
            report.fail("unique ids", f"{count} writes share the key {key}")
    for op in ops:
        if op.f not in WRITES:
            continue
        key = (op.account, op.transaction_id or "")
        outcome = resolved.get(key)
        what = f"{op.f} {op.op_id} {key[1]} from {op.account}"
        if outcome is None:
            report.fail("resolved", f"{what}: no final outcome was recorded")
        elif op.outcome is EventType.OK and op.status == "SUCCEEDED" and outcome != APPLIED:
            report.fail("acknowledged applied", f"{what} was acknowledged but is {outcome}")
        elif op.outcome is EventType.OK and outcome not in (APPLIED, FAILED):
            report.fail("pending ended", f"{what} answered {op.status}, ended {outcome}")
        elif op.outcome is EventType.FAIL and outcome == APPLIED:
            report.fail("failed not applied", f"{what} failed definitively but was applied")
        elif outcome not in (APPLIED, FAILED, NOT_APPLIED):
            report.fail("resolved", f"{what}: {outcome}")


def expected_balances(setup: Setup, ops: Sequence[Op],
                      resolved: dict[tuple[str, str], str]) -> dict[str, int]:
    """Each account's balance if exactly the writes the ledger reports applied were applied,
    each once."""
    balances = dict.fromkeys(setup.accounts, 0)
    for op in ops:
        if op.f not in WRITES:
            continue
        if resolved.get((op.account, op.transaction_id or "")) != APPLIED:
            continue
        assert op.amount_minor is not None and op.amount_minor > 0, op
        if op.f is OpKind.DEPOSIT:
            balances[op.account] += op.amount_minor
        else:
            assert op.to_account is not None, op
            balances[op.account] -= op.amount_minor
            balances[op.to_account] += op.amount_minor
    return balances


def check_balances(setup: Setup, ops: Sequence[Op], final: FinalState,
                   resolved: dict[tuple[str, str], str], report: Report) -> None:
    expected = expected_balances(setup, ops, resolved)
    for account in setup.accounts:
        actual = final.balances_minor.get(account)
        if actual is None:
            report.fail("exactly once", f"no final balance of {account}")
        elif actual != expected[account]:
            report.fail("exactly once", f"{account}: balance {actual} but the applied writes "
                        f"give {expected[account]} (a write applied twice, lost or invented)")
        if actual is not None and actual < 0:
            report.fail("no negative balance", f"{account} ends at {actual}")
    for op in ops:
        if op.f is OpKind.READ and op.outcome is EventType.OK:
            assert op.balance_minor is not None, op
            if op.balance_minor < 0:
                report.fail("no negative balance", f"read {op.op_id} of {op.account} saw "
                            f"{op.balance_minor}")


def check_views_balanced(views: Iterable[ReplicaView], when: str, report: Report) -> None:
    for view in views:
        for totals in view.totals:
            if not totals.balanced():
                report.fail("partition conserved", f"{when}: partition {view.partition} on "
                            f"{view.node_id} at {view.applied_position}: {totals}")
            if totals.balance_minor < 0 or totals.in_flight_minor < 0:
                report.fail("no negative balance", f"{when}: partition {view.partition} on "
                            f"{view.node_id} holds {totals}")


def check_pairs(samples: Sequence[Sample], final: FinalState, report: Report) -> None:
    """What P settled to Q by time t was credited on Q by some later view of Q.

    Credits only grow along Q's log, and every view is a prefix of it, so the largest
    credit total seen at or after t is the best evidence; the final view ends the run."""
    timeline = [(s.mono_s, s.views) for s in samples] + [(final.mono_s, final.views)]
    timeline.sort(key=lambda item: item[0])
    best_later: dict[tuple[int, int, str], int] = {}
    """(destination, source, currency) -> largest credit seen from here to the end."""
    needs: list[tuple[float, int, int, str, int]] = []
    for at_s, views in timeline:
        for view in views:
            for settled in view.settled_to:
                needs.append((at_s, view.partition, settled.partition, settled.currency,
                              settled.amount_minor))
    needs.sort(key=lambda item: -item[0])
    cursor = len(timeline) - 1
    for at_s, source, destination, currency, amount_minor in needs:
        while cursor >= 0 and timeline[cursor][0] >= at_s:
            for view in timeline[cursor][1]:
                for credited in view.credited_from:
                    key = (view.partition, credited.partition, credited.currency)
                    best_later[key] = max(best_later.get(key, 0), credited.amount_minor)
            cursor -= 1
        credited_minor = best_later.get((destination, source, currency), 0)
        if credited_minor < amount_minor:
            report.fail("credits cover settles", f"partition {source} had settled "
                        f"{amount_minor} {currency} to {destination}, which never showed "
                        f"more than {credited_minor} credited from {source}")


def check_final(setup: Setup, final: FinalState, report: Report) -> None:
    if not final.quiescent:
        report.fail("quiescent", "the cluster did not settle (nodes down, outboxes busy or "
                    "replicas apart)")
    for problem in final.problems:
        report.fail("settle", problem)
    check_views_balanced(final.views, "final", report)
    for view in final.views:
        if view.outbox_depth:
            report.fail("outbox empty", f"partition {view.partition} on {view.node_id} has "
                        f"{view.outbox_depth} transfers in its outbox")
    per_currency: dict[str, Counter[str]] = defaultdict(Counter)
    for partition in range(setup.partition_count):
        views = [v for v in final.views if v.partition == partition]
        if len(views) != setup.replication_factor:
            report.fail("replicas agree", f"partition {partition}: {len(views)} of "
                        f"{setup.replication_factor} replicas answered")
        positions = {(v.applied_position, v.state_hash) for v in views}
        if len(positions) > 1:
            report.fail("replicas agree", f"partition {partition}: replicas differ: "
                        + ", ".join(f"{v.node_id}@{v.applied_position}:{v.state_hash[:12]}"
                                    for v in views))
        for totals in views[0].totals if views else ():
            counter = per_currency[totals.currency]
            counter["balance"] += totals.balance_minor
            counter["in_flight"] += totals.in_flight_minor
            counter["deposited"] += totals.deposited_minor
            counter["withdrawn"] += totals.withdrawn_minor
            counter["credited"] += totals.credited_in_minor
            counter["settled"] += totals.settled_out_minor
    for currency, c in sorted(per_currency.items()):
        if c["balance"] != c["deposited"] - c["withdrawn"] or c["in_flight"] or (
                c["settled"] != c["credited"]):
            report.fail("cluster conserved", f"{currency}: {dict(c)}")
    total_accounts = sum(final.balances_minor.values())
    total_cluster = per_currency[setup.currency]["balance"]
    if final.balances_minor and total_accounts != total_cluster:
        report.fail("cluster conserved", f"the accounts hold {total_accounts}, the partitions "
                    f"say {total_cluster}")
    for verdict in final.verify:
        if not verdict.ok:
            report.fail("replay = live", f"{verdict.node_id}: {verdict.detail}")
    # The nodes at the end are the cluster map's (a replaced node left it, its replacement
    # joined); records from before the map carry none, and the setup's nodes stand.
    members = final.node_ids or setup.node_ids
    verified = sorted(v.node_id for v in final.verify)
    if verified != sorted(members):
        report.fail("replay = live", f"nodes verified {verified}, nodes of the cluster "
                    f"{sorted(members)}")
    strays = sorted({v.node_id for v in final.views} - set(members))
    if strays:
        report.fail("replicas agree", f"final views from nodes outside the cluster: {strays}")


# --- the summary --------------------------------------------------------------------------


def _windows(points: Sequence[tuple[float, bool]], end_s: float) -> tuple[float, float, float]:
    """(time up, longest window down, its start) of a step function given by samples."""
    up_s, longest_s, longest_at, down_since = 0.0, 0.0, 0.0, None
    for (at_s, up), following in zip(points, [*points[1:], (end_s, True)], strict=True):
        if up:
            up_s += following[0] - at_s
            continue
        down_since = at_s if down_since is None else down_since
        if following[1]:
            if following[0] - down_since > longest_s:
                longest_s, longest_at = following[0] - down_since, down_since
            down_since = None
    return up_s, longest_s, longest_at


def availability(setup: Setup, ops: Sequence[Op], samples: Sequence[Sample],
                 start_s: float, end_s: float) -> dict[str, dict[str, float]]:
    """Per partition: share of sampled time with a leader, longest time without one, and
    longest time without a successful write (between the completions of two, or from the
    start / to the end of the run)."""
    window = [s for s in samples if start_s <= s.mono_s <= end_s]
    result: dict[str, dict[str, float]] = {}
    span_s = max(end_s - start_s, 1e-9)
    for partition in range(setup.partition_count):
        points = [(s.mono_s, s.leader_of(partition) is not None) for s in window]
        up_s, leaderless_s, leaderless_at = _windows(points, end_s) if points else (0, span_s, 0)
        writes = sorted(op.complete_s for op in ops if op.f in WRITES
                        and op.outcome is EventType.OK and op.complete_s is not None
                        and start_s <= op.complete_s <= end_s
                        and partition_of(op.account, setup.partition_count) == partition)
        edges = [start_s, *writes, end_s]
        gaps = [(b - a, a) for a, b in itertools.pairwise(edges)]
        no_write_s, no_write_at = max(gaps)
        result[str(partition)] = {
            "leader_share": round(up_s / span_s, 5),
            "longest_leaderless_s": round(leaderless_s, 3),
            "longest_leaderless_at_s": round(leaderless_at - start_s, 3),
            "longest_without_write_s": round(no_write_s, 3),
            "longest_without_write_at_s": round(no_write_at - start_s, 3),
        }
    return result


def after_leader_kills(setup: Setup, ops: Sequence[Op], samples: Sequence[Sample],
                       faults: Sequence[FaultRecord]) -> list[dict[str, object]]:
    """For every kill (kill, kill_all, or the kill -9 that starts a replace) of a node that
    led a partition: time from the kill to the first sample showing a new leader, and to
    the first successful write invoked after the kill (conservative: a write in flight at
    the kill does not count)."""
    windows: list[dict[str, object]] = []
    for fault in faults:
        if fault.kind not in (FaultKind.KILL, FaultKind.KILL_ALL, FaultKind.REPLACE):
            continue
        for partition in fault.led_partitions:
            leader_at = next((s.mono_s for s in samples if s.mono_s >= fault.start_mono_s
                              and s.leader_of(partition) not in (None, *fault.nodes)
                              ), None) if fault.kind != FaultKind.KILL_ALL else next(
                (s.mono_s for s in samples if s.mono_s >= fault.end_mono_s
                 and s.leader_of(partition) is not None), None)
            write_at = next((op.complete_s for op in ops if op.f in WRITES
                             and op.outcome is EventType.OK and op.complete_s is not None
                             and op.invoke_s >= fault.start_mono_s
                             and partition_of(op.account, setup.partition_count) == partition
                             ), None)
            windows.append({
                "kind": fault.kind, "node": ",".join(fault.nodes), "partition": partition,
                "new_leader_after_s": None if leader_at is None
                else round(leader_at - fault.start_mono_s, 3),
                "first_write_after_s": None if write_at is None
                else round(write_at - fault.start_mono_s, 3),
            })
    return windows


def summarize(setup: Setup, ops: Sequence[Op], samples: Sequence[Sample],
              faults: Sequence[FaultRecord], resolved: dict[tuple[str, str], str],
              end_s: float) -> dict[str, object]:
    by_outcome: Counter[str] = Counter()
    for op in ops:
        if op.worker >= 0:
            by_outcome[f"{op.f}:{op.outcome or 'no answer'}"] += 1
    unknown = Counter(resolved.get((op.account, op.transaction_id or ""), "?")
                      for op in ops if op.f in WRITES and op.outcome in (EventType.UNKNOWN, None))
    kills = after_leader_kills(setup, ops, samples, faults)
    single_kills = [w for w in kills if w["kind"] in (FaultKind.KILL, FaultKind.REPLACE)]
    return {
        "duration_s": round(end_s - setup.run_start_mono_s, 1),
        "seed": setup.seed,
        "ops": dict(sorted(by_outcome.items())),
        "ops_total": sum(by_outcome.values()),
        "unknown_resolved_as": dict(unknown),
        "faults": dict(Counter(f.kind for f in faults)),
        "fault_log": [{"kind": f.kind, "nodes": list(f.nodes), "detail": f.detail,
                       "at_s": round(f.start_mono_s - setup.run_start_mono_s, 1),
                       "for_s": round(f.end_mono_s - f.start_mono_s, 1)} for f in faults],
        "availability": availability(setup, ops, samples, setup.run_start_mono_s, end_s),
        "leader_kills": kills,
        "worst_after_leader_kill_s": {
            "new_leader": max((float(str(w["new_leader_after_s"])) for w in single_kills
                               if w["new_leader_after_s"] is not None), default=None),
            "first_write": max((float(str(w["first_write_after_s"])) for w in single_kills
                                if w["first_write_after_s"] is not None), default=None),
        },
    }


def check(setup: Setup, events: Sequence[Event], samples: Sequence[Sample],
          final: FinalState, faults: Sequence[FaultRecord] = (),
          runner_problems: Sequence[str] = ()) -> Report:
    report = Report()
    ops = join_ops(events)
    resolved = {(r.account, r.transaction_id): r.outcome for r in final.resolutions}
    for problem in runner_problems:
        report.fail("runner", problem)
    check_outcomes(ops, resolved, report)
    check_balances(setup, ops, final, resolved, report)
    for sample in samples:
        check_views_balanced(sample.views, f"sample at {sample.mono_s:.2f}", report)
    check_pairs(samples, final, report)
    check_final(setup, final, report)
    end_s = setup.run_end_mono_s or max((s.mono_s for s in samples), default=final.mono_s)
    report.summary = summarize(setup, ops, samples, faults, resolved, end_s)
    return report


def render(report: Report) -> str:
    """The human summary: verdict first, then what ran and how available it was."""
    s = report.summary
    lines = [f"chaos verdict: {'PASS' if report.ok else 'FAIL'} "
             f"(seed {s.get('seed')}, {s.get('duration_s')} s, {s.get('ops_total')} ops)"]
    by_check = Counter(v.check for v in report.violations)
    shown: Counter[str] = Counter()
    for violation in report.violations:
        shown[violation.check] += 1
        if shown[violation.check] <= VIOLATIONS_SHOWN_MAX:
            lines.append(f"  VIOLATION [{violation.check}] {violation.detail}")
    for check_name, count in by_check.items():
        if count > VIOLATIONS_SHOWN_MAX:
            lines.append(f"  ... and {count - VIOLATIONS_SHOWN_MAX} more [{check_name}]")
    lines.append(f"ops: {json.dumps(s.get('ops'))}")
    lines.append(f"unknown outcomes resolved as: {json.dumps(s.get('unknown_resolved_as'))}")
    lines.append(f"faults: {json.dumps(s.get('faults'))}")
    availability_of = s.get("availability")
    if isinstance(availability_of, dict):
        for partition, figures in availability_of.items():
            lines.append(f"partition {partition}: leader {figures['leader_share']:.2%} of the "
                         f"time, longest leaderless {figures['longest_leaderless_s']:.1f} s, "
                         f"longest without a write {figures['longest_without_write_s']:.1f} s")
    lines.append(f"worst after a leader kill: {json.dumps(s.get('worst_after_leader_kill_s'))}")
    fault_log = s.get("fault_log")
    for fault in fault_log if isinstance(fault_log, list) else ():
        if fault.get("kind") == FaultKind.REPLACE:
            lines.append(f"replaced {','.join(fault['nodes']) or '(none)'} at "
                         f"+{fault['at_s']} s: {fault['detail']} (down and replaced in "
                         f"{fault['for_s']} s)")
    return "\n".join(lines)


def check_dir(out: Path) -> Report:
    """Check the records a run left in `out`; writes verdict.json and summary.txt there."""
    problems_path = out / RUNNER_PROBLEMS_FILE
    runner_problems: list[str] = (json.loads(problems_path.read_text(encoding="utf-8"))
                                  if problems_path.exists() else [])
    report = check(read_setup(out / SETUP_FILE), read_history(out / HISTORY_FILE),
                   read_samples(out / SAMPLES_FILE), read_final(out / FINAL_FILE),
                   read_faults(out / NEMESIS_FILE), runner_problems)
    (out / VERDICT_FILE).write_text(json.dumps({
        "ok": report.ok, "violations": [asdict(v) for v in report.violations],
        "summary": report.summary}, indent=2, default=str) + "\n", encoding="utf-8")
    (out / SUMMARY_FILE).write_text(render(report) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.checker",
                                     description="Judge the records of a chaos run.")
    parser.add_argument("--out", type=Path, required=True, help="the run's directory")
    args = parser.parse_args(argv)
    missing = [name for name in (SETUP_FILE, HISTORY_FILE, FINAL_FILE)
               if not (args.out / name).exists()]
    if missing:
        print(f"checker: {args.out} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    report = check_dir(args.out)
    print(render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
