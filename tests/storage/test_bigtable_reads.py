"""The Bigtable store's own ReadRows reader (SPEC §3.7): chunk merging, the request it sends,
retries inside one deadline, and reads against the real emulator."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from concurrent import futures

import grpc
import pytest
from google.api_core.exceptions import InternalServerError, NotFound
from google.cloud.bigtable_v2.types import ReadRowsRequest, ReadRowsResponse

from taar.storage import ProfileTimeout, open_profile_store
from taar.storage.bigtable_profiles import (
    BigtableProfileStore,
    InvalidReadRowsStream,
    merge_rows,
    routing_metadata,
    row_request,
)
from tests.fixtures.emulators import BigtableEmulator, free_port

Response = ReadRowsResponse.pb()
KEY = b"a" * 64
# A bound, not a latency target: "returned instead of hanging".
RETURNED_WITHIN_S = 2.0


def one_row(responses, row_key):
    """The payload of ``row_key`` in the stream of a request for that one row (None when absent)."""
    return dict(merge_rows(responses, (row_key,))).get(row_key)


def chunk(value=b"", *, key=b"", family=None, qualifier=None, ts=0, size=0, commit=False, reset=False):
    """One CellChunk; ``family``/``qualifier`` None leave the wrapper field unset."""
    c = Response.CellChunk(row_key=key, timestamp_micros=ts, value=value, value_size=size)
    if family is not None:
        c.family_name.value = family
    if qualifier is not None:
        c.qualifier.value = qualifier
    if commit:
        c.commit_row = True
    if reset:
        c.reset_row = True
    return c


def stream(*responses):
    """ReadRowsResponse messages, each from a list of chunks."""
    return [Response(chunks=chunks) for chunks in responses]


def cell(value, **kw):
    """The usual one-chunk cell: the first chunk of the row, family profile, qualifier payload."""
    return chunk(value, key=KEY, family="profile", qualifier=b"payload", ts=1_000, **kw)


# --------------------------------------------------------------------------- chunk merging (unit)


@pytest.mark.unit
def test_one_chunk_row():
    assert one_row(stream([cell(b"xyz", commit=True)]), KEY) == b"xyz"


@pytest.mark.unit
def test_empty_stream_is_a_missing_row():
    assert one_row([], KEY) is None
    assert one_row(stream([]), KEY) is None  # a response with no chunks (e.g. only stats)


@pytest.mark.unit
def test_value_split_over_chunks_and_responses():
    # "ab" + "cd" + "e": value_size is the whole length (5) on all but the last part
    responses = stream(
        [cell(b"ab", size=5), chunk(b"cd", size=5)],
        [chunk(b"e", commit=True)],
    )
    assert one_row(responses, KEY) == b"abcde"


@pytest.mark.unit
def test_reset_row_drops_what_came_before():
    responses = stream(
        [cell(b"stale", size=10), chunk(b"-part")],  # half a row, then the server restarts it
        [chunk(reset=True)],
        [cell(b"fresh", commit=True)],
    )
    assert one_row(responses, KEY) == b"fresh"


@pytest.mark.unit
def test_reset_then_a_row_with_a_split_value():
    responses = stream([cell(b"old", commit=False)], [chunk(reset=True), cell(b"n", size=2), chunk(b"w", commit=True)])
    assert one_row(responses, KEY) == b"nw"


@pytest.mark.unit
def test_other_cells_of_the_row_are_skipped():
    # another family first, then a qualifier-only chunk that keeps family "other", then profile:payload
    responses = stream([
        chunk(b"1", key=KEY, family="other", qualifier=b"payload"),
        chunk(b"2", qualifier=b"x"),
        chunk(b"3", family="profile", qualifier=b"payload", commit=True),
    ])
    assert one_row(responses, KEY) == b"3"


@pytest.mark.unit
def test_committed_row_without_the_payload_cell_is_none():
    assert one_row(stream([chunk(b"v", key=KEY, family="profile", qualifier=b"other", commit=True)]), KEY) is None


@pytest.mark.unit
def test_empty_payload_is_found_not_missing():
    assert one_row(stream([cell(b"", commit=True)]), KEY) == b""


@pytest.mark.unit
@pytest.mark.parametrize(
    "responses, message",
    [
        (stream([chunk(b"v", key=b"b" * 64, family="profile", qualifier=b"payload", commit=True)]), "other than"),
        (stream([cell(b"ab", size=3), chunk(b"c", key=b"b" * 64, commit=True)]), "other than"),
        (stream([cell(b"v")]), "uncommitted"),  # no commit_row: a truncated row is not "not found"
        (stream([cell(b"ab", size=3)]), "uncommitted"),  # stream ends inside a split value
        (stream([cell(b"v", commit=True)], [cell(b"w", commit=True)]), "out of key order or repeated"),
        (stream([cell(b"ab", size=3, commit=True)]), "middle of a split value"),
        (stream([cell(b"ab", size=3), chunk(b"c", qualifier=b"other", commit=True)]), "changed in the middle"),
        (stream([chunk(b"v", family="profile", qualifier=b"payload", commit=True)]), "no row key"),
        (stream([chunk(b"v", key=KEY, family="profile", commit=True)]), "without a qualifier"),
        (stream([chunk(b"v", key=KEY, commit=True)]), "without a family"),
        (stream([chunk(reset=True)]), "outside a row"),
        (stream([cell(b"v"), chunk(b"junk", reset=True)]), "carries data"),
    ],
    ids=["wrong-key", "wrong-key-mid-cell", "no-commit", "ends-mid-value", "second-row", "commit-mid-value",
         "cell-changes-mid-value", "no-key", "family-no-qualifier", "no-family", "reset-outside-row",
         "reset-with-data"],
)
def test_protocol_violations_raise(responses, message):
    with pytest.raises(InvalidReadRowsStream, match=message):
        one_row(responses, KEY)


# --------------------------------------------------------------------------- the request (unit)


@pytest.mark.unit
def test_request_asks_for_the_newest_payload_cell_of_one_row():
    from google.cloud.bigtable.data import row_filters

    request = row_request("projects/p/instances/i/tables/t")
    assert request.table_name == "projects/p/instances/i/tables/t"
    assert request.rows_limit == 0
    assert list(request.rows.row_keys) == []  # the reader adds the keys and their count per call
    # the same filter the official data client builds from its row_filters helpers
    official = row_filters.RowFilterChain([
        row_filters.FamilyNameRegexFilter("profile"),
        row_filters.ColumnQualifierRegexFilter(b"payload"),
        row_filters.CellsColumnLimitFilter(1),
    ])._to_pb()
    assert request.filter == type(official).pb(official)


@pytest.mark.unit
def test_routing_header_is_the_official_clients():
    from google.api_core.gapic_v1 import routing_header

    name = "projects/my-proj/instances/prod-1/tables/taar profiles"  # a space is encoded, "/" is not
    expected = ("x-goog-request-params", "table_name=projects/my-proj/instances/prod-1/tables/taar+profiles"
                                         "&app_profile_id=")
    assert routing_metadata(name) == (expected,)
    # the gapic client's own encoder agrees
    assert routing_header.to_grpc_metadata({"table_name": name, "app_profile_id": ""}) == expected


# --------------------------------------------------------------------------- a scripted ReadRows server

class ScriptedBigtable:
    """A real gRPC server on loopback that answers ReadRows from a script (one entry per call).

    An entry is a list of ReadRowsResponse messages to stream, a
    ``(grpc.StatusCode, details)`` pair to fail the call with, or a function of
    the request returning one of those (run in the server's thread, so it may
    wait). It records each
    call's request and metadata. For what the emulator never does: split values,
    transient errors.
    """

    def __init__(self, script):
        self.script = list(script)
        self.calls = []
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_stream_rpc_method_handler(
            self._read_rows,
            request_deserializer=ReadRowsRequest.pb().FromString,
            response_serializer=Response.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("google.bigtable.v2.Bigtable", {"ReadRows": handler})]
        )
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def _read_rows(self, request, context):
        self.calls.append((request, dict(context.invocation_metadata())))
        step = self.script.pop(0) if self.script else []
        if callable(step):
            step = step(request)
        if isinstance(step, tuple):
            context.abort(*step)
        yield from step

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(grace=None)


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(*steps)`` -> (server, store reading from it)."""
    servers = []

    def make(*script):
        server = ScriptedBigtable(script).__enter__()
        servers.append(server)
        monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{server.port}")
        return server, BigtableProfileStore("proj", "inst", "profiles")

    yield make
    for server in servers:
        server.__exit__()


@pytest.mark.integration
def test_split_value_over_the_wire_with_routing_header(scripted):
    server, store = scripted(stream([cell(b"ab", size=4)], [chunk(b"cd", commit=True)]))
    assert store.get(KEY.decode(), timeout_s=5) == b"abcd"
    [(request, metadata)] = server.calls
    assert list(request.rows.row_keys) == [KEY] and request.rows_limit == 1
    assert request.table_name == "projects/proj/instances/inst/tables/profiles"
    assert metadata["x-goog-request-params"] == "table_name=projects/proj/instances/inst/tables/profiles&app_profile_id="
    store.close()


@pytest.mark.integration
@pytest.mark.parametrize("status", [
    (grpc.StatusCode.UNAVAILABLE, "try again"),
    (grpc.StatusCode.ABORTED, "conflict"),
    (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
])
def test_transient_errors_are_retried_inside_the_deadline(scripted, status):
    server, store = scripted(status, status, stream([cell(b"v", commit=True)]))
    reported = []
    store.on_call = lambda: reported.append(len(server.calls))
    assert store.get(KEY, timeout_s=5) == b"v"
    assert len(server.calls) == 3
    assert reported == [0, 1, 2]  # every attempt reported, each before it reached the server
    store.close()


@pytest.mark.integration
def test_other_errors_are_raised_without_retry(scripted):
    server, store = scripted((grpc.StatusCode.INTERNAL, "boom"), stream([cell(b"v", commit=True)]))
    with pytest.raises(InternalServerError, match="boom"):
        store.get(KEY, timeout_s=5)
    assert len(server.calls) == 1
    store.close()


@pytest.mark.integration
def test_a_broken_stream_is_raised_not_retried(scripted):
    server, store = scripted(stream([cell(b"v")]), stream([cell(b"v", commit=True)]))
    with pytest.raises(InvalidReadRowsStream, match="uncommitted"):
        store.get(KEY, timeout_s=5)
    assert len(server.calls) == 1
    store.close()


@pytest.mark.integration
def test_retries_stop_at_the_deadline(monkeypatch):
    # nothing listens on the port: every attempt fails fast with UNAVAILABLE
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    store = BigtableProfileStore("proj", "inst", "profiles")
    started = time.monotonic()
    with pytest.raises(ProfileTimeout, match="300 ms deadline.*UNAVAILABLE"):
        store.get(KEY, timeout_s=0.3)
    assert time.monotonic() - started < 0.3 + RETURNED_WITHIN_S
    assert store.warm(0.2) is False
    store.close()


# --------------------------------------------------------------------------- against the emulator

@pytest.fixture
def emulator_store(bigtable_profile_uri):
    store = open_profile_store(bigtable_profile_uri)
    store.ensure_table()
    yield store
    store.close()


@pytest.mark.integration
def test_reads_never_build_the_data_client(bigtable_profile_uri, emulator_store):
    emulator_store.put_many([(KEY, b"payload-bytes")], ts_ms=1_700_000_000_000)
    reader_only = open_profile_store(bigtable_profile_uri)
    assert reader_only.warm(5) is True
    assert reader_only.get(KEY, 5) == b"payload-bytes"
    assert reader_only.get(b"b" * 64, 5) is None
    assert reader_only.ping(5) is True
    assert reader_only._client is None  # the service process pays for one channel only
    reader_only.close()


@pytest.mark.integration
def test_value_larger_than_grpcs_default_message_limit(emulator_store):
    # 5 MiB > gRPC's 4 MiB default receive limit. cbtemulator sends it as one chunk (it never
    # splits a value, checked up to 20 MiB), so split values are covered by the scripted server.
    big = os.urandom(5 << 20)
    emulator_store.put_many([(KEY, big)], ts_ms=1_700_000_000_000)
    assert emulator_store.get(KEY, timeout_s=10) == big


@pytest.mark.integration
def test_missing_table_is_an_error_not_a_missing_row(bigtable_emulator):
    store = BigtableProfileStore("test-project", "test-instance", f"absent{uuid.uuid4().hex[:8]}")
    with pytest.raises(NotFound):
        store.get(KEY, timeout_s=5)
    assert store.ping(5) is False
    assert store.warm(5) is False
    store.close()


def _read_in_child(store, queue):
    queue.put((store.get(KEY, timeout_s=5), store._pid == os.getpid()))


@pytest.mark.integration
def test_child_of_a_fork_reads_on_its_own_channel(emulator_store):
    emulator_store.put_many([(KEY, b"v1")], ts_ms=1_700_000_000_000)
    assert emulator_store.get(KEY, timeout_s=5) == b"v1"  # the parent's channel exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(emulator_store, queue))
    child.start()
    try:
        assert queue.get(timeout=30) == (b"v1", True)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert emulator_store.get(KEY, timeout_s=5) == b"v1"  # and the parent's still works


def _warm_store_with_key(emulator, monkeypatch, table: str) -> BigtableProfileStore:
    """A store on ``emulator`` whose ``table`` holds KEY, connected (warmed) before the test freezes it."""
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", emulator.host)
    store = BigtableProfileStore("test-project", "test-instance", table)
    store.ensure_table()
    store.put_many([(KEY, b"v")], ts_ms=1_700_000_000_000)
    assert store.warm(5) is True
    return store


@pytest.mark.integration
def test_frozen_emulator_times_out_within_the_deadline(cbtemulator_path, monkeypatch):
    with BigtableEmulator(cbtemulator_path) as emulator:
        store = _warm_store_with_key(emulator, monkeypatch, "frozen")
        emulator.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(ProfileTimeout, match="250 ms deadline"):
                store.get(KEY, 0.25)
            assert store.warm(0.25) is False
            assert store.ping(0.25) is False
            assert time.monotonic() - started < 3 * 0.25 + RETURNED_WITHIN_S
        finally:
            emulator.thaw()
        assert store.get(KEY, 5) == b"v"  # the same channel works again once the emulator answers
        store.close()


@pytest.mark.integration
def test_concurrent_first_reads_share_one_reader(emulator_store):
    emulator_store.put_many([(KEY, b"v")], ts_ms=1_700_000_000_000)
    results, readers = [], set()

    def read():
        results.append(emulator_store.get(KEY, 5))
        readers.add(id(emulator_store._reader))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b"v"] * 8 and len(readers) == 1


def wait_until(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s} s")
        time.sleep(0.01)


@pytest.mark.integration
def test_an_old_channel_is_replaced_in_the_background_and_retired(emulator_store, monkeypatch):
    from taar.storage import bigtable_profiles

    emulator_store.put_many([(KEY, b"v")], ts_ms=1_700_000_000_000)
    assert emulator_store.warm(5)
    old = emulator_store._reader
    monkeypatch.setattr(bigtable_profiles, "RETIRE_AFTER_S", 0.05)
    monkeypatch.setattr(bigtable_profiles, "CHANNEL_REFRESH_S", 0.0)
    assert emulator_store.get(KEY, 5) == b"v"  # served by the old channel; starts the replacement
    monkeypatch.setattr(bigtable_profiles, "CHANNEL_REFRESH_S", 3600.0)
    wait_until(lambda: emulator_store._reader is not old)
    assert emulator_store.get(KEY, 5) == b"v"
    # the old channel is closed once reads that might still use it are done
    wait_until(lambda: is_closed(old))


def is_closed(reader) -> bool:
    try:
        reader.attempt(KEY, 5)
    except ValueError as exc:  # what grpc raises for a call on a closed channel
        return "closed channel" in str(exc)
    return False


@pytest.mark.integration
def test_a_failed_refresh_keeps_the_working_channel(emulator_store, monkeypatch):
    from taar.storage import bigtable_profiles

    emulator_store.put_many([(KEY, b"v")], ts_ms=1_700_000_000_000)
    assert emulator_store.warm(5)
    old = emulator_store._reader
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # a replacement cannot connect
    monkeypatch.setattr(bigtable_profiles, "REFRESH_CONNECT_S", 0.2)
    monkeypatch.setattr(bigtable_profiles, "CHANNEL_REFRESH_S", 0.0)
    assert emulator_store.get(KEY, 5) == b"v"
    monkeypatch.setattr(bigtable_profiles, "CHANNEL_REFRESH_S", 3600.0)
    wait_until(lambda: not old.replacing)
    assert emulator_store._reader is old
    assert emulator_store.get(KEY, 5) == b"v"


@pytest.mark.unit
def test_production_channel_is_built_from_application_default_credentials(tmp_path, monkeypatch):
    # No network here: the channel connects lazily, so building it only checks that the
    # credentials are found and the channel is made with them (an authorized-user file needs no key).
    from taar.storage.bigtable_profiles import open_channel

    credentials = tmp_path / "adc.json"
    credentials.write_text('{"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}')
    monkeypatch.delenv("BIGTABLE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    channel = open_channel()
    try:
        assert isinstance(channel, grpc.Channel)
    finally:
        channel.close()


# --------------------------------------------------------------------------- several rows in one stream (unit)

K1, K2, K3 = b"1" * 64, b"2" * 64, b"3" * 64


def row(key, value, **kw):
    """The one-chunk committed row ``key`` with ``profile:payload`` = ``value``."""
    return chunk(value, key=key, family="profile", qualifier=b"payload", ts=1_000, commit=True, **kw)


@pytest.mark.unit
def test_several_rows_in_key_order_with_split_values_and_a_reset():
    responses = stream(
        [row(K1, b"one")],
        # K2: half a row, reset, then the row again with its value split "t" + "wo" (value_size 3)
        [chunk(b"x", key=K2, family="profile", qualifier=b"payload", size=5), chunk(reset=True)],
        [chunk(b"t", key=K2, family="profile", qualifier=b"payload", size=3), chunk(b"wo", commit=True),
         # K3: another cell first, then the payload cell, in two responses
         chunk(b"o", key=K3, family="other", qualifier=b"payload")],
        [chunk(b"three", family="profile", qualifier=b"payload", commit=True)],
    )
    assert list(merge_rows(responses, {K1, K2, K3})) == [(K1, b"one"), (K2, b"two"), (K3, b"three")]


@pytest.mark.unit
def test_absent_rows_are_not_yielded_and_a_row_without_the_cell_is_none():
    # K1 absent, K2 committed without profile:payload, K3 found
    responses = stream([chunk(b"v", key=K2, family="profile", qualifier=b"other", commit=True), row(K3, b"3")])
    assert list(merge_rows(responses, [K1, K2, K3])) == [(K2, None), (K3, b"3")]


@pytest.mark.unit
def test_rows_before_a_broken_part_of_the_stream_are_yielded():
    rows = merge_rows(stream([row(K1, b"1")], [chunk(b"v", key=K2, family="profile", qualifier=b"payload")]),
                      [K1, K2])
    assert next(rows) == (K1, b"1")
    with pytest.raises(InvalidReadRowsStream, match="uncommitted"):
        next(rows)


@pytest.mark.unit
@pytest.mark.parametrize(
    "responses, message",
    [
        (stream([row(K2, b"2"), row(K1, b"1")]), "out of key order"),
        (stream([row(K1, b"1"), row(K1, b"1")]), "out of key order or repeated"),
        (stream([row(K1, b"1"), row(b"4" * 64, b"4")]), "other than the ones requested"),
        (stream([chunk(b"a", key=K1, family="profile", qualifier=b"x"),
                 chunk(b"b", key=K2, family="profile", qualifier=b"payload", commit=True)]), "changed inside a row"),
        (stream([row(K1, b"1"), chunk(b"v", family="profile", qualifier=b"payload", commit=True)]), "no row key"),
        (stream([row(K1, b"1"), chunk(b"v", key=K2, commit=True)]), "without a family"),  # family does not carry over
        (stream([row(K1, b"1"), chunk(reset=True)]), "outside a row"),
    ],
    ids=["descending", "repeated", "not-requested", "key-changes-in-row", "no-key", "family-of-previous-row",
         "reset-after-commit"],
)
def test_multi_row_protocol_violations_raise(responses, message):
    with pytest.raises(InvalidReadRowsStream, match=message):
        list(merge_rows(responses, [K1, K2, K3]))


# --------------------------------------------------------------------------- coalesced reads


def read_in_thread(store, key, timeout_s, results):
    """Start a thread doing ``store.get(key, timeout_s)``; its outcome lands in ``results[name]``."""
    def run():
        started = time.monotonic()
        try:
            outcome = store.get(key, timeout_s)
        except Exception as exc:
            outcome = exc
        results[thread.name] = (outcome, time.monotonic() - started)

    thread = threading.Thread(target=run, name=f"read-{len(results)}-{uuid.uuid4().hex[:6]}")
    thread.start()
    return thread


def blocked_until(gate, step):
    """A script step answered only once ``gate`` is set."""
    def answer(request):
        assert gate.wait(10)
        return step
    return answer


def occupy_every_call(store, server, gate, results):
    """Reads whose calls hang on ``gate``: every call slot of the store is taken once this returns."""
    from taar.storage.bigtable_profiles import MAX_IN_FLIGHT

    assert store.warm(5)  # the channel exists, one scripted call used
    threads = []
    for n in range(MAX_IN_FLIGHT):
        threads.append(read_in_thread(store, b"0" * 63 + str(n).encode(), 10, results))
        wait_until(lambda n=n: len(server.calls) == n + 2)  # warm + this one
    assert store._reader.batches.in_flight == MAX_IN_FLIGHT
    return threads


@pytest.mark.integration
def test_concurrent_reads_share_one_call_and_duplicates_share_one_answer(scripted):
    from taar.storage.bigtable_profiles import MAX_IN_FLIGHT

    gate = threading.Event()
    occupied = [blocked_until(gate, []) for _ in range(MAX_IN_FLIGHT)]
    # the batch after them: K1 and K3 found, K2 and the 4th key missing
    server, store = scripted([], *occupied, stream([row(K1, b"one"), row(K3, b"three")]))
    results = {}
    threads = occupy_every_call(store, server, gate, results)
    batches = store._reader.batches
    wanted = [K1, K2, K1, K3, b"4" * 64]  # K1 twice
    readers = []
    for n, key in enumerate(wanted):
        readers.append(read_in_thread(store, key, 10, results))
        wait_until(lambda n=n: sum(slot.waiting for slot in batches.queue.values()) == n + 1)
    assert len(batches.queue) == 4  # distinct keys
    calls_before = batches.calls
    gate.set()
    for thread in threads + readers:
        thread.join(10)
    answers = [results[thread.name][0] for thread in readers]
    assert answers == [b"one", None, b"one", b"three", None]
    assert batches.calls == calls_before + 1  # five reads, one call
    request = server.calls[-1][0]
    assert sorted(request.rows.row_keys) == [K1, K2, K3, b"4" * 64] and request.rows_limit == 4
    store.close()


@pytest.mark.integration
def test_reads_behind_a_call_that_is_not_slow_wait_and_share_the_next_call(scripted, monkeypatch):
    from taar.storage import bigtable_profiles

    monkeypatch.setattr(bigtable_profiles, "SLOW_CALL_S", 60.0)  # the first call never turns slow here
    gate = threading.Event()
    server, store = scripted([], blocked_until(gate, stream([row(K1, b"one")])),
                             stream([row(K2, b"two"), row(K3, b"three")]))
    assert store.warm(5)
    batches = store._reader.batches
    results = {}
    first = read_in_thread(store, K1, 10, results)
    wait_until(lambda: len(server.calls) == 2)  # warm + K1's call, held at the gate
    behind = [read_in_thread(store, key, 10, results) for key in (K2, K3)]
    wait_until(lambda: len(batches.queue) == 2)
    time.sleep(0.1)  # room for a wrong second call to start
    assert len(server.calls) == 2 and batches.in_flight == 1
    gate.set()
    for thread in [first, *behind]:
        thread.join(10)
    assert [results[thread.name][0] for thread in [first, *behind]] == [b"one", b"two", b"three"]
    assert len(server.calls) == 3  # K2 and K3 rode one call, sent once K1's ended
    assert list(server.calls[-1][0].rows.row_keys) == [K2, K3]
    assert not batches.slots and not batches.queue and batches.in_flight == 0
    store.close()


@pytest.mark.integration
def test_reads_behind_a_slow_call_go_in_a_second_call_once_it_is_slow(scripted, monkeypatch):
    from taar.storage import bigtable_profiles

    monkeypatch.setattr(bigtable_profiles, "SLOW_CALL_S", 0.2)
    gate, arrived = threading.Event(), []

    def second_call(request):
        arrived.append(time.monotonic())
        return stream([row(K2, b"two")])

    server, store = scripted([], blocked_until(gate, stream([row(K1, b"one")])), second_call)
    assert store.warm(5)
    batches = store._reader.batches
    results = {}
    stalled = read_in_thread(store, K1, 10, results)
    wait_until(lambda: len(server.calls) == 2)
    [first_started] = batches.started
    behind = read_in_thread(store, K2, 10, results)
    behind.join(10)
    assert results[behind.name][0] == b"two" and stalled.is_alive()  # answered while the slow call still hangs
    assert arrived[0] >= first_started + 0.2  # sent only once the first call had been out for SLOW_CALL_S
    gate.set()
    stalled.join(10)
    assert results[stalled.name][0] == b"one"
    assert [list(request.rows.row_keys) for request, _ in server.calls[1:]] == [[K1], [K2]]
    assert batches.in_flight == 0
    store.close()


@pytest.mark.integration
def test_a_read_that_waited_behind_two_calls_goes_once_the_one_left_turns_slow(scripted, monkeypatch):
    # Both call slots taken, a third read waits with no timer; when one call ends, the read must
    # learn when the call still in flight turns slow (promote wakes it), not wait out its deadline.
    from taar.storage import bigtable_profiles

    monkeypatch.setattr(bigtable_profiles, "SLOW_CALL_S", 0.2)
    gate_a, gate_b = threading.Event(), threading.Event()
    server, store = scripted([], blocked_until(gate_a, stream([row(K1, b"one")])),
                             blocked_until(gate_b, stream([row(K2, b"two")])), stream([row(K3, b"three")]))
    assert store.warm(5)
    batches = store._reader.batches
    results = {}
    first = read_in_thread(store, K1, 10, results)
    wait_until(lambda: len(server.calls) == 2)
    second = read_in_thread(store, K2, 10, results)  # sent once the first call is 0.2 s old
    wait_until(lambda: len(server.calls) == 3)
    third = read_in_thread(store, K3, 10, results)
    wait_until(lambda: K3 in batches.queue)
    gate_a.set()  # the first call ends; the second, younger, still hangs
    first.join(10)
    third.join(5)
    assert results[third.name][0] == b"three" and second.is_alive()
    assert results[third.name][1] < 5  # not its 10 s deadline
    gate_b.set()
    second.join(10)
    assert results[second.name][0] == b"two" and batches.in_flight == 0
    store.close()


@pytest.mark.integration
def test_a_retried_batch_carries_only_the_reads_still_waiting(scripted):
    from taar.storage.bigtable_profiles import MAX_IN_FLIGHT

    gate = threading.Event()
    occupied = [blocked_until(gate, []) for _ in range(MAX_IN_FLIGHT)]
    results, state = {}, {}

    def fail_once_k2_gave_up(request):
        # the batch {K1, K2} fails with a transient error only after K2's reader left at its deadline
        wait_until(lambda: state["k2"].waiting == 0)
        return (grpc.StatusCode.UNAVAILABLE, "try again")

    server, store = scripted([], *occupied, fail_once_k2_gave_up, stream([row(K1, b"one")]))
    threads = occupy_every_call(store, server, gate, results)
    batches = store._reader.batches
    leader = read_in_thread(store, K1, 10, results)  # oldest in the queue: leads the batch
    wait_until(lambda: K1 in batches.queue)
    short = read_in_thread(store, K2, 0.3, results)
    wait_until(lambda: K2 in batches.queue)
    state["k2"] = batches.queue[K2]
    gate.set()
    for thread in [*threads, leader, short]:
        thread.join(10)
    assert results[leader.name][0] == b"one"
    outcome, elapsed = results[short.name]
    assert isinstance(outcome, ProfileTimeout) and "300 ms deadline" in str(outcome)
    assert elapsed < 0.3 + RETURNED_WITHIN_S
    batch, retry = server.calls[-2][0], server.calls[-1][0]
    assert sorted(batch.rows.row_keys) == [K1, K2]
    assert list(retry.rows.row_keys) == [K1] and retry.rows_limit == 1
    assert not batches.slots and not batches.queue and batches.in_flight == 0  # nothing left behind
    store.close()


@pytest.mark.integration
def test_many_threads_get_exactly_their_own_payloads_from_the_emulator(emulator_store):
    import random

    found = {f"{i:064x}".encode(): f"payload-{i}".encode() for i in range(40)}
    missing = [f"{i:064x}".encode() for i in range(1000, 1010)]
    emulator_store.put_many(found.items(), ts_ms=1_700_000_000_000)
    keys = [*found, *missing]
    one_at_a_time = {key: emulator_store.get(key, 5) for key in keys}
    assert one_at_a_time == {**found, **dict.fromkeys(missing)}  # written payloads; None for the rest
    batches = emulator_store._reader.batches
    reads0, calls0 = batches.reads, batches.calls
    wrong, errors, reported = [], [], []
    emulator_store.on_call = lambda: reported.append(1)  # list.append: safe from many threads

    def read_all(seed):
        order = keys * 3
        random.Random(seed).shuffle(order)
        try:
            for key in order:
                if emulator_store.get(key, 5) != one_at_a_time[key]:
                    wrong.append(key)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_all, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and wrong == []
    reads, calls = batches.reads - reads0, batches.calls - calls0
    assert reads == 16 * 50 * 3
    assert calls < reads  # coalesced: 16 threads share calls
    assert len(reported) == calls  # every call reported once
    assert not batches.slots and not batches.queue and batches.in_flight == 0


@pytest.mark.integration
def test_frozen_emulator_every_concurrent_read_times_out_by_its_own_deadline(cbtemulator_path, monkeypatch):
    with BigtableEmulator(cbtemulator_path) as emulator:
        store = _warm_store_with_key(emulator, monkeypatch, "frozen")
        emulator.freeze()
        results = {}
        try:
            # deadlines 150, 200, ... 500 ms; keys found, missing and shared
            deadlines = [0.15 + 0.05 * n for n in range(8)]
            threads = [read_in_thread(store, KEY if n % 3 else f"{n:064x}".encode(), deadline, results)
                       for n, deadline in enumerate(deadlines)]
            for thread in threads:
                thread.join(10)
        finally:
            emulator.thaw()
        for thread, deadline in zip(threads, deadlines, strict=True):
            outcome, elapsed = results[thread.name]
            assert isinstance(outcome, ProfileTimeout), outcome
            assert f"{deadline * 1000:.0f} ms deadline" in str(outcome)
            assert elapsed < deadline + RETURNED_WITHIN_S
        assert store.get(KEY, 5) == b"v"  # the queue drained: the same channel works again
        batches = store._reader.batches
        assert not batches.slots and not batches.queue and batches.in_flight == 0
        store.close()


@pytest.mark.integration
def test_store_pickles_without_its_reader_after_coalesced_reads(emulator_store):
    import pickle

    emulator_store.put_many([(KEY, b"v")], ts_ms=1_700_000_000_000)
    assert emulator_store.get(KEY, 5) == b"v"
    copy = pickle.loads(pickle.dumps(emulator_store))
    assert copy._reader is None and copy.uri == emulator_store.uri
    assert copy.get(KEY, 5) == b"v"
    copy.close()
