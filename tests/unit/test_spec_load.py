"""Loading `ondeck.yaml`: positions, overlays and located problems (YAML in, problems out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from ondeck.errors import Problem, SpecError, UserError
from ondeck.spec.load import (
    Document,
    environment_names,
    load_file,
    merge,
    parse,
    render_spec,
    validate,
)
from ondeck.spec.model import Spec

SPECS = Path(__file__).parent.parent / "fixtures" / "specs"


def _cases(name: str) -> list[Any]:
    cases: list[dict[str, Any]] = YAML(typ="safe").load((SPECS / name).read_text())
    return [pytest.param(case, id=case["name"]) for case in cases]


def _located(problem: Problem) -> str:
    return str(problem).removeprefix(f"{problem.file}:")


# --- every problem, located ----------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("invalid.yaml"))
def test_problems_are_located(case: dict[str, Any]) -> None:
    problems = validate(case["spec"])
    assert [_located(p) for p in problems] == case["problems"]


def test_problems_name_the_file() -> None:
    [problem] = validate("app: shop\ncolour: blue\n", "deploy/ondeck.yaml")
    assert str(problem).startswith("deploy/ondeck.yaml:2:1: unknown key 'colour'")


def test_validate_accepts_bytes_and_reports_bad_encoding() -> None:
    assert validate(b"app: shop\n") == []
    [problem] = validate(b"app: shop\nservices: {w\xff: {}}\n")
    assert (problem.line, problem.col, problem.message) == (2, 13, "not UTF-8 text")


def test_validate_returns_problems_sorted_by_position() -> None:
    spec = "app: shop\nservices:\n  web: {command: [a], replicas: x}\ncolour: red\n"
    problems = validate(spec)
    assert [(p.line, p.col) for p in problems] == [(3, 23), (4, 1)]


def test_the_design_example_is_valid() -> None:
    assert validate((SPECS / "example.yaml").read_text()) == []


def test_render_raises_every_problem_at_once() -> None:
    doc = parse("app: shop\nservices:\n  web: {command: [], replicas: x}\n")
    with pytest.raises(SpecError) as caught:
        render_spec(doc)
    assert [(p.line, p.col) for p in caught.value.problems] == [(3, 9), (3, 22)]


# --- parsing -------------------------------------------------------------------------------


def test_parse_records_positions_of_keys_and_items() -> None:
    doc = parse("# comment\napp: shop\nservices:\n  web:\n    command: [a, b]\n    env: {X: 1}\n")
    assert doc.positions[()] == (2, 1)
    assert doc.positions[("app",)] == (2, 1)
    assert doc.positions[("services", "web")] == (4, 3)
    assert doc.positions[("services", "web", "command", 1)] == (5, 18)
    assert doc.positions[("services", "web", "env", "X")] == (6, 11)


def test_parse_gives_plain_data() -> None:
    doc = parse("app: shop\nservices: {web: {replicas: 0x2, env: {A: 1.5, B: true}}}\n")
    web = doc.data["services"]["web"]
    assert type(doc.data) is dict and type(web) is dict
    assert (type(web["replicas"]), type(web["env"]["A"]), type(web["env"]["B"])) == (
        int,
        float,
        bool,
    )


def test_parse_error_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as caught:
        parse("app: [\n", "x.yaml")
    assert caught.value.problems[0].file == "x.yaml"


# --- overlays ------------------------------------------------------------------------------


def _get(spec: Spec, dotted: str) -> Any:
    value: Any = spec
    for key in dotted.split("."):
        if key == "length":
            return len(value)
        if isinstance(value, list):
            value = value[int(key)]
        elif isinstance(value, dict):
            value = value[key]
        else:
            value = getattr(value, key)
    return value.value if hasattr(value, "value") and not isinstance(value, str) else value


@pytest.mark.parametrize("case", _cases("overlays.yaml"))
def test_overlay_is_merged(case: dict[str, Any]) -> None:
    spec = render_spec(parse(case["spec"]), case["env"])
    for dotted, expected in case["expect"].items():
        assert _get(spec, dotted) == expected, dotted


def test_environment_names_in_written_order() -> None:
    doc = parse("app: shop\nenvironments: {staging: {}, production: {}, dev: {}}\n")
    assert environment_names(doc) == ["staging", "production", "dev"]
    assert environment_names(parse("app: shop\n")) == []


def test_unknown_environment_names_the_known_ones() -> None:
    doc = parse("app: shop\nenvironments: {staging: {}, production: {}}\n")
    with pytest.raises(SpecError) as caught:
        render_spec(doc, "prod")
    [problem] = caught.value.problems
    assert problem.message == "unknown environment 'prod'"
    assert problem.hint == "known: staging, production"


def test_merge_is_deep_for_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    overlay = {"a": {"c": [3], "e": {"f": 1}}, "d": None}
    assert merge(base, overlay) == {"a": {"b": 1, "c": [3], "e": {"f": 1}}, "d": None}


def test_merge_is_pure() -> None:
    base: dict[str, Any] = {"a": {"b": [1]}}
    overlay: dict[str, Any] = {"a": {"c": {"d": 1}}}
    merged = merge(base, overlay)
    merged["a"]["b"].append(2)
    merged["a"]["c"]["d"] = 2
    assert base == {"a": {"b": [1]}}
    assert overlay == {"a": {"c": {"d": 1}}}


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1.5h", 5400.0), ("1d", 86400.0), ("3", 3.0)],
)
def test_durations(written: str, seconds: float) -> None:
    spec = f"app: shop\nservices: {{web: {{command: [a], stop: {{grace: {written}}}}}}}\n"
    assert render_spec(parse(spec)).services["web"].stop.grace == seconds


def test_a_literal_dollar_brace_passes_validation() -> None:
    spec = 'app: shop\nservices: {web: {command: [echo, "$${NOT_A_VAR}", "$HOME", "cost: $5"]}}\n'
    assert validate(spec) == []


def test_secrets_are_known_names_when_given() -> None:
    doc = parse('app: shop\nservices: {web: {command: [run], env: {URL: "${DATABASE_URL}"}}}\n')
    with pytest.raises(SpecError, match="secret set DATABASE_URL"):
        render_spec(doc)
    spec = render_spec(doc, secrets=["DATABASE_URL"])
    assert spec.services["web"].env == {"URL": "${DATABASE_URL}"}


def test_a_secret_in_a_command_is_refused_at_its_position() -> None:
    doc = parse('app: shop\nservices: {web: {command: [run, "${DATABASE_URL}"]}}\n')
    with pytest.raises(
        SpecError, match=r"2:33: services.web.command\[1\]: \$\{DATABASE_URL\} is a"
    ):
        render_spec(doc, secrets=["DATABASE_URL"])


# --- files ---------------------------------------------------------------------------------


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "ondeck.yaml"
    path.write_text(
        "app: shop\nservices: {web: {command: [a]}}\n"
        "environments: {qa: {services: {web: {replicas: 3}}}}\n"
    )
    assert load_file(path, "qa").services["web"].replicas == 3
    assert isinstance(parse(path.read_text()), Document)


def test_load_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ondeck.yaml"
    path.write_text("app: shop\nreplicas: 1\n")
    with pytest.raises(SpecError) as caught:
        load_file(path)
    assert caught.value.problems[0].file == str(path)
    with pytest.raises(UserError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")
