"""Lifecycles: every move the tables allow is taken, every other one refused."""

from __future__ import annotations

import pytest

from ondeck.state.lifecycle import (
    INSTANCE_TRANSITIONS,
    PROBE_TRANSITIONS,
    IllegalTransition,
    InstanceState,
    ProbeState,
    transition,
)


@pytest.mark.parametrize("current", list(InstanceState))
@pytest.mark.parametrize("target", list(InstanceState))
def test_instance_transitions_follow_the_table(
    current: InstanceState, target: InstanceState
) -> None:
    if target in INSTANCE_TRANSITIONS[current]:
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition, match=f"{current} -> {target}"):
            transition(current, target)


def test_a_stop_is_final() -> None:
    for target in (InstanceState.RUNNING, InstanceState.EXITED, InstanceState.LAUNCHING):
        with pytest.raises(IllegalTransition):
            transition(InstanceState.STOPPING, target)


def test_nothing_returns_to_launching() -> None:
    assert all(InstanceState.LAUNCHING not in allowed for allowed in INSTANCE_TRANSITIONS.values())


@pytest.mark.parametrize("current", list(ProbeState))
@pytest.mark.parametrize("target", list(ProbeState))
def test_probe_transitions_follow_the_table(current: ProbeState, target: ProbeState) -> None:
    if target in PROBE_TRANSITIONS[current]:
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition):
            transition(current, target)


def test_every_state_has_a_row() -> None:
    assert set(INSTANCE_TRANSITIONS) == set(InstanceState)
    assert set(PROBE_TRANSITIONS) == set(ProbeState)
