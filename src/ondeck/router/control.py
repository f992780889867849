"""The router's control socket: newline-delimited JSON over STATE_DIR/router.sock.

The router serves it (`ControlServer`); the controller talks to it through
`RouterControl`. Each applied config is written to STATE_DIR/router.json
(temp file + rename) before it is served, so a restarted router serves at once.
With several worker processes, the first one answers for all: it forwards
applies to the others' private sockets and sums their stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ondeck.errors import TemporaryError
from ondeck.files import write_atomic
from ondeck.router.metrics import (
    LIMIT_METRICS,
    BackendStats,
    merge_snapshots,
    render_prometheus,
)
from ondeck.router.proxy import Router
from ondeck.router.table import EMPTY_CONFIG, RouterConfig, RouterConfigError

SOCKET_NAME = "router.sock"
CONFIG_NAME = "router.json"
PEER_TIMEOUT = 2.0  # seconds a worker's private socket may take to answer the first one
_LINE_LIMIT = 64 * 1024 * 1024  # one request line (a config of thousands of routes fits)


class RouterUnavailable(TemporaryError):
    """The router's control socket did not answer (not running, or busy)."""


class RouterRefused(RouterConfigError):
    """The router answered `ok: false`; the message is its reason."""


# ---------------------------------------------------------------------------
# Persistence


def save_config(path: Path, config: RouterConfig) -> None:
    """Write `config` atomically: a temp file in the same directory, fsync, rename."""
    write_atomic(path, json.dumps(config.to_json(), indent=1, sort_keys=True))


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
    """Answers control requests for one `Router`; applies are serialized.

    `peers` lists the private sockets of the other worker processes (the
    first worker's view); a worker's own server has none and does not persist.
    """

    def __init__(
        self,
        router: Router,
        state_dir: Path,
        listen: Callable[[], str],
        socket_name: str = SOCKET_NAME,
        peers: Callable[[], Sequence[Path]] = tuple,
        listen_tls: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.router = router
        self.state_dir = state_dir
        self.config_path = state_dir / CONFIG_NAME
        self.socket_path = state_dir / socket_name
        self.persist = socket_name == SOCKET_NAME
        self._listen = listen
        self._peers = peers
        self._listen_tls = listen_tls
        self._apply_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

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
        for writer in list(self._clients):
            writer.close()  # their handlers see EOF and end (not cancelled at shutdown)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                answer = await self.handle_line(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that hung up or sent an over-long line: drop it
        finally:
            self._clients.discard(writer)
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
                "listen_tls": self._listen_tls(),
                "generation": router.config.generation,
                "workers": 1 + len(self._peers()),
            }
        if op == "apply":
            return {"ok": True, "generation": await self._apply(request.get("config"))}
        if op == "get":
            return {"ok": True, "config": router.config.to_json()}
        if op == "stats":
            return {"ok": True, **await self._stats()}
        if op == "metrics":
            return {"ok": True, "text": _render(await self._stats())}
        if isinstance(op, str) and op in _TLS_OPS:
            answer = await self._tls(op, request)
            await asyncio.gather(*(_forward_request(peer, request) for peer in self._peers()))
            return answer
        return {
            "ok": False,
            "error": f"unknown op {op!r}: use apply, get, stats, metrics, ping, "
            + ", ".join(sorted(_TLS_OPS)),
        }

    async def _tls(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        """Certificates and ACME answers: the router keeps the former in its own state."""
        tls, answers = self.router.tls_state(self.state_dir), self.router.challenges
        if op == "tls-list":
            return {"ok": True, "certificates": tls.listing()}
        if op == "tls-install":
            hsts = request.get("hsts")
            served = await asyncio.to_thread(
                tls.install,
                _text(request, "name"),
                [str(h) for h in request.get("hosts") or []],
                _text(request, "chain").encode(),
                _text(request, "key").encode(),
                redirect=bool(request.get("redirect", True)),
                hsts=float(hsts) if isinstance(hsts, int | float) else None,
                persist=self.persist,
            )
            return {"ok": True, "certificate": served.to_json()}
        if op == "tls-remove":
            removed = await asyncio.to_thread(
                tls.remove, _text(request, "name"), persist=self.persist
            )
            return {"ok": True, "removed": removed}
        if op == "challenge-publish":
            answers.publish(_text(request, "token"), _text(request, "key_authorization"))
            return {"ok": True}
        answers.withdraw(_text(request, "token"))  # challenge-withdraw
        return {"ok": True}

    async def _apply(self, raw: object) -> int:
        config = RouterConfig.from_json(raw)
        async with self._apply_lock:
            if self.persist:
                try:
                    await asyncio.to_thread(save_config, self.config_path, config)
                except OSError as exc:
                    raise RouterConfigError(f"cannot persist {self.config_path}: {exc}") from exc
            self.router.apply(config)
            await asyncio.gather(*(_forward(peer, config) for peer in self._peers()))
        return config.generation

    async def _stats(self) -> dict[str, Any]:
        """This process's counters plus every other worker's, summed per backend."""
        own = self.router.stats()
        peers = self._peers()
        if not peers:
            return own
        answers = await asyncio.gather(*(_peer_stats(peer) for peer in peers))
        every = [own, *(a for a in answers if a is not None)]
        by_backend: dict[str, list[dict[str, Any]]] = {}
        local: dict[str, int] = {}
        for stats in every:
            for backend_id, snapshot in stats["backends"].items():
                by_backend.setdefault(backend_id, []).append(snapshot)
            for status, n in stats["local"].items():
                local[status] = local.get(status, 0) + int(n)
        own["backends"] = {k: merge_snapshots(v) for k, v in by_backend.items()}
        own["local"] = local
        for key in ("connections", "held_bytes", "shed", "pressure_closed"):
            own[key] = sum(int(s.get(key, 0)) for s in every)
        own["workers"] = len(every)
        return own


_TLS_OPS = {"tls-install", "tls-remove", "tls-list", "challenge-publish", "challenge-withdraw"}


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str):
        raise RouterConfigError(f"{request.get('op')}: {key!r} must be a string")
    return value


async def _forward_request(peer: Path, request: dict[str, Any]) -> None:
    """Best effort: a restarted worker reads certificates from the state dir anyway."""
    if request.get("op") == "tls-list":
        return
    with contextlib.suppress(RouterUnavailable, RouterRefused):
        await RouterControl(peer, PEER_TIMEOUT)._call(request)


async def _forward(peer: Path, config: RouterConfig) -> None:
    """Best effort: a worker that misses it is re-synced by its supervisor."""
    with contextlib.suppress(RouterUnavailable, RouterRefused):
        await RouterControl(peer, PEER_TIMEOUT).apply(config)


async def _peer_stats(peer: Path) -> dict[str, Any] | None:
    try:
        return await RouterControl(peer, PEER_TIMEOUT).stats()
    except (RouterUnavailable, RouterRefused):
        return None  # a worker being restarted: its counters are gone with it


def _render(stats: dict[str, Any]) -> str:
    backends = {
        backend_id: (
            {"pool": s["pool"], "backend": backend_id, "set": s["set"]},
            BackendStats.from_snapshot(s),
        )
        for backend_id, s in stats["backends"].items()
    }
    local = {int(k): int(v) for k, v in stats["local"].items()}
    limits = {key: int(stats.get(key, 0)) for key in LIMIT_METRICS}
    return render_prometheus(backends, local, int(stats["generation"]), limits)


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

    async def tls_install(
        self,
        name: str,
        hosts: Sequence[str],
        chain_pem: bytes,
        key_pem: bytes,
        redirect: bool,
        hsts: float | None,
    ) -> None:
        """Serve a certificate (kept in the router's state); the key travels over this 0600 socket."""
        request = {"op": "tls-install", "name": name, "hosts": list(hosts), "chain": chain_pem.decode(),
                   "key": key_pem.decode(), "redirect": redirect, "hsts": hsts}  # fmt: skip
        await self._call(request)

    async def tls_remove(self, name: str) -> None:
        await self._call({"op": "tls-remove", "name": name})

    async def tls_list(self) -> list[dict[str, Any]]:
        """What the router serves: names, hosts, issuer, not-after, fingerprint (no keys)."""
        answer = await self._call({"op": "tls-list"})
        return list(answer["certificates"])

    async def challenge_publish(self, token: str, key_authorization: str) -> None:
        await self._call({"op": "challenge-publish", "token": token,
                          "key_authorization": key_authorization})  # fmt: skip

    async def challenge_withdraw(self, token: str) -> None:
        await self._call({"op": "challenge-withdraw", "token": token})

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
