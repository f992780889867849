"""How a CLI on the same host finds and calls `ondeck up`.

The state dir holds `api.json` (where the API listens) and `token`; flags and
ONDECK_API / ONDECK_TOKEN override them. Errors say what to do next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ondeck.errors import OndeckError, UserError


def default_state_dir() -> Path:
    env = os.environ.get("ONDECK_STATE_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "ondeck"


class ApiError(OndeckError):
    """The API answered with an error, or could not be reached."""


class Client:
    def __init__(
        self,
        state_dir: Path,
        api: str | None = None,
        token: str | None = None,
        app: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.url = (api or os.environ.get("ONDECK_API") or self._saved_url()).rstrip("/")
        if app:  # one app of `ondeck up --host-file`: its own API, under /apps/NAME/
            self.url += f"/apps/{quote(app, safe='')}"
        self.token = token or os.environ.get("ONDECK_TOKEN") or self._saved_token()
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(30.0, read=None),
        )

    def _saved_url(self) -> str:
        path = self.state_dir / "api.json"
        try:
            return str(json.loads(path.read_text())["url"])
        except (OSError, ValueError, KeyError) as err:
            raise UserError(
                f"no running ondeck found: {path} is missing or unreadable; start `ondeck up REPO "
                f"--state-dir {self.state_dir}`, or pass --api URL / set ONDECK_API"
            ) from err

    def _saved_token(self) -> str:
        path = self.state_dir / "token"
        try:
            return path.read_text().strip()
        except OSError as err:
            raise UserError(
                f"cannot read the API token at {path}: pass --token or set ONDECK_TOKEN"
            ) from err

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self._call("POST", path, json=body, timeout=timeout)

    def stream(self, path: str, **params: Any) -> Iterator[str]:
        try:
            with self.http.stream("GET", path, params=params) as response:
                self._check(response)
                yield from response.iter_text()
        except httpx.TransportError as err:
            raise self._unreachable(err) from err

    def _call(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> Any:
        try:
            response = self.http.request(method, path, timeout=timeout or 30.0, **kw)
        except httpx.TransportError as err:
            raise self._unreachable(err) from err
        self._check(response)
        return (
            response.json() if "json" in response.headers.get("content-type", "") else response.text
        )

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ApiError(f"{response.status_code}: {detail}")

    def _unreachable(self, err: Exception) -> ApiError:
        return ApiError(f"cannot reach ondeck at {self.url} ({err}); is `ondeck up` running?")
