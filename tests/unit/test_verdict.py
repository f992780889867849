"""Sync verdicts from data: every YAML file in tests/fixtures/verdict is facts in, verdict out.

A fixture names the desired fingerprints, the live instances, the releases in
flight and the plan's `done`/`waiting`; `verdict` must answer the expected
result (null: the named no-op, the sync goes on) and a reason containing the
expected text. Fixtures with an `analysis:` key check `analysis_step` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from ondeck.state.live import Live, LiveInstance, Phase
from ondeck.state.rollout import Progress, Stage
from ondeck.state.verdict import CONTINUE, PROGRESS_DEADLINE, analysis_step, verdict

FIXTURES = Path(__file__).parents[1] / "fixtures" / "verdict"
KEYS = {"name", "now", "started", "deadline", "desired", "live", "releases", "plan", "expect"}
KEYS |= {"analysis", "deadlines"}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    assert not set(data) - KEYS, f"{path.name}: unknown keys {sorted(set(data) - KEYS)}"
    return data


def releases_of(raw: dict[str, dict[str, Any]] | None) -> dict[str, Progress]:
    return {
        name: Progress(**{"service": name, **fields, "stage": Stage(fields["stage"])})
        for name, fields in (raw or {}).items()
    }


def live_of(instances: list[dict[str, Any]]) -> Live:
    return Live(
        "default",
        tuple(
            LiveInstance(**{"revision": "rev", **fields, "phase": Phase(fields["phase"])})
            for fields in instances
        ),
    )


def fixtures(kind: str) -> list[Any]:
    return [
        pytest.param(path, id=path.stem)
        for path in sorted(FIXTURES.glob("*.yaml"))
        if ("analysis" in load(path)) == (kind == "analysis")
    ]


@pytest.mark.parametrize("path", fixtures("verdict"))
def test_verdict(path: Path) -> None:
    data = load(path)
    found = verdict(
        data["desired"],
        live_of(data["live"]),
        releases_of(data.get("releases")),
        data["plan"]["done"],
        data["plan"].get("waiting", []),
        data["started"],
        data["now"],
        data.get("deadline", PROGRESS_DEADLINE),
        data.get("deadlines"),
    )
    expect = data["expect"]
    assert (found.result.value if found.result else None) == expect["result"], found
    if expect["result"] is None:
        assert found is CONTINUE and not found.final
    else:
        assert found.final
    assert expect.get("reason", "") in (found.reason or "")


@pytest.mark.parametrize("path", fixtures("analysis"))
def test_analysis_step(path: Path) -> None:
    data = load(path)
    figure = data["analysis"]
    (before,) = releases_of(data["releases"]).values()
    after = analysis_step(before, figure["ok"], figure["reason"], figure["limit"], data["now"])
    for key, value in data["expect"]["release"].items():
        assert after.to_json()[key] == value, (key, after)


def test_every_fixture_is_used() -> None:
    assert len(fixtures("verdict")) + len(fixtures("analysis")) == len(
        list(FIXTURES.glob("*.yaml"))
    )
