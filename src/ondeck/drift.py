"""Edits by hand since ondeck started things: release files, environments, strays.

The controller runs `find_drift` in a worker thread every `--drift-check` (it
only reads files and /proc), then `apply_drift` on the loop: drifted
instances are marked (so `plan` replaces them) and stray processes are
stopped, or only reported when self-heal is off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ondeck.clock import Clock
from ondeck.environment import Environment
from ondeck.releases import drift, release_dir, taint
from ondeck.releasetask.runner import task_sessions
from ondeck.state.lifecycle import InstanceState
from ondeck.store import Store
from ondeck.supervisor import Stray, find_strays

log = logging.getLogger("ondeck")

Strays = dict[str, dict[str, list[str]]]  # env -> service -> reasons


@dataclass(frozen=True)
class Finding:
    """One instance changed by hand."""

    env: str
    instance: str
    reason: str


def find_drift(envs: Iterable[Environment], state_dir: Path) -> tuple[list[Finding], list[Stray]]:
    """Drifted instances (release files, then environment) and stray processes.

    A release found edited is tainted, so a clean copy is prepared before its next start.
    """
    envs = list(envs)
    findings: list[Finding] = []
    checked: dict[str, list[str]] = {}
    for env in envs:
        sup = env.supervisor
        for inst in list(sup.instances.values()) if sup else []:
            if inst.rec.state is not InstanceState.RUNNING or inst.rec.drift:
                continue
            where = inst.rec.release_dir
            if inst.rec.runtime != "process":
                where = ""  # an image is the release: no directory of ours to check
            if where and where not in checked:
                checked[where] = drift(Path(where))
                if checked[where]:
                    taint(Path(where))
            if where and checked[where]:
                edited = checked[where]
                shown = ", ".join(edited[:3]) + (" …" if len(edited) > 3 else "")
                findings.append(
                    Finding(env.name, inst.rec.id, f"release files changed by hand: {shown}")
                )
            elif sup is not None and (reason := sup.env_drift(inst)) is not None:
                findings.append(Finding(env.name, inst.rec.id, reason))
    owners: dict[Path, list[tuple[str, str]]] = {}
    for env in envs:
        desired = env.desired
        if desired is None:
            continue
        for svc in desired.services:
            shared = release_dir(state_dir.resolve(), desired.app, svc.release)
            owners.setdefault(shared, []).append((env.name, svc.name))
    return findings, find_strays(state_dir, known_pids(envs), owners)


def known_pids(envs: Iterable[Environment]) -> set[int]:
    """Instances, and the process groups hooks started in a release (job runs)."""
    known = set()
    for env in envs:
        if env.supervisor:
            known |= {i.rec.pid for i in list(env.supervisor.instances.values()) if i.rec.pid}
        for more in env.owned_pids:
            known |= more()
    # A release task runs in its release, and is ours; so is everything in the session of a
    # build or probe we started (pip, say, may run children of its own there).
    return known | task_sessions() | _child_sessions()


def _child_sessions() -> set[int]:
    """Our direct children: each build or release wrapper leads the session of its work."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == me:
                found.add(int(entry.name))
    return found


def apply_drift(
    envs: dict[str, Environment],
    findings: list[Finding],
    strays: list[Stray],
    self_heal: bool,
    store: Store,
    clock: Clock,
) -> Strays:
    """Mark drifted instances; stop strays (self-heal) or return them to be reported."""
    for found in findings:
        sup = envs[found.env].supervisor if found.env in envs else None
        if sup is not None:
            sup.mark_drift(found.instance, found.reason)
    reported: Strays = {}
    for stray in strays:
        reason = f"process {stray.pid} ({stray.command}) started by hand in the release"
        if self_heal:
            log.warning("[%s] stopping %s", stray.env, reason)
            with contextlib.suppress(ProcessLookupError):
                os.kill(stray.pid, signal.SIGTERM)
            store.events_add(stray.env, stray.service, "drift", f"stopped {reason}", clock.time())
        else:
            reported.setdefault(stray.env, {}).setdefault(stray.service, []).append(reason)
    return reported
