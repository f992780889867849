"""`python -m ondeck.releasetask RESULT -- ARGV...`: run ARGV, then write its exit code.

The runner starts each release task under this wrapper in a session of its
own, so the task outlives a controller killed mid-task and the next controller
still learns how it ended (a process that is not our child has no exit code
for us to read). A TERM or INT to the wrapper is left to the task itself,
which shares its process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m ondeck.releasetask RESULT -- ARGV...", file=sys.stderr)
        return 2
    result, argv = Path(args[0]), args[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The group's signal reaches the task too; we stay to record how it ended. A handler
        # (not SIG_IGN, which exec would keep) leaves the task with the default actions.
        signal.signal(sig, _note)
    try:
        child = subprocess.Popen(argv)
        code = child.wait()
    except OSError as err:
        print(f"ondeck: cannot run release task {argv[0]!r}: {err.strerror}", file=sys.stderr)
        code = 127
    tmp = result.with_name(result.name + ".tmp")
    tmp.write_text(json.dumps({"exit": code}))
    os.replace(tmp, result)
    return 0


def _note(signum: int, frame: object) -> None:
    """Survive the signal: the task decides what it means."""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
