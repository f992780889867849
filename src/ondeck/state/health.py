"""Health vocabulary (Argo CD's), its order, and crash-loop backoff arithmetic.

Aggregate health is the worst child; `service_health` judges one service from
its desired replica count and live instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from ondeck.state.live import LiveInstance, Phase


class Health(StrEnum):
    HEALTHY = "Healthy"
    SUSPENDED = "Suspended"
    PROGRESSING = "Progressing"
    MISSING = "Missing"
    DEGRADED = "Degraded"
    UNKNOWN = "Unknown"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    def is_worse(self, other: Health) -> bool:
        return self.rank > other.rank


_ORDER = list(Health)


def worst(healths: Iterable[Health]) -> Health:
    """The aggregate of several healths; Healthy when there are none."""
    return max(healths, key=lambda h: h.rank, default=Health.HEALTHY)


@dataclass(frozen=True)
class Verdict:
    health: Health
    reason: str | None = None


def restart_delay(failures: int, initial: float, maximum: float) -> float:
    """Delay before restarting after the `failures`-th consecutive crash.

    The first crash restarts at once; a crash loop then waits `initial`,
    doubling up to `maximum` (Kubernetes' CrashLoopBackOff, faster start).
    """
    if failures <= 1:
        return 0.0
    return float(min(initial * 2 ** (failures - 2), maximum))


def next_failures(
    previous: int, healthy_since: float | None, exited_at: float, reset_after: float
) -> int:
    """Consecutive-crash count after an exit: reset when it ran healthy long enough."""
    if healthy_since is not None and exited_at - healthy_since >= reset_after:
        return 1
    return previous + 1


def exit_text(code: int | None) -> str:
    if code is None:
        return "exited (code unknown: adopted process)"
    if code < 0:
        return f"killed by signal {-code}"
    if code > 128 and code - 128 in (9, 15):  # a container engine's way to say "signal"
        return f"exited with code {code} (signal {code - 128})"
    return f"exited with code {code}"


def instance_health(instance: LiveInstance) -> Verdict:
    """One instance: ready is healthy, failing or crashed is degraded."""
    if instance.phase is Phase.EXITED:
        if instance.exit_code == 0:
            return Verdict(Health.HEALTHY, "completed")
        return Verdict(Health.DEGRADED, instance.last_error or exit_text(instance.exit_code))
    if instance.phase is Phase.STOPPING:
        return Verdict(Health.PROGRESSING, "stopping")
    if instance.failing:
        return Verdict(Health.DEGRADED, instance.last_error or "health check failing")
    if instance.ready:
        return Verdict(Health.HEALTHY)
    return Verdict(Health.PROGRESSING, "starting")


def service_health(replicas: int, instances: list[LiveInstance]) -> Verdict:
    """A service: the worst instance, Missing with none, Progressing while short."""
    counted = [i for i in instances if i.phase is not Phase.STOPPING]
    if replicas > 0 and not counted:
        return Verdict(Health.MISSING, f"no instance running (want {replicas})")
    verdicts = [instance_health(i) for i in counted]
    bad = [v for v in verdicts if v.health is Health.DEGRADED]
    if bad:
        return Verdict(Health.DEGRADED, bad[0].reason)
    ready = sum(1 for i in counted if i.ready)
    if (
        ready < replicas
        or len(counted) != replicas
        or any(v.health is Health.PROGRESSING for v in verdicts)
    ):
        return Verdict(Health.PROGRESSING, f"{ready}/{replicas} ready")
    return Verdict(Health.HEALTHY)
