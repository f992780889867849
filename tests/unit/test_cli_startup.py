"""The `ondeck` command starts light: what every call pays before its request leaves.

`ondeck status` or `sync --wait` needs typer, rich and httpx; the spec's pydantic
models, git, age and the renderers load only in the commands that use them (they
once made every call import for 2-3 s on a loaded machine). A fresh interpreter
imports the CLI and reports what came with it.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "pydantic",
    "ruamel.yaml",
    "ondeck.spec.model",
    "ondeck.gitops",
    "ondeck.source.git",
    "ondeck.secrets.agefile",
    "ondeck.kube.render",
    "fastapi",
    "uvicorn",
)


def test_importing_the_cli_leaves_the_heavy_modules_for_the_commands_that_use_them() -> None:
    probe = "import json, sys, ondeck.cli; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout))  # fmt: skip
    assert "httpx" in loaded and "typer" in loaded  # the probe does see imports
    assert sorted(m for m in HEAVY if m in loaded) == []
