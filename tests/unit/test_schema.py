"""The published JSON Schema and the generated reference `docs/spec.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from ondeck.spec.docs import render_markdown
from ondeck.spec.schema import json_schema

ROOT = Path(__file__).parent.parent.parent
EXAMPLE = ROOT / "tests" / "fixtures" / "specs" / "example.yaml"


def _load(text: str) -> Any:
    return YAML(typ="safe").load(text)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_docs_spec_md_is_generated() -> None:
    written = (ROOT / "docs" / "spec.md").read_text()
    assert written == render_markdown(), "regenerate: python -m ondeck.spec.docs > docs/spec.md"


def test_docs_name_every_model() -> None:
    text = render_markdown()
    for name in ("Spec", "Service", "HealthCheck", "Rollout", "Step", "Backup", "Keep"):
        assert f"### {name}\n" in text


def test_schema_head() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://")
    assert schema["title"] == "ondeck.yaml"
    assert json.dumps(schema, sort_keys=False) == json.dumps(json_schema(), sort_keys=False)


def test_durations_are_strings_with_duration_defaults() -> None:
    interval = json_schema()["$defs"]["HealthCheck"]["properties"]["interval"]
    assert interval["type"] == "string" and interval["default"] == "2s"
    assert "pattern" in interval


def test_the_design_example_validates(validator: Draft202012Validator) -> None:
    assert list(validator.iter_errors(_load(EXAMPLE.read_text()))) == []


@pytest.mark.parametrize(
    "spec",
    [
        "app: shop\nservices: {web: {command: [a]}}\n",
        "app: shop\nenvironments: {staging: {services: {web: {replicas: 1}}}}\n",
        "app: shop\nenvironments: {staging: {runtime: container, backups: {db: {keep: {}}}}}\n",
        "app: shop\nservices: {web: {command: [a], port: 80, env: {A: 1, B: on}, health: null}}\n",
        "app: shop\nservices: {web: {command: [a], rollout: {steps: [{pause: manual}]}}}\n",
    ],
)
def test_schema_accepts(validator: Draft202012Validator, spec: str) -> None:
    assert list(validator.iter_errors(_load(spec))) == []


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("services: {}\n", "app is required"),
        ("app: Shop\n", "app is a DNS label"),
        ("app: shop\ncolour: blue\n", "unknown top-level key"),
        ("app: shop\nservices: {web: {command: [a], replica: 2}}\n", "unknown service key"),
        ("app: shop\nservices: {web: {command: a}}\n", "command is a list"),
        ("app: shop\nservices: {web: {command: []}}\n", "command is not empty"),
        ("app: shop\nservices: {web: {command: [a], replicas: -1}}\n", "replicas >= 0"),
        (
            "app: shop\nservices: {web: {command: [a], health: {http: /, interval: soon}}}\n",
            "duration",
        ),
        ("app: shop\nservices: {Web: {command: [a]}}\n", "service names are DNS labels"),
        ("app: shop\nservices: {web: {command: [a], env: {A-B: x}}}\n", "env names"),
        ("app: shop\nruntime: vm\n", "runtime is an enum"),
        ("app: shop\nenvironments: {staging: {app: other}}\n", "no app in an overlay"),
        ("app: shop\nenvironments: {staging: {environments: {}}}\n", "no nesting"),
        ("app: shop\nenvironments: {staging: {services: {web: {replica: 1}}}}\n", "overlay keys"),
        (
            "app: shop\nenvironments: {staging: {services: {web: {routes: [{paht: /}]}}}}\n",
            "list items",
        ),
        ("app: shop\nbackups: {db: {postgres: {}}}\n", "url_env is required in the base"),
    ],
)
def test_schema_rejects(validator: Draft202012Validator, spec: str, why: str) -> None:
    assert list(validator.iter_errors(_load(spec))), why


def test_an_overlay_requires_nothing(validator: Draft202012Validator) -> None:
    spec = "app: shop\nenvironments: {staging: {backups: {db: {postgres: {}}}}}\n"
    assert list(validator.iter_errors(_load(spec))) == []
