"""A changed secret changes the fingerprint of exactly the services that use it; the
release task's decision after a restart; nothing here ever prints a value."""

from __future__ import annotations

import pytest

from ondeck.releasetask.record import Next, TaskRecord, TaskState, decide
from ondeck.spec.model import Spec
from ondeck.state.desired import SecretEnv, render
from ondeck.state.diff import service_view, summarize

SPEC = Spec.model_validate(
    {
        "app": "shop",
        "services": {
            "web": {"command": ["run"], "env": {"URL": "pg://u:${DB}@h/d"}},
            "worker": {"command": ["run"], "env": {"LEVEL": "info"}},
        },
    }
)


def secrets(db: str) -> SecretEnv:
    return SecretEnv({"DB": db, "UNUSED": "u"}, {"DB": f"fp-{db}", "UNUSED": "fp-u"})


def test_only_the_users_of_a_secret_change_fingerprint() -> None:
    one = render(SPEC, "production", "rev", "code", secrets=secrets("a"))
    two = render(SPEC, "production", "rev", "code", secrets=secrets("b"))
    fps = {s.name: s.fingerprint for s in one.services}
    assert {s.name: s.fingerprint for s in two.services} != fps
    assert two.service("worker").fingerprint == fps["worker"]  # type: ignore[union-attr]
    assert two.service("web").fingerprint != fps["web"]  # type: ignore[union-attr]
    web = one.service("web")
    assert web is not None and dict(web.secrets.values) == {"DB": "a"}  # only what it uses
    assert one.service("worker").secrets.values == {}  # type: ignore[union-attr]


def test_the_change_is_named_never_shown() -> None:
    one = render(SPEC, "production", "rev", "code", secrets=secrets("hunter2"))
    two = render(SPEC, "production", "rev", "code", secrets=secrets("hunter3"))
    assert summarize(one, two) == ["web: secret DB changed"]
    view = service_view(two.service("web"), 1, ["rev"])
    assert "secret.DB: fingerprint fp-hunter3" in view
    assert not any("hunter3" in line.replace("fp-hunter3", "") for line in view)
    assert "hunter2" not in repr(one) and "DB" in repr(one.service("web"))


def test_no_secret_at_all_keeps_the_fingerprint_of_before() -> None:
    bare = render(SPEC, "production", "rev", "code")
    empty = render(SPEC, "production", "rev", "code", secrets=SecretEnv())
    assert [s.fingerprint for s in bare.services] == [s.fingerprint for s in empty.services]


RECORD = TaskRecord(TaskState.STARTED, 1, 0.0, 600.0, pid=42, start_ticks=7)


@pytest.mark.parametrize(
    ("record", "alive", "has_result", "next_step"),
    [
        (None, False, False, Next.RUN),  # never ran
        (RECORD, True, False, Next.WAIT),  # still running after a controller restart
        (RECORD, False, True, Next.COLLECT),  # ended while no controller watched
        (RECORD, False, False, Next.RUN),  # died without a result (a reboot): run again
        (RECORD.finished(True, 0, "", 1.0), False, False, Next.SKIP),  # once: never again
        (RECORD.finished(False, 1, "exited with code 1", 1.0), False, False, Next.RUN),  # retry
    ],
)
def test_what_to_do_about_a_release_task(
    record: TaskRecord | None, alive: bool, has_result: bool, next_step: Next
) -> None:
    assert decide(record, alive, has_result) is next_step


def test_a_record_round_trips() -> None:
    done = RECORD.finished(False, -9, "was killed by signal SIGKILL", 3.0)
    assert TaskRecord.from_json(done.to_json()) == done
