"""Pure formatting for the dashboard's templates: ages, short shas, badges, figures.

Jinja2 filters and small view helpers; data in, text out, no I/O and no clock
(the caller passes `now`). Templates escape everything these return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from markupsafe import Markup, escape

SHORT_SHA = 7
MESSAGE_WIDTH = 72

# Badge colour classes (ondeck.css) for Argo CD's vocabulary; unknown values look neutral.
_BADGES = {
    "Synced": "ok",
    "Healthy": "ok",
    "Succeeded": "ok",
    "OutOfSync": "warn",
    "Progressing": "busy",
    "Suspended": "busy",
    "Missing": "warn",
    "Degraded": "bad",
    "Failed": "bad",
    "Aborted": "bad",
}


def badge(value: str | None) -> str:
    """The CSS class of a sync, health or result badge."""
    return _BADGES.get(value or "", "none")


def badge_html(value: str | None) -> Markup:
    """A badge element: a filter, not a macro, as the overview shows four per service."""
    shown = value or "Unknown"
    return Markup(f'<span class="badge {badge(value)}">{escape(shown)}</span>')


def short(sha: str | None) -> str:
    return (sha or "")[:SHORT_SHA] or "-"


def subject(message: str | None) -> str:
    """A commit message's first line, cut to a table cell."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return line if len(line) <= MESSAGE_WIDTH else line[: MESSAGE_WIDTH - 1] + "…"


def author_name(author: str | None) -> str:
    """`Ada Lovelace <ada@example.com>` -> `Ada Lovelace`."""
    return (author or "").split("<")[0].strip() or "-"


def age(then: float | None, now: float) -> str:
    """How long ago, compactly: `12s`, `5m`, `3h`, `2d`."""
    if not then:
        return "-"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def until(then: float | None, now: float) -> str:
    """How long from now, compactly: `in 12d`, `in 3h`; `expired 2d ago` once past."""
    if not then:
        return "-"
    if then <= now:
        return f"expired {age(then, now)} ago"
    return f"in {age(now, then)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def per_second(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}/s"


def majority_revision(instances: Iterable[Mapping[str, Any]]) -> str | None:
    """The revision most of a service's instances run (what it 'is at' right now)."""
    counts: dict[str, int] = {}
    for inst in instances:
        if inst.get("revision"):
            counts[inst["revision"]] = counts.get(inst["revision"], 0) + 1
    return max(counts, key=lambda r: counts[r]) if counts else None


def find_env(doc: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in doc["environments"] if e["name"] == name), None)


def find_service(env: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in env["services"] if s["name"] == name), None)


def rollout_summary(release: Mapping[str, Any] | None) -> str:
    """`canary paused at 30% (step 2)` for a release in flight, '' when there is none."""
    if not release:
        return ""
    stage = release.get("stage", "")
    text = f"{stage} at {release.get('weight', 0)}%"
    if stage in ("progressing", "paused"):
        text += f" (step {int(release.get('step', 0)) + 1})"
    return text


FILTERS: dict[str, Callable[[Any], str]] = {
    "badge": badge,
    "badge_html": badge_html,
    "short": short,
    "subject": subject,
    "author_name": author_name,
    "duration": duration,
    "percent": percent,
    "per_second": per_second,
    "rollout_summary": rollout_summary,
}


def sync_json(r: Any) -> dict[str, Any]:
    """A history row (store.SyncRecord) as the templates read it."""
    return {
        "id": r.id,
        "env": r.env,
        "revision": r.revision,
        "author": r.author,
        "message": r.message,
        "trigger": r.trigger,
        "result": r.result,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration": (r.finished_at - r.started_at) if r.finished_at else None,
        "actions": list(r.actions or []),
        "error": r.error,
    }
