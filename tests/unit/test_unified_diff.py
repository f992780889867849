"""`ondeck diff`: a unified diff of what runs against what git says, secrets masked."""

from __future__ import annotations

from ondeck.redact import mask_env
from ondeck.spec.model import Service
from ondeck.state.desired import DesiredService
from ondeck.state.diff import service_view, unified


def _svc(version: str, **env: str) -> DesiredService:
    spec = Service.model_validate(
        {"command": ["python3", "app.py"], "version": version, "env": env}
    )
    return DesiredService("web", spec, f"fp-{version}")


def test_secret_looking_values_are_masked_and_others_shown() -> None:
    env = {"API_TOKEN": "abc", "DB_PASSWORD": "x", "SECRET_KEY": "y", "GREETING": "hi"}
    shown = mask_env(env, tag=True)
    assert shown["GREETING"] == "hi"
    for key, value in (("API_TOKEN", "abc"), ("DB_PASSWORD", "x"), ("SECRET_KEY", "y")):
        assert shown[key].startswith("******** (") and value not in shown[key]


def test_unified_diff_names_each_changed_line_and_never_a_secret() -> None:
    live = service_view(_svc("1.0.0", GREETING="hello", API_TOKEN="old-secret"), 2, ["a" * 40])
    want = service_view(_svc("1.1.0", GREETING="hi", API_TOKEN="new-secret"), 3, ["b" * 40])
    lines = unified("web", live, want)
    assert lines[:2] == ["--- live/web", "+++ desired/web"]
    assert "-version: 1.0.0" in lines and "+version: 1.1.0" in lines
    assert "-replicas: 2" in lines and "+replicas: 3" in lines
    assert "+env.GREETING: hi" in lines
    assert not any("secret" in line for line in lines)  # masked on both sides
    changed = [line for line in lines if line.startswith(("-env.API_TOKEN", "+env.API_TOKEN"))]
    assert len(changed) == 2  # ...yet a changed secret shows as a changed line


def test_no_difference_gives_no_lines_and_a_missing_side_is_all_added() -> None:
    view = service_view(_svc("1.0.0"), 1, ["a" * 40])
    assert unified("web", view, view) == []
    added = unified("web", [], view)
    assert all(line.startswith(("+", "-", "@")) for line in added)
    assert "+version: 1.0.0" in added


def test_the_leaks_of_2026_12_01_are_masked_in_the_diff() -> None:
    spec = Service.model_validate(
        {
            "command": ["python3", "app.py", "--db-password=pw-in-argv", "--token", "tok-argv"],
            "env": {
                "DATABASE_URL": "postgres://app:pw-in-url@db.internal:5432/shop",
                "SMTP_PASS": "smtp-pass-value",
                "GREETING": "uses the store value store-secret-1 inline",
            },
        }
    )
    view = service_view(DesiredService("web", spec, "fp"), 1, ["a" * 40], {"store-secret-1"})
    text = "\n".join(unified("web", [], view))
    for secret in ("pw-in-argv", "tok-argv", "pw-in-url", "smtp-pass-value", "store-secret-1"):
        assert secret not in text
    assert "+env.DATABASE_URL: postgres://app:******** (" in text  # the user and host stay
    assert "@db.internal:5432/shop" in text
    assert "--db-password=******** (" in text and "--token ******** (" in text
