"""A router that dies is restarted at once, with its routes, not at the next housekeeping.

On 2026-12-01 a killed router came back only at the next housekeeping pass
(users refused for about 27 s). The controller now watches the router's
process by pidfd, as it watches instances. Housekeeping is set to 10 minutes
here, so only the watch can bring the router back within the test's wait.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

SPEC = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1") + "    routes: [{path: /}]\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _served(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            return str(json.loads(answer.read())["version"])
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _router_pid(state_dir: Path) -> int | None:
    """The router's pid file, or None while it is absent or being rewritten."""
    try:
        return int((state_dir / "router.pid").read_text())
    except (OSError, ValueError):
        return None


def test_a_killed_router_is_restarted_at_once_and_routes_again(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    port = _free_port()
    sha = repo.commit("one web", SPEC)
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}", "--drift-check", "600s")
    od.wait_synced(sha, timeout=60)
    assert wait_for(lambda: _served(port), "the router to serve the app", timeout=30) == "1.0.0"

    for _ in range(2):  # the restarted router is watched too
        pid = wait_for(lambda: _router_pid(od.state_dir), "the router's pid file")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(
            lambda pid=pid: _router_pid(od.state_dir) not in (None, pid),  # type: ignore[misc]
            "a new router process",
            timeout=30,
        )
        assert wait_for(lambda: _served(port), "the new router to route", timeout=30) == "1.0.0"
        print(f"router back {time.monotonic() - killed:.2f}s after SIGKILL")
    assert "restarting it" in od.log()
