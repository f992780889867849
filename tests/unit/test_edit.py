"""spec.edit: one value changed, every other byte of ondeck.yaml kept."""

from __future__ import annotations

import difflib

import pytest

from ondeck.errors import SpecError, UserError
from ondeck.spec.edit import (
    clear_value,
    deploy_path,
    effective,
    effective_all,
    get_value,
    services,
    set_flow,
    set_value,
)

SPEC = """\
# What runs, in every environment.
app: shop
services:
  web:
    command: ["python3", "app.py"]
    version: "1.4.2"     # bumped by CI
    image: ghcr.io/acme/shop:1.4.2
    env:
      GREETING: Hello

  worker:
    command: [python3, worker.py]
    version: '2.0'
environments:
  staging:
    services: {web: {replicas: 1}}
  production:
    # production pins its own versions
    services:
      worker:
        version: v1.9   # plain
  qa: {}
"""


def changed_lines(old: str, new: str) -> list[str]:
    """The -/+ lines of a unified diff, without headers."""
    diff = difflib.unified_diff(old.splitlines(True), new.splitlines(True), n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


class TestExistingKey:
    def test_only_the_line_changes(self) -> None:
        new = set_value(SPEC, ["services", "web", "version"], "1.4.3")
        assert changed_lines(SPEC, new) == [
            '-    version: "1.4.2"     # bumped by CI\n',
            '+    version: "1.4.3"     # bumped by CI\n',
        ]
        assert new == SPEC.replace('"1.4.2"', '"1.4.3"')

    def test_single_quotes_stay_single(self) -> None:
        new = set_value(SPEC, ["services", "worker", "version"], "it's 2.1")
        assert new == SPEC.replace("'2.0'", "'it''s 2.1'")

    def test_plain_stays_plain_when_it_can(self) -> None:
        new = set_value(SPEC, ["services", "web", "image"], "ghcr.io/acme/shop:1.4.3")
        assert new == SPEC.replace("shop:1.4.2", "shop:1.4.3")

    def test_plain_is_quoted_when_it_would_change_type(self) -> None:
        path = ["environments", "production", "services", "worker", "version"]
        new = set_value(SPEC, path, "1.10")
        assert new == SPEC.replace("version: v1.9   #", 'version: "1.10"   #')
        assert get_value(new, path) == "1.10"

    def test_plain_stays_plain_for_a_plain_string(self) -> None:
        path = ["environments", "production", "services", "worker", "version"]
        new = set_value(SPEC, path, "v2.0")
        assert new == SPEC.replace("version: v1.9   #", "version: v2.0   #")

    def test_same_value_is_byte_identical(self) -> None:
        assert set_value(SPEC, ["services", "web", "version"], "1.4.2") == SPEC

    def test_empty_value_after_colon(self) -> None:
        text = "app: shop\nservices:\n  web:\n    command: [a]\n    version:   # later\n"
        new = set_value(text, ["services", "web", "version"], "1.0")
        assert new == text.replace("version:   #", 'version: "1.0"   #')


class TestMissingKeys:
    def test_overlay_is_created_in_block_style(self) -> None:
        path = deploy_path("web", "version", "production")
        new = set_value(SPEC, path, "1.4.1")
        assert changed_lines(SPEC, new) == ["+      web:\n", '+        version: "1.4.1"\n']
        assert effective(new, "web", "version", "production") == "1.4.1"
        assert effective(new, "web", "version", None) == "1.4.2"

    def test_key_added_to_an_existing_block_map(self) -> None:
        new = set_value(SPEC, deploy_path("worker", "image", "production"), "acme/worker:3")
        assert changed_lines(SPEC, new) == ["+        image: acme/worker:3\n"]
        plain = "version: v1.9   # plain\n"
        assert new == SPEC.replace(plain, plain + "        image: acme/worker:3\n")

    def test_flow_map_gets_the_key_inside(self) -> None:
        new = set_value(SPEC, deploy_path("web", "version", "staging"), "1.4.3")
        assert changed_lines(SPEC, new) == [
            "-    services: {web: {replicas: 1}}\n",
            '+    services: {web: {replicas: 1, version: "1.4.3"}}\n',
        ]

    def test_flow_map_gets_a_nested_entry(self) -> None:
        new = set_value(SPEC, deploy_path("worker", "version", "staging"), "3.0")
        assert '{web: {replicas: 1}, worker: {version: "3.0"}}' in new
        assert len(changed_lines(SPEC, new)) == 2

    def test_empty_flow_map_is_filled(self) -> None:
        new = set_value(SPEC, deploy_path("web", "version", "qa"), "1.0.0")
        assert new == SPEC.replace("qa: {}", 'qa: {services: {web: {version: "1.0.0"}}}')

    def test_empty_key_becomes_a_block_map(self) -> None:
        text = "app: shop\nservices:\n  web: {command: [a]}\nenvironments:\n  qa:   # soon\n"
        new = set_value(text, deploy_path("web", "version", "qa"), "1.0.0")
        added = '    services:\n      web:\n        version: "1.0.0"\n'
        assert new == text + added

    def test_new_environment_is_appended(self) -> None:
        new = set_value(SPEC, deploy_path("web", "version", "dev"), "1.5.0-rc1")
        added = '  dev:\n    services:\n      web:\n        version: "1.5.0-rc1"\n'
        assert new == SPEC + added

    def test_indentation_of_the_file_is_followed(self) -> None:
        text = "app: shop\nservices:\n    web:\n        command: [a]\n"
        new = set_value(text, deploy_path("web", "version", "prod"), "1", check=False)
        assert new.endswith(
            'environments:\n    prod:\n        services:\n            web:\n                version: "1"\n'
        )

    def test_file_without_final_newline(self) -> None:
        text = "app: shop\nservices:\n  web:\n    command: [a]"
        new = set_value(text, ["services", "web", "version"], "2.0")
        assert new == text + '\n    version: "2.0"\n'

    def test_crlf_file_stays_crlf(self) -> None:
        text = "app: shop\r\nservices:\r\n  web:\r\n    command: [a]\r\n"
        new = set_value(text, ["services", "web", "version"], "2.0")
        assert new == text + '    version: "2.0"\r\n'

    def test_comments_between_sections_stay_put(self) -> None:
        text = "app: shop\nservices:\n  web:\n    command: [a]\n  # the worker\n  worker:\n    command: [b]\n"
        new = set_value(text, ["services", "web", "version"], "2.0")
        assert new == text.replace("  # the worker", '    version: "2.0"\n  # the worker')


class TestRefusals:
    def test_path_through_a_list(self) -> None:
        with pytest.raises(UserError, match=r"services\.web\.command is a list, not a mapping"):
            set_value(SPEC, ["services", "web", "command", "x"], "1")

    def test_path_through_a_scalar(self) -> None:
        with pytest.raises(UserError, match=r"app is the value 'shop', not a mapping"):
            set_value(SPEC, ["app", "name"], "x")

    def test_replacing_a_mapping(self) -> None:
        with pytest.raises(UserError, match="is a mapping, not a single value"):
            set_value(SPEC, ["services", "web", "env"], "x")

    def test_block_scalar(self) -> None:
        text = "app: shop\nservices:\n  web:\n    command: [a]\n    version: |\n      1.0\n"
        with pytest.raises(UserError, match="block scalar"):
            set_value(text, ["services", "web", "version"], "2")

    def test_alias(self) -> None:
        text = "app: shop\nx: &v '1'\nservices:\n  web: {command: [a], version: *v}\n"
        with pytest.raises(UserError, match="alias"):
            set_value(text, ["services", "web", "version"], "2", check=False)

    def test_broken_result_is_refused_with_its_problems(self) -> None:
        # A service only the overlay names has no command: the production spec is invalid.
        with pytest.raises(
            UserError, match=r"(?s)refusing to set .*ghost: service .ghost. needs a command"
        ):
            set_value(SPEC, deploy_path("ghost", "version", "production"), "1.0")

    def test_invalid_input_is_a_located_spec_error(self) -> None:
        with pytest.raises(SpecError, match=r"ondeck\.yaml:2:"):
            set_value("app: shop\n  bad: [\n", ["app"], "x")


class TestReading:
    def test_get_value(self) -> None:
        assert get_value(SPEC, ["services", "web", "version"]) == "1.4.2"
        assert get_value(SPEC, ["services", "nope", "version"]) is None
        assert get_value(SPEC, ["app", "deeper"]) is None

    def test_deploy_path(self) -> None:
        assert deploy_path("web", "image", None) == ["services", "web", "image"]
        assert deploy_path("web", "image", "prod") == [
            "environments",
            "prod",
            "services",
            "web",
            "image",
        ]

    def test_effective_merges_overlay_over_base(self) -> None:
        assert effective(SPEC, "worker", "version", None) == "2.0"
        assert effective(SPEC, "worker", "version", "production") == "v1.9"
        assert effective(SPEC, "worker", "version", "staging") == "2.0"
        assert effective(SPEC, "worker", "image", "staging") is None

    def test_effective_unknown_environment(self) -> None:
        with pytest.raises(UserError, match=r"unknown environment 'nope' \(known: staging"):
            effective(SPEC, "web", "version", "nope")

    def test_services_and_effective_all(self) -> None:
        assert services(SPEC, "staging") == ["web", "worker"]
        assert effective_all(SPEC, "production", ("version",)) == {
            ("web", "version"): "1.4.2",
            ("worker", "version"): "v1.9",
        }


class TestEmptyValuesInFlowMaps:
    def test_empty_value_in_a_flow_map(self) -> None:
        text = "app: shop\nservices:\n  web: {command: [a], version: , replicas: 1}\n"
        new = set_value(text, ["services", "web", "version"], "2.0")
        assert new == text.replace("version: ,", 'version: "2.0" ,')

    def test_empty_key_in_a_flow_map_becomes_a_flow_map(self) -> None:
        text = "app: shop\nservices:\n  web: {command: [a]}\nenvironments: {qa: }\n"
        new = set_value(text, deploy_path("web", "version", "qa"), "2.0")
        assert new == text.replace("{qa: }", '{qa: {services: {web: {version: "2.0"}}} }')


class TestSetFlow:
    """`set_flow`: a mapping or list written on one line, for `ondeck app add`."""

    def test_a_new_entry_of_a_block_map_is_one_line(self) -> None:
        text = "# the host\napps:\n  shop: {repo: /srv/shop.git}  # first\n"
        new = set_flow(text, ["apps", "blog"], {"repo": "https://x.example/b.git", "envs": ["a"]})
        assert changed_lines(text, new) == [
            '+  blog: {repo: "https://x.example/b.git", envs: [a]}\n'
        ]

    def test_flow_indicators_and_numbers_are_quoted(self) -> None:
        value = {"repo": "a,b{c}", "branch": "1.0", "path": "", "envs": []}
        new = set_flow("apps:\n", ["apps", "x"], value)
        assert new == 'apps:\n  x: {repo: "a,b{c}", branch: "1.0", path: "", envs: []}\n'
        assert get_value(new, ["apps", "x"]) == value

    def test_an_empty_key_takes_an_empty_flow_map(self) -> None:
        assert set_flow("# c\napps:\n", ["apps"], {}) == "# c\napps: {}\n"

    def test_a_mapping_cannot_be_overwritten(self) -> None:
        with pytest.raises(UserError, match="not a single value"):
            set_flow("apps:\n  shop: {repo: a}\n", ["apps", "shop"], {"repo": "b"})


def test_clear_value_leaves_the_key_and_its_comment() -> None:
    text = "# host\napps: {}  # none yet\nother: 1\n"
    assert clear_value(text, ["apps"]) == "# host\napps:  # none yet\nother: 1\n"
    assert clear_value(text, ["nope"]) == text
    assert clear_value("apps:\n", ["apps"]) == "apps:\n"
