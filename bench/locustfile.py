"""User-behaviour load tests of a RaftWallet cluster with Locust, over gRPC.

Each simulated user is a wallet holder in a session: they look at their balance
most often, sometimes send money to another holder (a fresh UUIDv4 transaction
id each time) and sometimes open their history:

    task            RPC              weight
    check balance   GetBalance       5     (LINEARIZABLE, the default consistency)
    transfer        Transfer         3     0.01 to 5.00 USD to a random other holder
    history         ListTransfers    2     the latest 20 transfers, newest first

with a think time of 0.5 to 2 s between tasks (`--think-min-s`, `--think-max-s`).
Every call fires a Locust request event (type "grpc", name the RPC, response
time, response size, the gRPC error if any), so Locust's statistics, CSV files
and web UI work as for HTTP. A transfer refused for a business reason (its
status FAILED, e.g. INSUFFICIENT_FUNDS) is an answer, not a failure; any gRPC
error is a failure.

This measures behaviour under user-like load, not peak throughput: Locust's
gRPC user costs about 270 us of client CPU per call (../shared/notes), so use
`python -m bench.tps` for transfers/s.

Target and accounts (command-line options, or environment variables):

    --host 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103   gRPC addresses of nodes (any
                                                          node serves any account)
    --wallet-accounts N   (RAFTWALLET_LOCUST_ACCOUNTS, default 200) holders locust-000000...
    --wallet-currency USD (RAFTWALLET_LOCUST_CURRENCY)
    --wallet-deposit 1000.00 (RAFTWALLET_LOCUST_DEPOSIT) opening balance of each holder
    --no-seed-accounts    do not create the holders at test start (they exist already)

Accounts: at test start (Locust's `test_start` event, on the master or the
single local process, never on workers) the holders are created and funded.
This is idempotent: the account's request id and the deposit's transaction id
are derived from the account id, so a second test start changes nothing. The
same step runs on its own with

    python -m bench.locustfile --seed-accounts --host 127.0.0.1:7101 --wallet-accounts 200

Running headless (one process):

    locust -f bench/locustfile.py --headless -u 50 -r 10 -t 1m \\
        --host 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --csv /tmp/wallet

Running distributed (one master, workers on as many machines or cores as needed;
the workers take the master's options):

    locust -f bench/locustfile.py --master --headless -u 500 -r 50 -t 5m \\
        --expect-workers 4 --host 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
    locust -f bench/locustfile.py --worker --master-host MASTER_IP     # on each worker

Locust exits 1 when any request failed (`--exit-code-on-error`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

# `locust -f bench/locustfile.py` puts only bench/ on sys.path: the repository root
# must be there for the generated API modules.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from proto.wallet.v1 import wallet_pb2 as pb  # noqa: E402
from proto.wallet.v1 import wallet_pb2_grpc  # noqa: E402

# Locust has monkey-patched the standard library (importing locust does); gRPC's
# C core must now cooperate with gevent, before any gRPC object exists.
grpc_gevent.init_gevent()

ACCOUNTS_DEFAULT = 200
ACCOUNT_PREFIX = "locust-"
CURRENCY_DEFAULT = "USD"
DEPOSIT_DEFAULT = "1000.00"
CALL_TIMEOUT_S = 10.0
HISTORY_LIMIT = 20
TRANSFER_MINOR_MAX = 500
"""Transfers are 0.01 to 5.00: a holder starting with 1,000.00 rarely runs dry."""
SETUP_ATTEMPTS_MAX = 50
SETUP_RETRY_PAUSE_S = 0.2
SEED_NAMESPACE = uuid.UUID("6f1d3c1e-8a4b-4f63-9d55-2d7f0c1b5a11")
"""uuid5 namespace of the setup's idempotency keys (one per account and step)."""
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED})

Response = TypeVar("Response")


class SetupFailed(Exception):
    """The holders could not be created or funded."""


def account_ids(count: int) -> list[str]:
    return [f"{ACCOUNT_PREFIX}{i:06d}" for i in range(count)]


def addresses_of(host: str | None) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` (a `grpc://` prefix is allowed) as a list of addresses."""
    if not host:
        raise SetupFailed("no target: pass --host HOST:PORT[,HOST:PORT...] (gRPC addresses)")
    found = [part.strip().removeprefix("grpc://") for part in host.split(",") if part.strip()]
    if not found or any(":" not in address for address in found):
        raise SetupFailed(f"--host must be HOST:PORT[,HOST:PORT...], got {host!r}")
    return found


def _idempotency_key(step: str, account_id: str) -> str:
    return str(uuid.uuid5(SEED_NAMESPACE, f"{step}:{account_id}"))


def _with_retries(call: Callable[[], Response]) -> Response:
    """`call`, retried while the cluster is briefly unavailable (bounded)."""
    for _ in range(SETUP_ATTEMPTS_MAX - 1):
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() not in RETRYABLE:
                raise
        time.sleep(SETUP_RETRY_PAUSE_S)
    return call()


def _create(stub: wallet_pb2_grpc.WalletServiceStub, account: str, currency: str) -> bool:
    """Open `account`; False if it existed already (created by an earlier setup)."""
    request = pb.CreateAccountRequest(account_id=account, currency=currency,
                                      request_id=_idempotency_key("create", account))
    try:
        _with_retries(lambda: stub.CreateAccount(request, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.ALREADY_EXISTS:
            return False
        raise SetupFailed(f"CreateAccount {account}: {error}") from error
    return True


def _fund(stub: wallet_pb2_grpc.WalletServiceStub, account: str, currency: str,
          deposit: str) -> None:
    """Deposit `deposit` once per (account, amount, currency): a rerun is a replay."""
    request = pb.DepositRequest(
        account_id=account, amount=deposit, currency=currency,
        transaction_id=_idempotency_key(f"deposit {deposit} {currency}", account))
    try:
        _with_retries(lambda: stub.Deposit(request, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        raise SetupFailed(f"Deposit {account}: {error}") from error


def seed_accounts(addresses: Sequence[str], count: int, currency: str, deposit: str) -> int:
    """Create and fund `count` holders; idempotent. Returns how many were created now."""
    created = 0
    with grpc.insecure_channel(addresses[0]) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        for account in account_ids(count):
            created += _create(stub, account, currency)
            _fund(stub, account, currency, deposit)
    return created


# --- Locust wiring ----------------------------------------------------------------------------


def _add_options(parser: Any) -> None:
    parser.add_argument("--wallet-accounts", type=int, default=ACCOUNTS_DEFAULT,
                        env_var="RAFTWALLET_LOCUST_ACCOUNTS",
                        help="wallet holders (accounts locust-000000, ...)")
    parser.add_argument("--wallet-currency", default=CURRENCY_DEFAULT,
                        env_var="RAFTWALLET_LOCUST_CURRENCY")
    parser.add_argument("--wallet-deposit", default=DEPOSIT_DEFAULT,
                        env_var="RAFTWALLET_LOCUST_DEPOSIT",
                        help="opening balance of each holder, deposited at test start")
    parser.add_argument("--no-seed-accounts", action="store_true",
                        env_var="RAFTWALLET_LOCUST_NO_SEED",
                        help="the holders exist already: do not create them at test start")
    parser.add_argument("--think-min-s", type=float, default=0.5)
    parser.add_argument("--think-max-s", type=float, default=2.0)


def _seed_on_test_start(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None or options.no_seed_accounts or isinstance(environment.runner,
                                                                  WorkerRunner):
        return
    created = seed_accounts(addresses_of(environment.host), options.wallet_accounts,
                            options.wallet_currency, options.wallet_deposit)
    print(f"wallet holders: {options.wallet_accounts} ready ({created} created now)",
          file=sys.stderr, flush=True)


events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_seed_on_test_start)  # type: ignore[no-untyped-call]


class WalletHolder(User):
    """One wallet holder in a session: balance, transfers, history, with think time."""

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        low = options.think_min_s if options is not None else 0.5
        high = options.think_max_s if options is not None else 2.0
        return float(between(low, high)(self))

    def on_start(self) -> None:
        options = self.environment.parsed_options
        count = options.wallet_accounts if options is not None else ACCOUNTS_DEFAULT
        self.currency = options.wallet_currency if options is not None else CURRENCY_DEFAULT
        if count < 2:
            raise SetupFailed("--wallet-accounts must be at least 2")
        self.rng = random.Random()
        self.holders = account_ids(count)
        self.me = self.rng.choice(self.holders)
        # One channel per user to one node (followers forward to the leader).
        self.channel = grpc.insecure_channel(self.rng.choice(addresses_of(self.host)))
        self.stub = wallet_pb2_grpc.WalletServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, call: Callable[[], Any]) -> Any:
        """Run one RPC and report it to Locust (time, size, gRPC error if any)."""
        started = time.perf_counter()
        response: Any = None
        error: Exception | None = None
        try:
            response = call()
        except grpc.RpcError as rpc_error:
            error = rpc_error
        self.environment.events.request.fire(
            request_type="grpc", name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            response=response, context={"account": self.me}, exception=error)
        return response

    @task(5)
    def check_balance(self) -> None:
        self._call("GetBalance", lambda: self.stub.GetBalance(
            pb.GetBalanceRequest(account_id=self.me), timeout=CALL_TIMEOUT_S))

    @task(3)
    def transfer(self) -> None:
        to_account = self.rng.choice(self.holders)
        while to_account == self.me:
            to_account = self.rng.choice(self.holders)
        amount_minor = self.rng.randint(1, TRANSFER_MINOR_MAX)
        request = pb.TransferRequest(
            from_account=self.me, to_account=to_account,
            amount=f"{amount_minor // 100}.{amount_minor % 100:02d}", currency=self.currency,
            transaction_id=str(uuid.uuid4()))
        self._call("Transfer", lambda: self.stub.Transfer(request, timeout=CALL_TIMEOUT_S))

    @task(2)
    def history(self) -> None:
        self._call("ListTransfers", lambda: self.stub.ListTransfers(
            pb.ListTransfersRequest(account_id=self.me, limit=HISTORY_LIMIT,
                                    order=pb.NEWEST_FIRST), timeout=CALL_TIMEOUT_S))


# --- the setup step on its own ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.locustfile",
        description="Create and fund the wallet holders the Locust users act as (idempotent).")
    parser.add_argument("--seed-accounts", action="store_true", required=True)
    parser.add_argument("--host", required=True,
                        help="gRPC address(es) of nodes: HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--wallet-accounts", type=int, default=ACCOUNTS_DEFAULT)
    parser.add_argument("--wallet-currency", default=CURRENCY_DEFAULT)
    parser.add_argument("--wallet-deposit", default=DEPOSIT_DEFAULT)
    args = parser.parse_args(argv)
    try:
        created = seed_accounts(addresses_of(args.host), args.wallet_accounts,
                                args.wallet_currency, args.wallet_deposit)
    except SetupFailed as failure:
        print(f"seed-accounts FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"{args.wallet_accounts} wallet holders ready ({created} created now)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
