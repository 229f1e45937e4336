"""Helpers of the HTTP gateway's tests: serving the app, posting JSON."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from tests.cluster_harness import WAIT_S, wait_until


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """uvicorn serving `app` on a free 127.0.0.1 port in a thread; stopped on exit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop="asyncio", lifespan="on",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]},
                              name=f"gateway-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "the gateway to serve")
        assert server.started, "the gateway thread ended before serving"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)
        listener.close()
        assert not thread.is_alive(), "the gateway did not stop"


def post(http: httpx.Client, path: str, body: object,
         headers: dict[str, str] | None = None) -> httpx.Response:
    """POST `body` as JSON text (ASCII escapes, so lone surrogates and NaN can be sent)."""
    return http.post(path, content=json.dumps(body).encode(),
                     headers={"content-type": "application/json", **(headers or {})})
