"""Notifications delivered to a real local HTTP receiver: signature, retries, coalescing,
and a target that hangs or refuses never delays the others (nor the caller)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ondeck.notify import SIGNATURE_HEADER, DeliveryError, Notice, Notifier, expand
from ondeck.spec.model import Event, NotifyTarget

KEY = "hmac-key-for-tests"


@dataclass
class Receiver:
    """A real HTTP server on loopback that records each POST; `mode` decides its answer."""

    mode: str = "ok"  # ok | fail-twice | hang | refuse
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    attempts: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.attempts += 1
            if rec.mode == "hang":
                rec.release.wait(30)
            if rec.mode == "refuse" or (rec.mode == "fail-twice" and rec.attempts <= 2):
                self.send_response(503)
                self.end_headers()
                return
            rec.received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.release.set()
    server.shutdown()
    server.server_close()


def notice(event: Event = Event.SYNC_FAILED, subject: str = "web", msg: str = "boom") -> Notice:
    return Notice(event, "shop", "production", subject, msg, "a" * 40)


async def wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_every_event_kind_arrives_signed(receiver: Receiver) -> None:
    async def go() -> None:
        n = Notifier()
        n.configure(
            "shop", "production", [NotifyTarget(url=receiver.url(), secret="K")], {"K": KEY}
        )
        for event in Event:
            assert n.emit(notice(event))
        await wait_for(lambda: len(receiver.received) == len(Event))
        n.close()

    asyncio.run(go())
    kinds = []
    for headers, body in receiver.received:
        expected = "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        doc = json.loads(body)
        assert doc["app"] == "shop" and doc["env"] == "production"
        kinds.append(doc["event"])
        assert headers["X-Ondeck-Event"] == doc["event"]
    assert kinds == [e.value for e in Event]  # in order


def test_only_the_events_a_target_asks_for(receiver: Receiver) -> None:
    async def go() -> None:
        n = Notifier()
        target = NotifyTarget(url=receiver.url(), events=[Event.JOB_FAILED])
        n.configure("shop", "production", [target], {})
        n.emit(notice(Event.SYNC_FAILED))
        n.emit(notice(Event.JOB_FAILED, "cleanup"))
        await wait_for(lambda: len(receiver.received) == 1)
        await n.drain(2)
        n.close()

    asyncio.run(go())
    assert [json.loads(b)["event"] for _, b in receiver.received] == ["job-failed"]


def test_a_crash_loop_is_one_message_then_a_count(receiver: Receiver) -> None:
    now = [1000.0]

    async def go() -> None:
        n = Notifier(clock=lambda: now[0])
        n.configure("shop", "production", [NotifyTarget(url=receiver.url())], {})
        sent = [n.emit(notice(Event.DEGRADED, msg=f"crash {i}")) for i in range(200)]
        assert sent.count(True) == 1
        now[0] += 601  # past the coalescing window: the next one says how many were folded
        assert n.emit(notice(Event.DEGRADED, msg="crash again"))
        await wait_for(lambda: len(receiver.received) == 2)
        n.close()

    asyncio.run(go())
    second = json.loads(receiver.received[1][1])
    assert second["suppressed"] == 199


def test_failures_are_retried_with_backoff(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ondeck.notify.BACKOFF", 0.05)
    receiver.mode = "fail-twice"

    async def go() -> None:
        n = Notifier()
        n.configure("shop", "production", [NotifyTarget(url=receiver.url())], {})
        n.emit(notice())
        await wait_for(lambda: len(receiver.received) == 1)
        state = n.status("shop", "production")[0]
        await wait_for(lambda: state.delivered == 1)
        assert state.last_error is None
        n.close()

    asyncio.run(go())
    assert receiver.attempts == 3


def test_a_refusing_target_is_counted_and_shown(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ondeck.notify.BACKOFF", 0.01)
    receiver.mode = "refuse"

    async def go() -> None:
        n = Notifier()
        n.configure("shop", "production", [NotifyTarget(url=receiver.url())], {})
        n.emit(notice())
        state = n.status("shop", "production")[0]
        await wait_for(lambda: state.failed == 1)
        assert state.last_error == "answered 503"
        n.close()

    asyncio.run(go())


def test_a_hanging_target_delays_neither_the_caller_nor_other_targets(receiver: Receiver) -> None:
    hanging = Receiver(mode="hang")

    class Hang(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hanging.release.wait(30)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:

        async def go() -> None:
            n = Notifier()
            slow = NotifyTarget(url=f"json://127.0.0.1:{server.server_address[1]}/x")
            n.configure("shop", "production", [slow, NotifyTarget(url=receiver.url())], {})
            assert n.emit(notice())  # synchronous: it only queues, so it cannot wait on a target
            await wait_for(lambda: len(receiver.received) == 1, timeout=5)
            slow_state = n.status("shop", "production")[0]
            assert slow_state.delivered == 0 and slow_state.failed == 0  # still hanging
            n.close()

        asyncio.run(go())
    finally:
        hanging.release.set()
        server.shutdown()
        server.server_close()


def test_reconfiguring_keeps_the_queue_of_an_unchanged_target(receiver: Receiver) -> None:
    async def go() -> None:
        n = Notifier()
        target = NotifyTarget(url=receiver.url(), events=[Event.SYNC_FAILED])
        n.configure("shop", "production", [target], {})
        before = n.status("shop", "production")[0]
        n.configure("shop", "production", [target.model_copy()], {})  # same spec, new object
        assert n.status("shop", "production")[0] is before
        n.emit(notice())
        await wait_for(lambda: len(receiver.received) == 1)
        n.close()

    asyncio.run(go())


def test_url_placeholders_come_from_secrets_and_never_leak() -> None:
    assert expand("json://h/${TOKEN}/x", {"TOKEN": "s3cr3t"}) == "json://h/s3cr3t/x"
    with pytest.raises(DeliveryError) as err:
        expand("json://h/${NOPE}", {})
    assert "NOPE" in str(err.value) and not err.value.retry
