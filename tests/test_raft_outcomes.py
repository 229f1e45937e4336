"""node/raft/outcomes.py: pysyncobj's proposal errors and bind failure, as the node reads them."""

from __future__ import annotations

import socket

import pytest
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException

from node.raft import outcomes

EVERY_REASON = {name: value for name, value in vars(FAIL_REASON).items() if name.isupper()}


def test_only_success_succeeded() -> None:
    assert outcomes.succeeded(FAIL_REASON.SUCCESS)
    assert not outcomes.succeeded(None)  # no answer before the entry timeout
    assert [n for n, v in EVERY_REASON.items() if outcomes.succeeded(v)] == ["SUCCESS"]


def test_what_certainly_applied_nothing_is_safe_to_retry_and_the_rest_is_not() -> None:
    retried = {n for n, v in EVERY_REASON.items() if outcomes.certainly_not_applied(v)}
    assert retried == {"QUEUE_FULL", "MISSING_LEADER", "DISCARDED", "NOT_LEADER",
                       "REQUEST_DENIED"}
    # A leader change or an unknown outcome may still commit; no answer at all neither.
    assert not outcomes.certainly_not_applied(FAIL_REASON.LEADER_CHANGED)
    assert not outcomes.certainly_not_applied(FAIL_REASON.UNKNOWN_OUTCOME)
    assert not outcomes.certainly_not_applied(None)
    assert outcomes.certainly_not_applied(outcomes.REQUEST_DENIED)


def test_a_bind_error_is_told_from_other_errors() -> None:
    assert outcomes.is_port_in_use(SyncObjException("BindError"))
    assert not outcomes.is_port_in_use(SyncObjException("Timeout"))
    assert not outcomes.is_port_in_use(OSError(98, "Address already in use"))


def test_a_group_on_a_port_in_use_fails_with_what_is_port_in_use_recognises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        conf = SyncObjConf(autoTick=False, maxBindRetries=1, bindRetryTime=0.01)
        with pytest.raises(Exception) as excinfo:  # which one is the point
            SyncObj(f"127.0.0.1:{port}", [], conf)
    assert outcomes.is_port_in_use(excinfo.value)
