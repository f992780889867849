"""The host file (`ondeck.host.yaml`): which apps one `ondeck up --host-file` runs.

Each app names its own repo, branch, path and environments; the host file is
itself declarative (it may live in a git repo). Parsed with the positions of
`load.py`, so a problem reads `FILE:LINE:COL: message` like a spec's. Called by
the daemon (at start and whenever the file changes) and by `ondeck app`. Pure.
"""

from __future__ import annotations

import posixpath

from pydantic import Field, ValidationError, field_validator

from ondeck.errors import Problem, SpecError
from ondeck.spec.load import EMPTY_MESSAGE, model_problems, parse
from ondeck.spec.model import DNS_LABEL, Strict

EMPTY_HOST_MESSAGE = "empty host file: start with `apps:`, e.g. `apps: {shop: {repo: URL}}`"


class HostApp(Strict):
    """One app of the host: where its `ondeck.yaml` lives and which environments run."""

    repo: str = Field(description="Local path or any URL git can fetch.")
    branch: str | None = Field(None, description="Branch to follow; none: the remote's HEAD.")
    path: str = Field("", description="Directory in the repo holding ondeck.yaml.")
    envs: list[str] = Field(
        default_factory=list, description="Environments to run; empty: every one the spec has."
    )

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: a local path or a URL git can fetch")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.startswith("-") or value.strip() != value):
            raise ValueError(f"{value!r} is not a branch name")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if value.startswith("/") or ".." in posixpath.normpath(value or ".").split("/"):
            raise ValueError("a path inside the repo: relative, without '..'")
        return value

    @field_validator("envs")
    @classmethod
    def _envs(cls, value: list[str]) -> list[str]:
        for name in value:
            if not DNS_LABEL.match(name):
                raise ValueError(f"{name!r} is not a DNS label: use lowercase letters, digits, '-'")
        if len(set(value)) != len(value):
            raise ValueError("an environment is listed twice")
        return value


class HostFile(Strict):
    """Every app this host runs, by name (a DNS label: it names the app's state dir)."""

    apps: dict[str, HostApp] = Field(description="The apps, by name.")

    @field_validator("apps")
    @classmethod
    def _names(cls, value: dict[str, HostApp]) -> dict[str, HostApp]:
        for name in value:
            if not DNS_LABEL.match(name):
                raise ValueError(
                    f"{name!r} is not a DNS label: use lowercase letters, digits and '-'"
                )
        return value


def load_host_file(text: str | bytes, filename: str = "ondeck.host.yaml") -> HostFile:
    """The validated host file, or `SpecError` with every problem at FILE:LINE:COL."""
    try:
        doc = parse(text, filename)
    except SpecError as err:
        if [p.message for p in err.problems] == [EMPTY_MESSAGE]:
            raise SpecError([Problem(filename, 1, 1, EMPTY_HOST_MESSAGE)]) from err
        raise
    try:
        return HostFile.model_validate(doc.data)
    except ValidationError as err:
        problems = model_problems(err, doc, HostFile)
        raise SpecError(sorted(problems, key=lambda p: (p.line, p.col))) from err
