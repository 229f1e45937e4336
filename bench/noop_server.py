"""A WalletService that does nothing: the load generator's ceiling (`python -m bench.noop_server`).

`bench.tps` starts it in a process of its own and runs the same load generator
against it as against the cluster, in the same invocation: the transfers/s it
reaches is the most the load generator (with the machine's other work) could
measure, so a cluster figure near it says the harness, not the cluster, was
the limit.

Transfer answers SUCCEEDED at once; TransferBatch answers every transfer of the
batch SUCCEEDED. Both work on raw bytes (no request is parsed except to count a
batch's transfers, and answers are serialized once per batch size), so the server
costs as little as a grpc.aio server can. Any other method is UNIMPLEMENTED.

    python -m bench.noop_server --listen 127.0.0.1:50099
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import grpc
import grpc.aio

from proto.wallet.v1 import wallet_pb2 as pb

SERVICE = "raftwallet.wallet.v1.WalletService"
READY_LINE = "noop server listening on"
"""Printed (then flushed) on stdout once the server accepts calls."""
MESSAGE_BYTES_MAX = 64 * 2**20
"""Like the load generator's channels: batches of many transfers fit."""
BATCH_ANSWERS_CACHED_MAX = 64
"""Distinct batch sizes whose serialized answer is kept (the harness uses two or three)."""
TRANSFER_ANSWER = pb.TransferResponse(status=pb.SUCCEEDED, position=1).SerializeToString()


def count_transfers(request: bytes) -> int:
    """The transfers in a serialized TransferBatchRequest (field 1, repeated), unparsed.

    Walks the top-level fields only: one varint key and one length per transfer.
    Raises ValueError on bytes that are not such a message.
    """
    count = 0
    offset = 0
    end = len(request)
    while offset < end:
        key, offset = _varint_at(request, offset)
        if key != (1 << 3 | 2):
            raise ValueError(f"unexpected field key {key} in a TransferBatchRequest")
        length, offset = _varint_at(request, offset)
        offset += length
        if offset > end:
            raise ValueError("truncated TransferBatchRequest")
        count += 1
    return count


def _varint_at(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


class NoopWallet:
    """The two handlers; keeps the serialized batch answers per batch size."""

    def __init__(self) -> None:
        self._batch_answers: dict[int, bytes] = {}

    async def transfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return TRANSFER_ANSWER

    async def transfer_batch(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            count = count_transfers(request)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise AssertionError("unreachable: abort raises") from error
        answer = self._batch_answers.get(count)
        if answer is None:
            answer = pb.TransferBatchResponse(statuses=[pb.SUCCEEDED] * count,
                                              succeeded=count).SerializeToString()
            if len(self._batch_answers) < BATCH_ANSWERS_CACHED_MAX:
                self._batch_answers[count] = answer
        return answer


def _raw(handler: object) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(handler)  # bytes in, bytes out


async def serve(listen: str) -> None:
    wallet = NoopWallet()
    server = grpc.aio.server(options=(("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
                                      ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
                                      ("grpc.so_reuseport", 0)))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Transfer": _raw(wallet.transfer),
        "TransferBatch": _raw(wallet.transfer_batch),
    }),))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"noop server: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_LINE} {listen}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_server",
                                     description="A WalletService answering every Transfer "
                                                 "and TransferBatch SUCCEEDED at once.")
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
