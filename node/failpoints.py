"""Named fail points for fault-injection tests.

Off unless the environment variable RAFTWALLET_FAILPOINTS names some, e.g.

    RAFTWALLET_FAILPOINTS="apply.before=raise@12,saga.after_debit=crash"

Each item is `name=action[@position]`: `crash` ends the process at once
(os._exit, like kill -9), `raise` raises FailPointError, `delay:MS` sleeps. With
`@position` the action fires only when the partition applies that position.
When the variable is unset, `hit()` is one dict lookup on an empty dict.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

ENV_VAR = "RAFTWALLET_FAILPOINTS"
CRASH_EXIT_CODE = 137


class FailPointError(RuntimeError):
    """Raised by a fail point whose action is `raise`."""


@dataclass(frozen=True, slots=True)
class _Action:
    kind: str
    delay_s: float
    position: int | None


def _parse(spec: str) -> dict[str, _Action]:
    actions: dict[str, _Action] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, at = action.partition("@")
        position = int(at) if at else None
        if action.startswith("delay:"):
            actions[name] = _Action("delay", int(action.removeprefix("delay:")) / 1000, position)
        elif action in ("crash", "raise"):
            actions[name] = _Action(action, 0.0, position)
        else:
            raise ValueError(f"{ENV_VAR}: unknown action {action!r} for fail point {name!r}")
    return actions


_ACTIVE = _parse(os.environ.get(ENV_VAR, ""))


def hit(name: str, position: int | None = None) -> None:
    """Run the action configured for fail point `name`, if any."""
    action = _ACTIVE.get(name)
    if action is None or (action.position is not None and action.position != position):
        return
    if action.kind == "crash":
        sys.stderr.write(f"fail point {name}: crashing the process\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
    if action.kind == "raise":
        raise FailPointError(f"fail point {name}")
    time.sleep(action.delay_s)
