"""Profile store contract (SPEC §3.1, §3.6, §3.7), run against SQLite and the Bigtable emulator."""

import multiprocessing
import pickle
import sqlite3
import time

import pytest

from taar.hashing import hash_client_id
from taar.profile import decode_payload, encode_payload
from taar.storage import ProfileTimeout, ProfileWriteError, open_profile_store
from taar.storage.bigtable_profiles import gc_rule
from tests.fixtures.emulators import BigtableEmulator

pytestmark = pytest.mark.integration

TS_1, TS_2 = 1_772_409_600_000, 1_772_496_000_000  # ends of 2026-03-01 and 2026-03-02 UTC, in ms
# A deadline and a bound: the bound only says "returned instead of hanging", it is not a latency target.
DEADLINE_S, RETURNED_WITHIN_S = 0.2, 2.0


def key(i: int) -> str:
    return hash_client_id(f"client-{i}")


def payload(i: int, version: int = 1) -> bytes:
    return encode_payload({"client_id": key(i), "geo_city": "Rome", "bookmark_count": version})


@pytest.fixture
def store(profile_store_uri):
    store = open_profile_store(profile_store_uri)
    store.ensure_table()
    return store


def test_round_trip_of_payload_bytes(store):
    assert store.put_many([(key(1), payload(1)), (key(2).encode(), payload(2))], TS_1) == 2
    assert store.get(key(1), timeout_s=5) == payload(1)
    assert store.get(key(2).encode(), timeout_s=5) == payload(2)  # bytes and str keys are the same row
    assert decode_payload(store.get(key(2), timeout_s=5))["client_id"] == key(2)


def test_missing_row_is_none(store):
    assert store.get(key(404), timeout_s=5) is None


def test_batched_put_of_a_few_thousand_rows(store):
    n = 3_000  # three Bigtable batches of 1 000, one SQLite batch
    assert store.put_many(((key(i), payload(i)) for i in range(n)), TS_1) == n
    for i in range(0, n, 97):
        assert store.get(key(i), timeout_s=5) == payload(i)
    assert store.get(key(n - 1), timeout_s=5) == payload(n - 1)


def test_newest_write_wins(store):
    store.put_many([(key(1), payload(1, version=1))], TS_1)
    store.put_many([(key(1), payload(1, version=2))], TS_2)
    assert store.get(key(1), timeout_s=5) == payload(1, version=2)
    # a backfill stamped earlier does not hide the newer profile
    store.put_many([(key(1), payload(1, version=0))], TS_1)
    assert store.get(key(1), timeout_s=5) == payload(1, version=2)
    # a rerun with the same timestamp replaces it
    store.put_many([(key(1), payload(1, version=3))], TS_2)
    assert store.get(key(1), timeout_s=5) == payload(1, version=3)


def test_delete_many(store):
    store.put_many([(key(i), payload(i)) for i in range(5)], TS_1)
    assert store.delete_many([key(1), key(3), key(404)]) == 3  # an absent key is not an error
    assert [store.get(key(i), timeout_s=5) is not None for i in range(5)] == [True, False, True, False, True]


def test_ensure_table_is_idempotent_and_keeps_data(store):
    store.put_many([(key(1), payload(1))], TS_1)
    store.ensure_table()
    store.ensure_table()
    assert store.get(key(1), timeout_s=5) == payload(1)


def test_ping_on_a_healthy_store(store):
    assert store.ping(timeout_s=5) is True


def test_pickled_store_reads_the_same(store):
    store.put_many([(key(1), payload(1))], TS_1)
    assert store.get(key(1), timeout_s=5) == payload(1)  # the original has made its client
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri
    assert clone.get(key(1), timeout_s=5) == store.get(key(1), timeout_s=5)


def _get_in_child(store, row_key, queue):
    queue.put(store.get(row_key, timeout_s=5))


def test_store_used_before_a_fork_works_in_the_child(store):
    # gunicorn --preload forks workers after the app (and maybe a client) was made
    store.put_many([(key(1), payload(1))], TS_1)
    assert store.get(key(1), timeout_s=5) == payload(1)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_get_in_child, args=(store, key(1), queue))
    child.start()
    try:
        assert queue.get(timeout=30) == payload(1)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0


# --------------------------------------------------------------------------- Bigtable only


@pytest.mark.filterwarnings("ignore:Connecting to Bigtable emulator")
def test_bigtable_table_has_the_profile_family_and_gc_rule(bigtable_profile_uri):
    from google.cloud import bigtable

    store = open_profile_store(bigtable_profile_uri)
    store.ensure_table()
    families = bigtable.Client(project=store.project, admin=True).instance(store.instance).table(store.table)
    rule = families.list_column_families()["profile"].gc_rule.to_pb()
    # union(max age 90 days = 90 * 86 400 s = 7 776 000 s, max 1 version)
    assert rule.union.rules[0].max_age.total_seconds() == 7_776_000
    assert rule.union.rules[1].max_num_versions == 1
    assert families.list_column_families()["profile"].gc_rule == gc_rule()


def test_bigtable_failed_rows_raise_profile_write_error(bigtable_profile_uri):
    store = open_profile_store(bigtable_profile_uri)  # table never created: every row fails
    with pytest.raises(ProfileWriteError, match="2 of 2") as excinfo:
        store.put_many([(key(1), payload(1)), (key(2), payload(2))], TS_1)
    assert (excinfo.value.failed, excinfo.value.total) == (2, 2)


# --------------------------------------------------------------------------- deadlines


@pytest.fixture(params=["sqlite", "bigtable"])
def stalled_store(request, tmp_path, monkeypatch):
    """A store holding key(1) whose backend then stops answering."""
    if request.param == "sqlite":
        path = tmp_path / "stalled.sqlite3"
        store = open_profile_store(f"sqlite:///{path}")
        store.ensure_table()
        store.put_many([(key(1), payload(1))], TS_1)
        store.close()
        # A connection in exclusive locking mode that has written keeps every other connection out.
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
        blocker.execute("BEGIN EXCLUSIVE")
        blocker.execute("DELETE FROM profiles")
        try:
            yield store
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return

    # A private emulator, frozen with SIGSTOP: connections stay open but nothing answers.
    with BigtableEmulator(request.getfixturevalue("cbtemulator_path")) as emulator:
        monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", emulator.host)
        store = open_profile_store("bigtable://test-project/test-instance/stalled")
        store.ensure_table()
        store.put_many([(key(1), payload(1))], TS_1)
        assert store.get(key(1), timeout_s=5) == payload(1)
        emulator.freeze()
        try:
            yield store
        finally:
            emulator.thaw()
            store.close()


def test_read_past_its_deadline_raises_profile_timeout(stalled_store):
    started = time.monotonic()
    with pytest.raises(ProfileTimeout, match="200 ms deadline"):
        stalled_store.get(key(1), timeout_s=DEADLINE_S)
    assert time.monotonic() - started < RETURNED_WITHIN_S


def test_ping_of_a_stalled_store_is_false(stalled_store):
    started = time.monotonic()
    assert stalled_store.ping(timeout_s=DEADLINE_S) is False
    assert time.monotonic() - started < RETURNED_WITHIN_S
