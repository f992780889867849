"""The host file: which apps one `ondeck up --host-file` runs (YAML in, apps or problems out)."""

from __future__ import annotations

import pytest

from ondeck.errors import SpecError
from ondeck.spec.host import HostApp, load_host_file

DESIGN_EXAMPLE = """\
# ondeck.host.yaml
apps:
  shop: {repo: "https://git.example/shop-deploy.git", branch: main, path: "", envs: [staging, production]}
  blog: {repo: "/srv/git/blog.git"}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_host_file(text, "host.yaml")
    return [str(p) for p in caught.value.problems]


def test_the_design_example_loads_with_defaults() -> None:
    host = load_host_file(DESIGN_EXAMPLE, "ondeck.host.yaml")
    assert list(host.apps) == ["shop", "blog"]
    assert host.apps["shop"] == HostApp(
        repo="https://git.example/shop-deploy.git",
        branch="main",
        path="",
        envs=["staging", "production"],
    )
    # like `ondeck up REPO`: the remote's HEAD, the repo's root, every environment
    assert host.apps["blog"] == HostApp(repo="/srv/git/blog.git", branch=None, path="", envs=[])


def test_a_host_may_run_no_app() -> None:
    assert load_host_file("apps: {}\n").apps == {}


def test_an_unknown_key_is_located_with_a_suggestion() -> None:
    text = "apps:\n  shop:\n    repo: /srv/shop.git\n    brnch: main\n"
    assert _problems(text) == [
        "host.yaml:4:5: apps.shop: unknown key 'brnch' (did you mean 'branch'?)"
    ]


def test_an_unknown_top_level_key_is_located() -> None:
    assert _problems("apps: {}\napp: shop\n") == [
        "host.yaml:2:1: unknown key 'app' (did you mean 'apps'?)"
    ]


def test_a_missing_repo_is_located_at_its_app() -> None:
    assert _problems("apps:\n  shop: {branch: main}\n") == [
        "host.yaml:2:3: apps.shop: missing required key 'repo'"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apps:\n  Shop: {repo: /r}\n", "host.yaml:2:3: apps.Shop: 'Shop' is not a DNS label"),
        ("apps:\n  shop: {repo: /r, path: /abs}\n", "host.yaml:2:20: apps.shop.path: a path"),
        ("apps:\n  shop: {repo: /r, path: a/../..}\n", "host.yaml:2:20: apps.shop.path: a path"),
        ("apps:\n  s: {repo: /r, envs: [Prod]}\n", "host.yaml:2:17: apps.s.envs: 'Prod' is not"),
        ("apps:\n  s: {repo: /r, envs: [a, a]}\n", "host.yaml:2:17: apps.s.envs: an environment"),
        ("apps:\n  s: {repo: ''}\n", "host.yaml:2:7: apps.s.repo: must not be empty"),
        ("apps:\n  s: {repo: /r, branch: -x}\n", "host.yaml:2:17: apps.s.branch: '-x' is not"),
        ("apps: [shop]\n", "host.yaml:1:1: apps: must be a mapping, not a list"),
        (
            "apps:\n  shop: /srv/git\n",
            "host.yaml:2:3: apps.shop: must be a mapping, not '/srv/git'",
        ),
    ],
)
def test_bad_values_are_located(text: str, expected: str) -> None:
    problems = _problems(text)
    assert len(problems) == 1
    assert problems[0].startswith(expected), problems


def test_yaml_syntax_and_empty_files_are_located() -> None:
    assert _problems("apps: {shop: [\n")[0].startswith("host.yaml:2:1: YAML syntax")
    assert _problems("# nothing yet\n") == [
        "host.yaml:1:1: empty host file: start with `apps:`, e.g. `apps: {shop: {repo: URL}}`"
    ]
    assert _problems("apps:\n  shop: {repo: /a}\n  shop: {repo: /b}\n")[0].startswith(
        "host.yaml:3:3: duplicate key 'shop'"
    )


def test_every_problem_is_reported_in_file_order() -> None:
    text = "apps:\n  a: {repo: /a, envz: []}\n  b: {rep: /b}\n"
    problems = _problems(text)
    assert problems == [
        "host.yaml:2:17: apps.a: unknown key 'envz' (did you mean 'envs'?)",
        "host.yaml:3:3: apps.b: missing required key 'repo'",
        "host.yaml:3:7: apps.b: unknown key 'rep' (did you mean 'repo'?)",
    ]
