"""The dashboard's pure parts: formatting, traffic series, charts, sessions and CSRF."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

import pytest

from ondeck.api.ui import views
from ondeck.api.ui.access import SESSION_TTL, Sessions, Viewer, csrf_ok
from ondeck.api.ui.charts import chart, chart_start, latest
from ondeck.api.ui.live import Sampler
from ondeck.api.ui.pages import Dashboard
from ondeck.api.ui.series import Point, SeriesKey, TrafficSeries
from ondeck.router.metrics import BUCKETS, BackendStats
from ondeck.status import StatusDoc
from ondeck.tokens import ADMIN, Scope, TokenInfo

# -- formatting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"), (86400 * 3, "3d")],
)
def test_age_is_compact(seconds: float, shown: str) -> None:
    assert views.age(1000.0 - seconds, 1000.0) == shown


def test_age_of_nothing_and_of_the_future() -> None:
    assert views.age(None, 5.0) == "-"
    assert views.age(10.0, 5.0) == "0s"  # clocks disagree a little: never negative


def test_commit_fields() -> None:
    assert views.short("3f2a9c1d0e" * 4) == "3f2a9c1"
    assert views.short(None) == "-"
    assert views.subject("fix: the thing\n\nlong body") == "fix: the thing"
    long = views.subject("x" * 200)
    assert len(long) == views.MESSAGE_WIDTH and long.endswith("…")
    assert views.subject("") == ""
    assert views.author_name("Ada Lovelace <ada@example.com>") == "Ada Lovelace"
    assert views.author_name(None) == "-"


def test_badges_follow_the_vocabulary() -> None:
    assert views.badge("Synced") == views.badge("Healthy") == "ok"
    assert views.badge("OutOfSync") == "warn"
    assert views.badge("Degraded") == views.badge("Failed") == "bad"
    assert views.badge("Suspended") == views.badge("Progressing") == "busy"
    assert views.badge("<b>") == views.badge(None) == "none"


def test_majority_revision_and_rollout_summary() -> None:
    instances: list[dict[str, Any]] = [
        {"revision": "a"},
        {"revision": "b"},
        {"revision": "b"},
        {"revision": None},
    ]
    assert views.majority_revision(instances) == "b"
    assert views.majority_revision([]) is None
    assert views.rollout_summary(None) == ""
    paused = {"stage": "paused", "weight": 30, "step": 1}
    assert views.rollout_summary(paused) == "paused at 30% (step 2)"
    assert views.rollout_summary({"stage": "promoted", "weight": 100}) == "promoted at 100%"


def test_figures() -> None:
    assert views.duration(0.25) == "250ms"
    assert views.duration(3.21) == "3.2s"
    assert views.duration(600) == "10.0m"
    assert views.percent(0.0123) == "1.2%"
    assert views.per_second(None) == "-"


# -- traffic series -------------------------------------------------------------------------------


def snapshot(ok: int, errors: int = 0, seconds: float = 0.004) -> dict[str, Any]:
    """A backend's cumulative counters as the router's `stats` gives them."""
    stats = BackendStats()
    for _ in range(ok):
        stats.observe(200, seconds)
    for _ in range(errors):
        stats.observe(502, seconds)
    return stats.snapshot()


V1 = SeriesKey("prod", "web", "1.0 @aaaaaaa")
V2 = SeriesKey("prod", "web", "2.0 @bbbbbbb")


def test_first_sample_is_a_baseline_then_rates_come_from_deltas() -> None:
    series = TrafficSeries()
    series.add(100.0, {"a": snapshot(50)}, {"a": V1})
    assert series.of("prod", "web") == {}
    series.add(110.0, {"a": snapshot(80, errors=20)}, {"a": V1})
    [point] = series.of("prod", "web")["1.0 @aaaaaaa"]
    assert point.rate == pytest.approx(5.0)  # 50 requests in 10 s
    assert point.error_rate == pytest.approx(0.4)  # 20 of 50
    assert point.p50 is not None and point.p50 <= 0.005
    assert point.p95 is not None and point.p95 <= 0.005


def test_versions_side_by_side_and_a_new_backend_counts_in_full() -> None:
    series = TrafficSeries()
    series.add(0.0, {"a": snapshot(10)}, {"a": V1})
    series.add(10.0, {"a": snapshot(20), "b": snapshot(5, seconds=0.4)}, {"a": V1, "b": V2})
    got = series.of("prod", "web")
    assert list(got) == ["1.0 @aaaaaaa", "2.0 @bbbbbbb"]
    assert got["1.0 @aaaaaaa"][0].rate == pytest.approx(1.0)
    canary = got["2.0 @bbbbbbb"][0]
    assert canary.rate == pytest.approx(0.5)
    assert canary.p95 is not None and canary.p95 > 0.25  # slow canary: its own figures


def test_backends_of_one_version_add_up_and_unknown_ones_are_left_out() -> None:
    series = TrafficSeries()
    backends = {"a": snapshot(0), "b": snapshot(0), "x": snapshot(0)}
    series.add(0.0, backends, {"a": V1, "b": V1})
    series.add(2.0, {"a": snapshot(4), "b": snapshot(6), "x": snapshot(99)}, {"a": V1, "b": V1})
    [point] = series.of("prod", "web")["1.0 @aaaaaaa"]
    assert point.rate == pytest.approx(5.0)


def test_a_router_restart_does_not_give_negative_rates() -> None:
    series = TrafficSeries()
    series.add(0.0, {"a": snapshot(1000)}, {"a": V1})
    series.add(10.0, {"a": snapshot(30)}, {"a": V1})  # counters began again
    [point] = series.of("prod", "web")["1.0 @aaaaaaa"]
    assert point.rate == pytest.approx(3.0)


def test_no_traffic_has_no_error_rate_or_latency() -> None:
    series = TrafficSeries()
    series.add(0.0, {"a": snapshot(3)}, {"a": V1})
    series.add(10.0, {"a": snapshot(3)}, {"a": V1})
    [point] = series.of("prod", "web")["1.0 @aaaaaaa"]
    assert (point.rate, point.error_rate, point.p50, point.p95) == (0.0, None, None, None)


def test_the_ring_keeps_its_size_and_old_versions_are_forgotten() -> None:
    series = TrafficSeries(keep=5)
    for i in range(20):
        series.add(float(i * 10), {"a": snapshot(i)}, {"a": V1})
    assert len(series.of("prod", "web")["1.0 @aaaaaaa"]) == 5
    for i in range(20, 40):  # V1's backend is gone; V2 serves for longer than the window
        series.add(float(i * 10), {"b": snapshot(i)}, {"b": V2})
    assert list(series.of("prod", "web")) == ["2.0 @bbbbbbb"]


def test_bucket_bounds_match_the_router() -> None:
    """The series reads the router's own histogram: one more bucket than bounds."""
    assert len(snapshot(1)["latency"]["buckets"]) == len(BUCKETS) + 1


# -- charts ---------------------------------------------------------------------------------------


def points(values: list[float | None], start: float = 0.0) -> list[Point]:
    return [Point(start + i * 10, v or 0.0, v, v, v) for i, v in enumerate(values)]


def test_one_line_per_version_scaled_to_the_largest_value() -> None:
    svg = chart({"v1": points([1.0, 2.0]), "v2": points([4.0, 4.0])}, "p95", 0.0, 10.0)
    lines = re.findall(r'<polyline class="(s\d)" points="([^"]+)"', svg)
    assert [cls for cls, _ in lines] == ["s0", "s1"]
    top_ys = {float(xy.split(",")[1]) for xy in lines[1][1].split()}
    assert top_ys == {2.0}  # the largest value touches the top padding
    assert 'data-metric="p95"' in svg


def test_gaps_without_a_value_split_the_line_and_a_lone_point_still_shows() -> None:
    svg = chart({"v1": points([1.0, None, 1.0, 1.0])}, "errors", 0.0, 30.0)
    segments = re.findall(r'points="([^"]+)"', svg)
    assert len(segments) == 2
    assert len(segments[0].split()) == 2  # the lone first point, doubled


def test_an_empty_chart_is_still_a_chart() -> None:
    svg = chart({}, "rate", 0.0, 3600.0)
    assert svg.startswith("<svg") and "polyline" not in svg


def test_latest_skips_points_without_a_value() -> None:
    assert latest(points([1.0, 2.0, None]), "p50") == 2.0
    assert latest([], "rate") is None


# -- sessions and CSRF ----------------------------------------------------------------------------


READER = TokenInfo("viewer", Scope.READ, ("staging",), 0.0, None, "odk_abcd")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_sessions(known: dict[str, TokenInfo] | None = None) -> tuple[Sessions, Clock]:
    clock = Clock()
    table = dict(known or {})
    return Sessions("admin-secret", table.get, clock), clock


def test_login_with_the_admin_or_a_scoped_token_and_nothing_else() -> None:
    sessions, _ = make_sessions({"odk_reader": READER})
    assert sessions.login("wrong") is None
    assert sessions.login("") is None
    sid, info = sessions.login(" admin-secret\n") or ("", None)
    assert info is ADMIN
    viewer = sessions.viewer(sid)
    assert viewer is not None and viewer.info is ADMIN and len(viewer.csrf) >= 32
    found = sessions.login("odk_reader")
    assert found is not None and found[1] is READER


def test_each_session_has_its_own_cookie_and_csrf_token() -> None:
    sessions, _ = make_sessions()
    a, _ = sessions.login("admin-secret") or ("", None)
    b, _ = sessions.login("admin-secret") or ("", None)
    va, vb = sessions.viewer(a), sessions.viewer(b)
    assert a != b and va is not None and vb is not None and va.csrf != vb.csrf
    assert csrf_ok(va, va.csrf)
    assert not csrf_ok(va, vb.csrf)
    assert not csrf_ok(va, None) and not csrf_ok(va, "")


def test_logout_expiry_and_revocation_end_a_session() -> None:
    table = {"odk_reader": READER}
    clock = Clock()
    sessions = Sessions("admin-secret", table.get, clock)
    out, _ = sessions.login("admin-secret") or ("", None)
    sessions.logout(out)
    assert sessions.viewer(out) is None
    idle, _ = sessions.login("admin-secret") or ("", None)
    clock.now += SESSION_TTL + 1
    assert sessions.viewer(idle) is None
    revoked, _ = sessions.login("odk_reader") or ("", None)
    assert sessions.viewer(revoked) is not None
    del table["odk_reader"]  # `ondeck token revoke viewer`
    assert sessions.viewer(revoked) is None
    assert sessions.viewer(None) is None and sessions.viewer("made-up") is None


def test_what_a_viewer_may_do() -> None:
    public = Viewer(None)
    assert not public.can(Scope.READ) and not public.logged_in
    assert public.envs(["staging", "prod"]) == ["staging", "prod"]
    reader = Viewer(READER, "t")
    assert not reader.can(Scope.SYNC, "staging")
    assert reader.envs(["staging", "prod"]) == ["staging"]
    admin = Viewer(ADMIN, "t")
    assert admin.can(Scope.DEPLOY, "prod") and admin.can(Scope.SYNC)
    assert not csrf_ok(public, "")  # no session, no CSRF token: every POST refused


def test_the_time_axis_shows_the_samples_there_are_up_to_the_window() -> None:
    assert chart_start({}, 5000.0, 3600.0, 10.0) == 4940.0  # nothing yet: the last minute
    young = {"v1": points([1.0, 1.0], start=4000.0)}
    assert chart_start(young, 5000.0, 3600.0, 10.0) == 3990.0
    old = {"v1": points([1.0], start=100.0)}
    assert chart_start(old, 5000.0, 3600.0, 10.0) == 1400.0


# -- rendering ------------------------------------------------------------------------------------


def status_doc(now: float) -> dict[str, Any]:
    """A status document as `Controller.status_json` gives it: two environments, one certificate."""

    def env(name: str) -> dict[str, Any]:
        commit = {
            "sha": "c" * 40,
            "author": "Mallory <m@x>",
            "message": "<script>alert(1)</script>",
        }
        service = {
            "name": "web",
            "sync": "Synced",
            "health": "Healthy",
            "health_reason": None,
            "reasons": [],
            "version": "1.0",
            "fingerprint": "f",
            "replicas": {"desired": 1, "ready": 1},
            "instances": [
                {
                    "id": "web-1",
                    "revision": "c" * 40,
                    "restarts": 2,
                    "health": "Healthy",
                    "state": "running",
                    "fingerprint": "f",
                }
            ],
            "release": None,
        }
        return {
            "name": name,
            "sync": "Synced",
            "health": "Healthy",
            "error": "<b>bold</b> error",
            "conditions": [],
            "commit": {**commit, "committed_at": now - 90},
            "pending_commit": None,
            "operation": None,
            "services": [service],
            "backups": [
                {
                    "name": "db",
                    "engine": "sqlite",
                    "backups": 3,
                    "last_success": "2026-12-01T03:00:00Z",
                    "last_error": "disk <full>",
                }
            ],
        }

    cert = {
        "host": "shop.example",
        "source": "acme",
        "issuer": "Pebble",
        "not_after": "2027-01-01T00:00:00Z",
        "not_after_epoch": now + 86400 * 30 + 3600,
        "last_renewal": None,
        "last_error": None,
        "failures": 0,
        "degraded": None,
        "owners": ["shop/production"],
    }
    doc = {
        "environments": [env("staging"), env("production")],
        "source": {"repo": "/srv/shop", "branch": "main", "path": "", "head": "c" * 40},
        "router": {"listen": None, "error": None},
        "controller": {"started_at": now, "auto_sync": True, "self_heal": True, "poll": 10},
        "certificates": [cert],
    }
    # Through the real model, as the controller hands it to the dashboard: every field there.
    return StatusDoc.model_validate(doc).model_dump(mode="json")


class StubFeed:
    """The feed's one method the overview reads: the document, as the controller's feed has it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def current(self) -> tuple[int, dict[str, Any]]:
        return 1, self.doc


def overview(viewer: Viewer) -> str:
    doc = status_doc(time.time())
    # The overview reads nothing from the controller but the document (the other pages do).
    ui = Dashboard(cast(Any, None), cast(Any, StubFeed(doc)), Sampler(cast(Any, None), dict))
    return ui.page("overview", "Overview", viewer, {})


def test_the_overview_escapes_what_came_from_git_and_apps() -> None:
    html = overview(Viewer(ADMIN, "t"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html
    assert "&lt;b&gt;bold&lt;/b&gt; error" in html
    assert html.count("<script") == 1  # ours, from /static
    assert 'data-restarts="2"' in html
    assert "Mallory" in html and "m@x" not in html


def test_certificates_show_with_their_expiry_to_who_reads_their_environment() -> None:
    html = overview(Viewer(ADMIN, "t"))
    assert 'id="certs"' in html and "shop.example" in html and "in 30d" in html
    staging_only = TokenInfo("ci", Scope.READ, ("staging",), 0.0, None, "odk_x")
    limited = overview(Viewer(staging_only, "t"))
    assert 'id="env-staging"' in limited and 'id="env-production"' not in limited
    assert "shop.example" not in limited


def test_backups_show_their_state_and_errors_escaped() -> None:
    html = overview(Viewer(ADMIN, "t"))
    assert 'id="backup-production-db"' in html
    assert "Failing" in html and "disk &lt;full&gt;" in html


def test_buttons_follow_the_scope() -> None:
    assert 'data-name="rollback-production"' in overview(Viewer(ADMIN, "t"))
    reader = overview(Viewer(READER, "t"))
    assert "form" not in reader.split("<main>")[1]  # no action at all for a read token
    public = overview(Viewer(None))
    assert "public, read only" in public and 'class="act' not in public


def test_until() -> None:
    assert views.until(None, 0.0) == "-"
    assert views.until(100.0 + 3 * 86400, 100.0) == "in 3d"
    assert views.until(100.0, 100.0 + 7200) == "expired 2h ago"


def test_the_sampler_ends_when_its_controller_has_stopped() -> None:
    """An app removed from the host file: its dashboard's sampler must not run on forever."""
    samples: list[float] = []

    async def stats() -> dict[str, Any]:
        samples.append(time.monotonic())
        return {}

    sampler = Sampler(stats, lambda: {"environments": []}, every=0.01)
    asyncio.run(asyncio.wait_for(sampler.run(lambda: len(samples) >= 3), timeout=30))
    assert len(samples) == 3
