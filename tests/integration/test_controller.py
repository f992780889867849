"""The controller driven step by step: real git, real processes, a clock moved by hand.

Each test builds a `Controller` on a temporary repo and state dir, then calls
`step()` and waits for the controller's own wake-ups (an exit, a probe
verdict, a finished fetch) until a condition holds, with a deadline. Time
that the controller reasons about (backoffs, the sync deadline) comes from a
`FakeClock` the test moves forward, so no test sleeps through a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ondeck.controller import Controller
from ondeck.daemon import build_controller
from ondeck.environment import Environment, Options
from ondeck.state.lifecycle import InstanceState, SyncResult, Trigger
from ondeck.store import SyncRecord
from ondeck.supervisor import Instance

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}
SLEEPER = '["python3", "-c", "import time; time.sleep(100000)"]'
CRASHER = '["python3", "-c", "import sys; sys.exit(3)"]'
DEADLINE = 60.0  # real seconds any condition may take on a loaded 2-core box


class FakeClock:
    """The controller's notion of now, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, **GIT_ENV}
        out = subprocess.run(
            ["git", *args], cwd=self.path, env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    def commit(self, message: str, spec: str) -> str:
        (self.path / "ondeck.yaml").write_text(spec)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


def spec(command: str = SLEEPER, extra: str = "", envs: str = "") -> str:
    return f"""\
app: shop
services:
  web:
    command: {command}
    restart: {{backoff_initial: 5s, backoff_max: 60s}}
    stop: {{grace: 2s}}
{extra}{envs}"""


class Harness:
    def __init__(self, ctl: Controller, clock: FakeClock, repo: Repo) -> None:
        self.ctl, self.clock, self.repo = ctl, clock, repo

    def env(self, name: str = "default") -> Environment:
        return self.ctl.envs[name]

    def instances(self, env: str = "default") -> list[Instance]:
        sup = self.env(env).supervisor
        return list(sup.instances.values()) if sup else []

    def history(self, env: str = "default") -> list[SyncRecord]:
        return self.ctl.store.history(env)

    async def until(self, cond: Callable[[], object], what: str, limit: float = DEADLINE) -> None:
        """Step the controller, waking on its own events, until `cond()` holds."""
        deadline = time.monotonic() + limit
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {limit:.0f}s: {what}")
            await self.ctl.step()
            await self.ctl.idle(0.05)

    async def steps(self, count: int) -> None:
        """A few passes with time standing still (to show nothing happens)."""
        for _ in range(count):
            await self.ctl.step()
            await self.ctl.idle(0.02)

    async def sync(self, env: str = "default") -> SyncRecord:
        before = len(self.history(env))
        self.ctl.refresh(Trigger.CLI)
        await self.until(
            lambda: len(self.history(env)) > before and self.history(env)[0].result is not None,
            f"a finished sync of {env}",
        )
        return self.history(env)[0]


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, first: str, envs: tuple[str, ...] = ()) -> AsyncIterator[Harness]:
    repo = Repo(tmp_path / "repo")
    repo.commit("first", first)
    clock = FakeClock()
    opts = Options(repo=str(repo.path), state_dir=tmp_path / "state", envs=envs, poll=3600.0)
    ctl = build_controller(opts, clock)
    h = Harness(ctl, clock, repo)
    await ctl.start()
    try:
        yield h
    finally:
        pids = [i.rec.pid for e in ctl.envs.values() for i in h.instances(e.name) if i.rec.pid]
        ctl.close()
        for pid in pids:  # each instance leads its own session: its group goes with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def running(h: Harness, env: str = "default") -> list[Instance]:
    return [i for i in h.instances(env) if i.rec.state is InstanceState.RUNNING]


def test_a_sync_starts_the_release_and_succeeds(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            (inst,) = running(h)
            assert inst.ready and inst.rec.pid is not None
            os.kill(inst.rec.pid, 0)  # a real process
            record = h.history()[0]
            assert (record.result, record.trigger) == ("Succeeded", "startup")
            assert any(a.startswith("start web-") for a in record.actions)
            status = h.ctl.status()
            assert (status.environments[0].sync, status.environments[0].health) == (
                "Synced",
                "Healthy",
            )

    asyncio.run(scenario())


def test_a_crashed_instance_restarts_at_once_then_after_its_backoff(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: len(running(h)) == 1, "an instance running")
            (inst,) = running(h)
            first_pid = inst.rec.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            await h.until(
                lambda: inst.rec.restarts == 1 and inst.rec.state is InstanceState.RUNNING,
                "the first crash restarted at once",
            )
            assert inst.rec.pid != first_pid
            assert inst.rec.pid is not None
            os.kill(inst.rec.pid, signal.SIGKILL)  # a second crash in a row: backoff 5s
            await h.until(lambda: inst.rec.state is InstanceState.EXITED, "the second exit seen")
            await h.steps(10)
            assert inst.rec.state is InstanceState.EXITED and inst.rec.restarts == 1
            assert h.env().wake_at == pytest.approx(inst.rec.exited_at + 5.0)  # type: ignore[operator]
            h.clock.advance(5.0)
            await h.until(
                lambda: inst.rec.restarts == 2 and inst.rec.state is InstanceState.RUNNING,
                "restarted once the backoff passed",
            )

    asyncio.run(scenario())


def test_a_crash_looping_release_fails_its_sync(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            never_ready = '    health: {exec: ["false"], interval: 1s, start_period: 1h}\n'
            h.repo.commit("crashes", spec(CRASHER, extra=never_ready))
            h.ctl.refresh(Trigger.CLI)
            await h.until(lambda: h.env().op is not None, "the sync of the crashing release")

            def new_failures() -> int:
                fp = h.env().desired.services[0].fingerprint  # type: ignore[union-attr]
                return max(
                    (i.rec.failures for i in h.instances() if i.rec.fingerprint == fp), default=0
                )

            await h.until(lambda: new_failures() >= 2, "two crashes of the new release")
            assert h.env().op is not None  # two crashes are a backoff, not yet a failure
            h.clock.advance(5.0)  # the backoff before the third attempt
            await h.until(lambda: h.env().op is None, "the sync's verdict")
            record = h.history()[0]
            assert record.result == "Failed"
            assert (
                record.error is not None and "is crash-looping: exited with code 3" in record.error
            )

    asyncio.run(scenario())


def test_a_sync_not_done_by_its_rollout_deadline_fails(tmp_path: Path) -> None:
    never_ready = spec(
        extra='    health: {exec: ["false"], interval: 1s, start_period: 1h}\n'
        "    rollout: {deadline: 1m}\n"
    )

    async def scenario() -> None:
        async with harness(tmp_path, never_ready) as h:
            await h.until(lambda: h.env().op is not None and running(h), "a sync under way")
            await h.steps(10)
            assert h.env().op is not None  # the instance runs but never gets ready
            h.clock.advance(59.0)
            await h.steps(5)
            assert h.env().op is not None  # within its deadline
            h.clock.advance(2.0)
            await h.until(lambda: h.env().op is None, "the sync's verdict")
            record = h.history()[0]
            assert record.result == "Failed"
            assert record.error == "not done after 60s: web: 0/1 ready"

    asyncio.run(scenario())


def test_an_aborted_canary_ends_its_sync_aborted(tmp_path: Path) -> None:
    canary = "    rollout: {strategy: canary, steps: [{weight: 50}, {pause: manual}]}\n"

    async def scenario() -> None:
        async with harness(tmp_path, spec(extra=canary)) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            (old,) = running(h)
            h.repo.commit("v2", spec(extra=canary + '    env: {V: "2"}\n'))
            h.ctl.refresh(Trigger.CLI)
            await h.until(
                lambda: "web" in h.env().releases and h.env().releases["web"].stage == "paused",
                "the canary paused at 50%",
            )
            h.ctl.rollout_action(None, "web", "abort")
            await h.until(lambda: h.env().op is None, "the sync's verdict")
            record = h.history()[0]
            assert record.result == "Aborted"
            assert record.error == "web: aborted by a person (ondeck rollout abort)"
            await h.until(
                lambda: [i.rec.id for i in h.instances()] == [old.rec.id],
                "only the stable instance left",
            )

    asyncio.run(scenario())


SLOW_BUILD = """\
environments:
  production: {}
  staging:
    services:
      web:
        build: ["python3", "-c", "import pathlib, time\\npathlib.Path('BUILDING').touch()\\nend = time.time() + 60\\nwhile time.time() < end and not pathlib.Path('{gate}').exists(): time.sleep(0.05)"]
"""


def test_a_slow_build_in_one_environment_does_not_delay_a_restart_in_another(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    envs = "environments:\n  production: {}\n  staging: {}\n"

    async def scenario() -> None:
        async with harness(tmp_path, spec(envs=envs), ("production", "staging")) as h:
            await h.until(
                lambda: len(running(h, "production")) == 1 and len(running(h, "staging")) == 1,
                "both environments running",
            )
            h.repo.commit("slow staging build", spec(envs=SLOW_BUILD.replace("{gate}", str(gate))))
            h.ctl.refresh(Trigger.CLI)
            building = tmp_path / "state" / "releases" / "shop"  # staging's new release
            await h.until(
                lambda: any(p.name == "BUILDING" for p in building.rglob("BUILDING")),
                "staging's build under way",
            )
            (prod,) = running(h, "production")
            assert prod.rec.pid is not None
            started = time.monotonic()
            os.kill(prod.rec.pid, signal.SIGKILL)
            # The build runs for 60s unless the gate opens: the restart must come long before.
            await h.until(
                lambda: prod.rec.restarts == 1 and prod.rec.state is InstanceState.RUNNING,
                "production's instance restarted",
                limit=45.0,
            )
            restarted_after = time.monotonic() - started
            assert h.env("staging").loading, "the build finished first: the test proves nothing"
            gate.touch()
            await h.until(lambda: not h.env("staging").loading, "staging's build done")
            print(f"restart after {restarted_after:.2f}s while staging was building")

    asyncio.run(scenario())


def test_history_measures_the_whole_sync_build_included(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow_failing_build = (
        '    build: ["python3", "-c", "import pathlib, sys, time\\n'
        "pathlib.Path('BUILDING').touch()\\n"
        f"while not pathlib.Path('{gate}').exists(): time.sleep(0.05)\\n"
        'sys.exit(1)"]\n'
    )

    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            h.repo.commit("a build that fails after a while", spec(extra=slow_failing_build))
            h.ctl.refresh(Trigger.CLI)
            releases = tmp_path / "state" / "releases"
            await h.until(lambda: any(releases.rglob("BUILDING")), "the build under way")
            h.clock.advance(6.0)  # the build takes six seconds, as the clock sees it
            gate.touch()
            await h.until(lambda: h.env().error is not None, "the build refused")
            record = h.history()[0]
            assert record.result == "Failed" and "build" in (record.error or "")
            assert record.finished_at is not None
            assert record.finished_at - record.started_at == pytest.approx(6.0)

    asyncio.run(scenario())


def test_the_data_dir_exists_before_the_first_build_and_is_private(tmp_path: Path) -> None:
    # A build is shared by environments: it is not given ONDECK_DATA_DIR, but the dir exists.
    data = tmp_path / "state" / "data" / "shop" / "default"
    needs_data_dir = (
        '    build: ["python3", "-c", "import os, sys; '
        f"sys.exit(0 if os.path.isdir('{data}') else 9)\"]\n"
    )

    async def scenario() -> None:
        async with harness(tmp_path, spec(extra=needs_data_dir)) as h:
            await h.until(lambda: h.env().last_result is not None or h.env().error, "first sync")
            assert h.env().error is None
            assert h.env().last_result is SyncResult.SUCCEEDED
            assert data.is_dir() and (data.stat().st_mode & 0o777) == 0o700

    asyncio.run(scenario())


def test_rollout_abort_stops_a_rolling_release(tmp_path: Path) -> None:
    never_ready = '    health: {exec: ["false"], interval: 1s, start_period: 1h}\n'

    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            (old,) = running(h)
            h.repo.commit("v2 never gets ready", spec(extra=never_ready + '    env: {V: "2"}\n'))
            h.ctl.refresh(Trigger.CLI)
            await h.until(lambda: len(running(h)) == 2, "the new instance beside the old")
            assert h.env().op is not None
            progress = h.ctl.rollout_action(None, "web", "abort")
            assert progress.stage == "aborted"
            await h.until(lambda: h.env().op is None, "the sync's verdict")
            record = h.history()[0]
            assert record.result == "Aborted"
            assert record.error == "web: aborted by a person (ondeck rollout abort)"
            await h.until(
                lambda: [i.rec.id for i in h.instances()] == [old.rec.id],
                "only the old instance left",
            )
            await h.steps(5)
            assert [i.rec.id for i in h.instances()] == [old.rec.id]  # nothing restarts it
            health = h.ctl.status().environments[0].services[0]
            assert health.health == "Degraded" and "aborted" in (health.health_reason or "")

    asyncio.run(scenario())


async def _synced_to(h: Harness, revision: str) -> SyncRecord:
    """Refresh until `revision` is synced. A fetch can fail when it races the deploy note
    the last sync writes into the mirror (`cannot lock ref refs/notes/ondeck`); the poll
    would retry it, here an hour away, so the test asks again."""

    def done() -> bool:
        if h.ctl.fetch.error is not None or not h.history():
            h.ctl.refresh(Trigger.CLI)
        latest = h.history()[0] if h.history() else None
        return latest is not None and latest.revision == revision and latest.result is not None

    h.ctl.refresh(Trigger.CLI)
    await h.until(done, f"a finished sync of {revision[:12]}")
    return h.history()[0]


def test_a_force_pushed_unrelated_history_is_named_in_status_and_history(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            before = h.repo.git("rev-parse", "HEAD")
            after = h.repo.commit("ordinary", spec(extra="    replicas: 1\n"))
            ordinary = await _synced_to(h, after)
            assert not any(c.startswith("history rewritten") for c in ordinary.changes)
            assert h.ctl.status().environments[0].conditions == []

            h.repo.git("checkout", "-q", "--orphan", "elsewhere")  # an unrelated history
            forced = h.repo.commit("unrelated root", spec(extra="    replicas: 2\n"))
            h.repo.git("branch", "-q", "-f", "main", forced)
            h.repo.git("checkout", "-q", "main")
            record = await _synced_to(h, forced)
            message = f"history rewritten: {forced[:12]} is not a descendant of {after[:12]}"
            assert record.changes[0] == message
            assert message in h.ctl.status().environments[0].conditions
            assert before != forced

    asyncio.run(scenario())


def test_two_environments_routing_one_host_and_path_are_named_in_status(
    tmp_path: Path,
) -> None:
    server = '["python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"]'
    both = spec(
        command=server,
        extra="    port: true\n    routes: [{path: /}]\n",
        envs="environments:\n  staging: {}\n  production: {}\n",
    )

    async def scenario() -> None:
        async with harness(tmp_path, both, envs=("staging", "production")) as h:
            for env in ("staging", "production"):
                await h.until(
                    lambda env=env: h.env(env).last_result is SyncResult.SUCCEEDED,  # type: ignore[misc]
                    f"{env} synced",
                )
            docs = {e.name: e for e in h.ctl.status().environments}
            message = (
                "shop/production/web and shop/staging/web both route host * path /: "
                "one router serves one of them only; give each its own host or path"
            )
            assert message in docs["staging"].conditions
            assert message in docs["production"].conditions
            assert docs["production"].health == "Degraded"  # the router serves staging's
            assert docs["staging"].health == "Healthy"

    asyncio.run(scenario())


def test_a_bug_in_one_environment_is_contained_there_and_reported(tmp_path: Path) -> None:
    envs = "environments:\n  production: {}\n  staging: {}\n"

    async def broken(env: Environment, now: float) -> None:
        raise RuntimeError("a bug in a hook")

    async def scenario() -> None:
        async with harness(tmp_path, spec(envs=envs), ("production", "staging")) as h:
            await h.until(
                lambda: len(running(h, "production")) == 1 and len(running(h, "staging")) == 1,
                "both environments running",
            )
            h.env("staging").pass_hooks.append(broken)
            h.ctl.wake()
            await h.until(lambda: h.env("staging").fault is not None, "staging's fault recorded")
            (prod,) = running(h, "production")
            assert prod.rec.pid is not None
            os.kill(prod.rec.pid, signal.SIGKILL)  # production goes on being supervised
            await h.until(
                lambda: prod.rec.restarts == 1 and prod.rec.state is InstanceState.RUNNING,
                "production's instance restarted while staging keeps failing",
            )
            doc = h.ctl.status()
            staging = next(e for e in doc.environments if e.name == "staging")
            assert staging.health == "Degraded"
            assert any("RuntimeError: a bug in a hook" in c for c in staging.conditions)
            production = next(e for e in doc.environments if e.name == "production")
            assert not any("internal error" in c for c in production.conditions)

    asyncio.run(scenario())


def test_a_commit_refused_for_its_build_is_not_built_again_at_every_fetch(tmp_path: Path) -> None:
    # Only a ref that named nothing is tried again at each fetch (it may exist by now).
    log = tmp_path / "builds"
    failing = f"    build: [\"python3\", \"-c\", \"open('{log}', 'a').write('b\\\\n'); exit(1)\"]\n"

    async def scenario() -> None:
        async with harness(tmp_path, spec()) as h:
            await h.until(lambda: h.env().last_result is SyncResult.SUCCEEDED, "first sync")
            h.repo.commit("a build that fails", spec(extra=failing))
            h.ctl.refresh(Trigger.POLL)
            await h.until(lambda: h.env().error is not None, "the commit refused")
            for _ in range(3):
                before = h.ctl.fetch  # each successful fetch replaces it
                h.ctl.refresh(Trigger.POLL)
                await h.until(lambda: h.ctl.fetch is not before, "a fetch")  # noqa: B023
                await h.until(lambda: not h.ctl.busy, "what the fetch started")
            assert log.read_text().splitlines() == ["b"]
            assert [r.result for r in h.history()].count("Failed") == 1

    asyncio.run(scenario())
