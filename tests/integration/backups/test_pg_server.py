"""The test setup's own PostgreSQL: started as an unprivileged user, reachable with a password."""

from __future__ import annotations

import psycopg

from backups.pgcluster import Cluster


def test_the_server_answers_over_tcp_with_its_password(pg: Cluster, pg_db: str) -> None:
    with psycopg.connect(pg.url(pg_db)) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("postgres", pg_db)
    assert pg.psql("SELECT usesuper FROM pg_user WHERE usename = current_user") == "t"


def test_a_wrong_password_is_refused(pg: Cluster) -> None:
    bad = pg.url().replace("s3cret-pg-pw", "nope")
    try:
        psycopg.connect(bad).close()
    except psycopg.OperationalError as err:
        assert "password authentication failed" in str(err)
    else:
        raise AssertionError("a wrong password connected")
