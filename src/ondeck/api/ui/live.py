"""What keeps the open pages live: one shared status feed, the traffic sampler, log tails.

The UI routes start these in the controller's event loop. `StatusFeed` takes
the status document every `TICK` seconds while a page is open and bumps a
version when it changed; each server-sent-events stream waits on that and
sends only the fragments whose HTML changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondeck.api.ui.series import SAMPLE_EVERY, SeriesKey, TrafficSeries
from ondeck.runtime.container import decode_cri_log
from ondeck.runtime.logs import tail

log = logging.getLogger("ondeck")

TICK = 0.1  # seconds between looks at the status while a page is open, at least
SHARE = 0.25  # at most this share of the event loop goes to taking the status
IDLE_STOP = 30.0  # stop looking this long after the last page closed
LOG_POLL = 0.2
LOG_BACKLOG = 100  # lines a log tail starts with
KEEPALIVE = 15.0


class StatusFeed:
    """The latest status document (`Controller.status_json`) and a version that changes with it."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        on_change: Callable[[dict[str, Any]], None] = lambda doc: None,
    ) -> None:
        self._status = status
        self._on_change = on_change
        self.version = 0
        self.doc: dict[str, Any] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._readers = 0
        self._last_reader = time.monotonic()

    def current(self) -> tuple[int, dict[str, Any]]:
        """The status now (taken afresh when no page keeps the feed running)."""
        if self._task is None or self._task.done():
            self._take()
        return self.version, self.doc

    async def next(self, seen: int, timeout: float) -> tuple[int, dict[str, Any]]:
        """The first version after `seen`, or the current one after `timeout` seconds."""
        self._ensure_running()
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version != seen), timeout
                )
        return self.version, self.doc

    @contextlib.contextmanager
    def reading(self) -> Any:
        """Around one open stream: the feed runs while any is open."""
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            self._last_reader = time.monotonic()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._readers > 0 or time.monotonic() - self._last_reader < IDLE_STOP:
            started = time.monotonic()
            if self._take():
                async with self._changed:
                    self._changed.notify_all()
            cost = time.monotonic() - started
            await asyncio.sleep(max(TICK, cost / SHARE - cost))

    def _take(self) -> bool:
        # The controller rebuilds its document only when something changed and hands
        # out the same object until then: identity says whether there is news.
        doc = self._status()
        if doc is self.doc:
            return False
        self.doc = doc
        self.version += 1
        self._on_change(doc)
        return True


class Sampler:
    """Every SAMPLE_EVERY seconds: the router's counters into `TrafficSeries`."""

    def __init__(
        self,
        stats: Callable[[], Any],  # async () -> {backend id: snapshot}
        status: Callable[[], dict[str, Any]],
        every: float = SAMPLE_EVERY,
    ) -> None:
        self.series = TrafficSeries()
        self._stats, self._status, self.every = stats, status, every
        self._versions: dict[str, SeriesKey] = {}
        self._named: dict[tuple[str, str, str], str] = {}  # (env, service, fingerprint) -> version

    async def run(self, done: Callable[[], bool] = lambda: False) -> None:
        """Sample until `done()` (its controller stopped: an app of a host file removed)."""
        while not done():
            try:
                await self.sample()
            except Exception:  # the charts must never take the controller down
                log.exception("traffic sample failed")
            await asyncio.sleep(self.every)

    async def sample(self) -> None:
        backends = await self._stats()
        self.learn(self._status())
        self.series.add(time.time(), backends, self._versions)
        for gone in set(self._versions) - set(backends):
            del self._versions[gone]

    def learn(self, doc: dict[str, Any]) -> None:
        """Which version each instance runs; kept until the router forgets the backend.

        Called at each sample and whenever an open page sees the status change, so an
        instance started and replaced between two samples still gets its version's name.
        """
        for env in doc.get("environments", []):
            for svc in env.get("services", []):
                if svc.get("fingerprint") and svc.get("version"):
                    self._named[(env["name"], svc["name"], svc["fingerprint"])] = svc["version"]
                for inst in svc.get("instances", []):
                    if inst["id"] not in self._versions:
                        version = self._named.get(
                            (env["name"], svc["name"], inst.get("fingerprint") or "")
                        )
                        self._versions[inst["id"]] = SeriesKey(
                            env["name"], svc["name"], version_label(version, inst.get("revision"))
                        )


def version_label(version: str | None, revision: str | None) -> str:
    """`1.4.2 @3f2a9c1`: the version (when known) and revision an instance runs."""
    sha = (revision or "")[:7]
    return f"{version} @{sha}" if version else f"@{sha}"


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON data on a single line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class LogSource:
    inst_id: str
    path: Path
    cri: bool  # written by a container engine (`TIME STREAM F|P text` lines)

    def decode(self, raw: bytes) -> str:
        return (decode_cri_log(raw) if self.cri else raw).decode(errors="replace")


async def follow_logs(sources: list[LogSource]) -> AsyncIterator[list[str]]:
    """The last LOG_BACKLOG lines of each instance, then every new line as it comes."""
    offsets: dict[str, int] = {}
    partial: dict[str, str] = {}
    first: list[str] = []
    for src in sources:
        text = src.decode(tail(src.path, LOG_BACKLOG).encode())
        first += [f"[{src.inst_id}] {line}" for line in text.splitlines()]
        offsets[src.inst_id] = src.path.stat().st_size if src.path.exists() else 0
    yield first
    while True:
        lines: list[str] = []
        for src in sources:
            size = src.path.stat().st_size if src.path.exists() else 0
            if size < offsets[src.inst_id]:
                offsets[src.inst_id] = 0  # rotated by truncation: start over
            if size > offsets[src.inst_id]:
                with src.path.open("rb") as f:
                    f.seek(offsets[src.inst_id])
                    chunk = f.read(size - offsets[src.inst_id])
                offsets[src.inst_id] = size
                text = partial.pop(src.inst_id, "") + src.decode(chunk)
                *done, rest = text.split("\n")
                if rest:
                    partial[src.inst_id] = rest
                lines += [f"[{src.inst_id}] {line}" for line in done]
        yield lines
        await asyncio.sleep(LOG_POLL)
