"""spec.hostedit: `ondeck app add|remove` change one entry of the host file, checked first."""

from __future__ import annotations

import pytest

from ondeck.errors import SpecError, UserError
from ondeck.spec.host import HostApp, load_host_file
from ondeck.spec.hostedit import NEW_HOST_FILE, add_app, remove_app

HOST = """\
# web1: the apps of this host
apps:
  # the shop, deployed by CI
  shop: {repo: "https://git.example/shop-deploy.git", branch: main, envs: [staging, production]}

  blog:
    repo: /srv/git/blog.git   # hand-made
"""


def test_add_appends_one_line_and_keeps_everything_else() -> None:
    new = add_app(HOST, "wiki", HostApp(repo="/srv/git/wiki.git", path="deploy"), "h.yaml")
    assert new == HOST + "  wiki: {repo: /srv/git/wiki.git, path: deploy}\n"
    assert list(load_host_file(new).apps) == ["shop", "blog", "wiki"]


def test_add_to_no_file_starts_one_with_a_comment() -> None:
    new = add_app(None, "shop", HostApp(repo="/srv/shop.git", envs=["staging"]), "h.yaml")
    assert new == NEW_HOST_FILE + "apps:\n  shop: {repo: /srv/shop.git, envs: [staging]}\n"


def test_a_duplicate_is_refused_naming_the_existing_repo() -> None:
    with pytest.raises(UserError, match=r"app 'blog' is already in h.yaml \(repo /srv/git/blog"):
        add_app(HOST, "blog", HostApp(repo="/elsewhere.git"), "h.yaml")


@pytest.mark.parametrize("name", ["Shop", "my_app", "-x", "", "a" * 64])
def test_a_bad_name_is_refused(name: str) -> None:
    with pytest.raises(UserError, match="not a valid app name"):
        add_app(HOST, name, HostApp(repo="/srv/x.git"), "h.yaml")


def test_a_broken_host_file_is_reported_at_its_position_not_edited() -> None:
    with pytest.raises(SpecError, match=r"h.yaml:2:3"):
        add_app("apps:\n  shop: {rpo: x}\n", "blog", HostApp(repo="/b.git"), "h.yaml")


def test_remove_takes_exactly_the_entry() -> None:
    new = remove_app(HOST, "blog", "h.yaml")
    assert new == HOST.replace("  blog:\n    repo: /srv/git/blog.git   # hand-made\n", "")
    new = remove_app(HOST, "shop", "h.yaml")
    assert "shop" not in new.split("# the shop")[1] and "blog:" in new


def test_removing_the_last_app_leaves_a_valid_empty_file_that_takes_new_apps() -> None:
    empty = remove_app(remove_app(HOST, "shop", "h.yaml"), "blog", "h.yaml")
    assert load_host_file(empty).apps == {}
    assert empty.startswith("# web1: the apps of this host\napps: {}\n")
    again = add_app(empty, "wiki", HostApp(repo="/w.git"), "h.yaml")
    assert again.startswith("# web1: the apps of this host\napps:\n  wiki: {repo: /w.git}\n")
    assert list(load_host_file(again).apps) == ["wiki"]


def test_removing_an_unknown_app_names_the_apps() -> None:
    with pytest.raises(UserError, match=r"no app 'wiki' in h.yaml \(apps: shop, blog\)"):
        remove_app(HOST, "wiki", "h.yaml")


def test_an_empty_apps_with_a_comment_keeps_it_on_its_line() -> None:
    new = add_app("apps: {}   # none yet\n", "wiki", HostApp(repo="/w.git"), "h.yaml")
    assert new == "apps:   # none yet\n  wiki: {repo: /w.git}\n"
