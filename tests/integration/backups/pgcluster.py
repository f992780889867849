"""A throwaway PostgreSQL cluster for the backup tests and bench/backup.py.

`initdb` in a temporary directory, `postgres` on a free loopback port (and a
unix socket in the data dir), password authentication over TCP so the code
under test really goes through a password file. As root (CI) the server runs
as the unprivileged `postgres` user through `runuser`: PostgreSQL refuses root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ondeck.backup.postgres import pg_bin

__all__ = ["PASSWORD", "Cluster", "pg_bin", "running_cluster"]

PASSWORD = "s3cret-pg-pw"
SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One running server; `url(db)` is what an app would hold in DATABASE_URL."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(base, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def start(self, deadline: float = 60.0) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            shutil.chown(pwfile, "postgres")
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        log = (self.base / "server.log").open("ab")
        self._proc = subprocess.Popen(
            [
                *self._as,
                pg_bin("postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.data}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            ready = subprocess.run(
                [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not ready after {deadline}s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.base / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket (trust): test setup only."""
        result = self._run(
            pg_bin("psql"),
            "-h",
            str(self.data),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            db,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )
        return result.stdout.strip()

    def pgbench(self, db: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            pg_bin("pgbench"),
            "-h",
            str(self.data),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            *args,
            db,
        )

    def pgbench_background(self, db: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *self._as,
                pg_bin("pgbench"),
                "-h",
                str(self.data),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                *args,
                db,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    @staticmethod
    def stop_background(proc: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
        """Stop a `pgbench_background` (its whole session: runuser does not forward signals)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=deadline)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, check=False, cwd="/"
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def stop(self, deadline: float = 30.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        # The whole session (runuser does not forward signals): SIGINT is a fast shutdown.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGINT)
        try:
            self._proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=deadline)


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="ondeck-pg-"))
    cluster = Cluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
