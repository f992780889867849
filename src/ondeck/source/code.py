"""Services' pinned code (`source:`): refs resolved to commits, app repositories mirrored.

`Environment.render_revision` calls `CodeRepos.resolve` for each service with a
`source` (in a worker thread: it runs git), and the release step exports from
`CodeRepos.source_for`. A separate app repository is mirrored under
`STATE_DIR/repos/` like the deploy repository, fetched at most once per round
of the controller's fetches (`new_round`), so environments share one fetch.
A ref that names nothing is a `UserError` naming the service, the ref and the
repository: the revision is refused and what runs is left alone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from ondeck.errors import SourceError, UnresolvedRef, UserError
from ondeck.source.base import Source
from ondeck.source.git import GitSource, _redact
from ondeck.spec.model import CodeSource
from ondeck.state.desired import Code

log = logging.getLogger("ondeck")

SPEC_FILE = "ondeck.yaml"


def mirror_dir(state_dir: Path, url: str) -> Path:
    """Where a repository is mirrored (the same place for the deploy and app repositories)."""
    return state_dir / "repos" / hashlib.sha256(url.encode()).hexdigest()[:16]


class CodeRepos:
    """The deploy repository and the app repositories services pin their code from."""

    def __init__(self, deploy: Source, state_dir: Path, watched_path: str = "") -> None:
        self.deploy = deploy
        self.state_dir = state_dir
        self.watched_path = watched_path.strip("/")
        self._apps: dict[str, GitSource] = {}
        self._fresh: set[str] = set()  # fetched in this round
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self._failed: dict[str, str] = {}  # the last fetch error of each app repository

    def new_round(self) -> None:
        """The deploy repository was fetched: app repositories are fetched again when used."""
        with self._lock:
            self._fresh.clear()

    def source_for(self, repo: str | None) -> Source:
        """The source a service's code is exported from (the deploy repository for None)."""
        if repo is None or repo == self.deploy.url:
            return self.deploy
        with self._lock:
            found = self._apps.get(repo)
            if found is None:
                found = GitSource(repo, mirror_dir(self.state_dir, repo))
                if found.url == self.deploy.url:
                    return self.deploy
                self._apps[repo] = found
            return found

    def resolve(self, service: str, pin: CodeSource, fetch: bool = True) -> Code:
        """The commit `pin` names now; raises `UserError` when it names nothing."""
        source = self.source_for(pin.repo)
        if fetch and source is not self.deploy:
            self._fetch(service, pin.repo or "", source)
        found = source.resolve_ref(pin.ref)
        where = _redact(pin.repo) if pin.repo else "this repository"
        if found is None:
            raise UnresolvedRef(
                f"service {service}: source ref {pin.ref!r} does not resolve in {where}: "
                "push that branch or tag, or pin an existing one (`ondeck set-ref`)"
            )
        sha, follows = found
        default = self.watched_path if source is self.deploy else ""
        path = (pin.path if pin.path is not None else default).strip("/")
        exclude = frozenset({SPEC_FILE}) if source is self.deploy else frozenset()
        if follows and source is self.deploy:  # a spec-only commit on the branch: same code
            sha = source.code_commit(sha, path, SPEC_FILE)
        try:
            tree = source.tree_id(sha, path, exclude)
        except UserError as err:
            raise UserError(f"service {service}: source {where} at {pin.ref}: {err}") from err
        return Code(pin.ref, sha, pin.repo, path, follows, tree)

    def _fetch(self, service: str, repo: str, source: Source) -> None:
        with self._lock:
            lock = self._fetching.setdefault(repo, threading.Lock())
        with lock:  # two environments wanting one repo: one fetch, the other waits for it
            if repo in self._fresh:
                return
            self._fetch_now(service, repo, source)  # raises when there is no mirror at all
            self._fresh.add(repo)

    def _fetch_now(self, service: str, repo: str, source: Source) -> None:
        try:
            source.fetch()
        except (SourceError, UserError) as err:
            if not (source.mirror_dir / "HEAD").is_file():
                raise UnresolvedRef(
                    f"service {service}: cannot fetch its source repo {_redact(repo)}: {err}"
                ) from err
            if self._failed.get(repo) != str(err):  # once per new error, not at every fetch
                log.warning("fetch of %s failed, using its mirror as it is: %s", _redact(repo), err)
            self._failed[repo] = str(err)
            return
        self._failed.pop(repo, None)
