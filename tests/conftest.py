"""Test-wide settings.

Under CI (the `CI` environment variable, set by the CI runner), hypothesis is
derandomized: every run of the same code explores the same examples, so a red
CI run is reproducible and never a matter of luck. Local runs keep exploring new
examples each time.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

