"""Replicas run in different processes: their state must not depend on PYTHONHASHSEED."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hash_under_seed(seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run(
        [sys.executable, "-m", "tests.determinism_workload"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("seed", ["1", "42", "random"])
def test_state_hash_and_snapshot_are_the_same_under_any_hash_seed(seed: str) -> None:
    assert hash_under_seed(seed) == hash_under_seed("0")
