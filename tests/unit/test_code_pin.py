"""Pinned code (`source:`) and shared releases as pure data: validation, keys, fingerprints."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ondeck.spec.model import Spec
from ondeck.state.desired import Code, SecretEnv, release_key, render
from ondeck.state.diff import service_view, summarize

SHA_A, SHA_B = "a" * 40, "b" * 40


def spec(runtime: str = "process", **web: Any) -> Spec:
    base: dict[str, Any] = {"command": ["python3", "web.py"], "build": ["make"]}
    if runtime != "process":
        base = {"image": "shop:1"}
    data: dict[str, Any] = {"app": "shop", "runtime": runtime, "services": {"web": base | web}}
    data["services"]["api"] = dict(data["services"]["web"])
    return Spec.model_validate(data)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"ref": "main~1"}, "is not a git ref"),
        ({"ref": "-x"}, "is not a git ref"),
        ({"ref": "a..b"}, "is not a git ref"),
        ({"ref": "v1", "repo": "https://bob:hunter2@git.example/app.git"}, "password"),
        ({"ref": "v1", "path": "../up"}, "without '..'"),
        ({"repo": "/srv/app.git"}, "ref"),
        ({"ref": "v1", "branch": "main"}, "Extra inputs"),
    ],
)
def test_a_bad_source_is_refused(source: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(source=source)


def test_source_is_refused_where_the_image_is_the_code() -> None:
    with pytest.raises(ValidationError, match="the image is the code"):
        spec("container", port=80, source={"ref": "v1"})


@pytest.mark.parametrize("ref", ["main", "v1.4.2", "release/2024-01", SHA_A, "refs/tags/v1"])
def test_good_refs_validate(ref: str) -> None:
    assert spec(source={"ref": ref}).services["web"].source is not None


def test_without_source_the_fingerprint_is_as_before() -> None:
    s = spec()
    assert render(s, "staging", SHA_A, "tree1") == render(s, "staging", SHA_A, "tree1", codes={})
    pinned = render(s, "staging", SHA_A, "tree1", codes={"web": Code("v1", SHA_B, tree="t")})
    web, api = pinned.services[1], pinned.services[0]
    assert (web.name, api.name) == ("web", "api")
    assert web.fingerprint != render(s, "staging", SHA_A, "tree1").services[1].fingerprint
    assert api == render(s, "staging", SHA_A, "tree1").services[0]
    assert pinned.code_revision(web) == SHA_B and pinned.code_revision(api) == SHA_A


def test_the_pinned_sha_is_fingerprinted_even_for_an_equal_tree() -> None:
    s = spec()
    one = render(s, "p", SHA_A, "t0", codes={"web": Code("v1", SHA_A, tree="same")})
    two = render(s, "p", SHA_A, "t0", codes={"web": Code("v2", SHA_B, tree="same")})
    assert one.services[1].fingerprint != two.services[1].fingerprint
    assert one.services[1].release == two.services[1].release  # equal content: one release


def test_a_release_is_shared_across_services_and_environments() -> None:
    s = spec()
    staging = render(s, "staging", SHA_A, "tree1")
    production = render(s, "production", SHA_B, "tree1")
    keys = {svc.release for d in (staging, production) for svc in d.services}
    assert len(keys) == 1
    pinned = render(s, "production", SHA_B, "t0", codes={"web": Code("x", SHA_A, tree="tree1")})
    assert pinned.service("web").release in keys  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "shared"),
    [
        ({"env": {"FLAVOR": "b"}}, False),  # the build sees env values
        ({"version": "2"}, False),  # and ONDECK_VERSION
        ({"build": ["make", "all"]}, False),
        ({"env": {"WHERE": "${ONDECK_ENV}"}}, True),  # not set at build time: not its input
        ({"command": ["python3", "other.py"]}, True),  # instances differ, the build does not
        ({"replicas": 3}, True),
    ],
)
def test_what_separates_releases(change: dict[str, Any], shared: bool) -> None:
    base = spec().services["web"]
    other = base.model_copy(update=spec(**change).services["web"].model_dump(exclude_unset=True))
    same = release_key(base, "t", "shop", SecretEnv()) == release_key(
        other, "t", "shop", SecretEnv()
    )
    assert same is shared


def test_secrets_count_by_fingerprint_in_the_key() -> None:
    web = spec(env={"DB": "${DB_URL}"}).services["web"]
    one = SecretEnv({"DB_URL": "x"}, {"DB_URL": "fp1"})
    two = SecretEnv({"DB_URL": "y"}, {"DB_URL": "fp2"})
    assert release_key(web, "t", "shop", one) != release_key(web, "t", "shop", two)
    assert release_key(web, "t", "shop", one) == release_key(
        web, "t", "shop", SecretEnv({"DB_URL": "other value"}, {"DB_URL": "fp1"})
    )


def test_history_and_diff_name_the_code_commits() -> None:
    s = spec(source={"ref": "main"})
    old = render(s, "p", SHA_A, "t", codes={"web": Code("main", "1234567" + "0" * 33, tree="t1")})
    new = render(s, "p", SHA_B, "t", codes={"web": Code("main", "abcdef1" + "0" * 33, tree="t2")})
    assert summarize(old, new) == ["web: code 1234567 -> abcdef1"]
    assert "code: abcdef100000 (main)" in service_view(new.service("web"), 1, [SHA_B])
    unpinned = render(spec(), "p", SHA_B, "t")
    assert summarize(unpinned, render(spec(), "p", SHA_A, "t")) == []  # a spec-only commit
