"""An environment that left Kubernetes: what it had on the cluster removed once the host serves.

environment.py records a `ClusterMark` in the store before an environment is
applied to a cluster, and gives an environment that runs on this host again
(runtime process or container) while one is recorded a `Departure`, whose `step`
it calls once per pass. Once every service of the host's release has its
replicas ready (`host_ready`), a job in a worker thread deletes every object
ondeck owns there for the app/env (`KubernetesRuntime.remove_owned`, the prune
with nothing desired) except the PersistentVolumeClaims, which hold the data
dir, and the Namespace that holds them: `Left.actions` says how to delete them.
A job that fails (the API server unreachable) is tried again after RETRY and
never holds the host's instances back; the mark is cleared only once it worked,
so a restarted controller, which sees only the new spec, finishes the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ondeck.cluster import ClusterLink, in_thread
from ondeck.errors import OndeckError
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime
from ondeck.state.desired import Desired
from ondeck.state.live import Live, Phase
from ondeck.store import ClusterMark

log = logging.getLogger("ondeck")

RETRY = 10.0  # a teardown that failed is tried again after this long
KEPT = frozenset({"PersistentVolumeClaim"})  # the data dir: never deleted for the user


@dataclass(frozen=True)
class Left:
    """What a teardown did: objects deleted, objects kept (with how to delete them)."""

    mark: ClusterMark
    deleted: tuple[str, ...]
    kept: tuple[str, ...]

    def actions(self) -> list[str]:
        """History lines: each deletion, then what was kept and the command that deletes it."""
        ns = self.mark.namespace
        lines = [f"delete {key} (the environment left the cluster)" for key in self.deleted]
        for key in self.kept:
            lines.append(f"keep {key} (it holds the data dir): `{self._delete(key)}` deletes it")
        lines.append(
            f"keep Namespace/{ns} (it may hold what was kept): `{self._kubectl()} delete "
            f"namespace {ns}` deletes it and everything left in it"
        )
        return lines

    def summary(self) -> str:
        """The event's message: what went, what stays and how to delete it."""
        kept = "".join(
            f"; kept {key} (the data dir): `{self._delete(key)}` deletes it" for key in self.kept
        )
        return (
            f"left the cluster (namespace {self.mark.namespace}): deleted "
            f"{len(self.deleted)} object(s){kept}"
        )

    def _kubectl(self) -> str:
        return "kubectl" + (f" --context {self.mark.context}" if self.mark.context else "")

    def _delete(self, key: str) -> str:
        kind, _, name = key.split("/", 2)
        return f"{self._kubectl()} -n {self.mark.namespace} delete {kind.lower()} {name}"


def host_ready(desired: Desired, live: Live) -> bool:
    """Does every service of `desired` have its replicas ready on this host, at its release?"""
    return all(
        sum(
            1
            for i in live.of(s.name)
            if i.phase is Phase.RUNNING and i.ready and i.fingerprint == s.fingerprint
        )
        >= s.replicas
        for s in desired.services
    )


class Departure:
    """One environment's objects on a cluster it has left, until they are removed."""

    def __init__(
        self, env: str, mark: ClusterMark, shared: ClusterLink | None, wake: Callable[[], None]
    ) -> None:
        self.env, self.mark, self.wake = env, mark, wake
        where = Cluster(Path(mark.kubeconfig) if mark.kubeconfig else None, mark.context)
        self._own = shared is None or shared.cluster != where
        self.link = ClusterLink(where) if self._own or shared is None else shared
        self.error: str | None = None  # why the last attempt failed (status shows it)
        self._job: asyncio.Future[Left] | None = None
        self._retry_at = 0.0

    @property
    def busy(self) -> bool:
        return self._job is not None

    def due_in(self) -> float | None:
        """Seconds until the next attempt may start (None: one runs)."""
        return None if self._job is not None else max(0.0, self._retry_at - time.monotonic())

    def step(self, ready: bool) -> tuple[Left | None, str | None]:
        """Collect a finished attempt, or start one when the host is `ready` and it is due.

        Returns what a finished attempt did, or the new error of a failed one (each once).
        """
        job = self._job
        if job is not None:
            if not job.done():
                return None, None
            self._job = None
            err = job.exception()
            if isinstance(err, OndeckError):
                self._retry_at = time.monotonic() + RETRY
                fresh = str(err) != self.error
                self.error = str(err)
                return None, self.error if fresh else None
            if err is not None:
                raise err  # a bug: the environment contains it
            self.error = None
            return job.result(), None
        if ready and time.monotonic() >= self._retry_at:
            self._job = in_thread(self._remove)
            self._job.add_done_callback(lambda _: self.wake())
        return None, None

    def _remove(self) -> Left:
        runtime = KubernetesRuntime(self.link.api())
        mark = self.mark
        result, kept = runtime.remove_owned(mark.namespace, mark.app, self.env, KEPT)
        log.info(
            "[%s] left the cluster (namespace %s): deleted %s; kept %s",
            self.env,
            mark.namespace,
            ", ".join(result.pruned) or "nothing",
            ", ".join(kept) or "nothing",
        )
        return Left(mark, tuple(result.pruned), tuple(kept))

    def close(self) -> None:
        if self._own:
            self.link.close()
