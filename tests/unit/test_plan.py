"""Planning from data: every YAML file in tests/fixtures/plan is facts in, commands out.

A fixture names the desired services (a fingerprint plus any `Service` fields)
and the live instances; `plan` must answer with exactly the expected actions,
and, when the fixture says so, whether it is done, why it waits and when to
look again. A fixture with a `bug:` key documents a known defect as a strict
xfail. The last tests drive whole rollouts step by step and check their bounds.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, assert_never

import pytest
from ruamel.yaml import YAML

from ondeck.spec.model import Service
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.live import Live, LiveInstance, Phase
from ondeck.state.plan import Action, Forget, Plan, Restart, Start, Stop, plan
from ondeck.state.rollout import Progress

FIXTURES = Path(__file__).parents[1] / "fixtures" / "plan"
FIXTURE_KEYS = {"name", "now", "desired", "live", "expect", "bug", "releases"}
EXPECT_KEYS = {"actions", "ordered", "done", "waiting", "wake_at", "releases", "traffic"}


# -- fixture format -----------------------------------------------------------


def desired_service(name: str, fields: dict[str, Any]) -> DesiredService:
    fields = dict(fields)
    fingerprint = str(fields.pop("fingerprint"))
    fields.setdefault("command", ["app"])
    return DesiredService(name, Service.model_validate(fields), fingerprint)


def desired_of(services: dict[str, dict[str, Any]]) -> Desired:
    return Desired(
        "shop",
        "default",
        "rev-desired",
        "process",
        tuple(desired_service(name, fields) for name, fields in sorted(services.items())),
    )


def live_of(instances: list[dict[str, Any]]) -> Live:
    built = tuple(
        LiveInstance(**{"revision": "rev-live", **fields, "phase": Phase(fields["phase"])})
        for fields in instances
    )
    return Live("default", built)


def compact(action: Action) -> str:
    """The fixture spelling of an action: `start SVC FP`, `stop SVC ID`, ..."""
    match action:
        case Start(service, fingerprint):
            return f"start {service} {fingerprint}"
        case Restart(service, instance):
            return f"restart {service} {instance}"
        case Stop(service, instance, _):
            return f"stop {service} {instance}"
        case Forget(service, instance):
            return f"forget {service} {instance}"
        case _:
            assert_never(action)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    unknown = (set(data) - FIXTURE_KEYS) | (set(data["expect"]) - EXPECT_KEYS)
    assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
    return data


def cases(with_bugs: bool = True) -> list[Any]:
    """One param per fixture; a fixture documenting a bug is a strict xfail."""
    params = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        bug = load(path).get("bug")
        if bug and not with_bugs:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=f"bug: {bug}")] if bug else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def check(result: Plan, expect: dict[str, Any]) -> None:
    actions = [compact(a) for a in result.actions]
    if expect.get("ordered"):
        assert actions == expect["actions"]
    else:
        assert Counter(actions) == Counter(expect["actions"])
    if "done" in expect:
        assert result.done is expect["done"], result.waiting
    waiting = expect.get("waiting")
    if isinstance(waiting, int):
        assert len(result.waiting) == waiting, result.waiting
    elif waiting is not None:
        for text in waiting:
            assert any(text in reason for reason in result.waiting), (text, result.waiting)
    if "wake_at" in expect:
        assert result.wake_at == expect["wake_at"]
    for service, fields in (expect.get("releases") or {}).items():
        got = result.progress.get(service)
        if fields is None:
            assert got is None, got
            continue
        assert got is not None, result.progress
        for key, value in fields.items():
            assert got.to_json()[key] == value, (key, got)
    for service, fields in (expect.get("traffic") or {}).items():
        assert dataclasses.asdict(result.traffic[service]) == fields, result.traffic


def releases_of(data: dict[str, Any]) -> dict[str, Progress]:
    return {
        name: Progress.from_json({"service": name, **fields})
        for name, fields in (data.get("releases") or {}).items()
    }


# -- the fixtures --------------------------------------------------------------


def test_there_are_fixtures() -> None:
    assert len(cases()) >= 30


@pytest.mark.parametrize("path", cases())
def test_plan_fixture(path: Path) -> None:
    data = load(path)
    result = plan(
        desired_of(data["desired"]),
        live_of(data["live"] or []),
        float(data["now"]),
        releases_of(data),
    )
    check(result, data["expect"])


@pytest.mark.parametrize("path", cases(with_bugs=False))
def test_plan_acts_once_per_instance_and_starts_only_the_desired_release(path: Path) -> None:
    data = load(path)
    desired = desired_of(data["desired"])
    result = plan(desired, live_of(data["live"] or []), float(data["now"]), releases_of(data))
    touched = [a.instance for a in result.actions if not isinstance(a, Start)]
    assert len(touched) == len(set(touched)), result.actions
    for action in result.actions:
        if isinstance(action, Start):
            want = desired.service(action.service)
            assert want is not None and action.fingerprint == want.fingerprint


# -- whole rollouts, step by step ----------------------------------------------


@dataclasses.dataclass
class Host:
    """A stand-in for the controller and runtime, so `plan` can be called until done.

    Pure planning has no real component to run against: this carries out each
    action on the live records, then lets one tick pass (stopping instances
    go away, started ones become ready).
    """

    instances: list[LiveInstance]
    now: float = 1000.0
    counter: int = 0

    def live(self) -> Live:
        return Live("default", tuple(self.instances))

    def apply(self, action: Action) -> None:
        match action:
            case Start(service, fingerprint):
                self.counter += 1
                started = LiveInstance(
                    f"{service}-n{self.counter}",
                    service,
                    fingerprint,
                    "rev-new",
                    Phase.RUNNING,
                    started_at=self.now,
                )
                self.instances.append(started)
            case Stop(_, instance, _):
                self.replace(instance, phase=Phase.STOPPING, ready=False)
            case Restart(_, instance):
                self.replace(instance, phase=Phase.RUNNING, ready=False, started_at=self.now)
            case Forget(_, instance):
                self.instances = [i for i in self.instances if i.id != instance]
            case _:
                assert_never(action)

    def replace(self, instance: str, **changes: Any) -> None:
        self.instances = [
            dataclasses.replace(i, **changes) if i.id == instance else i for i in self.instances
        ]

    def tick(self) -> None:
        self.now += 1
        self.instances = [
            dataclasses.replace(i, ready=True)
            for i in self.instances
            if i.phase is not Phase.STOPPING
        ]


def old_set(replicas: int) -> list[LiveInstance]:
    return [
        LiveInstance(f"web-{n}", "web", "f1", "rev-old", Phase.RUNNING, ready=True, started_at=n)
        for n in range(1, replicas + 1)
    ]


def rollout(**fields: Any) -> Desired:
    return desired_of({"web": {"fingerprint": "f2", **fields}})


def drive(desired: Desired, host: Host, check_step: Any, steps: int = 30) -> list[Plan]:
    """Plan, apply, check, tick until the plan is done; the plans made on the way."""
    plans: list[Plan] = []
    releases: dict[str, Progress] = {}
    for _ in range(steps):
        result = plan(desired, host.live(), host.now, releases)
        plans.append(result)
        for name, progress in result.progress.items():
            if progress is None:
                releases.pop(name, None)
            else:
                releases[name] = progress
        if result.done:
            return plans
        for action in result.actions:
            host.apply(action)
        check_step(host)
        host.tick()
        if not result.actions and result.wake_at is not None:
            host.now = max(host.now, result.wake_at)  # nothing to do until then
    pytest.fail(f"no convergence in {steps} steps: {plans[-1]}")


def counted(host: Host) -> list[LiveInstance]:
    return [i for i in host.instances if i.phase is not Phase.STOPPING]


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable"), [(2, 1, 0), (3, 1, 0), (2, 0, 1), (4, 2, 1), (3, 0, 2)]
)
def test_rolling_update_stays_within_its_bounds(
    replicas: int, surge: int, unavailable: int
) -> None:
    bounds = {"strategy": "rolling", "max_surge": surge, "max_unavailable": unavailable}
    host = Host(old_set(replicas))

    def within_bounds(host: Host) -> None:
        assert len(counted(host)) <= replicas + surge
        assert sum(1 for i in counted(host) if i.ready) >= replicas - unavailable

    drive(rollout(replicas=replicas, rollout=bounds), host, within_bounds)
    assert sorted(i.fingerprint for i in host.instances) == ["f2"] * replicas
    assert all(i.ready for i in host.instances)


def test_blue_green_never_runs_a_partial_new_set_alone() -> None:
    host = Host(old_set(3))

    def old_kept_until_new_ready(host: Host) -> None:
        new_ready = sum(1 for i in counted(host) if i.fingerprint == "f2" and i.ready)
        old_left = sum(1 for i in counted(host) if i.fingerprint == "f1")
        assert old_left in (0, 3)
        assert old_left == 3 or new_ready == 3

    drive(rollout(replicas=3, rollout={"strategy": "blue-green"}), host, old_kept_until_new_ready)
    assert sorted(i.fingerprint for i in host.instances) == ["f2"] * 3


def test_recreate_never_mixes_versions_among_counted_instances() -> None:
    host = Host(old_set(2))

    def one_version(host: Host) -> None:
        assert len({i.fingerprint for i in counted(host)}) <= 1

    plans = drive(rollout(replicas=2, rollout={"strategy": "recreate"}), host, one_version)
    first = [compact(a) for a in plans[0].actions]
    assert sorted(first) == ["stop web web-1", "stop web web-2"]


@pytest.mark.parametrize("strategy", ["blue-green", "canary"])
def test_progressive_release_keeps_the_old_set_serving_until_promoted(strategy: str) -> None:
    host = Host(old_set(2))
    steps = [{"weight": 20}, {"pause": "5s"}, {"weight": 60}, {"pause": "5s"}]
    steps = steps if strategy == "canary" else []
    spec = {"strategy": strategy, "steps": steps}
    spec |= {"keep_old": "10s"} if strategy == "blue-green" else {}  # canary does not read it

    def old_serves_until_the_new_set_is_ready(host: Host) -> None:
        new_ready = sum(1 for i in counted(host) if i.fingerprint == "f2" and i.ready)
        old_left = sum(1 for i in counted(host) if i.fingerprint == "f1")
        assert old_left == 2 or new_ready == 2

    plans = drive(rollout(replicas=2, rollout=spec), host, old_serves_until_the_new_set_is_ready)
    weights = [p.traffic["web"].weight for p in plans if p.traffic["web"].canary == "f2"]
    assert weights == sorted(weights)  # traffic only ever moves forward
    assert ({20, 60} if strategy == "canary" else {100}) <= set(weights)
    assert sorted(i.fingerprint for i in host.instances) == ["f2"] * 2
    assert plans[-1].traffic["web"].canary is None  # released: one plain pool again
