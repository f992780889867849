"""Maintenance mode end to end: a commit turns it on, the router answers, a commit lifts it.

A real `ondeck up` with its router on a loopback port; `ondeck maintenance
on|off` commits into the repo it follows; keep-alive load runs from the test
the whole time. "After the switch" means after the router serves the new
config, observed over its control socket: from then on no request reaches
the app while maintenance is on, and none is refused once it is lifted. The
instance keeps running (same pid, no restart) and stays Healthy throughout.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable

from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

from ondeck.router.control import RouterControl

SPEC = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1") + "    routes: [{path: /}]\n"
MESSAGE = "Back at 10:00 <b>sharp</b>"
WAIT = 60.0

Answer = tuple[float, float, int, bytes]  # sent, answered, status, body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Load:
    """Keep-alive GETs from a few threads until stopped; every answer is kept."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            self.answers.append((sent, time.monotonic(), response.status, body))
        conn.close()

    def count(self) -> int:
        return len(self.answers)


def served_maintenance(od: Ondeck) -> str | None:
    config = asyncio.run(RouterControl(od.state_dir / "router.sock").get())
    pool = config.pools.get("default/web")
    return None if pool is None else pool.maintenance


def switch(od: Ondeck, repo: Repo, *args: str, on: bool) -> float:
    """Commit the switch, and return when the router serves it (its acknowledgement)."""
    od.cli("maintenance", *args, "--repo", str(repo.path))
    od.cli("sync")
    wait_for(lambda: (served_maintenance(od) is not None) == on, f"maintenance {on}", WAIT, 0.01)
    return time.monotonic()


def instance(od: Ondeck) -> tuple[int, int, str]:
    web = od.service("web")
    assert web is not None
    first = web["instances"][0]
    return first["pid"], first["restarts"], first["health"]


def test_maintenance_on_and_off_under_load(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    port = free_port()
    sha = repo.commit("first", SPEC)
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}")
    od.wait_synced(sha, timeout=WAIT)
    before = instance(od)
    with Load(port) as load:
        wait_for(lambda: load.count() > 50, "load through the router", WAIT)
        on_at = switch(od, repo, "on", "web", "--message", MESSAGE, on=True)
        wait_for(lambda: sum(1 for a in load.answers if a[0] > on_at) > 50, "load in maint.", WAIT)
        during = od.env_status()
        assert during["health"] == "Healthy", during
        assert instance(od) == before  # the instance went on; its health check too
        off_asked = time.monotonic()
        off_at = switch(od, repo, "off", "web", on=False)
        wait_for(lambda: sum(1 for a in load.answers if a[0] > off_at) > 50, "load after", WAIT)
    assert load.errors == []
    in_maintenance = [a for a in load.answers if on_at < a[0] and a[1] < off_asked]
    lifted = [a for a in load.answers if a[0] > off_at]
    assert len(in_maintenance) > 50 and len(lifted) > 50
    for _, _, status, body in in_maintenance:
        assert status == 503, body  # not one request reached the app
        assert b"Back at 10:00 &lt;b&gt;sharp&lt;/b&gt;" in body
    for _, _, status, body in lifted:
        assert status == 200 and json.loads(body)["version"] == "1.0.0", body
    assert instance(od) == before
    assert od.env_status()["health"] == "Healthy"
