"""Watch-fed caches of one environment's objects: each kind listed once, then watched.

Started by cluster.py (`ClusterEnv`, one cache per environment, which it also
uses to be woken on a change) and read by runtime/kubernetes.py, which asks the
API server instead for any kind whose cache is not fresh. The pattern is
client-go's informer: a kind is listed, then watched from the list's
resourceVersion; a watch the server ends is resumed from the last version seen;
a 410 Gone or any error marks the kind stale until it is listed again.

A kind is fresh while it is listed, its watch streams (heard from within
`MAX_SILENCE`: the server ends every watch after `WATCH_SECONDS` and it is
resumed at once), and it has seen every write ondeck made to it: a write's
resourceVersion is `required` until the watch delivers it, and a write with an
unknown outcome forces a relist. So a read never sees an object as it was
before ondeck's own write, and anything else it misses is an event still on
its way, which wakes the controller for another look.

Objects handed out are shared with the cache: read them, never change them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]
WATCH_SECONDS = 60  # the server ends each watch after this long; it is resumed from there
MAX_SILENCE = WATCH_SECONDS + 30  # nothing heard for this long: the watch is stuck, not fresh
RETRY = 1.0  # after an error (not a 410): list again after this long
RESYNC = 600.0  # a kind is listed again this often anyway (defence in depth, not needed)
_CONNECT = 10.0


@dataclass(frozen=True)
class Source:
    """Where one kind's objects are listed and watched."""

    kind: str
    api_version: str
    path: str  # the collection, e.g. /apis/apps/v1/namespaces/shop/deployments
    query: tuple[tuple[str, str], ...]  # labelSelector / fieldSelector


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again at once."""


class Reflector:
    """One kind's objects, kept by a thread that lists and then watches."""

    def __init__(
        self, api: k8s.ApiClient, source: Source, on_change: Callable[[str], None]
    ) -> None:
        self.api, self.source, self.on_change = api, source, on_change
        self.requests: Counter[str] = Counter()  # "list", "watch": what the cache sent
        self._items: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._version: str | None = None  # the last resourceVersion seen (None: list again)
        self._seen = 0  # the highest resourceVersion seen, as a number
        self._required = 0  # a write ondeck made that the watch has not delivered yet
        self._listed = False
        self._listed_at = 0.0
        self._heard = 0.0
        # writes whose outcome is unknown, and how many of them a completed list covers
        self._doubts = 0
        self._doubts_listed = 0
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"ondeck-cache-{source.kind}", daemon=True
        )

    # -- readers (any thread) --

    def fresh(self) -> bool:
        with self._lock:
            return self._fresh()

    def _fresh(self) -> bool:
        return (
            self._listed
            and self._doubts == self._doubts_listed
            and self._seen >= self._required
            and time.monotonic() - self._heard < MAX_SILENCE
        )

    def snapshot(self) -> tuple[list[Obj], str] | None:
        """The objects and the resourceVersion they are at; None when not fresh."""
        with self._lock:
            if not self._fresh():
                return None
            return list(self._items.values()), self._version or ""

    def wrote(self, version: str | None) -> None:
        """ondeck wrote an object of this kind: not fresh until the watch has delivered it.

        `version` is the resourceVersion the write answered; None when the outcome is
        unknown (the write failed), which makes the kind list again.
        """
        number = _number(version)
        with self._lock:
            if number is None:
                self._doubts += 1
            else:
                self._required = max(self._required, number)
        if number is None:
            self._interrupt()

    # -- the thread --

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._interrupt()

    def _interrupt(self) -> None:
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # already closed: nothing to interrupt
                response.shutdown()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    # a write the watch never delivered (the object left the selector): list
                    relist = (
                        self._version is None
                        or not self._listed
                        or self._doubts != self._doubts_listed
                        or self._required > self._seen
                        or time.monotonic() - self._listed_at > RESYNC
                    )
                if relist:
                    self._list()
                self._watch()
            except _Gone:
                self._stale("its resourceVersion is too old (410 Gone)")
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as err:
                self._stale(str(err).splitlines()[0] if str(err) else type(err).__name__)
                self._stop.wait(RETRY)

    def _stale(self, why: str) -> None:
        with self._lock:
            self._listed = False
            self._version = None
        if not self._stop.is_set():
            log.debug("cache of %s: %s; listing again", self.source.kind, why)

    def _send(self, query: list[tuple[str, str]], timeout: Any) -> Any:
        request = self.api.param_serialize(
            "GET",
            self.source.path,
            query_params=[*self.source.query, *query],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(*request, _request_timeout=timeout)

    def _list(self) -> None:
        with self._lock:
            doubts = self._doubts  # a list sent after these writes covers them
        self.requests["list"] += 1
        response = self._send([], (_CONNECT, 30.0))
        body = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        listing = json.loads(body)
        items = {}
        for item in listing.get("items") or []:
            item.setdefault("kind", self.source.kind)  # items of a list carry neither
            item.setdefault("apiVersion", self.source.api_version)
            items[_name(item)] = item
        version = str(listing.get("metadata", {}).get("resourceVersion", ""))
        with self._lock:
            self._items = items
            self._version = version
            self._seen = max(self._seen, _number(version) or 0)
            self._listed = True
            self._doubts_listed = doubts
            self._listed_at = self._heard = time.monotonic()
        self.on_change(self.source.kind)

    def _watch(self) -> None:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_SECONDS)),
            ("resourceVersion", self._version or ""),
        ]
        self.requests["watch"] += 1
        response = self._send(query, (_CONNECT, WATCH_SECONDS + 15.0))
        self._response = response.response
        try:
            if response.status == 410:
                raise _Gone
            if not 200 <= response.status <= 299:
                response.read()
                raise ApiException(http_resp=response)
            with self._lock:
                self._heard = time.monotonic()
            for event in _events(response.response):
                if self._stop.is_set() or self._doubts != self._doubts_listed:
                    return
                self._event(event)
        finally:
            self._response = None
            response.response.release_conn()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = str(obj.get("metadata", {}).get("resourceVersion", ""))
        with self._lock:
            self._heard = time.monotonic()
            self._version = version or self._version
            self._seen = max(self._seen, _number(version) or 0)
            if kind == "BOOKMARK":
                return
            if kind == "DELETED":
                self._items.pop(_name(obj), None)
            else:
                obj.setdefault("kind", self.source.kind)
                obj.setdefault("apiVersion", self.source.api_version)
                self._items[_name(obj)] = obj
        self.on_change(self.source.kind)


class KubeCache:
    """The live objects of one environment, by kind, each kept by its own `Reflector`.

    Has its own API client (a connection per watch), made from `api`'s configuration.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        sources: list[Source],
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        own = copy.deepcopy(api.configuration)  # same server and credentials
        own.connection_pool_maxsize = len(sources) + 1
        self.api = k8s.ApiClient(own)
        self.on_change = on_change or (lambda kind: None)
        self.reflectors = {s.kind: Reflector(self.api, s, self._changed) for s in sources}

    def _changed(self, kind: str) -> None:
        with contextlib.suppress(Exception):  # a listener's failure must not stop a watch
            self.on_change(kind)

    def start(self) -> KubeCache:
        for reflector in self.reflectors.values():
            reflector.start()
        return self

    def stop(self) -> None:
        for reflector in self.reflectors.values():
            reflector.stop()
        self.api.close()  # type: ignore[no-untyped-call]

    def snapshot(self, kind: str) -> tuple[list[Obj], str] | None:
        """`kind`'s objects and their resourceVersion, or None: not cached or not fresh."""
        reflector = self.reflectors.get(kind)
        return reflector.snapshot() if reflector is not None else None

    def fresh(self) -> bool:
        return all(r.fresh() for r in self.reflectors.values())

    def wrote(self, kind: str, version: str | None) -> None:
        reflector = self.reflectors.get(kind)
        if reflector is not None:
            reflector.wrote(version)

    def requests(self) -> Counter[str]:
        """What the cache itself has sent (lists and watches), over all kinds."""
        total: Counter[str] = Counter()
        for reflector in self.reflectors.values():
            total.update(reflector.requests)
        return total

    def wait_fresh(self, timeout: float) -> bool:
        """True once every kind is fresh (tests and the benchmark wait for this)."""
        deadline = time.monotonic() + timeout
        while not self.fresh():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON lines of a watch response, one event each."""
    pending = b""
    for chunk in response.stream(65536, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _number(version: str | None) -> int | None:
    """A resourceVersion as a number (etcd's revision), None if it is not one."""
    try:
        return int(version) if version else None
    except ValueError:
        return None
