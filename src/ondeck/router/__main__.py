"""`python -m ondeck.router --state-dir D --listen HOST:PORT`: run the router alone.

The CLI's `ondeck router` calls the same `run`; the extra flags tune the
proxy's timeouts and limits (tests use short ones).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ondeck.errors import OndeckError
from ondeck.router.proxy import ProxyOptions
from ondeck.router.server import run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ondeck.router", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:8080")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = ProxyOptions(
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        body_timeout=args.body_timeout,
        connect_timeout=args.connect_timeout,
        upstream_timeout=args.upstream_timeout,
        max_body=args.max_body,
    )
    try:
        run(args.state_dir, args.listen, options)
    except (OndeckError, ValueError, OSError) as exc:
        print(f"ondeck router: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
