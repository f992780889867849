"""`python bench/kubernetes.py`: the Kubernetes benchmark under the name the issue gives it.

The code is bench/kube.py. Run as a script, this file's directory comes first
on sys.path, where its own name would shadow the `kubernetes` client package;
so that entry moves after site-packages before kube.py runs.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))  # common.py, found after the real `kubernetes`
runpy.run_path(str(HERE / "kube.py"), run_name="__main__")
