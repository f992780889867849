"""Webhooks: signatures, payload parsing, repository matching and the HTTP router."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ondeck.api.webhooks import (
    MAX_BODY,
    NO_SECRET,
    PushEvent,
    matches,
    parse_push,
    repo_key,
    verify_gitea,
    verify_github,
    verify_gitlab,
    webhook_router,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks"
SECRET = "It's a Secret to Everybody"
GITHUB_REPO = "https://github.com/acme/shop.git"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, event: str = "push", delivery: str = "d-1") -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + sign(body),
        "Content-Type": "application/json",
    }


def event(ref: str = "refs/heads/main", default: str | None = "main") -> PushEvent:
    urls = ("https://github.com/acme/shop.git", "git@github.com:acme/shop.git")
    return PushEvent("github", urls, ref, "0" * 40, "d", default)


class TestSignatures:
    def test_github(self) -> None:
        body = fixture("github_push.json")
        assert verify_github(body, {"X-Hub-Signature-256": "sha256=" + sign(body)}, SECRET)
        # Header names are case-insensitive, hex digits too.
        assert verify_github(body, {"x-hub-signature-256": "sha256=" + sign(body).upper()}, SECRET)

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"X-Hub-Signature-256": "sha256=" + "0" * 64},
            {"X-Hub-Signature-256": "sha1=abc"},
            {"X-Hub-Signature-256": "sha256=" + sign(b"other body")},
            {"X-Hub-Signature-256": "sha256=é"},
        ],
    )
    def test_github_refuses(self, headers: dict[str, str]) -> None:
        assert not verify_github(fixture("github_push.json"), headers, SECRET)

    def test_github_wrong_secret(self) -> None:
        body = fixture("github_push.json")
        given = {"X-Hub-Signature-256": "sha256=" + sign(body, "another secret")}
        assert not verify_github(body, given, SECRET)

    def test_gitlab(self) -> None:
        assert verify_gitlab({"X-Gitlab-Token": SECRET}, SECRET)
        assert not verify_gitlab({"X-Gitlab-Token": SECRET.upper()}, SECRET)
        assert not verify_gitlab({"X-Gitlab-Token": "wrong"}, SECRET)
        assert not verify_gitlab({}, SECRET)

    def test_gitea(self) -> None:
        body = fixture("gitea_push.json")
        assert verify_gitea(body, {"X-Gitea-Signature": sign(body)}, SECRET)
        assert not verify_gitea(body, {"X-Gitea-Signature": "sha256=" + sign(body)}, SECRET)
        assert not verify_gitea(body, {"X-Gitea-Signature": sign(body, "nope")}, SECRET)
        assert not verify_gitea(body, {}, SECRET)

    def test_an_empty_secret_verifies_nothing(self) -> None:
        body = b"{}"
        assert not verify_github(body, {"X-Hub-Signature-256": "sha256=" + sign(body, "")}, "")
        assert not verify_gitlab({"X-Gitlab-Token": ""}, "")
        assert not verify_gitea(body, {"X-Gitea-Signature": sign(body, "")}, "")


class TestParsing:
    def test_github_push(self) -> None:
        parsed = parse_push(
            "github",
            {"X-GitHub-Event": "push", "X-GitHub-Delivery": "abc"},
            fixture("github_push.json"),
        )
        assert parsed == PushEvent(
            provider="github",
            repo_urls=(
                "https://github.com/acme/shop.git",
                "git@github.com:acme/shop.git",
                "https://github.com/acme/shop",
                "git://github.com/acme/shop.git",
            ),
            ref="refs/heads/main",
            after="0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            delivery="abc",
            default_branch="main",
        )

    def test_gitlab_push(self) -> None:
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "u-1"}
        parsed = parse_push("gitlab", headers, fixture("gitlab_push.json"))
        assert parsed is not None
        assert parsed.repo_urls[:2] == (
            "https://gitlab.example.com/acme/shop.git",
            "git@gitlab.example.com:acme/shop.git",
        )
        assert (parsed.ref, parsed.delivery) == ("refs/heads/main", "u-1")
        assert parsed.after == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"

    def test_gitea_push(self) -> None:
        headers = {"X-Gitea-Event": "push", "X-Gitea-Delivery": "g-1"}
        parsed = parse_push("gitea", headers, fixture("gitea_push.json"))
        assert parsed is not None
        assert parsed.repo_urls[0] == "https://gitea.example.org/acme/shop.git"
        assert parsed.after == "bffeb74224043ba2feb48d137756c8a9331c449a"

    def test_non_push_events_are_none(self) -> None:
        assert parse_push("github", {"X-GitHub-Event": "ping"}, fixture("github_ping.json")) is None
        tag = fixture("gitlab_tag_push.json")
        assert parse_push("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, tag) is None

    @pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b'{"after": "x"}'])
    def test_malformed_payloads(self, body: bytes) -> None:
        with pytest.raises(ValueError):
            parse_push("github", {"X-GitHub-Event": "push"}, body)


class TestMatching:
    @pytest.mark.parametrize(
        "repo",
        [
            "https://github.com/acme/shop.git",
            "https://github.com/acme/shop",
            "https://GitHub.com/Acme/Shop/",
            "https://token:x-oauth@github.com/acme/shop.git",
            "ssh://git@github.com:22/acme/shop.git",
            "git@github.com:acme/shop.git",
        ],
    )
    def test_same_repository_in_any_form(self, repo: str) -> None:
        assert matches(event(), repo, "main")

    def test_other_repository(self) -> None:
        assert not matches(event(), "https://github.com/acme/shop-admin.git", "main")
        assert not matches(event(), "https://gitlab.com/acme/shop.git", "main")

    def test_branch(self) -> None:
        assert not matches(event("refs/heads/feature"), GITHUB_REPO, "main")
        assert not matches(event("refs/tags/main"), GITHUB_REPO, "main")

    def test_no_branch_means_the_default_branch(self) -> None:
        assert matches(event("refs/heads/main"), GITHUB_REPO, None)
        assert not matches(event("refs/heads/feature"), GITHUB_REPO, None)
        assert matches(event("refs/heads/feature", default=None), GITHUB_REPO, None)

    def test_local_paths(self, tmp_path: Path) -> None:
        repo = tmp_path / "shop.git"
        pushed = PushEvent("gitea", (f"file://{repo}",), "refs/heads/main", "a", None)
        assert matches(pushed, str(repo), "main")
        assert repo_key(str(repo) + "/") == repo_key(f"file://{repo}")
        assert not matches(pushed, str(tmp_path / "other.git"), "main")


class Hooks:
    """A FastAPI app with the webhook router, recording what on_push received."""

    def __init__(self, secret: str | None = SECRET, fail: bool = False) -> None:
        self.pushes: list[PushEvent] = []
        self.fail = fail
        app = FastAPI()
        app.include_router(webhook_router(secret, GITHUB_REPO, "main", self.on_push))
        self.client = TestClient(app, raise_server_exceptions=False)

    def on_push(self, pushed: PushEvent) -> None:
        if self.fail:
            raise RuntimeError("refresh failed")
        self.pushes.append(pushed)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    yield Hooks()


def post_github(hooks: Hooks, body: bytes, **headers: str) -> tuple[int, dict[str, object]]:
    answer = hooks.client.post(
        "/hooks/github", content=body, headers={**github_headers(body), **headers}
    )
    return answer.status_code, answer.json()


class TestRouter:
    def test_accepted_push_calls_on_push(self, hooks: Hooks) -> None:
        assert post_github(hooks, fixture("github_push.json")) == (202, {"accepted": True})
        assert [p.after for p in hooks.pushes] == ["0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"]

    def test_no_secret_configured(self) -> None:
        hooks = Hooks(secret=None)
        assert post_github(hooks, fixture("github_push.json")) == (503, {"detail": NO_SECRET})
        assert hooks.pushes == []

    def test_bad_signature(self, hooks: Hooks) -> None:
        body = fixture("github_push.json")
        status, _ = post_github(hooks, body, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
        assert status == 401
        assert hooks.pushes == []

    def test_missing_signature(self, hooks: Hooks) -> None:
        body = fixture("github_push.json")
        answer = hooks.client.post(
            "/hooks/github", content=body, headers={"X-GitHub-Event": "push"}
        )
        assert answer.status_code == 401
        assert hooks.pushes == []

    def test_ping_is_ignored(self, hooks: Hooks) -> None:
        body = fixture("github_ping.json")
        status, answer = post_github(hooks, body, **{"X-GitHub-Event": "ping"})
        assert (status, answer) == (202, {"ignored": "ping event"})
        assert hooks.pushes == []

    def test_malformed_json(self, hooks: Hooks) -> None:
        status, _ = post_github(hooks, b"{oops")
        assert status == 400
        assert hooks.pushes == []

    def test_replay_is_ignored(self, hooks: Hooks) -> None:
        body = fixture("github_push.json")
        assert post_github(hooks, body)[0] == 202
        assert post_github(hooks, body) == (202, {"ignored": "replay"})
        assert post_github(hooks, body, **{"X-GitHub-Delivery": "d-2"}) == (202, {"accepted": True})
        assert len(hooks.pushes) == 2

    def test_failed_on_push_is_not_remembered(self) -> None:
        hooks = Hooks(fail=True)
        body = fixture("github_push.json")
        failed = hooks.client.post("/hooks/github", content=body, headers=github_headers(body))
        assert failed.status_code == 500
        hooks.fail = False
        assert post_github(hooks, body) == (202, {"accepted": True})

    def test_other_branch_is_ignored(self, hooks: Hooks) -> None:
        payload = json.loads(fixture("github_push.json"))
        payload["ref"] = "refs/heads/feature"
        status, answer = post_github(hooks, json.dumps(payload).encode())
        assert status == 202
        assert "ignored" in answer
        assert hooks.pushes == []

    def test_other_repository_is_ignored(self, hooks: Hooks) -> None:
        payload = json.loads(fixture("github_push.json"))
        payload["repository"]["clone_url"] = "https://github.com/evil/shop.git"
        payload["repository"]["ssh_url"] = "git@github.com:evil/shop.git"
        payload["repository"]["html_url"] = "https://github.com/evil/shop"
        payload["repository"]["git_url"] = "git://github.com/evil/shop.git"
        status, answer = post_github(hooks, json.dumps(payload).encode())
        assert (status, "ignored" in answer) == (202, True)
        assert hooks.pushes == []

    def test_body_size_limit(self, hooks: Hooks) -> None:
        body = b"{" + b" " * MAX_BODY + b"}"
        status, _ = post_github(hooks, body)
        assert status == 413
        assert hooks.pushes == []

    def test_body_size_limit_without_content_length(self, hooks: Hooks) -> None:
        body = b"{" + b" " * MAX_BODY + b"}"

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 65536):
                yield body[start : start + 65536]

        answer = hooks.client.post("/hooks/github", content=chunks(), headers=github_headers(body))
        assert answer.status_code == 413

    def test_gitlab_endpoint(self) -> None:
        pushes: list[PushEvent] = []
        app = FastAPI()
        repo = "git@gitlab.example.com:acme/shop.git"
        app.include_router(webhook_router(SECRET, repo, None, pushes.append))
        client = TestClient(app)
        body = fixture("gitlab_push.json")
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
        answer = client.post("/hooks/gitlab", content=body, headers=headers)
        assert (answer.status_code, answer.json()) == (202, {"accepted": True})
        wrong = client.post("/hooks/gitlab", content=body, headers={"X-Gitlab-Token": "no"})
        assert wrong.status_code == 401
        tag = client.post(
            "/hooks/gitlab",
            content=fixture("gitlab_tag_push.json"),
            headers={"X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Token": SECRET},
        )
        assert tag.json() == {"ignored": "Tag Push Hook event"}
        assert len(pushes) == 1

    def test_gitea_endpoint(self) -> None:
        pushes: list[PushEvent] = []
        app = FastAPI()
        repo = "https://gitea.example.org/acme/shop"
        app.include_router(webhook_router(SECRET, repo, "main", pushes.append))
        client = TestClient(app)
        body = fixture("gitea_push.json")
        headers = {
            "X-Gitea-Event": "push",
            "X-Gitea-Delivery": "g",
            "X-Gitea-Signature": sign(body),
        }
        answer = client.post("/hooks/gitea", content=body, headers=headers)
        assert (answer.status_code, answer.json()) == (202, {"accepted": True})
        bad = {**headers, "X-Gitea-Signature": sign(body, "nope")}
        assert client.post("/hooks/gitea", content=body, headers=bad).status_code == 401
        assert len(pushes) == 1
