"""What pysyncobj reports to the code outside node.raft, in that code's terms.

A proposal's callback (`PartitionReplica.propose`, `MetadataGroup.propose`) gets
`(result, error)`, where `error` is one of pysyncobj's `FAIL_REASON` codes: success,
a failure that certainly applied nothing (safe to retry), or one whose outcome is
unknown (the entry may still commit). A group whose Raft port cannot be bound fails
its construction with pysyncobj's `SyncObjException("BindError")`.

The rest of the node asks these questions here, so that pysyncobj stays inside
node.raft (an import-linter contract).
"""

from __future__ import annotations

from typing import Final

from pysyncobj import FAIL_REASON, SyncObjException

REQUEST_DENIED: Final[int] = FAIL_REASON.REQUEST_DENIED
"""The error a proposer reports itself for a proposal that raised before reaching its group
(certainly not applied)."""

_CERTAINLY_NOT_APPLIED: Final = frozenset({
    FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED,
    FAIL_REASON.NOT_LEADER, FAIL_REASON.REQUEST_DENIED,
})


def succeeded(error: int | None) -> bool:
    """The proposal was applied (its result is the group's answer)."""
    return bool(error == FAIL_REASON.SUCCESS)


def certainly_not_applied(error: int | None) -> bool:
    """The proposal failed without being applied, and never will be: safe to propose again.

    No leader, a full queue, discarded or refused; not a leader change or an unknown
    outcome, after which the entry may still commit.
    """
    return error in _CERTAINLY_NOT_APPLIED


def is_port_in_use(exc: BaseException) -> bool:
    """`exc` is the error a group's construction raises when its Raft port cannot be bound."""
    return isinstance(exc, SyncObjException) and bool(exc.errorCode == "BindError")
