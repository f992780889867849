"""Fixtures of the backup tests: one real PostgreSQL server for the session."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from backups.pgcluster import Cluster, running_cluster

_names = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_db(pg: Cluster) -> Iterator[str]:
    """A fresh, empty database on the session's server; its name."""
    name = f"app{next(_names)}"
    pg.psql(f"CREATE DATABASE {name}")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
