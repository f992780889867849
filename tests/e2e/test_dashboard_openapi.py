"""Schemathesis against a live `ondeck up`'s /openapi.json: no 500, no answer off its schema.

One controller for the whole module (a real repo, real instances); every API
operation gets a bounded number of generated requests, authorized with the
admin token. Calls that would never end (a followed log, a sync waiting on a
long timeout) are bounded before they are sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import SIMPLE_SPEC, Ondeck, Repo, kill_instances
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import response_schema_conformance

MAX_EXAMPLES = 8  # per operation: enough to vary every parameter, well under a minute in all
CALL_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ondeck]:
    base = tmp_path_factory.mktemp("openapi")
    repo = Repo(base / "repo")
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = Ondeck(repo.path, base / "state")
    try:
        od.start().wait_synced(sha)
        yield od
    finally:
        od.cleanup()
        kill_instances(od.state_dir)


def bounded(case: Any) -> None:
    """Keep a generated call finite: no endless log follow, no long sync wait."""
    if isinstance(case.query, dict) and case.query.get("follow") not in (None, False, "false"):
        case.query["follow"] = "false"
    if isinstance(case.body, dict) and "timeout" in case.body:
        case.body["timeout"] = 5.0


def test_api_answers_within_its_schema(live: Ondeck) -> None:
    url = json.loads((live.state_dir / "api.json").read_text())["url"]
    token = (live.state_dir / "token").read_text().strip()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: dict[str, str] = {}
    tried = 0
    for found in schema.get_all_operations():
        if isinstance(found, Err):
            failures[f"operation {tried}"] = f"not a valid OpenAPI operation: {found.err()}"
            continue
        operation = found.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label == "POST /api/v1/down":
            continue  # it stops the very controller this test probes; tests/e2e/test_down.py

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            bounded(case)
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"},
                checks=[not_a_server_error, response_schema_conformance],
                timeout=CALL_TIMEOUT,
            )

        tried += 1
        try:
            call()
        except (Exception, FailureGroup) as err:  # try every operation, report all failures
            failures[label] = str(err)[:2000]
    assert tried >= 8, f"only {tried} operations in /openapi.json"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
