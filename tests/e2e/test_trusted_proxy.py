"""`ondeck up --trusted-proxy`: the router it starts keeps a trusted proxy's X-Forwarded-*.

A real `ondeck up` starts its router; the app echoes what it was told. A
client bound to 127.0.0.2 plays the TLS terminator in front of the router;
one from 127.0.0.1 plays anyone else.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable

from conftest import Ondeck, Repo, wait_for

ECHO_APP = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        seen = {k: self.headers.get(k) for k in ("X-Forwarded-For", "X-Forwarded-Proto")}
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
"""
SPEC = """\
app: shop
services:
  web:
    command: ["python3", "echo.py"]
    port: true
    health: {tcp: true, interval: 1s}
    routes: [{path: /}]
"""
SPOOFED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


class FromAddress(http.client.HTTPConnection):
    """An HTTP connection whose source address is `source` (any 127/8 is loopback)."""

    def __init__(self, port: int, source: str) -> None:
        super().__init__("127.0.0.1", port, timeout=10, source_address=(source, 0))


def seen_by_app(port: int, source: str) -> dict[str, str]:
    conn = FromAddress(port, source)
    try:
        conn.request("GET", "/", headers=SPOOFED)
        response = conn.getresponse()
        assert response.status == 200
        seen: dict[str, str] = json.loads(response.read())
        return seen
    finally:
        conn.close()


def test_up_passes_trusted_proxies_to_its_router(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    repo.write("echo.py", ECHO_APP)
    sha = repo.commit("echo app", SPEC)
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}", "--trusted-proxy", "127.0.0.2/32")
    od.wait_synced(sha, timeout=60)
    wait_for(lambda: _answers(port), "the router to serve the app", 60)
    assert seen_by_app(port, "127.0.0.2") == {
        "X-Forwarded-For": "203.0.113.7, 127.0.0.2",
        "X-Forwarded-Proto": "https",
    }
    assert seen_by_app(port, "127.0.0.1") == {
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "http",
    }


def _answers(port: int) -> bool:
    try:
        conn = FromAddress(port, "127.0.0.1")
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False
