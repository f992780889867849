"""Nothing leaks, and the caller's mistakes are 4xx: a real `ondeck up`, its CLI and its API.

On 2026-12-01 `ondeck diff` and GET /api/v1/diff (open to read-scoped tokens)
showed the password in DATABASE_URL, SMTP_PASS and `--db-password=` in a
command in clear; `history?limit=<huge>` answered 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from conftest import Ondeck, Repo, wait_for

SECRETS = ("pw-in-url-1", "smtp-pass-1", "argv-pass-1", "pw-in-url-2", "smtp-pass-2")
SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py", "--db-password={argv}"]
    version: "{version}"
    port: true
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
    env:
      DATABASE_URL: "postgres://app:{url}@127.0.0.1:1/shop"
      SMTP_PASS: "{smtp}"
"""


def _api(od: Ondeck) -> httpx.Client:
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_diff_masks_url_passwords_secret_names_and_secret_flags(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    first = SPEC.format(argv="argv-pass-1", version="1.0.0", url="pw-in-url-1", smtp="smtp-pass-1")
    sha = repo.commit("one", first)
    od = ondeck(repo.path, "--no-auto-sync")
    od.cli("sync", "--wait")
    od.wait_synced(sha)
    second = first.replace("pw-in-url-1", "pw-in-url-2").replace("smtp-pass-1", "smtp-pass-2")
    repo.commit("rotate", second.replace('"1.0.0"', '"1.1.0"'))
    # auto-sync is off: the controller fetches the commit (--poll 1s) and the diff pends

    def pending() -> str | None:
        text = od.cli("diff").stdout
        return text if "1.1.0" in text else None

    shown = wait_for(pending, "the pending change in `ondeck diff`", timeout=60)
    with _api(od) as api:
        shown += api.get("/api/v1/diff").text
    for secret in SECRETS:
        assert secret not in shown, secret
    assert "postgres://app:********" in shown and "--db-password=********" in shown
    assert "SMTP_PASS" in shown  # the name is shown, and that it changed


def test_the_callers_mistakes_answer_4xx(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    od = ondeck(repo.path)
    od.wait_synced(repo.commit("one", SPEC.format(argv="a", version="1", url="u", smtp="s")))
    with _api(od) as api:
        answers: dict[str, Any] = {
            "history huge": api.get("/api/v1/history", params={"limit": str(10**20)}),
            "history 1e20": api.get("/api/v1/history", params={"limit": "1e20"}),
            "events huge": api.get("/api/v1/events", params={"limit": str(10**30)}),
            "history zero": api.get("/api/v1/history", params={"limit": "0"}),
            "env with NUL": api.get("/api/v1/history", params={"env": "a\0b"}),
            "path with NUL": api.post("/api/v1/rollout/web%00/promote"),
            "deploy NUL version": api.post(
                "/api/v1/deploy", json={"service": "web", "version": "1.0\u0000"}
            ),
            "deploy NUL service": api.post(
                "/api/v1/deploy", json={"service": "w\u0000", "version": "2"}
            ),
        }
        for name, answer in answers.items():
            assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)
        assert api.get("/api/v1/history", params={"limit": "5"}).status_code == 200
    assert "1.0\\u0000" not in od.cli("status", "--json").stdout  # nothing was committed


def test_the_state_dir_is_private_after_start(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    import os
    import stat

    state = repo.path.parent / "state"
    state.mkdir(mode=0o755)  # as an older ondeck left it
    (state / "ondeck.db").touch(mode=0o644)
    os.chmod(state, 0o755)
    od = ondeck(repo.path)
    od.wait_synced(repo.commit("one", SPEC.format(argv="a", version="1", url="u", smtp="s")))

    def mode(path: Any) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    assert mode(state) == 0o700
    assert mode(state / "ondeck.db") == 0o600
    assert mode(state / "token") == 0o600
    logs = list((state / "logs").rglob("web-*.log"))
    assert logs and all(mode(p) == 0o600 for p in logs)
