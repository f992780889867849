"""Which notices a change of status calls for (pure): degraded, recovered, new failures."""

from __future__ import annotations

from typing import Any

from ondeck.alerts import status_events, sync_event
from ondeck.spec.model import Event
from ondeck.state.lifecycle import SyncResult
from ondeck.status import StatusDoc


def doc(
    web: str, backups: list[dict[str, Any]] | None = None, conditions: list[str] | None = None
) -> StatusDoc:
    env: dict[str, Any] = {
        "name": "production",
        "app": "shop",
        "revision": "a" * 40,
        "sync": "Synced",
        "health": web,
        "services": [
            {
                "name": "web",
                "sync": "Synced",
                "health": web,
                "replicas": {"desired": 1, "ready": 0},
                "health_reason": "web-1 is crash-looping" if web == "Degraded" else None,
            }
        ],
    }
    if backups is not None:
        env["backups"] = backups
    if conditions is not None:
        env["conditions"] = conditions
    return StatusDoc.model_validate(
        {
            "environments": [env],
            "source": {"repo": "r"},
            "router": {},
            "controller": {"started_at": 0, "auto_sync": True, "self_heal": True, "poll": 10},
        }
    )


def test_nothing_at_first_sight() -> None:
    assert status_events(None, doc("Degraded")) == []


def test_degraded_once_then_recovered() -> None:
    (down,) = status_events(doc("Healthy"), doc("Degraded"))
    assert (down.event, down.subject) == (Event.DEGRADED, "web")
    assert "crash-looping" in down.message
    assert status_events(doc("Degraded"), doc("Degraded")) == []  # still down: nothing new
    assert status_events(doc("Progressing"), doc("Healthy")) == []  # not a recovery
    (up,) = status_events(doc("Degraded"), doc("Healthy"))
    assert up.event is Event.RECOVERED


def test_a_new_backup_error_is_one_notice() -> None:
    ok = [{"name": "db", "engine": "sqlite", "backups": 1, "last_error": None}]
    bad = [{"name": "db", "engine": "sqlite", "backups": 1, "last_error": "pg_dump: refused"}]
    (failed,) = status_events(doc("Healthy", ok), doc("Healthy", bad))
    assert (failed.event, failed.subject) == (Event.BACKUP_FAILED, "db")
    assert status_events(doc("Healthy", bad), doc("Healthy", bad)) == []


def test_sync_results() -> None:
    rev = "b" * 40
    assert sync_event("shop", "prod", SyncResult.FAILED, rev, "boom").event is Event.SYNC_FAILED  # type: ignore[union-attr]
    assert sync_event("shop", "prod", SyncResult.ABORTED, rev, "superseded by 1234") is None
    aborted = sync_event("shop", "prod", SyncResult.ABORTED, rev, "web: error rate 0.5")
    assert aborted is not None and aborted.event is Event.ROLLOUT_ABORTED


def test_a_rewritten_history_is_one_notice() -> None:
    why = ["history rewritten: 1234567890ab is not a descendant of ba0987654321"]
    (rewritten,) = status_events(doc("Healthy", conditions=[]), doc("Healthy", conditions=why))
    assert rewritten.event is Event.HISTORY_REWRITTEN and "not a descendant" in rewritten.message
    assert status_events(doc("Healthy", conditions=why), doc("Healthy", conditions=why)) == []
