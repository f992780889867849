"""The rest of the pure core: diff's sync verdicts, health and its order, backoff, render."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from ondeck.spec.model import Service, Spec
from ondeck.state.desired import Desired, DesiredService, fingerprint, render
from ondeck.state.diff import ServiceDiff, Sync, diff, overall
from ondeck.state.health import (
    Health,
    next_failures,
    restart_delay,
    service_health,
    worst,
)
from ondeck.state.live import Live, LiveInstance, Phase


def desired(**services: dict[str, Any]) -> Desired:
    """Services by name, each a fingerprint `fp` plus any `Service` fields."""
    built = []
    for name, given in sorted(services.items()):
        fields = {"command": ["app"], **given}
        fp = str(fields.pop("fp"))
        built.append(DesiredService(name, Service.model_validate(fields), fp))
    return Desired("shop", "default", "rev", "process", tuple(built))


def inst(id: str, fp: str = "f2", phase: Phase = Phase.RUNNING, **fields: Any) -> LiveInstance:
    service = id.rsplit("-", 1)[0]
    return LiveInstance(id, service, fp, "rev", phase, **{"ready": True, **fields})


def live(*instances: LiveInstance) -> Live:
    return Live("default", instances)


def exited(id: str, code: int | None, fp: str = "f2") -> LiveInstance:
    return inst(id, fp, Phase.EXITED, ready=False, exit_code=code, failures=1, exited_at=900.0)


# -- diff ----------------------------------------------------------------------


def only(diffs: list[ServiceDiff]) -> ServiceDiff:
    assert len(diffs) == 1
    return diffs[0]


def test_diff_in_sync_has_no_reasons() -> None:
    d = only(diff(desired(web={"fp": "f2", "replicas": 2}), live(inst("web-1"), inst("web-2"))))
    assert d == ServiceDiff("web", Sync.SYNCED, ())


def test_diff_missing_service_counts_what_is_wanted() -> None:
    d = only(diff(desired(web={"fp": "f2", "replicas": 2}), live()))
    assert d.sync is Sync.OUT_OF_SYNC
    assert d.reasons == ("0 instance(s) of the current release, want 2",)


def test_diff_stale_instances_name_the_wanted_release() -> None:
    d = only(diff(desired(web={"fp": "f2"}), live(inst("web-1", "f1"))))
    assert d.sync is Sync.OUT_OF_SYNC
    assert d.reasons == (
        "1 instance(s) run an older release (want f2)",
        "0 instance(s) of the current release, want 1",
    )


def test_diff_extra_instance_is_drift() -> None:
    d = only(diff(desired(web={"fp": "f2"}), live(inst("web-1"), inst("web-2"))))
    assert d.sync is Sync.OUT_OF_SYNC
    assert d.reasons == ("2 instance(s) of the current release, want 1",)


def test_diff_service_not_in_the_spec_is_to_prune() -> None:
    diffs = diff(desired(web={"fp": "f2"}), live(inst("web-1"), inst("ghost-1", "zz")))
    assert [d.name for d in diffs] == ["ghost", "web"]
    assert diffs[0] == ServiceDiff(
        "ghost", Sync.OUT_OF_SYNC, ("not in the spec: 1 instance(s) to prune",)
    )
    assert overall(diffs) is Sync.OUT_OF_SYNC


def test_diff_ignores_stopping_instances() -> None:
    stopping = inst("web-2", "f1", Phase.STOPPING, ready=False)
    gone = inst("old-1", "f1", Phase.STOPPING, ready=False)
    diffs = diff(desired(web={"fp": "f2"}), live(inst("web-1"), stopping, gone))
    assert [d.sync for d in diffs] == [Sync.SYNCED, Sync.SYNCED]
    assert overall(diffs) is Sync.SYNCED


@pytest.mark.parametrize(
    ("policy", "code"), [("never", 1), ("never", 0), ("on-failure", 0)], ids=str
)
def test_diff_exit_the_restart_policy_leaves_alone_is_synced(policy: str, code: int) -> None:
    want = desired(web={"fp": "f2", "restart": {"policy": policy}})
    assert only(diff(want, live(exited("web-1", code)))).sync is Sync.SYNCED


@pytest.mark.parametrize(
    ("policy", "code", "text"),
    [
        ("always", 0, "web-1 exited with code 0"),
        ("always", 1, "web-1 exited with code 1"),
        ("on-failure", 3, "web-1 exited with code 3"),
        ("always", -9, "web-1 killed by signal 9"),
        ("always", None, "web-1 exited (code unknown: adopted process)"),
    ],
)
def test_diff_crashed_instance_is_out_of_sync(policy: str, code: int | None, text: str) -> None:
    want = desired(web={"fp": "f2", "restart": {"policy": policy}})
    d = only(diff(want, live(exited("web-1", code))))
    assert d == ServiceDiff("web", Sync.OUT_OF_SYNC, (text,))


def test_overall_of_nothing_is_synced() -> None:
    assert overall([]) is Sync.SYNCED
    assert diff(desired(), live()) == []


# -- health --------------------------------------------------------------------

ORDER = [
    Health.HEALTHY,
    Health.SUSPENDED,
    Health.PROGRESSING,
    Health.MISSING,
    Health.DEGRADED,
    Health.UNKNOWN,
]


def test_health_order_is_argo_cds() -> None:
    assert sorted(Health, key=lambda h: h.rank) == ORDER
    for better, worse in pairwise(ORDER):
        assert worse.is_worse(better)
        assert not better.is_worse(worse)
        assert not better.is_worse(better)


def test_worst_is_the_aggregate() -> None:
    assert worst([]) is Health.HEALTHY
    assert worst([Health.HEALTHY, Health.PROGRESSING, Health.SUSPENDED]) is Health.PROGRESSING
    assert worst([Health.DEGRADED, Health.MISSING]) is Health.DEGRADED
    assert worst(iter([Health.UNKNOWN, Health.DEGRADED])) is Health.UNKNOWN


def test_service_health_healthy_when_all_replicas_ready() -> None:
    verdict = service_health(2, [inst("web-1"), inst("web-2")])
    assert verdict.health is Health.HEALTHY
    assert service_health(0, []).health is Health.HEALTHY


@pytest.mark.parametrize(
    ("replicas", "instances"),
    [
        (2, [inst("web-1"), inst("web-2", ready=False)]),
        (2, [inst("web-1")]),
        (2, [inst("web-1"), inst("web-2"), inst("web-3")]),
        (2, [inst("web-1"), inst("web-2", phase=Phase.STOPPING, ready=False)]),
    ],
    ids=["one-starting", "short", "one-extra", "stopping-not-counted"],
)
def test_service_health_progressing(replicas: int, instances: list[LiveInstance]) -> None:
    assert service_health(replicas, instances).health is Health.PROGRESSING


def test_service_health_progressing_says_how_many_are_ready() -> None:
    verdict = service_health(2, [inst("web-1"), inst("web-2", ready=False)])
    assert verdict.reason == "1/2 ready"


def test_service_health_missing_with_no_counted_instance() -> None:
    verdict = service_health(2, [inst("web-1", phase=Phase.STOPPING, ready=False)])
    assert verdict.health is Health.MISSING
    assert verdict.reason == "no instance running (want 2)"


def test_service_health_degraded_names_the_exit_code() -> None:
    verdict = service_health(2, [inst("web-1"), exited("web-2", 3)])
    assert verdict.health is Health.DEGRADED
    assert verdict.reason is not None and "code 3" in verdict.reason


def test_service_health_degraded_when_a_health_check_fails() -> None:
    failing = inst("web-2", ready=False, failing=True, last_error="GET /healthz: 500")
    verdict = service_health(2, [inst("web-1"), failing])
    assert verdict.health is Health.DEGRADED
    assert verdict.reason == "GET /healthz: 500"


def test_restart_delay_doubles_from_the_second_crash_up_to_the_cap() -> None:
    delays = [restart_delay(n, initial=1.0, maximum=20.0) for n in range(8)]
    assert delays == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    assert restart_delay(500, initial=1.0, maximum=300.0) == 300.0


def test_next_failures_counts_consecutive_crashes() -> None:
    assert next_failures(0, None, exited_at=100.0, reset_after=600.0) == 1
    assert next_failures(3, None, exited_at=100.0, reset_after=600.0) == 4
    assert next_failures(3, healthy_since=50.0, exited_at=100.0, reset_after=600.0) == 4


def test_next_failures_resets_after_running_healthy_long_enough() -> None:
    assert next_failures(7, healthy_since=100.0, exited_at=700.0, reset_after=600.0) == 1
    assert next_failures(7, healthy_since=100.0, exited_at=699.0, reset_after=600.0) == 8


# -- render --------------------------------------------------------------------

BASE: dict[str, Any] = {
    "command": ["python3", "app.py"],
    "version": "1.0",
    "env": {"LOG_LEVEL": "info"},
    "port": True,
    "replicas": 2,
    "rollout": {"strategy": "rolling"},
    "routes": [{"host": "shop.localhost"}],
}


def web_fingerprint(code_id: str = "code-1", **changes: Any) -> str:
    spec = Spec.model_validate({"app": "shop", "services": {"web": {**BASE, **changes}}})
    web = render(spec, "production", "rev", code_id).service("web")
    assert web is not None
    return web.fingerprint


@pytest.mark.parametrize(
    "changes",
    [
        {"replicas": 5},
        {"routes": [{"host": "other.localhost", "path": "/api"}]},
        {"rollout": {"strategy": "blue-green", "keep_old": "1m"}},
        {"restart": {"policy": "never"}},
        {"stop": {"grace": "5s"}},
    ],
    ids=["replicas", "routes", "rollout", "restart", "stop"],
)
def test_fingerprint_ignores_what_does_not_shape_an_instance(changes: dict[str, Any]) -> None:
    assert web_fingerprint(**changes) == web_fingerprint()


@pytest.mark.parametrize(
    "changes",
    [
        {"env": {"LOG_LEVEL": "debug"}},
        {"env": {"LOG_LEVEL": "info", "EXTRA": "1"}},
        {"command": ["python3", "app.py", "--fast"]},
        {"version": "1.1"},
        {"code_id": "code-2"},
        {"port": False, "routes": []},
        {"build": ["make"]},
    ],
    ids=["env-value", "env-key", "command", "version", "code", "port", "build"],
)
def test_fingerprint_changes_with_what_an_instance_runs(changes: dict[str, Any]) -> None:
    assert web_fingerprint(**changes) != web_fingerprint()


def test_fingerprint_does_not_depend_on_env_order() -> None:
    one = Service.model_validate({"command": ["a"], "env": {"A": "1", "B": "2"}})
    two = Service.model_validate({"command": ["a"], "env": {"B": "2", "A": "1"}})
    assert fingerprint(one, "c") == fingerprint(two, "c")
    assert fingerprint(one, "c") != fingerprint(one, "c", secrets_id="s2")


def test_render_sorts_services_and_keeps_the_revision() -> None:
    services = {name: {"command": [name]} for name in ("worker", "api", "web")}
    result = render(
        Spec.model_validate({"app": "shop", "services": services}), "staging", "abc123", "c1"
    )
    assert [s.name for s in result.services] == ["api", "web", "worker"]
    assert (result.app, result.env, result.revision, result.runtime) == (
        "shop",
        "staging",
        "abc123",
        "process",
    )
    assert result.names == frozenset(services)
    assert result.service("missing") is None


CONTAINER_KEYS = [
    {"image": "registry.example/shop:2"},
    {"pull": "always"},
    {"memory": "256MiB"},
    {"cpus": 0.5},
    {"volumes": {"uploads": "/uploads"}},
]


@pytest.mark.parametrize("changes", CONTAINER_KEYS, ids=lambda c: next(iter(c)))
def test_container_keys_restart_nothing_on_the_process_runtime(changes: dict[str, Any]) -> None:
    """A process environment carries them for `ondeck render --target kubernetes` only."""
    assert web_fingerprint(**changes) == web_fingerprint()
    base = {**BASE, "image": "registry.example/shop:1", "port": 8080}
    container = Spec.model_validate(
        {"app": "shop", "runtime": "container", "services": {"web": base}}
    )
    changed = container.model_copy(
        update={"services": {"web": Service.model_validate({**base, **changes})}}
    )
    prints = [
        render(s, "production", "rev", "c").services[0].fingerprint for s in (container, changed)
    ]
    assert prints[0] != prints[1]
