"""Helpers of the HTTP gateway's tests: serving the app, posting JSON, reading problems.

`doc_example(name)` is the JSON block that docs/http-api.md marks with
`<!-- example: NAME -->`: the tests compare it with what the gateway answers, so the
documentation's examples stay true.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from node.gateway.problems import problem_type, title_of
from tests.cluster_harness import WAIT_S, wait_until

HTTP_API_DOC = Path(__file__).resolve().parent.parent / "docs" / "http-api.md"


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


def assert_problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    """`response` is an RFC 9457 problem of `status` and reason `code` whose detail has
    every one of `words`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    problem: dict[str, Any] = response.json()
    assert problem["type"] == problem_type(code), response.text
    assert problem["title"] == title_of(code), response.text
    assert problem["status"] == status
    assert problem["error"] == {"code": code, "message": problem["detail"]}, response.text
    assert "transaction_id" in problem
    for word in words:
        assert word in problem["detail"], response.text
    assert "Traceback" not in response.text
    return problem


_EXAMPLE_RE = re.compile(r"<!-- example: ([a-z0-9-]+) -->\s*```(?:json|http)\n(.*?)```", re.S)


def doc_example(name: str) -> str:
    """The text of the block marked `<!-- example: NAME -->` in docs/http-api.md."""
    found = {match[1]: match[2] for match in _EXAMPLE_RE.finditer(HTTP_API_DOC.read_text())}
    assert name in found, f"docs/http-api.md has no example {name!r} (it has {sorted(found)})"
    return found[name]


def documented_answer(name: str) -> tuple[int, dict[str, str], Any]:
    """A documented answer: an `http` block of a status line, headers, a blank line and
    a JSON body, as (status, headers with lower-case names, body)."""
    head, _, body = doc_example(name).partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_documented(name: str, response: httpx.Response,
                      replace: dict[str, str] | None = None) -> None:
    """`response` is the answer that docs/http-api.md shows as example `name`, once the
    values of the test run in `replace` (account names, ids) become the documented ones.
    The documented headers must be among the response's, with the same values."""
    status, headers, body = documented_answer(name)
    text = response.text
    for actual, documented in (replace or {}).items():
        text = text.replace(actual, documented)
    assert (response.status_code, json.loads(text)) == (status, body), response.text
    for key, value in headers.items():
        assert response.headers.get(key) == value, (key, response.headers)
