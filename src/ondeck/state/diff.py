"""`diff(desired, live)`: per service, is it in sync and if not, why.

Pairs desired services with live ones by name, so create (no live), prune
(no desired) and update fall out of one loop. The reasons are shown to people
by `ondeck status` and `ondeck diff`.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from ondeck.redact import mask, mask_argv, mask_env
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.health import exit_text
from ondeck.state.live import Live, LiveInstance, Phase


class Sync(StrEnum):
    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ServiceDiff:
    name: str
    sync: Sync
    reasons: tuple[str, ...] = ()


def diff(desired: Desired, live: Live) -> list[ServiceDiff]:
    """One entry per service found on either side, sorted by name."""
    names = sorted(desired.names | live.services)
    return [_one(name, desired.service(name), live.of(name)) for name in names]


def overall(diffs: list[ServiceDiff]) -> Sync:
    return Sync.OUT_OF_SYNC if any(d.sync is not Sync.SYNCED for d in diffs) else Sync.SYNCED


def _one(name: str, want: DesiredService | None, have: list[LiveInstance]) -> ServiceDiff:
    reasons = _reasons(want, [i for i in have if i.phase is not Phase.STOPPING])
    return ServiceDiff(name, Sync.OUT_OF_SYNC if reasons else Sync.SYNCED, tuple(reasons))


def _reasons(want: DesiredService | None, have: list[LiveInstance]) -> list[str]:
    if want is None:
        return [f"not in the spec: {len(have)} instance(s) to prune"] if have else []
    reasons = [f"{i.id} drifted: {i.drift}" for i in have if i.drift]
    have = [i for i in have if not i.drift]
    stale = [i for i in have if i.fingerprint != want.fingerprint]
    if stale:
        reasons.append(f"{len(stale)} instance(s) run an older release (want {want.fingerprint})")
    current = [i for i in have if i.fingerprint == want.fingerprint]
    if len(current) != want.replicas:
        reasons.append(f"{len(current)} instance(s) of the current release, want {want.replicas}")
    for inst in current:
        if inst.phase is Phase.EXITED and not _finished(want, inst):
            reasons.append(f"{inst.id} {exit_text(inst.exit_code)}")
    return reasons


def _finished(want: DesiredService, inst: LiveInstance) -> bool:
    """An exit the restart policy says to leave alone is not drift."""
    policy = want.spec.restart.policy
    return policy == "never" or (policy == "on-failure" and inst.exit_code == 0)


def summarize(old: Desired | None, new: Desired) -> list[str]:
    """What a new revision changes, one line per service, for history and people."""
    before = {s.name: s for s in old.services} if old else {}
    lines = [
        f"{s.name}: added ({s.replicas} replicas)" for s in new.services if s.name not in before
    ]
    lines += [f"{name}: removed" for name in sorted(set(before) - new.names)]
    for svc in new.services:
        prev = before.get(svc.name)
        if prev is not None and old is not None:
            lines += _service_changes(prev, svc, _moved_code(old, prev, new, svc))
    return lines


def _moved_code(old: Desired, a: DesiredService, new: Desired, b: DesiredService) -> str | None:
    """`code abc1234 -> def5678` when a pinned service's code commit moved, else None."""
    if a.code is None and b.code is None:
        return None  # the spec's own commit: a code change shows as `code` (the tree moved)
    before, after = old.code_revision(a), new.code_revision(b)
    return f"code {before[:7]} -> {after[:7]}" if before != after else None


def _service_changes(
    old: DesiredService, new: DesiredService, code: str | None = None
) -> list[str]:
    a, b = old.spec, new.spec
    parts = [
        f"{field} {getattr(a, field) or 'unset'} -> {getattr(b, field) or 'unset'}"
        for field in ("version", "image", "replicas")
        if getattr(a, field) != getattr(b, field)
    ]
    changed_env = sorted(k for k in set(a.env) | set(b.env) if a.env.get(k) != b.env.get(k))
    if changed_env:
        parts.append("env " + ", ".join(changed_env))
    parts += [
        field
        for field in ("command", "build", "health", "rollout", "routes", "port")
        if getattr(a, field) != getattr(b, field)
    ]
    parts += [f"secret {n} {how}" for n, how in secret_changes(old, new)]
    parts += [code] if code else []
    if not parts and old.fingerprint != new.fingerprint:
        parts.append("code")
    return [f"{new.name}: " + "; ".join(parts)] if parts else []


def secret_changes(old: DesiredService, new: DesiredService) -> list[tuple[str, str]]:
    """(name, "changed" | "added" | "removed") for each secret whose fingerprint moved."""
    a, b = old.secrets.prints, new.secrets.prints
    return [
        (n, "added" if n not in a else "removed" if n not in b else "changed")
        for n in sorted(set(a) | set(b))
        if a.get(n) != b.get(n)
    ]


def service_view(
    svc: DesiredService | None,
    replicas: int,
    revisions: list[str],
    secrets: Collection[str] = (),
) -> list[str]:
    """What one side runs, as stable YAML-like lines that `unified` compares.

    Nothing secret is shown (`redact.mask`: the host's `secrets` values, URL
    passwords, secret-looking names and flags); a hidden value keeps a short
    tag, so a changed secret still shows as a changed line.
    """
    if svc is None:
        return []
    spec = svc.spec
    lines = [
        f"revisions: {', '.join(r[:12] for r in revisions) or 'none'}",
        f"replicas: {replicas}",
        f"version: {mask(spec.version or '', secrets, tag=True)}",
    ]
    lines += [f"image: {mask(spec.image, secrets, tag=True)}"] if spec.image else []
    if svc.code is not None:
        lines += [f"code: {svc.code.sha[:12]} ({svc.code.ref})"]
    command = mask_argv(spec.command or [], secrets, tag=True)
    lines += [f"command: {' '.join(command)}", f"port: {spec.port}"]
    env = mask_env(spec.env, secrets, tag=True)
    lines += [f"env.{k}: {v}" for k, v in sorted(env.items())]
    lines += [f"secret.{n}: fingerprint {p}" for n, p in sorted(svc.secrets.prints.items())]
    lines += [f"release: {svc.fingerprint}"]
    return lines


def unified(name: str, live: list[str], desired: list[str]) -> list[str]:
    """A unified diff, live -> desired, of one service's views."""
    return list(difflib.unified_diff(live, desired, f"live/{name}", f"desired/{name}", lineterm=""))
