"""Test-wide settings.

Under CI (the `CI` environment variable, set by the CI runner), hypothesis is
derandomized: every run of the same code explores the same examples, so a red
CI run is reproducible and never a matter of luck. Local runs keep exploring new
examples each time.
"""

from __future__ import annotations

import os
from typing import Final

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


CHAOS_MODULES: Final = frozenset({"tests.chaos.test_chaos", "tests.chaos.test_network"})
"""Modules that create network namespaces and tmpfs mounts and load the machine most."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's `--dist loadgroup` (`make test` runs two workers).

    A module's tests stay on one worker, in file order, so a module-scoped cluster is
    started once; the chaos modules share one worker, so that at most one of them runs at
    a time. Without xdist the marks change nothing.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        module = item.nodeid.split("::", 1)[0].removesuffix(".py").replace("/", ".")
        group = "chaos" if module in CHAOS_MODULES else module
        item.add_marker(pytest.mark.xdist_group(group))
