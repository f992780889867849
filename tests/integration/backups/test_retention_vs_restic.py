"""Property: our retention keeps exactly what restic's own `forget --dry-run` keeps.

Snapshots with the same dates are made in a real restic repository with
`restic backup --time` (one host per calendar, so calendars do not mix), then
`restic forget --dry-run --json --host H --keep-...` is compared with `decide`.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ondeck.backup.retention import Policy, Snapshot, decide

UTC = datetime.UTC
_hosts = itertools.count()


class Repo:
    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "payload").write_text("x\n")
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(base / "repo"),
            "RESTIC_PASSWORD": "retention-test",
            "RESTIC_CACHE_DIR": str(base / "cache"),
            "TZ": "UTC",
        }
        self.times: dict[str, list[datetime.datetime]] = {}
        self.run("init")

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["restic", "-q", *args], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"restic {args[0]} failed: {result.stderr}")
        return result.stdout

    def calendar(self, times: list[datetime.datetime]) -> str:
        host = f"h{next(_hosts)}"

        def one(t: datetime.datetime) -> str:
            stamp = t.strftime("%Y-%m-%d %H:%M:%S")
            return self.run("backup", "--host", host, "--time", stamp, str(self.base / "payload"))

        with ThreadPoolExecutor(3) as pool:  # backups take a shared lock: they may overlap
            list(pool.map(one, times))
        self.times[host] = times
        return host

    def kept(self, host: str, policy: Policy) -> set[datetime.datetime]:
        flags = [
            arg
            for name, count, _ in policy.counts()
            if count
            for arg in (f"--keep-{name}", str(count))
        ]
        # --no-lock: a dry run changes nothing, and restic's exclusive lock would race the backups
        text = self.run("--no-lock", "forget", "--dry-run", "--json", "--host", host, *flags)
        if not flags:  # restic: "no policy was specified, no snapshots will be removed"
            assert text.strip() == ""
            return set(self.times[host])
        out = json.loads(text)
        return {
            datetime.datetime.fromisoformat(s["time"].replace("Z", "+00:00"))
            for group in out
            for s in group["keep"]
        }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    yield Repo(tmp_path_factory.mktemp("restic"))


_GAPS = [60, 3600, 5 * 3600, 86400, 3 * 86400, 7 * 86400, 31 * 86400, 200 * 86400]


@st.composite
def calendars(draw: st.DrawFn, max_size: int) -> list[datetime.datetime]:
    start = draw(
        st.datetimes(datetime.datetime(2018, 1, 1), datetime.datetime(2023, 1, 1))
    ).replace(microsecond=0, tzinfo=UTC)
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(_GAPS), st.integers(1, 3600)), min_size=0, max_size=max_size
        )
    )
    times = [start]
    for scale, jitter in steps:
        times.append(times[-1] + datetime.timedelta(seconds=scale + jitter))
    return times


policies = st.builds(
    Policy,
    last=st.integers(0, 3),
    hourly=st.integers(0, 3),
    daily=st.integers(0, 4),
    weekly=st.integers(0, 3),
    monthly=st.integers(0, 3),
    yearly=st.integers(0, 2),
)


def _ours(times: list[datetime.datetime], policy: Policy) -> set[datetime.datetime]:
    snaps = [Snapshot(str(i), t) for i, t in enumerate(times)]
    return {s.time for s in decide(snaps, policy).keep}


# Every example costs real restic runs: no shrinking (a failure prints its calendar as drawn).
SLOW = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@settings(SLOW, max_examples=12)
@given(times=calendars(max_size=9), policy=policies)
def test_random_calendars_and_policies_match_restic(
    repo: Repo, times: list[datetime.datetime], policy: Policy
) -> None:
    host = repo.calendar(times)
    assert _ours(times, policy) == repo.kept(host, policy)


@pytest.fixture(scope="module")
def big_calendar(repo: Repo) -> tuple[str, list[datetime.datetime]]:
    """Three years of backups at uneven intervals, made once for many policies."""
    start = datetime.datetime(2021, 12, 30, 22, 0, tzinfo=UTC)
    times, t = [], start
    for gap in itertools.islice(itertools.cycle([3600, 7 * 3600, 86400, 40 * 3600, 9 * 86400]), 60):
        t += datetime.timedelta(seconds=gap)
        times.append(t)
    times.append(datetime.datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC))
    times.append(datetime.datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC))
    return repo.calendar(times), times


@settings(SLOW, max_examples=30)
@given(policy=policies)
def test_many_policies_over_one_long_calendar_match_restic(
    repo: Repo, big_calendar: tuple[str, list[datetime.datetime]], policy: Policy
) -> None:
    host, times = big_calendar
    assert _ours(times, policy) == repo.kept(host, policy)
