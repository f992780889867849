"""`python -m ondeck.router --state-dir D --listen HOST:PORT`: run the router alone.

The CLI's `ondeck router` calls the same `run`; the extra flags tune the
proxy's timeouts and limits (tests use short ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ondeck.errors import OndeckError
from ondeck.router.options import ProxyOptions, parse_trusted
from ondeck.router.server import run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ondeck.router", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--listen-tls", default=None, help="HOST:PORT to serve HTTPS on")
    defaults = ProxyOptions()
    for name in (
        "header_timeout",
        "keepalive_timeout",
        "body_timeout",
        "connect_timeout",
        "upstream_timeout",
    ):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=float, default=getattr(defaults, name), metavar="SECONDS")
    parser.add_argument("--max-body", type=int, default=defaults.max_body, metavar="BYTES")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not write STATE_DIR/logs/access.log (one JSON line per request)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="peer whose X-Forwarded-For/-Proto are kept (repeatable); others' are replaced",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    # Internal: how the first worker starts the others.
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--options-json", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.options_json:
        loaded = json.loads(args.options_json)
        loaded["trusted_proxies"] = tuple(loaded.get("trusted_proxies", ()))
        options = ProxyOptions(**loaded)
    else:
        options = ProxyOptions(
            header_timeout=args.header_timeout,
            keepalive_timeout=args.keepalive_timeout,
            body_timeout=args.body_timeout,
            connect_timeout=args.connect_timeout,
            upstream_timeout=args.upstream_timeout,
            max_body=args.max_body,
            trusted_proxies=tuple(args.trusted_proxy),
            access_log=not args.no_access_log,
        )
    try:
        parse_trusted(options.trusted_proxies)
    except ValueError as exc:
        print(f"ondeck router: {exc}", file=sys.stderr)
        return 1
    if args.workers < 1:
        print("ondeck router: --workers must be at least 1", file=sys.stderr)
        return 1
    try:
        run(args.state_dir, args.listen, options, args.workers, args.worker_index, args.listen_tls)
    except (OndeckError, ValueError, OSError) as exc:
        print(f"ondeck router: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
