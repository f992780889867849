"""The router's control socket: newline-delimited JSON over STATE_DIR/router.sock.

The router serves it (`ControlServer`); the controller talks to it through
`RouterControl`. Each applied config is written to STATE_DIR/router.json
(temp file + rename) before it is served, so a restarted router serves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ondeck.errors import TemporaryError
from ondeck.router.proxy import Router
from ondeck.router.table import EMPTY_CONFIG, RouterConfig, RouterConfigError

SOCKET_NAME = "router.sock"
CONFIG_NAME = "router.json"
_LINE_LIMIT = 64 * 1024 * 1024  # one request line (a config of thousands of routes fits)


class RouterUnavailable(TemporaryError):
    """The router's control socket did not answer (not running, or busy)."""


class RouterRefused(RouterConfigError):
    """The router answered `ok: false`; the message is its reason."""


# ---------------------------------------------------------------------------
# Persistence


def save_config(path: Path, config: RouterConfig) -> None:
    """Write `config` atomically: a temp file in the same directory, fsync, rename."""
    data = json.dumps(config.to_json(), indent=1, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".router-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_config(path: Path) -> RouterConfig:
    """The persisted config, or the empty one when there is none yet."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return EMPTY_CONFIG
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RouterConfigError(f"{path}: not JSON: {exc}") from exc
    return RouterConfig.from_json(data)


# ---------------------------------------------------------------------------
# Server side


class ControlServer:
    """Answers control requests for one `Router`; applies are serialized."""

    def __init__(self, router: Router, state_dir: Path, listen: Callable[[], str]) -> None:
        self.router = router
        self.config_path = state_dir / CONFIG_NAME
        self.socket_path = state_dir / SOCKET_NAME
        self._listen = listen
        self._apply_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the socket with mode 0600 (no window where others could connect)."""
        await _refuse_if_live(self.socket_path)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.socket_path), limit=_LINE_LIMIT
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self.handle_line(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that hung up or sent an over-long line: drop it
        finally:
            writer.close()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line in, one answer out; never raises for bad input."""
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object with an 'op'"}
        op = request.get("op")
        try:
            return await self._dispatch(op, request)
        except RouterConfigError as exc:
            return {"ok": False, "error": str(exc)}

    async def _dispatch(self, op: object, request: dict[str, Any]) -> dict[str, Any]:
        router = self.router
        if op == "ping":
            return {
                "ok": True,
                "pid": os.getpid(),
                "listen": self._listen(),
                "generation": router.config.generation,
            }
        if op == "apply":
            return {"ok": True, "generation": await self._apply(request.get("config"))}
        if op == "get":
            return {"ok": True, "config": router.config.to_json()}
        if op == "stats":
            return {"ok": True, **router.stats()}
        if op == "metrics":
            return {"ok": True, "text": router.metrics()}
        return {"ok": False, "error": f"unknown op {op!r}: use apply, get, stats, metrics or ping"}

    async def _apply(self, raw: object) -> int:
        config = RouterConfig.from_json(raw)
        async with self._apply_lock:
            try:
                await asyncio.to_thread(save_config, self.config_path, config)
            except OSError as exc:
                raise RouterConfigError(f"cannot persist {self.config_path}: {exc}") from exc
            self.router.apply(config)
        return config.generation


async def _refuse_if_live(path: Path) -> None:
    """Two routers on one state dir would fight over it: refuse to be the second."""
    if not path.exists():
        return
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return  # a stale socket file left by a router that died
    writer.close()
    raise RouterUnavailable(f"another router already serves {path}")


# ---------------------------------------------------------------------------
# Client side (the controller's)


class RouterControl:
    """The controller's handle on a running router (one connection per call)."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def apply(self, config: RouterConfig) -> int:
        """Serve `config`; returns its generation. A refused config raises RouterRefused."""
        answer = await self._call({"op": "apply", "config": config.to_json()})
        return int(answer["generation"])

    async def get(self) -> RouterConfig:
        answer = await self._call({"op": "get"})
        return RouterConfig.from_json(answer["config"])

    async def stats(self) -> dict[str, Any]:
        """Cumulative per-backend counters (see Router.stats): diff two snapshots."""
        answer = await self._call({"op": "stats"})
        answer.pop("ok", None)
        return answer

    async def metrics(self) -> str:
        answer = await self._call({"op": "metrics"})
        return str(answer["text"])

    async def ping(self) -> bool:
        """True when a router answers on the socket; never raises for its absence."""
        try:
            await self._call({"op": "ping"})
        except RouterUnavailable:
            return False
        return True

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._exchange(request)
        except TimeoutError as exc:
            raise RouterUnavailable(f"router at {self.socket_path} did not answer in time") from exc
        except (OSError, ValueError) as exc:
            raise RouterUnavailable(f"router at {self.socket_path}: {exc}") from exc
        if not answer.get("ok"):
            raise RouterRefused(str(answer.get("error", "the router refused the request")))
        return answer

    async def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(
            str(self.socket_path), limit=_LINE_LIMIT
        )
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise ConnectionResetError("the router closed the connection")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError(f"unexpected answer {answer!r}")
        return answer
