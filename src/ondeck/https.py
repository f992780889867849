"""HTTPS for a host: which certificates are wanted, getting and renewing them, the router's copy.

The controller computes `wanted` from every environment's spec after each
load and hands it to `CertificateManager.want`; the manager's own task
(`run`) does the rest off the reconcile loop: bring-your-own files are read
and pushed, ACME certificates are obtained and renewed in a worker thread
(the library blocks) following `state.renewal`, and every held certificate
is pushed to the router, which keeps its own copy and serves it even while
the controller is down. What is held lives under STATE_DIR/tls/ (keys 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ondeck.acme import AcmeClient, AcmeSettings
from ondeck.certificates import (
    CertificateInfo,
    CertificateProblem,
    check_pair,
    host_matches,
    host_set_name,
    new_private_key,
    utc,
    write_secret_file,
)
from ondeck.errors import AcmeFailure, OndeckError, TemporaryError, UserError
from ondeck.metrics import Metrics
from ondeck.secrets.hoststore import HostStore
from ondeck.spec.model import SECRET_PREFIX, Tls
from ondeck.state.desired import Desired
from ondeck.state.renewal import (
    Attempts,
    FailureKind,
    RenewalPolicy,
    expiry_condition,
    next_attempt,
)

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 10.0  # seconds for the router to take a challenge answer
ROUTER_RETRY = 5.0  # seconds before pushing again to a router that did not answer
IDLE_WAKE = 3600.0  # re-check at least this often (files brought by the user may change)


# --- what is wanted (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """One certificate the host should serve: from ACME, or files the user brings."""

    name: str
    hosts: tuple[str, ...]
    redirect: bool
    hsts: float | None
    acme: AcmeSettings | None = None
    cert: str | None = None  # bring-your-own: a path on the host, or secret:NAME
    key: str | None = None
    owners: tuple[str, ...] = ()  # "app/env" that asked for it, for status

    @property
    def source(self) -> str:
        return "acme" if self.acme is not None else "file"


@dataclass(frozen=True)
class EnvTls:
    """The HTTPS part of one environment: its `tls:` and the hosts its routes name."""

    owner: str  # "app/env"
    tls: Tls | None
    hosts: tuple[str, ...]


def env_tls(desired: Desired) -> EnvTls:
    """The HTTPS part of an environment's desired state."""
    return EnvTls(f"{desired.app}/{desired.env}", desired.tls, desired.hosts)


def wanted(envs: Iterable[EnvTls]) -> list[Wanted]:
    """Every certificate to hold: files first (they win for their hosts), then one ACME
    certificate per routed host not covered by a file. First environment wins a conflict."""
    own: dict[str, Wanted] = {}
    for env in envs:
        if env.tls is None:
            continue
        for mine in env.tls.certificates:
            hosts = tuple(h.lower() for h in mine.hosts)
            name = "own-" + host_set_name(hosts)
            if name not in own:
                own[name] = Wanted(name, hosts, env.tls.redirect, env.tls.hsts,
                                   cert=mine.cert, key=mine.key,
                                   owners=(env.owner,))  # fmt: skip
    result = list(own.values())
    covered = [w.hosts for w in result]
    acme: dict[str, Wanted] = {}
    for env in envs:
        if env.tls is None or env.tls.acme is None:
            continue
        a = env.tls.acme
        settings = AcmeSettings(a.directory, a.email, Path(a.ca_bundle) if a.ca_bundle else None)
        for host in (h.lower().rstrip(".") for h in env.hosts):
            if host in acme or any(_covers(hosts, host) for hosts in covered):
                continue
            acme[host] = Wanted(host_set_name([host]), (host,), env.tls.redirect, env.tls.hsts,
                                acme=settings, owners=(env.owner,))  # fmt: skip
    return result + list(acme.values())


def _covers(patterns: Sequence[str], host: str) -> bool:
    return any(host_matches(p, host) for p in patterns)


# --- what the router offers ----------------------------------------------------------------


class CertificateSink(Protocol):
    """The router's side: `RouterControl` over the control socket."""

    async def tls_install(
        self, name: str, hosts: Sequence[str], chain_pem: bytes, key_pem: bytes,
        redirect: bool, hsts: float | None,
    ) -> None: ...  # fmt: skip

    async def tls_remove(self, name: str) -> None: ...

    async def tls_list(self) -> list[dict[str, Any]]: ...

    async def challenge_publish(self, token: str, key_authorization: str) -> None: ...

    async def challenge_withdraw(self, token: str) -> None: ...


# --- what is held ----------------------------------------------------------------------------


@dataclass
class Held:
    """One wanted certificate as the controller knows it: files, attempts, last error."""

    wanted: Wanted
    info: CertificateInfo | None = None
    attempts: Attempts = field(default_factory=Attempts)
    last_error: str | None = None
    last_renewal: float | None = None

    @property
    def jitter(self) -> float:
        """Fixed per certificate, so a host always renews at the same point of its life."""
        digest = hashlib.sha256(self.wanted.name.encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32


class CertificateManager:
    """Keeps every wanted certificate held, fresh and pushed; owned by the controller."""

    def __init__(
        self,
        state_dir: Path,
        sink: CertificateSink,
        *,
        policy: RenewalPolicy | None = None,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[Held], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.root = state_dir / "tls"
        self.state_dir = state_dir
        self.sink = sink
        self.policy = policy or RenewalPolicy()
        self.clock = clock
        self.on_failure = on_failure
        self.metrics = metrics
        self.held: dict[str, Held] = {}
        self._clients: dict[AcmeSettings, AcmeClient] = {}
        self._wake = asyncio.Event()
        self.changes = 0  # bumped whenever what status shows may have changed

    def want(self, wanted_now: Sequence[Wanted]) -> None:
        """Replace what is wanted; the manager's task acts on it (never blocks the caller)."""
        if [h.wanted for h in self.held.values()] == list(wanted_now):
            return  # the same as last pass: nothing to wake for
        self.changes += 1
        names = {w.name for w in wanted_now}
        for name in list(self.held):
            if name not in names:
                del self.held[name]
        for w in wanted_now:
            current = self.held.get(w.name)
            if current is None:
                self.held[w.name] = self._load(w)
            elif current.wanted != w:
                current.wanted = w
        self._wake.set()

    async def run(self) -> None:
        """Forever: one pass, then sleep until the next attempt is due or `want` changes."""
        while True:
            self._wake.clear()
            delay = None
            try:
                await self.step()
            except (TemporaryError, OSError) as exc:  # router away, disk full: try again soon
                log.warning("certificates: %s", exc)
                delay = ROUTER_RETRY
            if delay is None:
                delay = max(min(self._next_due() - self.clock(), IDLE_WAKE), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def step(self) -> None:
        """One pass: read brought files, obtain what is due, sync the router's copy."""
        for held in list(self.held.values()):
            if held.wanted.acme is None:
                self._read_own(held)
            elif self.clock() >= next_attempt(held.attempts, held.jitter, self.policy):
                await self._obtain(held)
        await self._sync_router()
        self._export()

    def _export(self) -> None:
        if self.metrics is None:
            return
        for held in self.held.values():
            if held.info is not None:
                for host in held.wanted.hosts:
                    self.metrics.certificate_expiry.labels(host).set(held.info.not_after)

    def _next_due(self) -> float:
        dues = [
            next_attempt(h.attempts, h.jitter, self.policy)
            for h in self.held.values()
            if h.wanted.acme is not None
        ]
        return min(dues, default=self.clock() + IDLE_WAKE)

    # --- bring your own ---------------------------------------------------------------------

    def _read_own(self, held: Held) -> None:
        """Read the files a user brings; a copy goes under STATE_DIR/tls/ for the router."""
        w = held.wanted
        assert w.cert is not None and w.key is not None
        try:
            chain, key = self._brought(w.cert, w.owners), self._brought(w.key, w.owners)
            info = check_pair(chain, key)
        except (OSError, UserError) as exc:
            error = f"certificate brought for {', '.join(w.hosts)}: {exc}"
            if error != held.last_error:
                held.last_error, self.changes = error, self.changes + 1
            a = held.attempts
            held.attempts = Attempts(a.not_before, a.not_after, a.failures + 1, self.clock(),
                                     FailureKind.REFUSED)  # fmt: skip
            return
        held.attempts = Attempts(info.not_before, info.not_after)
        if held.info == info and held.last_error is None:
            return
        held.info, held.last_error, self.changes = info, None, self.changes + 1
        cert_path, key_path = self._files(w.name)
        write_secret_file(key_path, key)
        write_secret_file(cert_path, chain, 0o644)

    def _brought(self, source: str, owners: tuple[str, ...]) -> bytes:
        """A file's bytes, or a host secret's value for the environment that names it."""
        if not source.startswith(SECRET_PREFIX):
            return Path(source).read_bytes()
        name = source.removeprefix(SECRET_PREFIX)
        app, _, env = (owners[0] if owners else "/").partition("/")
        value = HostStore(self.state_dir).values(app, env).get(name)
        if value is None:
            raise UserError(
                f"host secret {name} is not set for {app}/{env}: "
                f"ondeck secret set {name} --env {env} (the value on stdin)"
            )
        return value.encode()

    # --- ACME ---------------------------------------------------------------------------------

    async def _obtain(self, held: Held) -> None:
        w = held.wanted
        assert w.acme is not None
        client = self._client(w.acme)
        key_pem = new_private_key()
        log.info("certificates: asking %s for %s", w.acme.directory, ", ".join(w.hosts))
        try:
            chain = await asyncio.to_thread(client.issue, w.hosts, key_pem)
            info = check_pair(chain, key_pem)
        except (AcmeFailure, CertificateProblem) as exc:
            self._failed(held, exc)
            return
        cert_path, key_path = self._files(w.name)
        try:
            write_secret_file(key_path, key_pem)
            write_secret_file(cert_path, chain, 0o644)
        except OSError as exc:  # backs off like any failure: never re-order in a loop
            self._failed(held, AcmeFailure(f"cannot store the certificate: {exc}", refused=False))
            return
        held.info, held.last_error, held.last_renewal = info, None, self.clock()
        self.changes += 1
        held.attempts = Attempts(info.not_before, info.not_after)
        self._save_attempts(held)
        log.info("certificates: %s valid until %s", ", ".join(w.hosts), utc(info.not_after))

    def _failed(self, held: Held, exc: UserError | TemporaryError) -> None:
        refused = isinstance(exc, AcmeFailure) and exc.refused
        a = held.attempts
        held.attempts = Attempts(
            a.not_before, a.not_after, a.failures + 1, self.clock(),
            FailureKind.REFUSED if refused else FailureKind.UNREACHABLE,
        )  # fmt: skip
        held.last_error = str(exc)
        self.changes += 1
        self._save_attempts(held)
        if self.metrics is not None:
            for host in held.wanted.hosts:
                self.metrics.certificate_failures.labels(host).inc()
        log.warning("certificates: %s", exc)
        if self.on_failure is not None:
            self.on_failure(held)

    def _client(self, settings: AcmeSettings) -> AcmeClient:
        if settings not in self._clients:
            loop = asyncio.get_running_loop()
            publisher = _ThreadPublisher(self.sink, loop)
            self._clients[settings] = AcmeClient(settings, self.state_dir, publisher)
        return self._clients[settings]

    # --- the router's copy ----------------------------------------------------------------

    async def _sync_router(self) -> None:
        """Push what the router lacks or has older; remove what is no longer wanted."""
        served = {e["name"]: e for e in await self.sink.tls_list()}
        for held in self.held.values():
            w = held.wanted
            if held.info is None:
                continue
            entry = served.get(w.name)
            if entry is not None and _same(entry, held):
                continue
            cert_path, key_path = self._files(w.name)
            try:
                await self.sink.tls_install(w.name, w.hosts, cert_path.read_bytes(),
                                            key_path.read_bytes(), w.redirect, w.hsts)  # fmt: skip
            except UserError as exc:  # the router refused this one: say so, push the others
                error = f"the router refused the certificate: {exc}"
                if held.last_error != error:
                    held.last_error, self.changes = error, self.changes + 1
        for name in served:
            if name not in self.held:
                await self.sink.tls_remove(name)

    # --- persistence --------------------------------------------------------------------------

    def _files(self, name: str) -> tuple[Path, Path]:
        return self.root / name / "fullchain.pem", self.root / name / "key.pem"

    def _load(self, w: Wanted) -> Held:
        held = Held(w)
        cert_path, key_path = self._files(w.name)
        with contextlib.suppress(OSError, CertificateProblem):
            held.info = check_pair(cert_path.read_bytes(), key_path.read_bytes())
        with contextlib.suppress(OSError, ValueError, TypeError):
            saved = json.loads((self.root / w.name / "attempts.json").read_text())
            held.attempts = Attempts(**{**saved["attempts"], "last_failure": (
                FailureKind(saved["attempts"]["last_failure"])
                if saved["attempts"]["last_failure"] else None)})  # fmt: skip
            held.last_error = saved.get("last_error")
            held.last_renewal = saved.get("last_renewal")
        if held.info is not None:
            a = held.attempts
            held.attempts = Attempts(held.info.not_before, held.info.not_after, a.failures,
                                     a.last_failure_at, a.last_failure)  # fmt: skip
        return held

    def _save_attempts(self, held: Held) -> None:
        data = {
            "attempts": asdict(held.attempts),
            "last_error": held.last_error,
            "last_renewal": held.last_renewal,
        }
        write_secret_file(
            self.root / held.wanted.name / "attempts.json", json.dumps(data).encode(), 0o644
        )

    # --- what status shows --------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """One entry per host: issuer, not-after, last error, and a Degraded reason if any."""
        now = self.clock()
        rows = []
        for held in sorted(self.held.values(), key=lambda h: h.wanted.hosts):
            info = held.info
            for host in held.wanted.hosts:
                rows.append({
                    "host": host,
                    "source": held.wanted.source,
                    "issuer": info.issuer if info else None,
                    "not_after": utc(info.not_after) if info else None,
                    "not_after_epoch": info.not_after if info else None,
                    "last_renewal": utc(held.last_renewal) if held.last_renewal else None,
                    "last_error": held.last_error,
                    "failures": held.attempts.failures,
                    "degraded": expiry_condition(held.attempts, now, self.policy),
                    "owners": list(held.wanted.owners),
                })  # fmt: skip
        return rows


def _same(entry: dict[str, Any], held: Held) -> bool:
    w = held.wanted
    return (
        held.info is not None
        and entry.get("fingerprint") == held.info.fingerprint
        and tuple(entry.get("hosts", ())) == w.hosts
        and entry.get("redirect") == w.redirect
        and entry.get("hsts") == w.hsts
    )


class _ThreadPublisher:
    """The ACME client's publisher, called from its worker thread, served by the router."""

    def __init__(self, sink: CertificateSink, loop: asyncio.AbstractEventLoop) -> None:
        self.sink, self.loop = sink, loop

    def publish(self, token: str, key_authorization: str) -> None:
        self._wait(self.sink.challenge_publish(token, key_authorization))

    def withdraw(self, token: str) -> None:
        with contextlib.suppress(AcmeFailure):  # a stale answer expires in the router anyway
            self._wait(self.sink.challenge_withdraw(token))

    def _wait(self, coro: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            future.result(PUBLISH_TIMEOUT)
        except TimeoutError as exc:
            future.cancel()
            raise AcmeFailure(
                "the router did not take the challenge answer", refused=False
            ) from exc
        except OndeckError as exc:
            raise AcmeFailure(f"the router did not take the challenge answer: {exc}",
                              refused=False) from exc  # fmt: skip
