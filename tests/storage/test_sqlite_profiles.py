"""SQLite profile store specifics (SPEC §3.6-3.7): schema, WAL, deadlines, GC, batches, threads.

The behaviour shared with Bigtable is in tests/etl/test_profile_store_contract.py.
"""

import sqlite3
import threading
import time

import pytest

from taar.storage import ProfileTimeout, SQLiteProfileStore

pytestmark = pytest.mark.unit

SLOW_QUERY = (  # counts to 10^9 inside SQLite: minutes of work unless interrupted
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT max(x) FROM c"
)


@pytest.fixture
def store(tmp_path):
    store = SQLiteProfileStore(tmp_path / "sub" / "profiles.sqlite3")
    store.ensure_table()
    return store


def raw(store):
    return sqlite3.connect(store.path)


def test_schema_and_wal_mode(store):
    columns = [
        (name, type_, notnull, pk)
        for _, name, type_, notnull, _, pk in raw(store).execute("PRAGMA table_info(profiles)")
    ]
    assert columns == [("row_key", "TEXT", 0, 1), ("payload", "BLOB", 1, 0), ("ts", "INTEGER", 1, 0)]
    assert raw(store).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_rows_keep_their_timestamp(store):
    store.put_many([("k", b"\x00\x01")], 1_000)
    assert raw(store).execute("SELECT row_key, payload, ts FROM profiles").fetchall() == [
        ("k", b"\x00\x01", 1_000)
    ]


def test_progress_handler_aborts_a_slow_statement(store):
    started = time.monotonic()
    with pytest.raises(ProfileTimeout, match="100 ms deadline"):
        store._query_one(SLOW_QUERY, (), timeout_s=0.1)
    assert time.monotonic() - started < 2.0  # returned instead of running for minutes
    # the handler is removed afterwards: the same connection runs normal reads again
    store.put_many([("k", b"v")], 1)
    assert store.get("k", timeout_s=1) == b"v"


def test_other_sqlite_errors_are_not_timeouts(tmp_path):
    store = SQLiteProfileStore(tmp_path / "empty.sqlite3")  # no ensure_table: no profiles table
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store.get("k", timeout_s=1)
    assert store.ping(timeout_s=1) is False


def test_gc_deletes_rows_older_than_the_cutoff(store):
    store.put_many([("old", b"1")], 10)
    store.put_many([("edge", b"2")], 20)
    store.put_many([("new", b"3")], 30)
    assert store.gc(older_than_ts_ms=20) == 1  # only ts 10 < 20
    assert [store.get(k, timeout_s=1) for k in ("old", "edge", "new")] == [None, b"2", b"3"]


def test_each_batch_is_one_transaction(tmp_path):
    store = SQLiteProfileStore(tmp_path / "p.sqlite3", batch_size=2)
    store.ensure_table()
    raw(store).execute(
        "CREATE TRIGGER boom BEFORE INSERT ON profiles WHEN NEW.row_key = 'k4' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        store.put_many([("k1", b"1"), ("k2", b"2"), ("k3", b"3"), ("k4", b"4")], 1)
    # batch 1 (k1, k2) committed; batch 2 (k3, k4) rolled back as a whole
    assert [store.get(k, timeout_s=1) for k in ("k1", "k2", "k3", "k4")] == [b"1", b"2", None, None]
    store.put_many([("k5", b"5")], 1)  # the connection is usable again
    assert store.get("k5", timeout_s=1) == b"5"


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        SQLiteProfileStore("x.sqlite3", batch_size=0)


def test_threads_read_concurrently_with_a_writer(store):
    store.put_many([(f"k{i}", f"v{i}".encode()) for i in range(50)], 1)
    errors = []

    def read_all():
        try:
            for _ in range(5):
                for i in range(50):
                    assert store.get(f"k{i}", timeout_s=1) == f"v{i}".encode()
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    readers = [threading.Thread(target=read_all) for _ in range(4)]
    for thread in readers:
        thread.start()
    store.put_many([(f"other{i}", b"x") for i in range(2_000)], 2)  # WAL: readers never wait for this
    for thread in readers:
        thread.join()
    assert errors == []


def test_uri_round_trips_through_the_factory(tmp_path):
    from taar.storage import open_profile_store

    store = open_profile_store(f"sqlite:///{tmp_path}/p.sqlite3")
    assert store.path == tmp_path / "p.sqlite3"
    assert open_profile_store(store.uri).path == store.path
