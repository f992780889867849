"""Analysis from router stats, and the router configuration built from plans (pure)."""

from __future__ import annotations

from typing import Any

from ondeck.rollout.analysis import measure
from ondeck.rollout.strategies import EnvTraffic, router_config, same_routing
from ondeck.spec.model import Analysis, Service
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.live import LiveInstance, Phase
from ondeck.state.rollout import Traffic

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def snapshot(requests: int, errors_5xx: int, latencies: dict[float, int]) -> dict[str, Any]:
    """A backend's cumulative stats as the router reports them."""
    total, buckets = 0, []
    for bound in (*BOUNDS, None):
        total += latencies.get(bound or 99.0, 0)
        buckets.append([bound, total])
    return {
        "requests": requests,
        "status": {"2xx": requests - errors_5xx, "5xx": errors_5xx},
        "errors": {"connect": 0},
        "active": 0,
        "latency": {"buckets": buckets},
    }


def test_healthy_canary_passes_with_its_figures() -> None:
    before = {"c1": snapshot(100, 0, {0.01: 100})}
    after = {"c1": snapshot(300, 1, {0.01: 300})}
    m = measure(before, after, ["c1"], Analysis(max_error_rate=0.01, max_p95=0.5))
    assert m is not None and m.ok
    assert m.requests == 200 and m.error_rate == 0.005 and m.p95 == 0.01


def test_error_rate_over_the_limit_fails_with_the_figure() -> None:
    before = {"c1": snapshot(0, 0, {})}
    after = {"c1": snapshot(100, 12, {0.01: 100})}
    m = measure(before, after, ["c1"], Analysis(max_error_rate=0.05))
    assert m is not None and not m.ok
    assert "error rate 12.0% > 5.0%" in m.reason


def test_slow_canary_fails_on_p95() -> None:
    after = {"c1": snapshot(100, 0, {0.01: 50, 1.0: 50})}
    m = measure({}, after, ["c1"], Analysis(max_p95=0.2))
    assert m is not None and not m.ok and "p95" in m.reason


def test_only_the_named_backends_count_and_no_traffic_is_no_verdict() -> None:
    after = {"stable": snapshot(100, 100, {0.01: 100}), "c1": snapshot(0, 0, {})}
    assert measure({}, after, ["c1"], Analysis()) is None
    assert measure({}, after, ["missing"], Analysis()) is None


def _desired(**fields: Any) -> Desired:
    spec = Service.model_validate({"command": ["app"], "routes": [{"path": "/"}], **fields})
    return Desired("shop", "prod", "rev", "process", (DesiredService("web", spec, "f2"),))


def _inst(id: str, fp: str, ready: bool = True, phase: Phase = Phase.RUNNING) -> LiveInstance:
    return LiveInstance(id, "web", fp, "rev", phase, ready=ready, port=40000 + int(id[-1]))


def test_rolling_pool_serves_every_ready_instance_and_never_a_stopping_one() -> None:
    live = (
        _inst("w1", "f1"),
        _inst("w2", "f2"),
        _inst("w3", "f2", ready=False),
        _inst("w4", "f1", phase=Phase.STOPPING),
    )
    config = router_config([EnvTraffic(_desired(), live, {"web": Traffic(None)})], 7)
    pool = config.pools["prod/web"]
    assert [b.id for b in pool.stable] == ["w1", "w2"] and not pool.canary
    assert config.generation == 7 and config.routes[0].pool == "prod/web"


def test_canary_pool_splits_by_fingerprint_with_weight_and_match_rules() -> None:
    desired = _desired(rollout={"strategy": "canary", "match": {"header": {"X-Canary": "always"}}})
    live = (_inst("w1", "f1"), _inst("w2", "f2"))
    config = router_config([EnvTraffic(desired, live, {"web": Traffic("f1", "f2", 30)})], 1)
    pool = config.pools["prod/web"]
    assert [b.id for b in pool.stable] == ["w1"] and [b.id for b in pool.canary] == ["w2"]
    assert pool.canary_weight == 30 and pool.match_headers == {"x-canary": "always"}
    again = router_config([EnvTraffic(desired, live, {"web": Traffic("f1", "f2", 30)})], 2)
    assert same_routing(config, again)


def test_when_nothing_of_stable_is_left_the_new_set_serves_everyone() -> None:
    live = (_inst("w2", "f2"),)
    config = router_config([EnvTraffic(_desired(), live, {"web": Traffic("f1", "f2", 10)})], 1)
    assert [b.id for b in config.pools["prod/web"].stable] == ["w2"]
