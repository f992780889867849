"""Notifications: events of the controller sent to webhooks, chat and mail, off the loop.

The controller (its environments, jobs, backups, certificates) calls `emit`,
which never blocks: a notice is coalesced (the same event about the same thing
within `COALESCE` is counted, not sent again, so a crash loop is one message),
then queued. One worker task per target delivers in order, with retries and
backoff, so a target that hangs or refuses delays only itself. `json://` and
`jsons://` are ondeck's own JSON POST signed with HMAC-SHA256; every other
scheme goes through apprise (Slack, Telegram, mail, ...). URLs may hold
`${NAME}` placeholders filled from the environment's secrets at send time: the
expanded URL is never logged nor shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import httpx
from prometheus_client import CollectorRegistry, Counter

from ondeck.spec.model import Event, NotifyTarget

log = logging.getLogger("ondeck.notify")

COALESCE = 600.0  # the same event about the same thing is sent at most once per 10 minutes
ATTEMPTS = 6  # 1 + 5 retries: 1 s, 2 s, 4 s, 8 s, 16 s apart
BACKOFF = 1.0
TIMEOUT = 10.0  # one delivery attempt
QUEUE_MAX = 1000  # per target; beyond it the oldest notice is dropped (and counted)
SIGNATURE_HEADER = "X-Ondeck-Signature"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Notice:
    """One event about one thing (a service, job, backup, host) of one environment."""

    event: Event
    app: str
    env: str
    subject: str
    message: str
    revision: str | None = None
    at: float = 0.0
    suppressed: int = 0  # similar notices coalesced into this one

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """Notices with the same key are one event repeated (a crash loop, a retried commit)."""
        return (self.event.value, self.app, self.env, self.subject, self.revision or "")

    def title(self) -> str:
        where = f"{self.app}/{self.env}" + (f" {self.subject}" if self.subject else "")
        return f"ondeck: {self.event.value} in {where}"

    def body(self) -> str:
        more = (
            f" ({self.suppressed} similar events since the last message)" if self.suppressed else ""
        )
        rev = f" at {self.revision[:12]}" if self.revision else ""
        return f"{self.message}{rev}{more}"

    def payload(self) -> dict[str, object]:
        return {**asdict(self), "event": self.event.value, "title": self.title()}


class DeliveryError(Exception):
    """One attempt failed; `retry` says whether another attempt may succeed."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class TargetState:
    """What `ondeck status` shows of a target: never its expanded URL."""

    url: str
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None
    pending: int = 0


@dataclass
class _Target:
    spec: NotifyTarget
    secrets: Mapping[str, str]
    state: TargetState
    queue: asyncio.Queue[Notice] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    worker: asyncio.Task[None] | None = None


class Notifier:
    """Every notification target of one controller, keyed by (app, env)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock
        self._targets: dict[tuple[str, str], list[_Target]] = {}
        self._sent: dict[tuple[str, str, str, str, str], tuple[float, int]] = {}
        self.changes = 0  # bumped when a delivery ends: the status shows target states
        r = registry or CollectorRegistry()
        self.deliveries = Counter(
            "ondeck_notifications",
            "Notification deliveries, by environment, event and result.",
            ["env", "event", "result"],
            registry=r,
        )
        self.coalesced = Counter(
            "ondeck_notifications_coalesced",
            "Notices not sent because the same event was sent recently.",
            ["env", "event"],
            registry=r,
        )

    def configure(
        self, app: str, env: str, targets: list[NotifyTarget], secrets: Mapping[str, str]
    ) -> None:
        """The targets of `app`/`env` from its current spec; unchanged targets keep their queue."""
        old = {t.spec.model_dump_json(): t for t in self._targets.get((app, env), [])}
        new: list[_Target] = []
        for spec in targets:
            kept = old.pop(spec.model_dump_json(), None)
            if kept is not None:
                kept.secrets = secrets
                new.append(kept)
            else:
                new.append(_Target(spec, secrets, TargetState(spec.url)))
        for gone in old.values():
            if gone.worker is not None:
                gone.worker.cancel()
        self._targets[(app, env)] = new

    def missing_secrets(self, targets: list[NotifyTarget], secrets: Mapping[str, str]) -> list[str]:
        """Secret names the targets refer to that `secrets` lacks (an error at sync time)."""
        names = set()
        for t in targets:
            names.update(PLACEHOLDER.findall(t.url))
            if t.secret:
                names.add(t.secret)
        return sorted(n for n in names if n not in secrets)

    def emit(self, notice: Notice) -> bool:
        """Queue `notice` for every target that wants it; False when coalesced. Never blocks."""
        now = self.clock()
        notice = replace(notice, at=notice.at or now)
        last = self._sent.get(notice.key)
        if last is not None and now - last[0] < COALESCE:
            self._sent[notice.key] = (last[0], last[1] + 1)
            self.coalesced.labels(notice.env, notice.event.value).inc()
            return False
        suppressed = last[1] if last is not None else 0
        self._sent[notice.key] = (now, 0)
        if suppressed:
            notice = replace(notice, suppressed=suppressed)
        for target in self._targets.get((notice.app, notice.env), []):
            if notice.event not in target.spec.events:
                continue
            if target.queue.full():
                target.queue.get_nowait()
                self.deliveries.labels(notice.env, notice.event.value, "dropped").inc()
            target.queue.put_nowait(notice)
            target.state.pending = target.queue.qsize()
            if target.worker is None or target.worker.done():
                target.worker = asyncio.get_running_loop().create_task(self._work(target))
        return True

    def status(self, app: str, env: str) -> list[TargetState]:
        return [t.state for t in self._targets.get((app, env), [])]

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until every queue is empty: tests and a clean shutdown."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            t.queue.qsize() or (t.worker and not t.worker.done() and t.state.pending)
            for ts in self._targets.values()
            for t in ts
        ):
            await asyncio.sleep(0.02)

    def close(self) -> None:
        for targets in self._targets.values():
            for t in targets:
                if t.worker is not None:
                    t.worker.cancel()

    async def _work(self, target: _Target) -> None:
        while not target.queue.empty():
            notice = target.queue.get_nowait()
            await self._deliver(target, notice)
            target.state.pending = target.queue.qsize()

    async def _deliver(self, target: _Target, notice: Notice) -> None:
        delay = BACKOFF
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await send(target.spec, target.secrets, notice)
            except DeliveryError as err:
                target.state.last_error = str(err)
                target.state.last_error_at = self.clock()
                if not err.retry or attempt == ATTEMPTS:
                    break
                log.info(
                    "[%s] notification to %s failed (%s); retry in %.0fs",
                    notice.env,
                    target.spec.url,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                delay *= 2
                continue
            target.state.delivered += 1
            target.state.last_delivered_at = self.clock()
            target.state.last_error = None
            self.changes += 1
            self.deliveries.labels(notice.env, notice.event.value, "delivered").inc()
            return
        target.state.failed += 1
        self.changes += 1
        self.deliveries.labels(notice.env, notice.event.value, "failed").inc()
        log.warning(
            "[%s] notification %s to %s failed: %s",
            notice.env,
            notice.event.value,
            target.spec.url,
            target.state.last_error,
        )


def expand(url: str, secrets: Mapping[str, str]) -> str:
    """`url` with `${NAME}` filled from `secrets`; a missing name is a non-retryable error."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in secrets:
            raise DeliveryError(f"secret {name} is not set (`ondeck secret set {name}`)", False)
        return secrets[name]

    return PLACEHOLDER.sub(fill, url)


def sign(key: str, body: bytes) -> str:
    """The signature header's value: `sha256=` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


async def send(target: NotifyTarget, secrets: Mapping[str, str], notice: Notice) -> None:
    """One delivery attempt; raises `DeliveryError` (never with the expanded URL in it)."""
    url = expand(target.url, secrets)
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("json", "jsons"):
        await _post_json(
            ("https" if scheme == "jsons" else "http") + url[len(scheme) :], target, secrets, notice
        )
    else:
        await _apprise(url, notice)


async def _post_json(
    url: str, target: NotifyTarget, secrets: Mapping[str, str], notice: Notice
) -> None:
    body = json.dumps(notice.payload(), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "ondeck",
        "X-Ondeck-Event": notice.event.value,
        "X-Ondeck-Delivery": str(uuid.uuid4()),
    }
    if target.secret:
        if target.secret not in secrets:
            raise DeliveryError(f"secret {target.secret} (HMAC key) is not set", False)
        headers[SIGNATURE_HEADER] = sign(secrets[target.secret], body)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
            response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as err:
        raise DeliveryError(f"{type(err).__name__}") from None  # the message may hold the URL
    if response.status_code >= 300:
        retry = response.status_code >= 500 or response.status_code in (408, 429)
        raise DeliveryError(f"answered {response.status_code}", retry)


async def _apprise(url: str, notice: Notice) -> None:
    import apprise  # heavy: loaded only when a chat or mail target exists

    sender = apprise.Apprise()
    if not sender.add(url):
        raise DeliveryError("apprise does not know this URL's scheme", False)
    ok = await asyncio.to_thread(sender.notify, body=notice.body(), title=notice.title())
    if not ok:
        raise DeliveryError("apprise could not deliver it")


def known_scheme(url: str) -> bool:
    """Whether a URL's scheme can be delivered to: json, jsons, or one apprise supports."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("json", "jsons"):
        return True
    import apprise

    schemes: set[str] = set()
    for entry in apprise.Apprise().details()["schemas"]:
        for key in ("protocols", "secure_protocols"):
            value = entry.get(key) or ()
            schemes.update([value] if isinstance(value, str) else value)
    return scheme in schemes
