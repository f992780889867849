"""Prometheus metrics of the control plane, served at `/metrics`.

The controller updates them as it syncs and supervises; the API renders them.
Each Metrics owns its registry, so tests and several controllers never collide.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# From a no-op reconcile (tens of ms) to a rollout with builds and pauses (minutes).
DURATION_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)


class Metrics:
    """Every ondeck metric, registered in a private `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.syncs = Counter(
            "ondeck_syncs", "Syncs finished, by result.", ["env", "result"], registry=r
        )
        self.sync_duration = Histogram(
            "ondeck_sync_duration_seconds",
            "Time from the start of a sync to its result.",
            ["env"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "ondeck_reconcile_duration_seconds",
            "Time of one pass of the reconcile loop.",
            ["env"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "ondeck_instance_restarts",
            "Instances restarted after they exited.",
            ["env", "service"],
            registry=r,
        )
        self.ready = Gauge(
            "ondeck_ready_instances",
            "Instances passing health checks.",
            ["env", "service"],
            registry=r,
        )
        self.desired = Gauge(
            "ondeck_desired_instances",
            "Replicas the spec asks for.",
            ["env", "service"],
            registry=r,
        )
        self.fetches = Counter(
            "ondeck_fetches", "Fetches of the git source (a burst of webhooks is one).", registry=r
        )
        self.fetch_errors = Counter(
            "ondeck_fetch_errors", "Failed fetches of the git source.", ["env"], registry=r
        )
        self.info = Gauge(
            "ondeck_env_info",
            "Always 1: the environment's desired revision, sync status and health.",
            ["env", "revision", "sync", "health"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "ondeck_certificate_expiry_timestamp_seconds",
            "When the certificate served for a host expires (Unix time).",
            ["host"],
            registry=r,
        )
        self.certificate_failures = Counter(
            "ondeck_certificate_renewal_failures",
            "Failed attempts to obtain or renew a host's certificate.",
            ["host"],
            registry=r,
        )
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._info_lock = threading.Lock()

    def set_env_info(self, env: str, revision: str, sync: str, health: str) -> None:
        """Make (revision, sync, health) the one info series of `env`, dropping the old one."""
        labels = (env, revision, sync, health)
        with self._info_lock:
            old = self._info_labels.get(env)
            if old is not None and old != labels:
                self.info.remove(*old)
            self.info.labels(*labels).set(1)
            self._info_labels[env] = labels

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, ready for an HTTP response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
