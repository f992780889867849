"""Durations and sizes as written in specs and flags (`500ms`, `2s`, `5m`, `10MiB`)."""

from __future__ import annotations

import re

from ondeck.errors import UserError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*$")
_SIZE_UNITS = {
    "B": 1,
    "K": 1024,
    "KiB": 1024,
    "KB": 1000,
    "M": 1024**2,
    "MiB": 1024**2,
    "MB": 1000**2,
    "G": 1024**3,
    "GiB": 1024**3,
    "GB": 1000**3,
}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration; a bare number counts as seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise UserError(f"duration {text!r} is negative")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(
            f"{text!r} is not a duration: write a number with a unit, like 500ms, 2s, 5m, 1h"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """The shortest readable form of a duration (`250ms`, `2s`, `1m30s`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `10MiB`; a bare number counts as bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise UserError(f"{text!r} is not a size: write a number with a unit, like 512KiB or 10MiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]


def parse_address(
    text: str, option: str = "--listen", example: str = "127.0.0.1:8080", default_host: str = ""
) -> tuple[str, int]:
    """`127.0.0.1:8080` or `[::1]:8080` -> (host, port); a bare `:8080` gets `default_host`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or " " in host:
        raise UserError(f"{option} {text!r}: expected HOST:PORT, e.g. {example}")
    return host.removeprefix("[").removesuffix("]") or default_host, int(port)
