"""Metrics: what a Prometheus scrape of `/metrics` would read back."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ondeck.metrics import Metrics

Labels = frozenset[tuple[str, str]]


def scrape(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    """Every sample of the rendered text, keyed by (name, labels)."""
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def test_render_returns_prometheus_text_and_its_content_type() -> None:
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE ondeck_syncs_total counter" in body


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # a second one would raise if they shared a registry
    a.fetch_errors.labels("production").inc()
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert ("ondeck_fetch_errors_total", labels(env="production")) not in scrape(b)


def test_counters() -> None:
    m = Metrics()
    m.syncs.labels("production", "Succeeded").inc()
    m.syncs.labels("production", "Succeeded").inc()
    m.syncs.labels(env="staging", result="Failed").inc()
    m.restarts.labels("production", "web").inc(3)
    m.fetch_errors.labels("production").inc()
    samples = scrape(m)
    assert samples[("ondeck_syncs_total", labels(env="production", result="Succeeded"))] == 2
    assert samples[("ondeck_syncs_total", labels(env="staging", result="Failed"))] == 1
    key = ("ondeck_instance_restarts_total", labels(env="production", service="web"))
    assert samples[key] == 3
    assert samples[("ondeck_fetch_errors_total", labels(env="production"))] == 1


def test_gauges() -> None:
    m = Metrics()
    m.desired.labels("production", "web").set(2)
    m.ready.labels("production", "web").set(1)
    samples = scrape(m)
    assert samples[("ondeck_desired_instances", labels(env="production", service="web"))] == 2
    assert samples[("ondeck_ready_instances", labels(env="production", service="web"))] == 1


def test_histograms_span_sub_second_to_minutes() -> None:
    m = Metrics()
    for seconds in (0.02, 0.3, 45.0, 240.0):
        m.sync_duration.labels("production").observe(seconds)
    m.reconcile_duration.labels("production").observe(0.004)
    samples = scrape(m)

    def bucket(name: str, le: str) -> float:
        return samples[(f"{name}_bucket", labels(env="production", le=le))]

    sync = "ondeck_sync_duration_seconds"
    assert samples[(f"{sync}_count", labels(env="production"))] == 4
    assert samples[(f"{sync}_sum", labels(env="production"))] == pytest.approx(285.32)
    assert [bucket(sync, le) for le in ("0.025", "0.5", "60.0", "300.0", "+Inf")] == [
        1,
        2,
        3,
        4,
        4,
    ]
    assert bucket("ondeck_reconcile_duration_seconds", "0.01") == 1


def test_env_info_keeps_only_the_current_label_set_per_env() -> None:
    m = Metrics()
    m.set_env_info("production", "a" * 40, "OutOfSync", "Progressing")
    m.set_env_info("staging", "c" * 40, "Synced", "Healthy")
    m.set_env_info("production", "b" * 40, "Synced", "Healthy")
    m.set_env_info("production", "b" * 40, "Synced", "Healthy")  # unchanged: still one series
    info = {k[1]: v for k, v in scrape(m).items() if k[0] == "ondeck_env_info"}
    assert info == {
        labels(env="production", revision="b" * 40, sync="Synced", health="Healthy"): 1,
        labels(env="staging", revision="c" * 40, sync="Synced", health="Healthy"): 1,
    }
