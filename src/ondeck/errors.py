"""The one error vocabulary of ondeck.

Three kinds, handled differently by every caller:
user errors (the input is wrong: say where and what to do), temporary errors
(the world is briefly wrong: retry with backoff) and bugs (crash loudly; those
are ordinary exceptions and are never caught here).
"""

from __future__ import annotations

from dataclasses import dataclass


class OndeckError(Exception):
    """Base of every error ondeck raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a spec file: `FILE:LINE:COL: message`."""

    file: str
    line: int
    col: int
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class UserError(OndeckError):
    """The user's input is wrong; the message says what to do instead."""


class UnresolvedRef(UserError):
    """A service's `source` ref names nothing (yet): tried again at every fetch."""


class SpecError(UserError):
    """An `ondeck.yaml` that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class TemporaryError(OndeckError):
    """The world is briefly wrong (network, remote, busy resource): retry later."""


class SourceError(TemporaryError):
    """The git source could not be fetched or read."""


class BuildError(UserError):
    """A release's build step failed; carries the tail of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)


class ReleaseTaskError(UserError):
    """A service's release task (`release:`) failed; carries its exit code and output tail."""

    def __init__(self, message: str, log_tail: str = "", exit_code: int | None = None) -> None:
        self.log_tail = log_tail
        self.exit_code = exit_code
        super().__init__(message)


class RuntimeFailure(OndeckError):
    """An instance could not be started, stopped or inspected."""


class AcmeFailure(TemporaryError):
    """An ACME certificate order failed; `refused` when the CA said no (vs. was unreachable)."""

    def __init__(self, message: str, *, refused: bool) -> None:
        self.refused = refused
        super().__init__(message)


class BackupFailure(OndeckError):
    """A backup, its verification or a restore failed; the message says why (never a secret)."""
