"""`make run` (for now): the ledger core moving money between partitions in one process.

There is no Raft here yet: each partition is a bare `ledger.StateMachine` fed
by an in-memory log, and the saga steps are driven inline. The demo creates
accounts, runs transfers (most of them cross-partition), drives every saga
to its end, and proves the books: conservation over all partitions, and a
replay of every log reaching the live state hash.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ledger import commands as c
from ledger.codec import decode_entry, encode_entry
from ledger.money import currency, format_amount
from ledger.replay import replay
from ledger.results import Code, Result
from ledger.routing import partition_of
from ledger.saga import credits_for, resolutions
from ledger.state import StateMachine


@dataclass
class InMemoryPartition:
    """One partition: a state machine and its log of encoded entries."""

    state: StateMachine
    log: list[tuple[int, bytes]] = field(default_factory=list)

    def propose(self, commands: list[c.Command]) -> tuple[Result, ...]:
        blob = encode_entry(c.Entry(int(time.time() * 1000), tuple(commands)))
        log_index = len(self.log) + 1
        self.log.append((log_index, blob))
        applied = self.state.apply_entry(decode_entry(blob), log_index)
        assert applied is not None
        return applied.results


def drive_sagas(partitions: list[InMemoryPartition]) -> None:
    """Deliver every pending credit and settle or compensate, until all outboxes are empty."""
    while any(p.state.outbox for p in partitions):
        for source in partitions:
            for destination in sorted(source.state.outgoing):
                credits = credits_for(source.state, destination)
                if not credits:
                    continue
                results = partitions[destination].propose(list(credits))
                outcomes = {cr.sequence: r.code for cr, r in zip(credits, results, strict=True)}
                source.propose(list(resolutions(source.state, destination, outcomes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="transfers per log entry")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    console = Console()
    rng = random.Random(args.seed)
    usd = currency("USD")
    partitions = [InMemoryPartition(StateMachine(p)) for p in range(args.partitions)]
    names = [f"wallet-{i:04d}" for i in range(args.accounts)]
    home = {name: partition_of(name, args.partitions) for name in names}

    for name in names:
        partitions[home[name]].propose([
            c.CreateAccount(name, usd.code, usd.exponent, uuid.uuid4().bytes),
            c.Deposit(name, rng.randint(1_000, 100_000), usd.code, uuid.uuid4().bytes),
        ])

    outcomes: Counter[str] = Counter()
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("transfers", total=args.transfers)
        done = 0
        while done < args.transfers:
            size = min(args.batch, args.transfers - done)
            by_partition: dict[int, list[c.Command]] = {}
            for _ in range(size):
                source, target = rng.sample(names, 2)
                amount = rng.randint(1, 5_000)
                p, q = home[source], home[target]
                command: c.Command = (
                    c.Transfer(source, target, amount, usd.code, uuid.uuid4().bytes) if p == q
                    else c.DebitForTransfer(source, target, amount, usd.code,
                                            uuid.uuid4().bytes, q)
                )
                by_partition.setdefault(p, []).append(command)
            for p, commands in sorted(by_partition.items()):
                for result in partitions[p].propose(commands):
                    outcomes[result.code.name] += 1
            drive_sagas(partitions)
            done += size
            progress.update(task, advance=size)
    elapsed_s = time.perf_counter() - started

    table = Table(title="RaftWallet core demo (in-process, no Raft yet)")
    table.add_column("partition", justify="right")
    table.add_column("accounts", justify="right")
    table.add_column("balance (USD)", justify="right")
    table.add_column("log entries", justify="right")
    table.add_column("state hash", overflow="fold")
    table.add_column("replay == live")
    all_ok = True
    for part in partitions:
        live = part.state.state_hash()
        replayed = replay(part.log, part.state.partition).state_hash()
        all_ok &= replayed == live
        part.state.check_invariants()
        totals = part.state.totals.get(usd.code)
        table.add_row(str(part.state.partition), str(len(part.state.accounts)),
                      format_amount(totals.balance_minor if totals else 0, usd.exponent),
                      str(len(part.log)), live[:16], "yes" if replayed == live else "NO")
    console.print(table)

    balances = sum(a.balance_minor for p in partitions for a in p.state.accounts.values())
    deposited = sum(t.deposited_minor for p in partitions for t in p.state.totals.values())
    withdrawn = sum(t.withdrawn_minor for p in partitions for t in p.state.totals.values())
    in_flight = sum(t.in_flight_minor for p in partitions for t in p.state.totals.values())
    conserved = balances == deposited - withdrawn and in_flight == 0
    console.print(f"transfers: {args.transfers} in {elapsed_s:.2f} s "
                  f"({args.transfers / elapsed_s:,.0f}/s, one process, saga driven inline)")
    console.print("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
    console.print(f"conservation: balances {format_amount(balances, usd.exponent)} == deposits "
                  f"{format_amount(deposited, usd.exponent)} - withdrawals "
                  f"{format_amount(withdrawn, usd.exponent)}, in flight "
                  f"{format_amount(in_flight, usd.exponent)}: {'OK' if conserved else 'BROKEN'}")
    ok = conserved and all_ok and outcomes[Code.OK.name] + outcomes[Code.PENDING.name] > 0
    console.print("[bold green]books balance[/]" if ok else "[bold red]books do not balance[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
