"""An in-process fake of a RaftWallet node's public gRPC API, for the SDK and CLI tests.

`FakeWalletServer` serves WalletService and AdminService on 127.0.0.1 (a free
port), keeps balances in a dict (amounts parsed by `ledger.money`), deduplicates
writes by id like the ledger, reports refusals as gRPC statuses with the
ledger reason in the `raftwallet-reason` trailing metadata, records every
request it receives, and fails or stalls calls on demand:

    with running_fake() as fake:
        fake.fail("Transfer", grpc.StatusCode.UNAVAILABLE, times=2)
        ...
        assert [r.transaction_id for r in fake.requests_of("Transfer")] == [...]

`fake.second_address` reaches the same state through another port (two "nodes"
that share one ledger), `fake.map_json` makes it serve GetClusterMap, and
`silent_node()` is a port that accepts connections and never answers, like a
node stopped with SIGSTOP.

Not a model of the cluster: one partition state, no saga, no Raft.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from client.errors import REASON_METADATA_KEY
from ledger.money import MoneyError, currency, format_amount, parse_amount
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

R = TypeVar("R")

OK = grpc.StatusCode.OK
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS


class Refused(Exception):
    """A refusal the fake reports as a gRPC status (with a ledger reason)."""

    def __init__(self, code: grpc.StatusCode, reason: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.reason = reason
        self.details = details


@dataclass
class Failure:
    """An injected failure: `times` more calls fail (None: every call)."""

    code: grpc.StatusCode
    reason: str = ""
    details: str = "injected failure"
    times: int | None = 1


@dataclass
class FakeAccount:
    currency: str
    exponent: int
    request_id: str
    position: int
    balance_minor: int = 0


@dataclass
class FakeTransfer:
    transaction_id: str
    from_account: str
    to_account: str
    amount: str
    currency: str
    status: int
    reason: str
    position: int


@dataclass
class _Outcome:
    """What a write with a given key returned the first time (an answer or a refusal)."""

    content: tuple[Any, ...]
    response: Message | None = None
    refusal: Refused | None = None


@dataclass
class FakeWalletServer:
    """The fake node. Use `running_fake()` (or call `stop()`) so the server always stops."""

    partition_count: int = 4
    node_id: str = "fake-1"
    leader_addresses: dict[int, str] = field(default_factory=dict)
    """Leader address per partition reported by ClusterStatus (default: this server)."""
    map_json: str | None = None
    """What GetClusterMap answers (None: UNIMPLEMENTED, like a server without the map)."""

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.accounts: dict[str, FakeAccount] = {}
        self.transfers: list[FakeTransfer] = []
        self.requests: list[tuple[str, Message]] = []
        self._outcomes: dict[tuple[str, str, str], _Outcome] = {}
        self._failures: dict[str, Failure] = {}
        self._stalls: dict[str, list[float]] = {}
        self._positions = itertools.count(1)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        wallet_pb2_grpc.add_WalletServiceServicer_to_server(
            _WalletServicer(self), self._server
        )
        wallet_pb2_grpc.add_AdminServiceServicer_to_server(
            _AdminServicer(self), self._server
        )
        self.port: int = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.second_address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    # -- test controls

    def fail(
        self,
        method: str,
        code: grpc.StatusCode,
        times: int | None = 1,
        reason: str = "",
        details: str = "injected failure",
    ) -> None:
        """Make the next `times` calls of `method` (e.g. "Transfer") fail (None: all of them)."""
        with self.lock:
            self._failures[method] = Failure(code, reason, details, times)

    def stall(self, method: str, seconds: float, times: int = 1) -> None:
        """Make the next `times` calls of `method` wait `seconds` before being served
        (a node paused mid-call, then resumed: the call is still served afterwards)."""
        with self.lock:
            self._stalls.setdefault(method, []).extend([seconds] * times)

    def requests_of(self, method: str) -> list[Any]:
        """The requests `method` received, in order (failed ones included)."""
        with self.lock:
            return [request for name, request in self.requests if name == method]

    def add_account(self, account_id: str, currency_code: str, balance: str = "0") -> None:
        """Open an account directly (test setup), optionally with a balance."""
        cur = currency(currency_code)
        minor = 0 if balance == "0" else parse_amount(balance, currency_code)
        with self.lock:
            self.accounts[account_id] = FakeAccount(
                currency_code, cur.exponent, "", next(self._positions), minor
            )

    # -- what every handler does first

    def enter(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        """Record the request and apply an injected failure, if any."""
        with self.lock:
            self.requests.append((method, request))
            failure = self._failures.get(method)
            if failure is not None and failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del self._failures[method]
            stalls = self._stalls.get(method)
            stall_s = stalls.pop(0) if stalls else 0.0
        time.sleep(stall_s)
        if failure is not None:
            abort(context, Refused(failure.code, failure.reason, failure.details))

    def serve(
        self, method: str, request: Message, context: grpc.ServicerContext, body: Callable[[], R]
    ) -> R:
        self.enter(method, request, context)
        try:
            with self.lock:
                return body()
        except Refused as refusal:
            abort(context, refusal)

    # -- the ledger, roughly (called with the lock held)

    def account(self, account_id: str) -> FakeAccount:
        if not account_id:
            raise Refused(INVALID_ARGUMENT, "INVALID_ACCOUNT_ID", "account_id: empty")
        found = self.accounts.get(account_id)
        if found is None:
            raise Refused(NOT_FOUND, "ACCOUNT_NOT_FOUND", f"account {account_id!r} not found")
        return found

    def amount(self, account: FakeAccount, amount: str, currency_code: str) -> int:
        if currency_code != account.currency:
            raise Refused(
                FAILED_PRECONDITION,
                "CURRENCY_MISMATCH",
                f"currency: the account holds {account.currency}",
            )
        try:
            return parse_amount(amount, currency_code)
        except MoneyError as error:
            raise Refused(INVALID_ARGUMENT, "INVALID_AMOUNT", str(error)) from None

    def once(
        self, key: tuple[str, str, str], content: tuple[Any, ...], body: Callable[[], Message]
    ) -> Any:
        """Dedup: the first outcome for `key` is replayed; other content is ID_CONFLICT."""
        if not key[2]:
            raise Refused(INVALID_ARGUMENT, "INVALID_TRANSACTION_ID", "transaction_id: empty")
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = _Outcome(content)
            try:
                outcome.response = body()
            except Refused as refusal:
                if refusal.reason not in ("INSUFFICIENT_FUNDS", "BALANCE_LIMIT"):
                    raise  # refused, nothing recorded
                outcome.refusal = refusal
            self._outcomes[key] = outcome
        elif outcome.content != content:
            raise Refused(ALREADY_EXISTS, "ID_CONFLICT", "transaction_id: used with other content")
        if outcome.refusal is not None:
            raise outcome.refusal
        return outcome.response

    def do_transfer(self, request: pb.TransferRequest) -> pb.TransferResponse:
        source = self.account(request.from_account)

        def body() -> pb.TransferResponse:
            if request.to_account == request.from_account:
                raise Refused(FAILED_PRECONDITION, "SAME_ACCOUNT", "to_account: same account")
            destination = self.account(request.to_account)
            minor = self.amount(source, request.amount, request.currency)
            if destination.currency != request.currency:
                raise Refused(FAILED_PRECONDITION, "CURRENCY_MISMATCH", "to_account: currency")
            if source.balance_minor < minor:
                raise Refused(FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "amount: too large")
            source.balance_minor -= minor
            destination.balance_minor += minor
            position = next(self._positions)
            self.transfers.append(
                FakeTransfer(
                    request.transaction_id,
                    request.from_account,
                    request.to_account,
                    request.amount,
                    request.currency,
                    pb.SUCCEEDED,
                    "",
                    position,
                )
            )
            return pb.TransferResponse(
                status=pb.SUCCEEDED, transaction_id=request.transaction_id, position=position
            )

        content = ("transfer", request.to_account, request.amount, request.currency)
        response: pb.TransferResponse = self.once(
            ("T", request.from_account, request.transaction_id), content, body
        )
        return response


def abort(context: grpc.ServicerContext, refusal: Refused) -> NoReturn:
    if refusal.reason:
        context.set_trailing_metadata(((REASON_METADATA_KEY, refusal.reason),))
    context.abort(refusal.code, refusal.details)
    raise AssertionError("context.abort returned")


def _record(t: FakeTransfer) -> pb.GetTransferResponse:
    return pb.GetTransferResponse(
        transaction_id=t.transaction_id,
        from_account=t.from_account,
        to_account=t.to_account,
        amount=t.amount,
        currency=t.currency,
        status=t.status,  # type: ignore[arg-type]
        reason=t.reason,
        steps=[pb.TransferStep(name="TRANSFER", position=t.position)],
    )


class _WalletServicer(wallet_pb2_grpc.WalletServiceServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeWalletServer) -> None:
        self.fake = fake

    def CreateAccount(
        self, request: pb.CreateAccountRequest, context: grpc.ServicerContext
    ) -> pb.CreateAccountResponse:
        fake = self.fake

        def body() -> pb.CreateAccountResponse:
            try:
                cur = currency(request.currency)
            except MoneyError as error:
                raise Refused(INVALID_ARGUMENT, "INVALID_CURRENCY", str(error)) from None
            existing = fake.accounts.get(request.account_id)
            if existing is None:
                existing = FakeAccount(
                    request.currency, cur.exponent, request.request_id, next(fake._positions)
                )
                fake.accounts[request.account_id] = existing
            elif not request.request_id or existing.request_id != request.request_id:
                raise Refused(ALREADY_EXISTS, "ACCOUNT_EXISTS", "account_id: exists")
            return pb.CreateAccountResponse(
                account_id=request.account_id,
                currency=existing.currency,
                position=existing.position,
            )

        return fake.serve("CreateAccount", request, context, body)

    def _movement(
        self,
        method: str,
        request: pb.DepositRequest | pb.WithdrawRequest,
        context: grpc.ServicerContext,
    ) -> pb.MoneyMovementResponse:
        fake = self.fake

        def body() -> pb.MoneyMovementResponse:
            account = fake.account(request.account_id)

            def apply() -> pb.MoneyMovementResponse:
                minor = fake.amount(account, request.amount, request.currency)
                if method == "Withdraw":
                    if account.balance_minor < minor:
                        raise Refused(FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "amount")
                    minor = -minor
                account.balance_minor += minor
                return pb.MoneyMovementResponse(
                    transaction_id=request.transaction_id,
                    status=pb.SUCCEEDED,
                    balance=format_amount(account.balance_minor, account.exponent),
                    position=next(fake._positions),
                )

            content = (method, request.amount, request.currency)
            response: pb.MoneyMovementResponse = fake.once(
                (method[0], request.account_id, request.transaction_id), content, apply
            )
            return response

        return fake.serve(method, request, context, body)

    def Deposit(
        self, request: pb.DepositRequest, context: grpc.ServicerContext
    ) -> pb.MoneyMovementResponse:
        return self._movement("Deposit", request, context)

    def Withdraw(
        self, request: pb.WithdrawRequest, context: grpc.ServicerContext
    ) -> pb.MoneyMovementResponse:
        return self._movement("Withdraw", request, context)

    def Transfer(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> pb.TransferResponse:
        return self.fake.serve(
            "Transfer", request, context, lambda: self.fake.do_transfer(request)
        )

    def TransferBatch(
        self, request: pb.TransferBatchRequest, context: grpc.ServicerContext
    ) -> pb.TransferBatchResponse:
        def body() -> pb.TransferBatchResponse:
            response = pb.TransferBatchResponse()
            for index, transfer in enumerate(request.transfers):
                try:
                    response.statuses.append(self.fake.do_transfer(transfer).status)
                    response.succeeded += 1
                except Refused as refusal:
                    response.statuses.append(pb.FAILED)
                    response.reasons[index] = refusal.reason
                    response.failed += 1
            return response

        return self.fake.serve("TransferBatch", request, context, body)

    def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.ServicerContext
    ) -> pb.GetBalanceResponse:
        fake = self.fake

        def body() -> pb.GetBalanceResponse:
            account = fake.account(request.account_id)
            return pb.GetBalanceResponse(
                account_id=request.account_id,
                balance=format_amount(account.balance_minor, account.exponent),
                currency=account.currency,
                position=next(fake._positions),
                stale=request.consistency == pb.STALE,
            )

        return fake.serve("GetBalance", request, context, body)

    def GetTransfer(
        self, request: pb.GetTransferRequest, context: grpc.ServicerContext
    ) -> pb.GetTransferResponse:
        fake = self.fake

        def body() -> pb.GetTransferResponse:
            for t in fake.transfers:
                if (t.from_account, t.transaction_id) == (
                    request.from_account,
                    request.transaction_id,
                ):
                    return _record(t)
            raise Refused(NOT_FOUND, "UNKNOWN_TRANSFER", "transaction_id: unknown transfer")

        return fake.serve("GetTransfer", request, context, body)

    def ListTransfers(
        self, request: pb.ListTransfersRequest, context: grpc.ServicerContext
    ) -> pb.ListTransfersResponse:
        fake = self.fake

        def body() -> pb.ListTransfersResponse:
            fake.account(request.account_id)
            mine = [
                t
                for t in fake.transfers
                if request.account_id in (t.from_account, t.to_account)
            ]
            if request.order == pb.NEWEST_FIRST:
                mine.reverse()
            start = int(request.page_token or "0")
            limit = request.limit or 100
            page = mine[start : start + limit]
            more = start + limit < len(mine)
            return pb.ListTransfersResponse(
                transfers=[_record(t) for t in page],
                next_page_token=str(start + limit) if more else "",
            )

        return fake.serve("ListTransfers", request, context, body)


    def GetClusterMap(
        self, request: pb.GetClusterMapRequest, context: grpc.ServicerContext
    ) -> pb.GetClusterMapResponse:
        fake = self.fake

        def body() -> pb.GetClusterMapResponse:
            if fake.map_json is None:
                raise Refused(grpc.StatusCode.UNIMPLEMENTED, "", "no cluster map here")
            return pb.GetClusterMapResponse(map_json=fake.map_json)

        return fake.serve("GetClusterMap", request, context, body)


class _AdminServicer(wallet_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeWalletServer) -> None:
        self.fake = fake

    def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: grpc.ServicerContext
    ) -> pb.ClusterStatusResponse:
        fake = self.fake

        def body() -> pb.ClusterStatusResponse:
            partitions = range(fake.partition_count)
            return pb.ClusterStatusResponse(
                partition_count=fake.partition_count,
                partitions=[
                    pb.PartitionStatus(
                        partition=p,
                        leader_node_id=fake.node_id,
                        leader_address=fake.leader_addresses.get(p, fake.address),
                        term=3,
                        commit_index=40 + p,
                        applied_position=40 + p,
                        replicas=[pb.ReplicaStatus(node_id=fake.node_id, match_index=40 + p)],
                        money_in_flight="0",
                        state_hash=f"{p:02x}" * 32,
                    )
                    for p in partitions
                ],
                nodes=[
                    pb.NodeStatus(
                        node_id=fake.node_id,
                        address=fake.address,
                        up=True,
                        partitions=list(partitions),
                        leader_of=list(partitions),
                    )
                ],
            )

        return fake.serve("ClusterStatus", request, context, body)


@contextmanager
def running_fake(partition_count: int = 4, node_id: str = "fake-1") -> Iterator[FakeWalletServer]:
    """A started fake, stopped (grace=None) when the block ends."""
    fake = FakeWalletServer(partition_count=partition_count, node_id=node_id)
    try:
        yield fake
    finally:
        fake.stop()


@contextmanager
def silent_node() -> Iterator[str]:
    """The address of a port that accepts TCP connections (the kernel completes them) but
    never answers anything: what a client sees of a node stopped with SIGSTOP."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"
