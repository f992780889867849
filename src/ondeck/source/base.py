"""What the controller needs from the source of desired state: a protocol.

`GitSource` implements it; a test may pass another. Every call may block
(git subprocesses): callers run them in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ondeck.source.git import CommitInfo


class Source(Protocol):
    url: str
    mirror_dir: Path  # the local mirror: notes and signatures are read from it

    def fetch(self) -> None: ...

    def resolve(self) -> str:
        """The commit the watched branch points at."""
        ...

    def resolve_ref(self, ref: str) -> tuple[str, bool] | None:
        """(full sha, is a branch) of a branch, tag or sha; None when it names nothing."""
        ...

    def code_commit(self, sha: str, path: str, spec_file: str) -> str:
        """The newest commit up to `sha` that changed `path`, `spec_file` aside."""
        ...

    def commit_info(self, rev: str) -> CommitInfo: ...

    def read_file(self, rev: str, path: str) -> bytes | None: ...

    def tree_id(self, rev: str, path: str = "", exclude: frozenset[str] = frozenset()) -> str: ...

    def export(self, rev: str, path: str, dest: Path) -> None: ...

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when `older` is `newer` or in its history (a fast-forward)."""
        ...
