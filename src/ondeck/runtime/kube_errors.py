"""The Kubernetes client's errors mapped to ondeck's, once, for the Kubernetes runtime.

Used by runtime/kubernetes.py and runtime/kube_release.py around every request:
409 (a conflict) and 410 (a watch's resourceVersion too old) stay ApiException
for the caller to handle; 5xx, 429 and network failures are temporary; any
other 4xx is the user's to fix, with the API server's message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import urllib3
from kubernetes.client.exceptions import ApiException

from ondeck.errors import TemporaryError, UserError


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Map the client's errors: 409/410 re-raised, 5xx/429/network temporary, 4xx the user's."""
    try:
        yield
    except ApiException as err:
        if err.status in (409, 410):
            raise
        if err.status is None or err.status >= 500 or err.status == 429:
            raise TemporaryError(f"{what}: the API server answered {err.status}") from err
        raise UserError(f"{what}: {err.status} {_reason(err)}") from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise TemporaryError(f"{what}: the API server is unreachable ({err})") from err


def _reason(err: ApiException) -> str:
    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(err.body or "").get("message"))
    return str(err.reason)
