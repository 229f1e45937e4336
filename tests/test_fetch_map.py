"""How a starting node asks the cluster file's nodes for the map.

node.membership.reconciler.fetch_map.
"""

from __future__ import annotations

import pytest

from node.cluster_map import ClusterMap, bootstrap_map
from node.config import local_cluster_config
from node.membership import reconciler


def a_map() -> ClusterMap:
    ports = iter(range(20_000, 30_000, 10))
    return bootstrap_map(local_cluster_config("unit", 3, 2, lambda count: next(ports)))


def answers(monkeypatch: pytest.MonkeyPatch, *replies: reconciler.FetchedMap) -> list[int]:
    """Make fetch_map_once give `replies` in turn (the last one forever); count the calls."""
    calls: list[int] = []

    def fake(addresses: list[str], credentials: object, timeout_s: float) -> reconciler.FetchedMap:
        calls.append(1)
        return replies[min(len(calls), len(replies)) - 1]

    monkeypatch.setattr(reconciler, "fetch_map_once", fake)
    monkeypatch.setattr("node.membership.reconciler.time.sleep", lambda seconds: None)
    return calls


def test_seeds_that_are_not_listening_are_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = answers(monkeypatch, reconciler.FetchedMap(None, some_seed_silent=False))
    assert reconciler.fetch_map(["a:1", "b:2"], silent_wait_s=30.0) is None
    assert len(calls) == 1, "a new cluster's first node must not wait for the others"


def test_a_silent_seed_is_asked_again_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster_map = a_map()
    calls = answers(monkeypatch, reconciler.FetchedMap(None, some_seed_silent=True),
                    reconciler.FetchedMap(None, some_seed_silent=True),
                    reconciler.FetchedMap(cluster_map, some_seed_silent=False))
    assert reconciler.fetch_map(["a:1"], silent_wait_s=30.0) == cluster_map
    assert len(calls) == 3


def test_a_joining_node_asks_until_a_seed_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster_map = a_map()
    calls = answers(monkeypatch, reconciler.FetchedMap(None, some_seed_silent=False),
                    reconciler.FetchedMap(None, some_seed_silent=False),
                    reconciler.FetchedMap(cluster_map, some_seed_silent=False))
    assert reconciler.fetch_map(["a:1"], must_answer_s=30.0) == cluster_map
    assert len(calls) == 3


def test_asking_gives_up_once_the_wait_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    answers(monkeypatch, reconciler.FetchedMap(None, some_seed_silent=True))
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr("node.membership.reconciler.time.monotonic", lambda: float(next(clock)))
    assert reconciler.fetch_map(["a:1"], must_answer_s=30.0, silent_wait_s=30.0) is None
