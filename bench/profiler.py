"""Flame graphs of the benchmark's processes with py-spy: `bench.tps --profile DIR`.

One `FlameGraphs` records every process of one measured window at once (the
nodes found on this machine and the load generator processes), each into
`DIR/<stem>-<name>.svg`, with

    py-spy record --nonblocking --format flamegraph --rate 100 --duration D --pid PID -o FILE

`--nonblocking` reads the process's memory without stopping it, so the run is
measured as it would have been (py-spy's own CPU lands on the machine, not in
the profiled processes). py-spy samples busy threads only, so a process idle
throughout the recording gets no flame graph. py-spy needs ptrace access to the
process: when it cannot attach (no permission, a process that is not Python), or
has no sample, the recording is reported as failed with py-spy's own reason and
the benchmark goes on.
Every py-spy process started here is stopped by `stop` (also after a failure).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RATE_PER_S = 100
FINISH_GRACE_S = 30.0
"""After its --duration, how long py-spy may take to write its SVG before it is stopped."""
STOP_GRACE_S = 5.0
ERROR_CHARS_MAX = 300
NO_SAMPLES = "No stack counts found"
"""py-spy's error when every sample found the process idle (it samples busy threads only)."""


def failure_reason(output: str) -> str:
    """The line of py-spy's output that says why it failed (its `Error:` line, if any)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    reason = errors[0] if errors else lines[-1] if lines else "no output"
    if NO_SAMPLES in output:
        reason += " (the process was idle throughout the recording)"
    return reason[:ERROR_CHARS_MAX]


def py_spy_path() -> str | None:
    """The py-spy executable: next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def record_seconds(window_s: float) -> int:
    """py-spy takes whole seconds: the longest recording that fits in the window, 1 at least."""
    return max(1, math.floor(window_s))


@dataclass
class _Recording:
    name: str
    pid: int
    svg: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class FlameGraphs:
    """py-spy recordings of `pids` (name -> pid) into `directory`/<stem>-<name>.svg."""

    directory: Path
    stem: str
    pids: Mapping[str, int]
    duration_s: int
    py_spy: str
    _recordings: list[_Recording] = field(default_factory=list)

    def start(self) -> None:
        """Start one py-spy per process; each records for `duration_s` seconds from now."""
        assert not self._recordings, "a FlameGraphs records once"
        assert self.duration_s >= 1
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            recording = _Recording(name, pid, self.directory / f"{self.stem}-{name}.svg")
            recording.svg.unlink(missing_ok=True)  # a stale SVG must not pass for a new one
            recording.log = self.directory / f".{self.stem}-{name}.py-spy.log"
            with open(recording.log, "wb") as log_file:
                recording.process = subprocess.Popen(
                    [self.py_spy, "record", "--nonblocking", "--format", "flamegraph",
                     "--rate", str(RATE_PER_S), "--duration", str(self.duration_s),
                     "--pid", str(pid), "-o", str(recording.svg)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._recordings.append(recording)

    def finish(self) -> tuple[dict[str, str], dict[str, str]]:
        """Wait (bounded) for every recording: ({name: svg path}, {name: why it failed})."""
        deadline = time.monotonic() + self.duration_s + FINISH_GRACE_S
        written: dict[str, str] = {}
        failed: dict[str, str] = {}
        for recording in self._recordings:
            assert recording.process is not None and recording.log is not None
            try:
                status = recording.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._end(recording.process)
                recording.svg.unlink(missing_ok=True)
                failed[recording.name] = (f"py-spy did not finish within "
                                          f"{self.duration_s + FINISH_GRACE_S:.0f} s")
                continue
            output = recording.log.read_text(encoding="utf-8", errors="replace").strip()
            recording.log.unlink(missing_ok=True)
            if status == 0 and recording.svg.is_file() and recording.svg.stat().st_size > 0:
                written[recording.name] = str(recording.svg)
            else:
                recording.svg.unlink(missing_ok=True)  # py-spy may leave an empty graph
                failed[recording.name] = (f"py-spy exited {status} on pid {recording.pid}: "
                                          f"{failure_reason(output)}")
        return written, failed

    def stop(self) -> None:
        """Stop every py-spy still running (after an interrupt or a failed run)."""
        for recording in self._recordings:
            if recording.process is not None:
                self._end(recording.process)
            if recording.log is not None:
                recording.log.unlink(missing_ok=True)

    @staticmethod
    def _end(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)
