"""The dashboard's pure parts: formatting, traffic series, charts, sessions and CSRF."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ondeck.api.ui import views
from ondeck.api.ui.access import SESSION_TTL, Sessions, Viewer, csrf_ok
from ondeck.api.ui.charts import chart, chart_start, latest
from ondeck.api.ui.series import Point, SeriesKey, TrafficSeries
from ondeck.router.metrics import BUCKETS, BackendStats
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
