"""Log rotation (copy-and-truncate) and tail, including rotation under a live appender."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ondeck.runtime.logs import rotate, tail

pytestmark = pytest.mark.timeout(60)

DEADLINE = 15.0

# Appends numbered lines through an O_APPEND fd (like an instance's stdout) until told to stop,
# then writes how many lines it wrote.
APPENDER = textwrap.dedent(
    """
    import os, sys
    log, stop, done = sys.argv[1:4]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    n = 0
    while not os.path.exists(stop):
        os.write(fd, b"line %08d %s\\n" % (n, b"x" * 40))
        n += 1
    with open(done + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(done + ".tmp", done)
    """
)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def numbers(text: str) -> list[int]:
    """Line numbers of the complete (newline-terminated) lines in `text`."""
    complete = text[: text.rfind("\n") + 1]
    return [int(line.split()[1]) for line in complete.splitlines()]


# -- rotate ----------------------------------------------------------------------------------


def test_rotate_does_nothing_under_the_limit_or_without_a_file(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    assert not rotate(log, 10, 3)
    log.write_text("short\n")
    assert not rotate(log, 10, 3)
    assert log.read_text() == "short\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web.log"]


def test_rotate_shifts_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    for generation in range(5):
        log.write_text(f"generation {generation}\n")
        assert rotate(log, 5, 3)
        assert log.read_bytes() == b""
    kept = {p.name: p.read_text() for p in tmp_path.iterdir() if p.name != "web.log"}
    assert kept == {
        "web.log.1": "generation 4\n",
        "web.log.2": "generation 3\n",
        "web.log.3": "generation 2\n",
    }


def test_rotate_with_keep_zero_only_truncates(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_text("too long\n")
    assert rotate(log, 1, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["web.log"]
    assert log.read_bytes() == b""


@pytest.fixture
def appender(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], int]]]:
    """A process appending numbered lines to tmp/web.log; calling stop() returns its count."""
    log, stop_file, done = tmp_path / "web.log", tmp_path / "stop", tmp_path / "done"
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(log), str(stop_file), str(done)])

    def stop() -> int:
        stop_file.touch()
        wait_until(done.exists, "the appender to finish")
        return int(done.read_text())

    try:
        yield log, stop
    finally:
        stop_file.touch()
        proc.kill()
        proc.wait()


def test_rotate_under_a_live_appender_keeps_later_lines(
    appender: tuple[Path, Callable[[], int]],
) -> None:
    log, stop = appender
    wait_until(lambda: log.exists() and log.stat().st_size > 64 * 1024, "the log to grow")
    assert rotate(log, 64 * 1024, 2)
    rotated_end = numbers((log.parent / "web.log.1").read_text())[-1]
    wait_until(lambda: log.stat().st_size > 8 * 1024, "lines after the rotation")
    total = stop()
    current = log.read_bytes()
    assert b"\0" not in current  # O_APPEND: no hole of zeros where the old data was
    after = numbers(current.decode())
    assert after == list(range(after[0], total))  # complete, in order, up to the last line
    assert after[0] > rotated_end
    before = numbers((log.parent / "web.log.1").read_text())
    assert before[0] == 0 and before == sorted(before)


# -- tail ------------------------------------------------------------------------------------


def test_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail(tmp_path / "nope.log") == ""


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(log, 0) == ""


def test_tail_of_a_short_file_without_final_newline(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_text("one\ntwo\nthree")
    assert tail(log, 20) == "one\ntwo\nthree"
    assert tail(log, 1) == "three"


def test_tail_reads_only_the_end_of_a_big_file(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    with log.open("w") as f:
        f.write("".join(f"{n:07d}\n" for n in range(1_000_000)))  # 8 MB
    assert tail(log, 2) == "0999998\n0999999"
    # Capped at 20 bytes: a cut first line is dropped, so fewer lines than asked.
    assert tail(log, 10, max_bytes=20) == "0999998\n0999999"


def test_tail_spanning_several_blocks(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    lines = [f"{n:03d} " + "y" * 995 for n in range(50)]  # 1000-byte lines
    log.write_text("\n".join(lines) + "\n")
    assert tail(log, 30).splitlines() == lines[-30:]
    assert tail(log, 30, max_bytes=10_500).splitlines() == lines[-10:]
