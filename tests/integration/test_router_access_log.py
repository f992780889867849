"""The router's access log: one JSON line per request, rotated, shown by `ondeck logs --access`.

Real sockets and a real upstream; the lines are read back from the file the
router's writer thread appends to (flushed by the sweeper, so tests wait for
them with a deadline).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from test_router_proxy import WAIT, Client, Upstream, build, eventually, run, running_router

from ondeck.router.accesslog import AccessLog, Formatter, Record, line, log_path
from ondeck.router.table import Backend, Pool, Route, RouterConfig

pytestmark = pytest.mark.timeout(120)


def config(up: Upstream) -> RouterConfig:
    web = Pool(
        "production/web", stable=(Backend("web-1", "127.0.0.1", up.port, 100, "1.4.2", "f00d"),)
    )
    down = Pool("production/admin", stable=(), maintenance="Back soon")
    routes = (Route("shop.localhost", "/", web.name), Route("shop.localhost", "/admin", down.name))
    return RouterConfig(routes, {web.name: web, down.name: down}, 1)


def entries(state_dir: Path) -> list[dict[str, Any]]:
    path = log_path(state_dir)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_request_is_one_json_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, config(up)) as r:
            client = await Client.connect(r.port)
            host = "shop.localhost"
            assert (await client.request("GET", "/cart?token=secret", host=host)).status == 200
            await client.send(build("POST", "/upload", host=host, body=b"x" * 1000))
            assert (await client.response()).status == 200
            assert (await client.request("GET", "/admin/users", host=host)).status == 503
            assert (await client.request("GET", "/", host="nobody.localhost")).status == 503
            client.close()
            await eventually(lambda: len(entries(tmp_path)) == 4, "four access log lines")

    run(scenario())
    cart, upload, admin, nowhere = entries(tmp_path)
    assert cart["env"] == "production" and cart["service"] == "web"
    assert (cart["version"], cart["release"], cart["instance"]) == ("1.4.2", "f00d", "web-1")
    assert (cart["method"], cart["path"], cart["status"]) == ("GET", "/cart", 200)
    assert "secret" not in json.dumps(cart)  # the query string is not logged
    assert cart["bytes"] == len("a GET /cart?token=secret")
    assert 0 <= cart["upstream_ms"] <= cart["duration_ms"]
    assert cart["time"].endswith("Z") and cart["error"] is None
    assert (upload["method"], upload["status"]) == ("POST", 200)
    assert (admin["service"], admin["status"], admin["instance"]) == ("admin", 503, None)
    assert admin["upstream_ms"] is None and admin["bytes"] > 0
    assert (nowhere["service"], nowhere["status"]) == (None, 503)


def test_the_file_is_rotated_by_size(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(path, max_bytes=2000, keep=2)
    backend = Backend("web-1", "127.0.0.1", 1)
    for batch in range(10):
        log.records += [
            (1.0, "production/web", backend, b"GET", f"/{batch}/{i}", 200, 10, 0.001, 0.001, None)
            for i in range(10)
        ]
        log.flush()
    log.close()
    kept = {p.name for p in path.parent.iterdir()}
    assert (
        {"access.log.1", "access.log.2"} <= kept <= {"access.log", "access.log.1", "access.log.2"}
    )
    assert all(p.stat().st_size <= 2000 + 2500 for p in path.parent.iterdir())
    last = json.loads((path.parent / "access.log.1").read_text().splitlines()[-1])
    assert last["path"].startswith("/")  # whole JSON lines on both sides of a rotation


def test_ondeck_logs_access_shows_and_follows_one_service(tmp_path: Path) -> None:
    async def cli(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ondeck",
            "logs",
            *args,
            "--access",
            "--state-dir",
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, config(up)) as r:
            client = await Client.connect(r.port)
            for path in ("/one", "/two", "/admin", "/three"):
                await client.request("GET", path, host="shop.localhost")
            await eventually(lambda: len(entries(tmp_path)) == 4, "four access log lines")
            shown = await cli("web", "-n", "2")
            out, err = await asyncio.wait_for(shown.communicate(), WAIT)
            assert shown.returncode == 0, err
            printed = out.decode().splitlines()
            assert len(printed) == 2
            assert " production/web 1.4.2 web-1 GET /two 200 " in printed[0]
            assert " GET /three 200 " in printed[1]
            follower = await cli("admin", "-f", "-n", "0")
            try:
                assert follower.stdout is not None
                reading = asyncio.ensure_future(follower.stdout.readline())
                async with asyncio.timeout(WAIT):  # until it follows: it starts at the end
                    while not reading.done():
                        await client.request("GET", "/admin/x", host="shop.localhost")
                        await asyncio.wait([reading], timeout=0.5)
                assert b" production/admin - - GET /admin/x 503 " in reading.result()
            finally:
                follower.terminate()
                await follower.wait()
            client.close()

    run(scenario())


def test_fast_lines_are_the_json_of_each_record() -> None:
    """The cached formatter writes exactly what `line` describes, escapes included."""
    backend = Backend("web-1", "127.0.0.1", 1, 100, "1.4.2", "f00d")
    records: list[Record] = [
        (
            100.25,
            "production/web",
            backend,
            b"GET",
            '/a"b\\c\u00e9\x01',
            200,
            12,
            0.0012,
            0.0009,
            None,
        ),
        (100.5, "production/admin", None, b"PURGE", "/", 503, 0, 0.0001, -1.0, "client"),
    ]
    offset = 1_764_640_000.0
    text = Formatter().lines(records, offset)
    assert text.endswith("\n") and text.count("\n") == 2
    for written, record in zip(text.splitlines(), records, strict=True):
        expected = line(record, offset)
        parsed = json.loads(written)
        assert list(parsed) == list(expected)
        for key, value in expected.items():
            assert parsed[key] == (pytest.approx(value) if isinstance(value, float) else value), key
