"""The host's secret store: `ondeck secret set|unset|list` and the API write here.

One JSON file in STATE_DIR/secrets/ (directory 0700, file 0600), replaced
atomically under a lock, so the CLI and `ondeck up` may both write it. A secret
is scoped to an app and an environment; either may be `*` (every one), and the
most specific scope wins. Listings carry a keyed fingerprint (HMAC-SHA256 with
a random host key kept beside the store), never a value.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets as random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondeck.errors import UserError
from ondeck.files import write_atomic
from ondeck.spec.model import DNS_LABEL, ENV_NAME

ANY = "*"
STORE_FILE = "host.json"
KEY_FILE = "fingerprint.key"
LOCK_FILE = ".lock"
FINGERPRINT_CHARS = 12
MAX_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SecretInfo:
    """A secret as listed: where it applies and how to tell versions apart, never its value."""

    name: str
    app: str  # "*": every app
    env: str  # "*": every environment
    set_at: float
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "app": self.app,
            "env": self.env,
            "set_at": self.set_at,
            "fingerprint": self.fingerprint,
        }


def secrets_dir(state_dir: Path) -> Path:
    """Where the store, the fingerprint key and the age identity live (mode 0700)."""
    path = state_dir / "secrets"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600: a temp file beside it, fsynced, renamed."""
    write_atomic(path, data, 0o600)


def host_key(state_dir: Path) -> bytes:
    """The random key of this host's fingerprints, made on first use."""
    path = secrets_dir(state_dir) / KEY_FILE
    with _locked(path.parent):
        if not path.exists():
            write_private(path, random.token_bytes(32))
        return path.read_bytes()


def fingerprint(key: bytes, name: str, value: str) -> str:
    """A short keyed hash of a value: equal values give equal prints on one host, and
    without the host key it tells nothing about the value (no dictionary attack)."""
    digest = hmac.new(key, f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()
    return digest[:FINGERPRINT_CHARS]


def check_name(name: str) -> None:
    if not ENV_NAME.match(name):
        raise UserError(
            f"{name!r} is not a valid secret name: use letters, digits and _ "
            "(it becomes an environment variable), e.g. DB_PASSWORD"
        )


def check_value(value: str) -> None:
    if not value:
        raise UserError("empty secret value: give the value on standard input")
    if "\0" in value:
        raise UserError("a secret value cannot contain a NUL byte (environment variables cannot)")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise UserError(f"secret value longer than {MAX_VALUE_BYTES // 1024} KiB")


def _scope(app: str | None, env: str | None) -> str:
    for what, value in (("app", app), ("environment", env)):
        if value is not None and value != ANY and not DNS_LABEL.match(value):
            raise UserError(f"{value!r} is not a valid {what} name")
    return f"{app or ANY}/{env or ANY}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / LOCK_FILE).open("a") as lock:
        os.fchmod(lock.fileno(), 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class HostStore:
    """The secrets set on this host, by scope `APP/ENV` and name."""

    def __init__(self, state_dir: Path, clock: Any = time.time) -> None:
        self.state_dir = state_dir
        self._clock = clock

    @property
    def path(self) -> Path:
        return self.state_dir / "secrets" / STORE_FILE

    def set(
        self, name: str, value: str, *, app: str | None = None, env: str | None = None
    ) -> SecretInfo:
        """Store `value` as `name` for `app`/`env` (None: every one); replaces an older value."""
        check_name(name)
        check_value(value)
        scope = _scope(app, env)
        key = host_key(self.state_dir)
        directory = secrets_dir(self.state_dir)
        now = float(self._clock())
        with _locked(directory):
            data = self._read()
            data.setdefault(scope, {})[name] = {"value": value, "set_at": now}
            self._write(data)
        return SecretInfo(name, app or ANY, env or ANY, now, fingerprint(key, name, value))

    def unset(self, name: str, *, app: str | None = None, env: str | None = None) -> None:
        """Forget `name` in exactly that scope; an error when it is not set there."""
        scope = _scope(app, env)
        directory = secrets_dir(self.state_dir)
        with _locked(directory):
            data = self._read()
            if name not in data.get(scope, {}):
                where = _where(app, env)
                raise UserError(f"secret {name} is not set for {where}: see `ondeck secret list`")
            del data[scope][name]
            if not data[scope]:
                del data[scope]
            self._write(data)

    def infos(self, *, app: str | None = None, env: str | None = None) -> list[SecretInfo]:
        """Every secret (or those that apply to `app`/`env`), without values."""
        data = self._read()
        if not data:
            return []
        key = host_key(self.state_dir)
        found = []
        for scope, entries in sorted(data.items()):
            s_app, s_env = scope.split("/", 1)
            if app is not None and s_app not in (ANY, app):
                continue
            if env is not None and s_env not in (ANY, env):
                continue
            for name, entry in sorted(entries.items()):
                print_ = fingerprint(key, name, entry["value"])
                found.append(SecretInfo(name, s_app, s_env, float(entry["set_at"]), print_))
        return found

    def values(self, app: str, env: str) -> dict[str, str]:
        """Name -> value of every secret that applies to `app` in `env`; the most specific wins."""
        data = self._read()
        out: dict[str, str] = {}
        for scope in (f"{ANY}/{ANY}", f"{ANY}/{env}", f"{app}/{ANY}", f"{app}/{env}"):
            out.update({name: e["value"] for name, e in data.get(scope, {}).items()})
        return out

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise UserError(f"cannot read the secret store {self.path}: {err.strerror}") from err
        try:
            data: dict[str, dict[str, dict[str, Any]]] = json.loads(raw)["scopes"]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{self.path} is not a secret store ondeck wrote") from err
        return data

    def _write(self, data: Mapping[str, Any]) -> None:
        blob = json.dumps({"version": 1, "scopes": data}, sort_keys=True, indent=1)
        write_private(self.path, blob.encode())


def _where(app: str | None, env: str | None) -> str:
    envs = f"environment {env}" if env else "every environment"
    return f"{envs} of app {app}" if app else envs
