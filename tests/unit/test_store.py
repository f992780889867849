"""Store: records round-trip through a real SQLite file and survive reopening."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondeck.errors import UserError
from ondeck.state.lifecycle import InstanceState
from ondeck.store import MIGRATIONS, EnvRecord, InstanceRecord, Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "ondeck.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def instance(id: str = "web-1", **changes: object) -> InstanceRecord:
    base = InstanceRecord(
        id=id,
        app="shop",
        env="production",
        service="web",
        fingerprint="fp1",
        revision="a" * 40,
        release_dir="/state/releases/x",
        log_path="/state/logs/web-1.log",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def env_record(env: str = "production", **changes: object) -> EnvRecord:
    base = EnvRecord(
        env=env,
        desired_revision="b" * 40,
        live_revision="a" * 40,
        error=None,
        error_revision=None,
        updated_at=10.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- opening and migrations -------------------------------------------------


def test_new_file_is_created_migrated_and_in_wal_mode(db_path: Path) -> None:
    Store(db_path).close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"instances", "syncs", "envs", "events", "kv"} <= tables


def test_empty_existing_file_is_migrated(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.touch()
    with Store(db_path) as s:
        s.set_kv("k", "v")
        assert s.get_kv("k") == "v"


def test_reopening_keeps_data_and_does_not_migrate_again(db_path: Path) -> None:
    with Store(db_path) as s:
        s.put_instance(instance())
        s.put_env(env_record())
        sid = s.begin_sync("production", "c" * 40, "ann", "msg", "poll", 1.0)
        s.set_kv("token", "t")
    with Store(db_path) as s:
        assert s.get_instance("web-1") == instance()
        assert s.get_env("production") == env_record()
        assert s.open_sync("production") is not None
        assert s.history()[0].id == sid
        assert s.get_kv("token") == "t"


def test_database_from_a_newer_ondeck_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(UserError, match="newer than this ondeck"):
        Store(db_path)


def test_session_settings(store: Store) -> None:
    db = store._db  # the settings live on the connection; there is no other way to see them
    assert db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert db.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)


# -- instances --------------------------------------------------------------


def test_instance_round_trip_keeps_every_field(store: Store) -> None:
    rec = instance(
        port=40123,
        pid=4242,
        start_ticks=987654,
        state="running",
        restarts=2,
        failures=1,
        exit_code=-9,
        created_at=1.5,
        started_at=2.25,
        exited_at=3.125,
        healthy_since=2.5,
        extra={"weight": 10, "labels": {"canary": True}, "ids": [1, 2]},
    )
    store.put_instance(rec)
    assert store.get_instance("web-1") == rec


def test_missing_instance_is_none(store: Store) -> None:
    assert store.get_instance("nope") is None


def test_put_instance_upserts_by_id(store: Store) -> None:
    store.put_instance(instance())
    store.put_instance(instance(state="running", pid=7, env="staging"))
    assert store.instances() == [instance(state="running", pid=7, env="staging")]
    assert store.instances(env="production") == []


def test_instances_are_filtered_and_ordered_by_created_at_then_id(store: Store) -> None:
    recs = [
        instance("b", created_at=2.0),
        instance("a", created_at=2.0),
        instance("c", created_at=1.0, env="staging"),
        instance("d", created_at=0.5, app="blog"),
    ]
    for r in recs:
        store.put_instance(r)
    assert [r.id for r in store.instances()] == ["d", "c", "a", "b"]
    assert [r.id for r in store.instances(app="shop")] == ["c", "a", "b"]
    assert [r.id for r in store.instances(env="production")] == ["d", "a", "b"]
    assert [r.id for r in store.instances(app="shop", env="production")] == ["a", "b"]


def test_delete_instance(store: Store) -> None:
    store.put_instance(instance("a"))
    store.put_instance(instance("b"))
    store.delete_instance("a")
    store.delete_instance("never-existed")
    assert [r.id for r in store.instances()] == ["b"]


def test_fields_unknown_to_this_version_are_ignored(store: Store) -> None:
    store.put_instance(instance())
    # A newer ondeck may have written a field this one does not know.
    store._db.execute("UPDATE instances SET data = json_set(data, '$.future', 1)")
    assert store.get_instance("web-1") == instance()


def test_fields_missing_from_old_rows_take_their_defaults(store: Store) -> None:
    store.put_instance(instance(restarts=3))
    store._db.execute("UPDATE instances SET data = json_remove(data, '$.restarts', '$.extra')")
    assert store.get_instance("web-1") == instance()


def test_rows_written_before_extra_keys_became_fields_still_load(store: Store) -> None:
    """An instance row as ondeck wrote it when runtime, errors and policy lived in `extra`."""
    old = {
        "id": "web-1",
        "app": "shop",
        "env": "production",
        "service": "web",
        "fingerprint": "f" * 12,
        "revision": "a" * 40,
        "release_dir": "/r",
        "log_path": "/l",
        "state": "exited",
        "restarts": 1,
        "failures": 2,
        "created_at": 1.0,
        "extra": {
            "runtime": "container",
            "last_error": "killed by signal 9",
            "log_tail": "boom\n",
            "drift": "edited",
            "env": {"PORT": "abc"},
            "stop_signal": "INT",
            "stop_grace": 5.0,
            "reset_after": 60.0,
            "drain": 2.0,
            "health": {"tcp": True},
            "unknown": 1,
        },
    }
    store._db.execute(
        "INSERT INTO instances (id, app, env, service, created_at, data) VALUES (?,?,?,?,?,?)",
        ("web-1", "shop", "production", "web", 1.0, json.dumps(old)),
    )
    rec = store.get_instance("web-1")
    assert rec is not None
    assert rec.state is InstanceState.EXITED
    assert (rec.runtime, rec.last_error, rec.log_tail, rec.drift) == (
        "container",
        "killed by signal 9",
        "boom\n",
        "edited",
    )
    assert rec.env_signature == {"PORT": "abc"}
    assert (rec.stop_signal, rec.stop_grace, rec.reset_after, rec.drain) == ("INT", 5.0, 60.0, 2.0)
    assert rec.health == {"tcp": True}
    assert rec.extra == {"unknown": 1}  # what is not a field stays where it was


def test_env_rows_with_live_commit_in_extra_still_load(store: Store) -> None:
    commit = {"sha": "b" * 40, "author": "A", "message": "m", "committed_at": 1.0}
    old = {
        "env": "production",
        "desired_revision": "b" * 40,
        "live_revision": "b" * 40,
        "error": None,
        "error_revision": None,
        "updated_at": 2.0,
        "extra": {"live_commit": commit},
    }
    store._db.execute(
        "INSERT INTO envs (env, updated_at, data) VALUES (?, ?, ?)",
        ("production", 2.0, json.dumps(old)),
    )
    rec = store.get_env("production")
    assert rec is not None and rec.live_commit == commit and rec.extra == {}


# -- syncs ------------------------------------------------------------------


def test_sync_lifecycle(store: Store) -> None:
    sid = store.begin_sync("production", "c" * 40, "Ann <a@x>", "bump web", "webhook", 100.0)
    running = store.open_sync("production")
    assert running is not None
    assert (running.id, running.result, running.finished_at, running.actions) == (
        sid,
        None,
        None,
        [],
    )
    store.add_sync_actions(sid, ["start web-2"])
    store.add_sync_actions(sid, ["stop web-1", "route web"])
    store.add_sync_actions(sid, [])
    store.finish_sync(sid, "Failed", 104.5, error="health check timed out")
    assert store.open_sync("production") is None
    (done,) = store.history()
    assert done == dataclasses.replace(
        running,
        finished_at=104.5,
        result="Failed",
        actions=["start web-2", "stop web-1", "route web"],
        error="health check timed out",
    )
    assert (done.revision, done.author, done.message, done.trigger, done.started_at) == (
        "c" * 40,
        "Ann <a@x>",
        "bump web",
        "webhook",
        100.0,
    )


def test_open_sync_is_per_env_and_the_newest(store: Store) -> None:
    old = store.begin_sync("production", "r1", "a", "m", "poll", 1.0)
    new = store.begin_sync("production", "r2", "a", "m", "poll", 2.0)
    other = store.begin_sync("staging", "r3", "a", "m", "poll", 3.0)
    found = store.open_sync("production")
    assert found is not None and found.id == new
    store.finish_sync(new, "Succeeded", 4.0)
    found = store.open_sync("production")
    assert found is not None and found.id == old
    staging = store.open_sync("staging")
    assert staging is not None and staging.id == other
    assert store.open_sync("development") is None


def test_history_is_newest_first_filtered_and_limited(store: Store) -> None:
    ids = [
        store.begin_sync("production" if i % 2 else "staging", f"r{i}", "a", "m", "poll", float(i))
        for i in range(7)
    ]
    for sid in ids:
        store.finish_sync(sid, "Succeeded", 99.0)
    assert [s.id for s in store.history()] == ids[::-1]
    assert [s.id for s in store.history(limit=3)] == ids[::-1][:3]
    assert [s.revision for s in store.history(env="production")] == ["r5", "r3", "r1"]
    assert [s.revision for s in store.history(env="staging", limit=2)] == ["r6", "r4"]
    assert store.history(limit=0) == []
    assert store.history(env="nowhere") == []


def test_sync_ids_increase_across_reopen(db_path: Path) -> None:
    with Store(db_path) as s:
        first = s.begin_sync("e", "r", "a", "m", "poll", 1.0)
    with Store(db_path) as s:
        assert s.begin_sync("e", "r", "a", "m", "poll", 2.0) > first


def test_unknown_sync_id_is_a_key_error_and_writes_nothing(store: Store) -> None:
    with pytest.raises(KeyError):
        store.add_sync_actions(42, ["x"])
    with pytest.raises(KeyError):
        store.finish_sync(42, "Succeeded", 1.0)
    assert store.history() == []
    store.set_kv("still", "writable")  # the failed transaction was rolled back
    assert store.get_kv("still") == "writable"


# -- environments, events, key/value ----------------------------------------


def test_env_round_trip_and_upsert(store: Store) -> None:
    assert store.get_env("production") is None
    store.put_env(env_record())
    updated = env_record(
        live_revision="b" * 40,
        error="bad spec",
        error_revision="d" * 40,
        updated_at=20.0,
        extra={"paused": ["web"]},
    )
    store.put_env(updated)
    store.put_env(env_record("staging", desired_revision=None, live_revision=None))
    assert store.get_env("production") == updated
    assert store.get_env("staging") == env_record(
        "staging", desired_revision=None, live_revision=None
    )


def test_events_newest_first_filtered_and_limited(store: Store) -> None:
    store.events_add("production", "web", "crash", "exit 1", 1.0)
    store.events_add("staging", None, "sync", "synced r1", 2.0)
    store.events_add("production", "web", "restart", "web-1 restarted", 3.0)
    kinds = [e["kind"] for e in store.events()]
    assert kinds == ["restart", "sync", "crash"]
    (latest,) = store.events(env="production", limit=1)
    assert {k: v for k, v in latest.items() if k != "id"} == {
        "env": "production",
        "service": "web",
        "kind": "restart",
        "message": "web-1 restarted",
        "at": 3.0,
    }
    assert store.events(env="staging")[0]["service"] is None
    assert store.events(limit=0) == []


def test_kv_set_get_overwrite(store: Store) -> None:
    assert store.get_kv("missing") is None
    store.set_kv("k", "one")
    store.set_kv("k", "two")
    assert store.get_kv("k") == "two"


# -- concurrency ------------------------------------------------------------


def test_threads_and_event_loop_share_one_store(store: Store) -> None:
    async def write_many() -> None:
        async def one(i: int) -> None:
            sid = await asyncio.to_thread(store.begin_sync, "e", f"r{i}", "a", "m", "poll", i)
            await asyncio.to_thread(store.add_sync_actions, sid, [f"act{i}"])
            store.events_add("e", None, "sync", f"m{i}", float(i))  # on the loop itself
            await asyncio.to_thread(store.finish_sync, sid, "Succeeded", float(i))

        await asyncio.gather(*(one(i) for i in range(50)))

    asyncio.run(write_many())
    syncs = store.history(limit=1000)
    assert len(syncs) == 50
    assert all(s.result == "Succeeded" and s.actions == [f"act{s.revision[1:]}"] for s in syncs)
    assert len(store.events(limit=1000)) == 50


def test_two_stores_on_one_file_see_each_others_commits(db_path: Path) -> None:
    with Store(db_path) as writer, Store(db_path) as reader:
        writer.set_kv("k", "v")
        assert reader.get_kv("k") == "v"
