"""Scoped tokens: kept hashed in a real SQLite store, checked, ordered, env-limited."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondeck.errors import UserError
from ondeck.store import Store
from ondeck.tokens import (
    ADMIN,
    TOUCH_INTERVAL,
    Scope,
    TokenInfo,
    Tokens,
    allows,
    parse_scope,
    visible_envs,
)


class Clock:
    """A settable clock, so last_used throttling is tested without waiting."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ondeck.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(store: Store, clock: Clock) -> Tokens:
    return Tokens(store, clock=clock)


def info(scope: Scope, *envs: str) -> TokenInfo:
    return TokenInfo("ci", scope, envs, 0.0, None, "odk_abcd")


# -- create, list, check, revoke -------------------------------------------


def test_create_returns_a_token_that_checks(tokens: Tokens) -> None:
    token = tokens.create("ci", Scope.DEPLOY, ["staging"])
    assert token.startswith("odk_")
    assert len(token) >= 4 + 43  # 32 random bytes, urlsafe base64
    found = tokens.check(token)
    assert found is not None
    assert (found.name, found.scope, found.envs) == ("ci", Scope.DEPLOY, ("staging",))


def test_list_shows_prefix_and_creation_never_the_token(tokens: Tokens, clock: Clock) -> None:
    token = tokens.create("ci", Scope.SYNC, ["staging", "production", "staging"])
    reader = tokens.create("a-reader", Scope.READ)
    assert tokens.list() == [
        TokenInfo("a-reader", Scope.READ, (), clock.now, None, reader[:8]),
        TokenInfo("ci", Scope.SYNC, ("production", "staging"), clock.now, None, token[:8]),
    ]


def test_each_token_is_different(tokens: Tokens) -> None:
    assert tokens.create("one", Scope.READ) != tokens.create("two", Scope.READ)


def test_unknown_or_empty_token_is_none(tokens: Tokens) -> None:
    token = tokens.create("ci", Scope.READ)
    assert tokens.check("odk_" + "x" * 43) is None
    assert tokens.check(token + "x") is None
    assert tokens.check("") is None


def test_revoke_stops_the_token_at_once(tokens: Tokens) -> None:
    token = tokens.create("ci", Scope.DEPLOY)
    tokens.check(token)
    tokens.revoke("ci")
    assert tokens.check(token) is None
    assert tokens.list() == []


def test_revoke_unknown_name_is_a_user_error(tokens: Tokens) -> None:
    with pytest.raises(UserError, match="no token named 'ci'"):
        tokens.revoke("ci")


def test_a_revoked_name_can_be_reused_with_a_fresh_token(tokens: Tokens) -> None:
    old = tokens.create("ci", Scope.DEPLOY)
    tokens.check(old)
    tokens.revoke("ci")
    new = tokens.create("ci", Scope.READ)
    assert tokens.check(old) is None
    assert [(t.name, t.scope, t.last_used) for t in tokens.list()] == [("ci", Scope.READ, None)]
    assert tokens.check(new) is not None


# -- persistence -----------------------------------------------------------


def test_only_a_hash_is_stored(db_path: Path, clock: Clock) -> None:
    with Store(db_path) as store:
        token = Tokens(store, clock=clock).create("ci", Scope.DEPLOY)
        Tokens(store, clock=clock).check(token)
    stored = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    assert token.encode() not in stored
    assert token[8:].encode() not in stored  # not even the part after the shown prefix
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def test_tokens_survive_reopening_the_store(db_path: Path, clock: Clock) -> None:
    with Store(db_path) as store:
        token = Tokens(store, clock=clock).create("ci", Scope.SYNC)
    with Store(db_path) as store:
        found = Tokens(store, clock=clock).check(token)
    assert found is not None and found.scope is Scope.SYNC


def test_a_revoke_by_another_instance_is_seen_at_once(store: Store, clock: Clock) -> None:
    cli, server = Tokens(store, clock=clock), Tokens(store, clock=clock)
    token = cli.create("ci", Scope.DEPLOY)
    assert server.check(token) is not None
    cli.revoke("ci")
    clock.now += TOUCH_INTERVAL  # the server's next use would write last_used
    assert server.check(token) is None
    assert cli.list() == []


# -- validation ------------------------------------------------------------


def test_duplicate_name_is_a_user_error(tokens: Tokens) -> None:
    tokens.create("ci", Scope.READ)
    with pytest.raises(UserError, match="exists already"):
        tokens.create("ci", Scope.DEPLOY)
    assert [t.scope for t in tokens.list()] == [Scope.READ]


@pytest.mark.parametrize("name", ["", "CI", "ci_bot", "-ci", "ci-", "a" * 64, "admin"])
def test_bad_names_are_refused(tokens: Tokens, name: str) -> None:
    with pytest.raises(UserError):
        tokens.create(name, Scope.READ)
    assert tokens.list() == []


def test_bad_env_names_are_refused(tokens: Tokens) -> None:
    with pytest.raises(UserError, match="environment name"):
        tokens.create("ci", Scope.READ, ["Prod uction"])


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("read", Scope.READ),
        ("sync", Scope.SYNC),
        ("deploy", Scope.DEPLOY),
        (" Deploy ", Scope.DEPLOY),
    ],
)
def test_parse_scope(text: str, scope: Scope) -> None:
    assert parse_scope(text) is scope


@pytest.mark.parametrize("text", ["", "admin", "write", "3"])
def test_bad_scope_text_lists_the_choices(text: str) -> None:
    with pytest.raises(UserError, match="read, sync, deploy"):
        parse_scope(text)


# -- last_used throttling --------------------------------------------------


def test_last_used_is_written_at_most_once_a_minute(
    tokens: Tokens, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tokens.create("ci", Scope.READ)
    writes: list[str] = []
    real_set_kv = store.set_kv

    def counting_set_kv(key: str, value: str) -> None:
        writes.append(key)
        real_set_kv(key, value)

    monkeypatch.setattr(store, "set_kv", counting_set_kv)

    first = tokens.check(token)
    clock.now += TOUCH_INTERVAL - 1
    second = tokens.check(token)
    clock.now += 1
    third = tokens.check(token)

    assert first is not None and second is not None and third is not None
    assert (first.last_used, second.last_used) == (1000.0, 1000.0)
    assert third.last_used == 1000.0 + TOUCH_INTERVAL
    assert len(writes) == 2
    assert tokens.list()[0].last_used == third.last_used


# -- authorization ---------------------------------------------------------


def test_scopes_are_ordered() -> None:
    assert Scope.READ < Scope.SYNC < Scope.DEPLOY


@pytest.mark.parametrize("held", list(Scope))
@pytest.mark.parametrize("needed", list(Scope))
def test_a_scope_implies_those_below_it(held: Scope, needed: Scope) -> None:
    assert allows(info(held), needed, "production") is (held >= needed)
    assert allows(info(held), needed, None) is (held >= needed)


def test_an_env_restricted_token_cannot_touch_other_envs() -> None:
    staging = info(Scope.DEPLOY, "staging")
    assert allows(staging, Scope.DEPLOY, "staging")
    assert allows(staging, Scope.READ, "staging")
    assert not allows(staging, Scope.READ, "production")
    assert not allows(staging, Scope.DEPLOY, "production")


def test_a_call_for_every_env_needs_an_unrestricted_token_unless_it_reads() -> None:
    staging = info(Scope.DEPLOY, "staging")
    assert not allows(staging, Scope.SYNC, None)
    assert not allows(staging, Scope.DEPLOY, None)
    assert allows(staging, Scope.READ, None)  # the caller filters with visible_envs
    assert allows(info(Scope.SYNC), Scope.SYNC, None)


def test_visible_envs_filters_in_the_given_order() -> None:
    envs = ["production", "staging", "preview"]
    assert visible_envs(info(Scope.READ, "staging", "preview"), envs) == ["staging", "preview"]
    assert visible_envs(info(Scope.READ), envs) == envs
    assert visible_envs(info(Scope.READ, "qa"), envs) == []


def test_admin_may_do_everything_everywhere() -> None:
    for scope in Scope:
        assert allows(ADMIN, scope, None)
        assert allows(ADMIN, scope, "production")
    assert visible_envs(ADMIN, ["a", "b"]) == ["a", "b"]


# -- apps ------------------------------------------------------------------


def test_a_token_may_be_limited_to_apps(tokens: Tokens, clock: Clock) -> None:
    token = tokens.create("shop-ci", Scope.DEPLOY, ["staging"], ["shop", "blog", "shop"])
    found = tokens.check(token)
    assert found is not None and found.apps == ("blog", "shop")
    tokens.create("every-app", Scope.READ)
    assert [(t.name, t.apps) for t in tokens.list()] == [
        ("every-app", ()),
        ("shop-ci", ("blog", "shop")),
    ]


def test_bad_app_names_are_refused(tokens: Tokens) -> None:
    with pytest.raises(UserError, match="not a valid app name"):
        tokens.create("ci", Scope.READ, [], ["Shop"])
    assert tokens.list() == []


def test_a_token_made_before_apps_existed_covers_every_app(store: Store, clock: Clock) -> None:
    tokens = Tokens(store, clock=clock)
    token = tokens.create("old", Scope.DEPLOY)
    records = json.loads(store.get_kv("tokens") or "{}")
    del records["old"]["apps"]  # as an older ondeck wrote it
    store.set_kv("tokens", json.dumps(records))
    found = tokens.check(token)
    assert found is not None and found.apps == ()
    assert found.may_touch_apps(["shop", "blog"]) and found.may_touch_apps(None)


def test_an_app_limited_token_touches_only_its_apps() -> None:
    shop = TokenInfo("ci", Scope.DEPLOY, (), 0.0, None, "odk_abcd", ("shop",))
    assert shop.may_touch_apps(["shop"])
    assert shop.may_touch_apps([])
    assert not shop.may_touch_apps(["blog"])
    assert not shop.may_touch_apps(["shop", "blog"])
    assert not shop.may_touch_apps(None)  # not known yet: refused
    assert ADMIN.may_touch_apps(["shop", "blog"]) and ADMIN.may_touch_apps(None)
