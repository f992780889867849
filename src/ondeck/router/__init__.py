"""The data plane: ondeck's own HTTP reverse proxy, run as its own process.

table.py decides (pure), proxy.py moves bytes, control.py is the controller's
handle (`RouterControl`), server.py runs it all (`run`).
"""

from __future__ import annotations

from ondeck.router.control import RouterControl, RouterRefused, RouterUnavailable
from ondeck.router.options import ProxyOptions
from ondeck.router.server import RouterServer, run
from ondeck.router.table import Backend, Pool, Route, RouterConfig, RouterConfigError, pick, resolve

__all__ = [
    "Backend",
    "Pool",
    "ProxyOptions",
    "Route",
    "RouterConfig",
    "RouterConfigError",
    "RouterControl",
    "RouterRefused",
    "RouterServer",
    "RouterUnavailable",
    "pick",
    "resolve",
    "run",
]
