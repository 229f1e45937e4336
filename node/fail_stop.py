"""Fail-stop: the node process ends at once when a replica cannot apply or cannot persist.

Two causes, two exit statuses (docs/operations.md, "Alerts"):
- `HALT_EXIT_CODE` (70): an entry could not be applied, or the Raft log would
  change under an applied entry. Going on would let this replica diverge.
- `STORAGE_FAILED_EXIT_CODE` (74, sysexits' EX_IOERR): a journal, meta or
  archive write or fsync failed (a full disk, an I/O error). What is on disk is
  then unknown, and a leader that cannot write must not go on heartbeating:
  ending the process lets the other replicas elect a leader within the election
  timeout, and a restart re-reads and re-checks every file.

The storage files (node/raft/journal.py, node/archive/event_archive.py) report a failure through
`storage_failed()`; it ends the process only once the node has called
`halt_on_storage_failure()`, so that unit tests of those files can observe the
failure as an exception instead.
"""

from __future__ import annotations

import logging
import os
from typing import Final

log = logging.getLogger(__name__)

HALT_EXIT_CODE: Final = 70
STORAGE_FAILED_EXIT_CODE: Final = 74

_halt_on_storage_failure = False


def halt(reason: str, exit_code: int = HALT_EXIT_CODE) -> None:
    """End the whole process now (no clean-up: nothing more may be written or sent)."""
    log.critical("replica halted", extra={"reason": reason, "exit_code": exit_code})
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(exit_code)


def halt_on_storage_failure() -> None:
    """From now on, a failed storage write ends the process (the node calls this at start)."""
    global _halt_on_storage_failure
    _halt_on_storage_failure = True


def storage_failed(what: str) -> None:
    """A durable write failed: end the process if the node asked for it, else return."""
    if _halt_on_storage_failure:
        halt(f"storage failed: {what}", STORAGE_FAILED_EXIT_CODE)
