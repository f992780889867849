"""Benchmark of the loader's bounds: hostile `ondeck.yaml` files, ondeck's loader vs plain ruamel.

For each input, in a fresh subprocess (so a blow-up cannot take the script
down) capped at 2 GiB of address space and 60 s: the wall time and peak RSS of
(a) `ondeck.spec.load.validate`, which refuses at a named limit, and
(b) the peer in the same run, ruamel.yaml's round-trip loader alone plus
copying the result into plain data, aliases expanded (what the loader did
before the limits, without the validation of each environment).

Run: `.venv/bin/python bench/spec_limits.py`; writes bench/results/spec_limits.json.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import save_results

MIB = 1024 * 1024
CAP_BYTES = 2048 * MIB
TIMEOUT = 60.0


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CASES: dict[str, str] = {
    "comments 1 MiB": "app: a\n" + ("# " + "x" * 70 + "\n") * ((MIB - 100) // 73),
    "comments 50 MiB": "app: a\n" + ("# " + "x" * 70 + "\n") * (50 * MIB // 73),
    "nesting 2 KB": "a: " + "[" * 1000 + "]" * 1000,
    "billion laughs (9 levels)": _laughs(9),
    "20,000 environments": "app: a\nenvironments:\n"
    + "".join(f"  e{i}: {{}}\n" for i in range(20000)),
    "a real spec": (Path(__file__).parent.parent / "tests/fixtures/specs/example.yaml").read_text(),
}

CHILD = r"""
import json, resource, sys, time
from ondeck.spec.load import validate
from ruamel.yaml import YAML
which, path = sys.argv[1], sys.argv[2]
text = open(path).read()

def plain(node):  # what the loader made of a document before the limits: aliases copied out
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node

start = time.perf_counter()
outcome = "ok"
try:
    if which == "ondeck":
        problems = validate(text)
        outcome = problems[0].message[:90] if problems else "valid"
    else:
        plain(YAML(typ="rt").load(text))
except BaseException as err:
    outcome = f"{type(err).__name__}: {str(err)[:60]}"
elapsed = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "peak_rss_mb": rss, "outcome": outcome}))
"""


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def measure(which: str, path: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, which, path],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=_cap,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"seconds": TIMEOUT, "peak_rss_mb": None, "outcome": f"killed after {TIMEOUT:.0f}s"}
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:80]
        return {
            "seconds": time.perf_counter() - started,
            "peak_rss_mb": None,
            "outcome": f"died ({proc.returncode}): {tail}",
        }
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    import tempfile

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CASES.items():
            path = f"{tmp}/case.yaml"
            with open(path, "w") as f:
                f.write(text)
            row: dict[str, Any] = {"bytes": len(text.encode())}
            for which in ("ondeck", "ruamel"):
                row[which] = measure(which, path)
                got = row[which]
                rss = f"{got['peak_rss_mb']:.0f} MiB" if got["peak_rss_mb"] else "-"
                print(f"{name:28} {which:7} {got['seconds']:7.2f}s {rss:>9}  {got['outcome']}")
            results[name] = row
    config = {"cap_mb": CAP_BYTES // MIB, "timeout_s": TIMEOUT}
    print(f"wrote {save_results('spec_limits', config, results)}")


if __name__ == "__main__":
    main()
