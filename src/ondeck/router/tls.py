"""The router's certificates: kept in its own state, chosen by SNI, swapped without a drop.

The control socket calls `TlsState.install`/`remove` when the controller pushes
a certificate; the router's TLS listener serves `TlsState.server_context()`,
whose SNI callback picks the context of the certificate for the asked host
(exact name first, then a one-label wildcard). Everything is persisted under
STATE_DIR/router-tls/ (keys 0600), so a restarted router serves HTTPS before
any controller speaks to it. Replacing a certificate swaps one dict entry:
the next handshake uses it, open connections keep theirs. `Challenges` holds
the HTTP-01 answers the plain listener serves for the ACME client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondeck.certificates import (
    CertificateInfo,
    CertificateProblem,
    check_pair,
    host_matches,
    write_secret_file,
)
from ondeck.router.table import RouterConfigError

log = logging.getLogger("ondeck.router")
TLS_DIR = "router-tls"
INDEX = "index.json"
# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all modern.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ["http/1.1"]
CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
CHALLENGE_TTL = 600.0  # seconds an answer is served if never withdrawn
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class Served:
    """One certificate the router serves, with the HTTPS policy of its hosts."""

    name: str
    hosts: tuple[str, ...]  # names or one-label wildcards this entry answers for
    redirect: bool  # plain HTTP for these hosts is redirected to HTTPS
    hsts: float | None  # Strict-Transport-Security max-age in seconds, or off
    info: CertificateInfo

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hosts": list(self.hosts),
            "redirect": self.redirect,
            "hsts": self.hsts,
            "issuer": self.info.issuer,
            "not_after": self.info.not_after,
            "fingerprint": self.info.fingerprint,
        }


def base_context() -> ssl.SSLContext:
    """A server context with ondeck's protocol policy and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


class TlsState:
    """The certificates of one router process, on disk and in memory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / TLS_DIR
        self.entries: dict[str, Served] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._by_host: dict[str, Served | None] = {}  # lookup cache, cleared on every change
        self._server_context: ssl.SSLContext | None = None

    # --- persistence -------------------------------------------------------------------

    def load(self) -> None:
        """Serve what was persisted; an entry that cannot be read is logged and skipped."""
        try:
            index = json.loads((self.directory / INDEX).read_text())
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError) as exc:
            log.error("cannot read %s: %s; serving no certificate", self.directory / INDEX, exc)
            return
        for raw in index.get("entries", []):
            try:
                self._activate(raw["name"], tuple(raw["hosts"]), raw["redirect"], raw["hsts"])
            except (CertificateProblem, OSError, KeyError, ssl.SSLError) as exc:
                log.error("certificate %s not served: %s", raw.get("name"), exc)

    def install(
        self,
        name: str,
        hosts: list[str],
        chain_pem: bytes,
        key_pem: bytes,
        *,
        redirect: bool = True,
        hsts: float | None = None,
        persist: bool = True,
    ) -> Served:
        """Check, persist and serve a certificate; new handshakes use it at once."""
        if not name or set(name) - _NAME_CHARS or name.startswith("."):
            raise RouterConfigError(f"certificate name {name!r}: use [a-z0-9._-]")
        if not hosts:
            raise RouterConfigError(f"certificate {name!r} names no host")
        try:
            check_pair(chain_pem, key_pem)
        except CertificateProblem as exc:
            raise RouterConfigError(f"certificate {name!r}: {exc}") from exc
        if persist:
            write_secret_file(self.directory / f"{name}.key", key_pem)
            write_secret_file(self.directory / f"{name}.crt", chain_pem, 0o644)
        served = self._activate(name, tuple(h.lower() for h in hosts), redirect, hsts)
        if persist:
            self._save_index()
        return served

    def remove(self, name: str, *, persist: bool = True) -> bool:
        """Stop serving `name` (open connections keep their session); True if it was served."""
        found = self.entries.pop(name, None) is not None
        self._contexts.pop(name, None)
        self._by_host = {}
        if found and persist:
            self._save_index()
            for suffix in (".key", ".crt"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{name}{suffix}").unlink()
        return found

    def _activate(
        self, name: str, hosts: tuple[str, ...], redirect: bool, hsts: float | None
    ) -> Served:
        chain_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        ctx = base_context()
        ctx.load_cert_chain(chain_path, key_path)
        info = check_pair(chain_path.read_bytes(), key_path.read_bytes())
        served = Served(name, hosts, redirect, hsts, info)
        self._contexts[name] = ctx  # one assignment: the next handshake sees it
        self.entries[name] = served
        self._by_host = {}
        return served

    def _save_index(self) -> None:
        entries = [
            {"name": s.name, "hosts": list(s.hosts), "redirect": s.redirect, "hsts": s.hsts}
            for s in self.entries.values()
        ]
        data = json.dumps({"entries": entries}, indent=1, sort_keys=True).encode()
        write_secret_file(self.directory / INDEX, data, 0o644)

    # --- serving -----------------------------------------------------------------------

    def lookup(self, host: str) -> Served | None:
        """The entry serving `host`: an exact name beats a wildcard."""
        try:
            return self._by_host[host]
        except KeyError:
            pass
        found = self._find(host.lower().rstrip("."))
        if len(self._by_host) > 4096:
            self._by_host = {}
        self._by_host[host] = found
        return found

    def _find(self, host: str) -> Served | None:
        wildcard = None
        for served in self.entries.values():
            for pattern in served.hosts:
                if pattern == host:
                    return served
                if wildcard is None and host_matches(pattern, host):
                    wildcard = served
        return wildcard

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: its SNI callback switches to the host's certificate."""
        if self._server_context is None:
            ctx = base_context()
            ctx.sni_callback = self._select
            self._server_context = ctx
        return self._server_context

    def _select(
        self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        served = self.lookup(server_name) if server_name else None
        ctx = self._contexts.get(served.name) if served else None
        if ctx is None:
            # no SNI, or a host we hold no certificate for: refuse, never guess one
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = ctx
        return None

    def listing(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in sorted(self.entries.values(), key=lambda s: s.name)]


def redirect_answer(host: str, target: bytes, tls_port: int) -> bytes:
    """The head of a 308 to the same URL over HTTPS (no final CRLF: the caller ends it)."""
    authority = host if tls_port == 443 else f"{host}:{tls_port}"
    location = b"https://" + authority.encode() + (target if target.startswith(b"/") else b"/")
    return (
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + location + b"\r\n"
        b"Content-Length: 0\r\nCache-Control: no-store\r\n"
    )


def hsts_line(max_age: float) -> bytes:
    return b"Strict-Transport-Security: max-age=%d\r\n" % int(max_age)


class Challenges:
    """HTTP-01 answers by token, served on the plain listener for any host."""

    def __init__(self) -> None:
        self._answers: dict[str, tuple[str, float]] = {}

    def publish(self, token: str, key_authorization: str, now: float | None = None) -> None:
        if not token or not token.replace("-", "").replace("_", "").isalnum():
            raise RouterConfigError(f"challenge token {token!r} is not base64url")
        expires = (time.monotonic() if now is None else now) + CHALLENGE_TTL
        self._answers[token] = (key_authorization, expires)

    def withdraw(self, token: str) -> None:
        self._answers.pop(token, None)

    def answer(self, path: bytes, now: float | None = None) -> bytes | None:
        """The body for a challenge path, or None (then the router answers 404)."""
        token = path.removeprefix(CHALLENGE_PREFIX).split(b"?", 1)[0].decode("ascii", "replace")
        found = self._answers.get(token)
        if found is None:
            return None
        key_authorization, expires = found
        if (time.monotonic() if now is None else now) > expires:
            del self._answers[token]
            return None
        return key_authorization.encode()

    def response(self, target: bytes) -> tuple[int, bytes, bytes]:
        """Status, head (no final CRLF) and body answering a challenge path."""
        body = self.answer(target)
        if body is None:
            body = b"no such ACME challenge\n"
            status, line = 404, b"HTTP/1.1 404 Not Found\r\n"
        else:
            status, line = 200, b"HTTP/1.1 200 OK\r\n"
        head = line + b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
        return status, head + b"Cache-Control: no-store\r\n", body
