"""Canary by replica ratio (kube/canary.py): pods per weight, and what each step does."""

from __future__ import annotations

import pytest

from ondeck.kube.canary import Move, decide, share, split
from ondeck.spec.model import Step


@pytest.mark.parametrize(
    ("replicas", "weight", "pods"),
    [
        (4, 25, (1, 3)),
        (4, 10, (1, 3)),  # coarse: 10% asked, 25% given (granularity 1/replicas)
        (4, 50, (2, 2)),
        (4, 75, (3, 1)),
        (4, 100, (4, 0)),
        (10, 10, (1, 9)),
        (10, 33, (4, 6)),
        (1, 10, (1, 1)),  # one replica: the stable pod stays while any traffic is its own
        (1, 100, (1, 0)),
        (3, 0, (0, 3)),
    ],
)
def test_weights_become_whole_pods(replicas: int, weight: int, pods: tuple[int, int]) -> None:
    assert split(replicas, weight) == pods


def test_the_share_is_what_the_pods_give() -> None:
    assert share(*split(4, 10)) == 0.25
    assert share(0, 0) == 0.0


STEPS = [Step(weight=25), Step(pause=30.0), Step(weight=50), Step(pause="manual")]


def test_each_step_decides_what_happens_now() -> None:
    assert decide(STEPS, 0, 1000.0, 1000.0).move is Move.WEIGHT
    assert decide(STEPS, 0, 1000.0, 1000.0).weight == 25
    paused = decide(STEPS, 1, 1000.0, 1010.0)
    assert paused.move is Move.PAUSE and paused.left == 20.0
    assert decide(STEPS, 1, 1000.0, 1030.0).move is Move.NEXT
    assert decide(STEPS, 2, 0.0, 0.0).weight == 50
    assert decide(STEPS, 3, 0.0, 1e9).move is Move.MANUAL  # no time ends a manual pause
    assert decide(STEPS, 4, 0.0, 0.0).move is Move.PROMOTE
    assert decide([], 0, 0.0, 0.0).move is Move.PROMOTE
