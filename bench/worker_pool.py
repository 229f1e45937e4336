"""Spawned load-generator processes driven over pipes (used by bench.tps and bench.peers).

Each worker process runs `target(conn, index, progress, *extra_args)`: it answers
every job sent on `conn`, reports its progress in `progress[index]`, and ends on
the pool's stop message. Processes are spawned, never forked: a forked process
that uses gRPC hangs.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

WORKER_TIMEOUT_S = 120.0
"""Longest wait for one worker's answer (a run plus its warm-up, with room to spare)."""


@dataclass
class Worker:
    process: BaseProcess
    conn: Connection


class WorkerPool:
    """`count` worker processes; `close` stops them all (also after a failure).

    `failed_type` is the message a worker sends when its job failed, with a
    `message` attribute; `error` builds the exception raised for it, for a worker
    that died, and for one that did not answer in time.
    """

    def __init__(self, count: int, target: Callable[..., None], extra_args: tuple[Any, ...],
                 name: str, process_prefix: str, stop_message: object,
                 failed_type: type[Any], error: Callable[[str], Exception]) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process using gRPC
        self.progress = context.RawArray("q", count)
        self.name = name
        self._stop_message = stop_message
        self._failed_type = failed_type
        self._error = error
        self.workers: list[Worker] = []
        for index in range(count):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=target,
                                      args=(child_end, index, self.progress, *extra_args),
                                      name=f"{process_prefix}-{index}",
                                      daemon=True)
            process.start()
            child_end.close()
            self.workers.append(Worker(process, parent_end))

    def __len__(self) -> int:
        return len(self.workers)

    def send(self, index: int, job: object) -> None:
        self.workers[index].conn.send(job)

    def receive(self, index: int, timeout_s: float = WORKER_TIMEOUT_S) -> object:
        worker = self.workers[index]
        deadline = time.monotonic() + timeout_s
        while not worker.conn.poll(0.2):
            if not worker.process.is_alive():
                raise self._error(f"{self.name} {index} exited ({worker.process.exitcode})")
            if time.monotonic() > deadline:
                raise self._error(f"{self.name} {index} did not answer in {timeout_s:.0f} s")
        answer = worker.conn.recv()
        if isinstance(answer, self._failed_type):
            raise self._error(str(answer.message))
        return answer

    def gather(self, jobs: Sequence[object | None]) -> list[object]:
        """Send job i to worker i (None: nothing) and collect the answers in order."""
        active = [i for i, job in enumerate(jobs) if job is not None]
        for i in active:
            self.send(i, jobs[i])
        return [self.receive(i) for i in active]

    def reset_progress(self) -> None:
        for index in range(len(self.progress)):
            self.progress[index] = 0

    def progress_total(self) -> int:
        return int(sum(self.progress))

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process.pid is not None]

    def close(self, hurry: bool = False) -> None:
        """Stop every worker: politely when idle, at once (SIGTERM) when `hurry`.

        A worker in the middle of a run reads no job until the run ends, so after an
        interrupt or a failure it is terminated rather than asked.
        """
        for worker in self.workers:
            if hurry:
                worker.process.terminate()
                continue
            try:
                worker.conn.send(self._stop_message)
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=2 if hurry else 10)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
