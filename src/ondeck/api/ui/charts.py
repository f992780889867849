"""Small inline SVG line charts for the traffic page; pure, numbers in, markup out.

The templates call `chart`; the markup holds only numbers and fixed class names
(every label stays in the template, escaped), so it is safe to mark as such.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup

from ondeck.api.ui.series import Point

WIDTH, HEIGHT, PAD = 240, 48, 2
Pick = Callable[[Point], float | None]

PICKS: dict[str, Pick] = {
    "rate": lambda p: p.rate,
    "errors": lambda p: p.error_rate,
    "p50": lambda p: p.p50,
    "p95": lambda p: p.p95,
}


def chart(series: Mapping[str, Sequence[Point]], metric: str, start: float, end: float) -> Markup:
    """One line per version (class `s0`, `s1`, ...) of `metric` over [start, end]."""
    pick = PICKS[metric]
    values = [v for points in series.values() for p in points if (v := pick(p)) is not None]
    top = max(values, default=0.0) or 1.0
    span = max(end - start, 1e-9)
    lines = []
    for i, points in enumerate(series.values()):
        for segment in _segments(points, pick):
            coords = " ".join(
                f"{PAD + (p.at - start) / span * (WIDTH - 2 * PAD):.1f},"
                f"{HEIGHT - PAD - v / top * (HEIGHT - 2 * PAD):.1f}"
                for p, v in segment
            )
            lines.append(f'<polyline class="s{i % 4}" points="{coords}"/>')
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" data-metric="{metric}">'
        f'<line class="axis" x1="0" y1="{HEIGHT - PAD}" x2="{WIDTH}" y2="{HEIGHT - PAD}"/>'
        + "".join(lines)
        + "</svg>"
    )


def _segments(points: Sequence[Point], pick: Pick) -> list[list[tuple[Point, float]]]:
    """Runs of points with a value (a gap where there was no traffic to measure)."""
    out: list[list[tuple[Point, float]]] = [[]]
    for p in points:
        v = pick(p)
        if v is None:
            if out[-1]:
                out.append([])
            continue
        out[-1].append((p, v))
    # A lone point draws nothing as a polyline: double it so it shows as a dot.
    return [seg if len(seg) > 1 else seg * 2 for seg in out if seg]


def chart_start(
    series: Mapping[str, Sequence[Point]], end: float, window: float, every: float
) -> float:
    """Where the time axis starts: `window` before `end`, or the first sample if later.

    A chart of the last hour with two minutes of samples would be a dot at its right
    edge; it shows the time there is (at least a minute) until the hour fills up.
    """
    first = min((points[0].at for points in series.values() if points), default=end)
    return max(end - window, min(first - every, end - 60.0))


def latest(points: Sequence[Point], metric: str) -> float | None:
    pick = PICKS[metric]
    return next((v for p in reversed(points) if (v := pick(p)) is not None), None)
