"""Header vocabulary: which request and response headers the proxy acts on.

Names map to a kind (`H_*`); anything not listed is forwarded as is. Lookups
try the common spellings first because `bytes.lower()` costs on the hot path.
Also the byte constants both sides write and the Host syntax check.
"""

from __future__ import annotations

import re
from http import HTTPStatus

H_PLAIN = -1  # forwarded as is
H_HOST, H_CL, H_TE, H_CONN, H_DROP, H_XFF, H_COOKIE, H_UPGRADE, H_XFP = range(9)

REQUEST_SPECIAL = {
    b"host": H_HOST,
    b"content-length": H_CL,
    b"transfer-encoding": H_TE,
    b"connection": H_CONN,
    b"x-forwarded-for": H_XFF,
    b"cookie": H_COOKIE,
    b"upgrade": H_UPGRADE,
    b"keep-alive": H_DROP,
    b"te": H_DROP,
    b"trailer": H_DROP,
    b"proxy-connection": H_DROP,
    b"proxy-authorization": H_DROP,
    b"proxy-authenticate": H_DROP,
    b"x-forwarded-proto": H_XFP,  # kept from a trusted proxy, else ours replaces it
    b"x-forwarded-host": H_DROP,
}
RESPONSE_SPECIAL = {
    b"content-length": H_CL,
    b"transfer-encoding": H_TE,
    b"connection": H_CONN,
    b"upgrade": H_UPGRADE,
    b"keep-alive": H_DROP,
    b"te": H_DROP,
    b"trailer": H_DROP,
    b"proxy-connection": H_DROP,
    b"proxy-authenticate": H_DROP,
    b"proxy-authorization": H_DROP,
}
_COMMON_PLAIN = (
    b"Accept",
    b"Accept-Encoding",
    b"Accept-Language",
    b"Authorization",
    b"Cache-Control",
    b"Content-Type",
    b"Date",
    b"ETag",
    b"Last-Modified",
    b"Location",
    b"Origin",
    b"Referer",
    b"Server",
    b"User-Agent",
    b"Vary",
)


def _by_spelling(kinds: dict[bytes, int]) -> dict[bytes, int]:
    """Common spellings looked up before lower-casing (lower() costs on a hot path)."""
    spelled = {name.title(): kind for name, kind in kinds.items()}
    spelled.update(kinds)
    spelled.update((name, H_PLAIN) for name in _COMMON_PLAIN)
    return spelled


REQUEST_SPELLED = _by_spelling(REQUEST_SPECIAL)
RESPONSE_SPELLED = _by_spelling(RESPONSE_SPECIAL)
CONNECTION_TOKENS_KNOWN = frozenset((b"close", b"keep-alive", b"upgrade", b""))
_HOST_RE = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


# The reason phrase is ours, not the upstream's: it carries no meaning (RFC 9112
# 4) and not parsing it saves a parser callback per response.
STATUS_LINES = {code: _status_line(code) for code in range(100, 1000)}
CHUNK_END = b"0\r\n\r\n"
CRLF = b"\r\n"
SEP = b": "
CONN_CLOSE = b"Connection: close\r\n"
CONN_KEEP = b"Connection: keep-alive\r\n"
CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HostKeys:
    """`Shop.Localhost:8080` -> `shop.localhost`, cached (valid hosts are few)."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[bytes, str] = {}

    def key(self, host: bytes) -> str | None:
        """The routing key of a Host value; None when it is not a valid host."""
        key = self._keys.get(host, "")
        if key == "":
            if not _HOST_RE.fullmatch(host):
                return None
            text = host.decode("latin-1").lower()
            bracket = text.find("]") + 1 if text.startswith("[") else 0
            text = text[:bracket] if bracket else text.partition(":")[0]
            if len(self._keys) > 4096:
                self._keys.clear()
            key = self._keys[host] = text.rstrip(".")
        return key
