"""Profile store in Cloud Bigtable (SPEC §3.1, §3.6, §3.7).

Layout: one row per hashed client id, column family ``profile`` (GC rule: union of
max age 90 days and max 1 version), qualifier ``payload``, cell value the zlib(JSON)
payload, cell timestamp the end of the job's logical date (millisecond granularity).

Reads (:meth:`~BigtableProfileStore.get`, ``ping``, ``warm``) call the Bigtable v2
``ReadRows`` RPC directly on one gRPC channel per process, with the official
generated protobuf messages, and merge the response chunks themselves
(:func:`merge_rows`). Concurrent reads in one process share calls: a read that
finds a free call slot sends at once, the others wait for the next call, which
carries several row keys (:class:`Batches`). The high-level data client's per-call machinery
(retry wrappers, proto-plus, its row-merging state machine, async-to-sync layers)
cost more CPU than the whole recommendation (SPEC §3.7). Writes use the
google-cloud-bigtable data client and :meth:`ensure_table` the admin API.

Channels and clients are created on first use in each process (after a fork, new
ones are made) and are not part of the pickled state. With
``BIGTABLE_EMULATOR_HOST`` set everything talks to the emulator without
credentials. A read has one deadline for the whole operation, channel
construction included: the channel is built by a helper thread that a read waits
for only as long as its deadline allows; transient errors are retried only inside
the deadline, and running out maps to :class:`ProfileTimeout`. The service calls
:meth:`warm` in each worker at start (gunicorn ``post_fork``), so requests find a
connected channel; a channel older than :data:`CHANNEL_REFRESH_S` is replaced by a
connected new one in the background, so no read pays a reconnection when Bigtable
closes an old connection.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from urllib.parse import urlencode

from .base import ProfileStoreError, ProfileTimeout, ProfileWriteError

logger = logging.getLogger(__name__)

FAMILY = "profile"
QUALIFIER = b"payload"
MAX_AGE = dt.timedelta(days=90)
#: The table's operation timeout for one batch of mutations (retries included).
WRITE_TIMEOUT_S = 120.0

#: Production endpoint of the Bigtable data API.
DATA_HOST = "bigtable.googleapis.com"
_READ_ROWS = "/google.bigtable.v2.Bigtable/ReadRows"
#: First and largest pause between two attempts of a read (full jitter below them).
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.01, 0.1
#: Keepalive pings every 30 s (10 s to answer) keep an idle connection known-good.
KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS = 30_000, 10_000
#: A channel this old (less a random 0-22 %, so workers spread out) is replaced in the background, as
#: the official client does after 35-45 minutes: Bigtable closes connections after 60 minutes, and a
#: read must not pay the reconnection.
CHANNEL_REFRESH_S = 45 * 60
#: Deadline of the read that connects a replacement channel; after a failure, the next try waits as long.
REFRESH_CONNECT_S = 10.0
#: A replaced channel is closed this long after the swap, when reads still using it are long done.
RETIRE_AFTER_S = 60.0
# The official client treats INTERNAL errors with these messages as UNAVAILABLE (a reset stream).
_RESET_STREAM_MESSAGES = ("rst_stream", "rst stream", "received unexpected eos on data frame from server")

_PING_KEY = b"__taar_ping__"
# Guards reader creation so that concurrent first requests make one channel, not several.
_CLIENT_LOCK = threading.Lock()
# Guards the writers' data client; separate so that a read never waits behind its construction.
_WRITE_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    """A fork while another thread held a lock must not leave the child deadlocked."""
    global _CLIENT_LOCK, _WRITE_LOCK
    _CLIENT_LOCK, _WRITE_LOCK = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _bytes_key(row_key: str | bytes) -> bytes:
    return row_key if isinstance(row_key, bytes) else str(row_key).encode("utf-8")


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def gc_rule():
    """The column family GC rule of SPEC §3.1: union(max age 90 days, max 1 version)."""
    from google.cloud.bigtable import column_family

    return column_family.GCRuleUnion(
        [column_family.MaxAgeGCRule(MAX_AGE), column_family.MaxVersionsGCRule(1)]
    )


# --------------------------------------------------------------------------- the ReadRows reader


class InvalidReadRowsStream(ProfileStoreError):
    """A ReadRows response stream broke the chunk protocol (or answered another row)."""


def merge_rows(responses: Iterable, row_keys) -> Iterator[tuple[bytes, bytes | None]]:
    """``(row key, profile:payload value or None)`` of each committed row of a ReadRows response stream.

    ``responses`` are ``ReadRowsResponse`` protobuf messages of a request for
    the rows ``row_keys`` (a collection of bytes). A row is yielded as soon as it
    is committed, so the rows before a broken part of a stream keep their answer.
    The chunk protocol: rows come in increasing key order, each once; the first
    chunk of a row carries its key (a later chunk of the row may repeat it, not
    change it); a chunk naming a family also names a qualifier, a chunk with only
    a qualifier keeps the family; a value split over several chunks has
    ``value_size`` > 0 on all but its last chunk; ``reset_row`` drops what was
    received of the current row and ``commit_row`` ends it. A requested key with
    no row in the stream is absent (not yielded); a committed row without the
    cell is yielded with ``None``. Raises :class:`InvalidReadRowsStream` when a
    chunk breaks the protocol, names a row not requested, or the stream ends
    inside an uncommitted row (a row is only valid once committed, so a
    truncated one is an error, not "not found").
    """
    wanted = row_keys if isinstance(row_keys, (set, frozenset, dict)) else frozenset(row_keys)
    last = None  # key of the last committed row
    current = None  # key of the row being received; None between rows
    found = None  # its payload
    family = qualifier = None
    parts = None  # value parts of a cell split over several chunks
    for response in responses:
        for chunk in response.chunks:
            if chunk.reset_row:
                if current is None:
                    raise InvalidReadRowsStream("reset_row outside a row")
                if (chunk.row_key or chunk.HasField("family_name") or chunk.HasField("qualifier")
                        or chunk.timestamp_micros or chunk.labels or chunk.value or chunk.value_size):
                    raise InvalidReadRowsStream("reset_row chunk carries data")
                current, found, family, qualifier, parts = None, None, None, None, None
                continue
            key = chunk.row_key
            if key:
                if key not in wanted:
                    raise InvalidReadRowsStream("row key other than the ones requested")
                if current is None:
                    if last is not None and key <= last:
                        raise InvalidReadRowsStream("row out of key order or repeated")
                    current = key
                elif key != current:
                    raise InvalidReadRowsStream("row key changed inside a row")
            elif current is None:
                raise InvalidReadRowsStream("first chunk of a row has no row key")
            if parts is None:  # a new cell
                if chunk.HasField("family_name"):
                    if not chunk.HasField("qualifier"):
                        raise InvalidReadRowsStream("new family without a qualifier")
                    family = chunk.family_name.value
                if chunk.HasField("qualifier"):
                    if family is None:
                        raise InvalidReadRowsStream("qualifier without a family")
                    qualifier = chunk.qualifier.value
                elif qualifier is None:
                    raise InvalidReadRowsStream("cell without a family and qualifier")
                parts = [chunk.value]
            else:  # the next part of a split value: it may not name another cell
                if (chunk.HasField("family_name") and chunk.family_name.value != family
                        or chunk.HasField("qualifier") and chunk.qualifier.value != qualifier):
                    raise InvalidReadRowsStream("cell changed in the middle of a split value")
                parts.append(chunk.value)
            if chunk.value_size == 0:  # the cell is complete
                # the filter leaves one cell; the first is the newest should a server send more
                if found is None and family == FAMILY and qualifier == QUALIFIER:
                    found = parts[0] if len(parts) == 1 else b"".join(parts)
                parts = None
            if chunk.commit_row:
                if parts is not None:
                    raise InvalidReadRowsStream("commit_row in the middle of a split value")
                yield current, found
                last, current, found, family, qualifier = current, None, None, None, None
    if current is not None:
        raise InvalidReadRowsStream("stream ended inside an uncommitted row")


def row_request(table_name: str, app_profile_id: str = ""):
    """The ReadRows request of every read, less its row keys and ``rows_limit``: the newest ``profile:payload`` cell."""
    from google.cloud.bigtable_v2.types import ReadRowsRequest

    request = ReadRowsRequest.pb()(table_name=table_name, app_profile_id=app_profile_id)
    chain = request.filter.chain.filters
    chain.add(family_name_regex_filter=FAMILY)
    chain.add(column_qualifier_regex_filter=QUALIFIER)
    chain.add(cells_per_column_limit_filter=1)
    return request


def routing_metadata(table_name: str, app_profile_id: str = "") -> tuple[tuple[str, str], ...]:
    """The routing header the official client sends with ReadRows (``/`` left unencoded, app profile always)."""
    params = urlencode({"table_name": table_name, "app_profile_id": app_profile_id}, safe="/")
    return (("x-goog-request-params", params),)


def open_channel():
    """A gRPC channel to the Bigtable data API, or to ``BIGTABLE_EMULATOR_HOST`` when that is set.

    Production uses application default credentials with the data API scopes of
    the official client. ``SingleThreadedUnaryStream`` runs a server-streaming
    call in the calling thread instead of handing each response over from a
    gRPC thread: the single biggest CPU saving per read.
    """
    import grpc
    import grpc.experimental

    options = [
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
        ("grpc.max_receive_message_length", -1),  # as the official client: a cell may exceed 4 MiB
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]
    emulator = os.environ.get("BIGTABLE_EMULATOR_HOST")
    if emulator:
        return grpc.insecure_channel(emulator, options=options)
    from google.api_core import grpc_helpers
    from google.cloud.bigtable_v2.services.bigtable.transports.base import BigtableTransport

    return grpc_helpers.create_channel(
        f"{DATA_HOST}:443", default_scopes=BigtableTransport.AUTH_SCOPES, default_host=DATA_HOST, options=options
    )


class RowReader:
    """ReadRows calls for one table over one channel, and the reads waiting for them (per process; never pickled)."""

    def __init__(self, table_name: str, channel):
        from google.cloud.bigtable_v2.types import ReadRowsResponse

        self.channel = channel
        self.created = time.monotonic()
        self.refresh_share = random.uniform(35 / 45, 1.0)  # of CHANNEL_REFRESH_S
        self.replacing = False  # a replacement is being connected
        self.batches = Batches()  # the coalescing state of the reads on this channel
        self._template = row_request(table_name)
        self._metadata = routing_metadata(table_name)
        self._call = channel.unary_stream(
            _READ_ROWS,
            request_serializer=type(self._template).SerializeToString,
            response_deserializer=ReadRowsResponse.pb().FromString,
        )

    def read(self, row_keys: list[bytes], timeout_s: float) -> Iterator[tuple[bytes, bytes | None]]:
        """One ReadRows call for distinct ``row_keys``: the rows of :func:`merge_rows` as they arrive.

        gRPC errors propagate as ``grpc.RpcError``.
        """
        request = type(self._template)()
        request.CopyFrom(self._template)
        request.rows.row_keys.extend(row_keys)
        request.rows_limit = len(row_keys)
        call = self._call(request, timeout=timeout_s, metadata=self._metadata)
        try:
            yield from merge_rows(call, row_keys)
        except InvalidReadRowsStream:
            call.cancel()  # do not leave the rest of a broken stream pending until its deadline
            raise

    def attempt(self, row_key: bytes, timeout_s: float) -> bytes | None:
        """One ReadRows call for one row (the refresh's connecting read); gRPC errors propagate."""
        return dict(self.read([row_key], timeout_s)).get(row_key)

    def close(self) -> None:
        self.channel.close()


# --------------------------------------------------------------------------- coalescing concurrent reads

#: ReadRows calls in flight at once per channel (process) at most; see :class:`Batches`.
MAX_IN_FLIGHT = 2
#: A call in flight this long is slow: a second call may start beside it (below, reads wait for it).
SLOW_CALL_S = 0.01
#: Distinct row keys in one ReadRows call at most.
MAX_BATCH_KEYS = 32


class Slot:
    """One distinct row key wanted by one or more waiting reads, and its answer once known."""

    __slots__ = ("key", "waiting", "sent", "done", "payload", "error", "retried", "wake")

    def __init__(self, key: bytes, lock):
        self.key = key
        self.waiting = 0  # reads still waiting for this key
        self.sent = False  # part of a call in flight
        self.done = False
        self.payload = None
        self.error = None  # a grpc.RpcError or InvalidReadRowsStream that answers every read of the key
        self.retried = None  # the last transient error of a call that carried the key
        self.wake = threading.Condition(lock)


class Batches:
    """Group commit of concurrent reads on one channel (SPEC §3.7).

    A read whose key is not wanted yet gets a :class:`Slot`; a read of a key
    already wanted (waiting or in a call in flight) shares that slot's answer.
    A read whose slot is not in a call leads a call when no call is in flight,
    or when the one call in flight has been out for :data:`SLOW_CALL_S` (at
    most :data:`MAX_IN_FLIGHT` calls): it sends its own key plus up to
    :data:`MAX_BATCH_KEYS` - 1 other waiting keys (oldest first) in one
    ReadRows call from its own thread, so a lone read has no added latency and
    there are no helper threads. Otherwise it waits on its slot, until its
    deadline at most: when a call ends, its keys are answered and one waiting
    read is woken to lead the next batch; a read waiting behind one call also
    wakes when that call turns slow.

    Why one call, and a second only beside a slow one: a call's client CPU
    (~0.25 ms in gRPC) is most of a read's cost, so under load reads should
    share calls. With one call in flight, every read that arrives during it
    rides the next one (8 threads reading the emulator, each with 500 us of
    work per read: 3.8-4.1 reads a call against 2.6-2.9 when two calls may
    always be in flight; ``python -m bench.profile_reads --rule-rounds``), and
    under gunicorn the per-user route's worker CPU fell by about a fifth
    (SPEC §3.7, appendix A.11).
    But a slow call (a tail latency, a leader's retry pause, a stalled leader
    waiting out its deadline) must not hold up every read arriving behind it:
    once it has been out for :data:`SLOW_CALL_S` (several normal round trips
    to Bigtable, a fraction of the 150 ms read deadline), the waiting reads go
    in a second call. More than two would split batches further for little
    latency gain on one HTTP/2 connection.

    Deadlines never depend on the batch: the leader's call runs with the
    leader's own deadline and every other read waits only until its own; keys
    a timed-out call did not answer go back to the queue, ahead of newer ones,
    for a read that still has time.

    Counters ``reads`` and ``calls`` (ReadRows calls sent, retries included)
    are for tests and benchmarks. The lock is per instance and an instance
    belongs to one :class:`RowReader`, itself per process, so a fork never
    inherits a held lock or a call in flight.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.slots: dict[bytes, Slot] = {}  # every key not answered yet, waiting or in a call
        self.queue: dict[bytes, Slot] = {}  # the keys waiting for a call, oldest first
        self.started: list[float] = []  # monotonic start of each call in flight, oldest first
        self.reads = 0
        self.calls = 0

    @property
    def in_flight(self) -> int:
        return len(self.started)

    def wait_to_send(self, now: float) -> float:
        """Seconds until a waiting read may lead a call (0: now; inf: not before a call ends); caller holds ``lock``."""
        if not self.started:
            return 0.0
        if len(self.started) >= MAX_IN_FLIGHT:
            return float("inf")
        return max(0.0, self.started[0] + SLOW_CALL_S - now)

    def join(self, key: bytes) -> Slot:
        """The slot of ``key`` with one more waiting read (caller holds ``lock``)."""
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = self.queue[key] = Slot(key, self.lock)
        slot.waiting += 1
        self.reads += 1
        return slot

    def take(self, slot: Slot, now: float) -> list[Slot]:
        """Start a call at ``now`` led by ``slot``'s read: its key and the oldest other waiting keys (caller holds ``lock``).

        Pass ``now`` to :meth:`end` when the call is over.
        """
        del self.queue[slot.key]
        batch = [slot]
        for other in islice(self.queue.values(), MAX_BATCH_KEYS - 1):
            batch.append(other)
        for other in batch:
            other.sent = True
            if other is not slot:
                del self.queue[other.key]
        self.started.append(now)
        self.calls += 1
        return batch

    def answer(self, slot: Slot, payload: bytes | None = None, error=None) -> None:
        """Settle ``slot`` for every read waiting on it (caller holds ``lock``)."""
        slot.done, slot.payload, slot.error = True, payload, error
        self.forget(slot)
        slot.wake.notify_all()

    def give_up(self, slot: Slot) -> None:
        """One read of ``slot`` leaves at its deadline; the last one takes the key off the queue (caller holds ``lock``)."""
        slot.waiting -= 1
        if slot.waiting == 0 and not slot.sent:
            self.forget(slot)
        self.promote()

    def forget(self, slot: Slot) -> None:
        """Drop ``slot`` from the wanted keys (a newer slot of the same key stays; caller holds ``lock``)."""
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        if self.queue.get(slot.key) is slot:
            del self.queue[slot.key]

    def requeue(self, batch: list[Slot]) -> None:
        """Unanswered keys of an ended call wait again, ahead of newer ones, if a read still waits for them."""
        back = {}
        for slot in batch:
            slot.sent = False
            if slot.done:
                continue
            if slot.waiting > 0 and self.slots.get(slot.key) is slot:
                back[slot.key] = slot
            else:
                self.forget(slot)
        if back:
            back.update(self.queue)
            self.queue = back

    def end(self, started: float) -> None:
        """The call started at ``started`` ended (caller holds ``lock``): wake one waiting read to lead the next batch."""
        self.started.remove(started)
        self.promote()

    def promote(self) -> None:
        """Wake one waiting read when a call slot is free (caller holds ``lock``).

        Not only when it may send at once: a read that waited while both slots were
        taken has no timer, and must learn when the call left in flight turns slow.
        """
        if self.queue and len(self.started) < MAX_IN_FLIGHT:
            for slot in self.queue.values():
                if slot.waiting > 0:
                    slot.wake.notify()
                    return


def _retryable(exc) -> bool:
    """The codes the official client retries for reads, less DEADLINE_EXCEEDED (here the deadline is spent)."""
    import grpc

    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
        return True
    details = (exc.details() or "").lower()
    return code == grpc.StatusCode.INTERNAL and any(message in details for message in _RESET_STREAM_MESSAGES)


# --------------------------------------------------------------------------- the store


class BigtableProfileStore:
    """A profile store at ``bigtable://<project>/<instance>/<table>``."""

    def __init__(self, project: str, instance: str, table: str, batch_size: int = 1000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.project = project
        self.instance = instance
        self.table = table
        self.batch_size = batch_size
        self._reader = None
        self._pid = None
        self._connecting = None  # (pid, Future) of the reader construction in flight
        self._client = None
        self._table = None
        self._write_pid = None
        #: Called (no arguments, must not raise) for every ReadRows call this process sends, retries
        #: included, in the sending read's thread: the service counts the calls (SPEC §6.5). Not pickled.
        self.on_call = None

    @property
    def uri(self) -> str:
        return f"bigtable://{self.project}/{self.instance}/{self.table}"

    @property
    def table_name(self) -> str:
        """The table's resource name in the data API."""
        return f"projects/{self.project}/instances/{self.instance}/tables/{self.table}"

    def __repr__(self) -> str:
        return f"BigtableProfileStore({self.uri!r})"

    def __getstate__(self) -> dict:
        return {
            "project": self.project,
            "instance": self.instance,
            "table": self.table,
            "batch_size": self.batch_size,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["project"], state["instance"], state["table"], state["batch_size"])

    # ------------------------------------------------------------------ reads

    def _row_reader(self, timeout_s: float) -> RowReader:
        """This process's reader; waits at most ``timeout_s`` for its construction.

        The reader is built once per process by a helper thread, so a request
        whose deadline runs out leaves it building for the next one instead of
        blocking past the deadline.
        """
        reader = self._reader
        if reader is not None and self._pid == os.getpid():
            if time.monotonic() - reader.created > CHANNEL_REFRESH_S * reader.refresh_share and not reader.replacing:
                self._start_replacing(reader)
            return reader
        with _CLIENT_LOCK:
            pending = self._connecting
            if pending is None or pending[0] != os.getpid():
                future = concurrent.futures.Future()
                pending = self._connecting = (os.getpid(), future)
                threading.Thread(target=self._connect_into, args=(future,), name="taar-bigtable-connect",
                                 daemon=True).start()
        try:
            pending[1].result(timeout=max(timeout_s, 0.0))
        except concurrent.futures.TimeoutError:
            raise ProfileTimeout(f"{self.uri}: client not ready within {timeout_s * 1000:.0f} ms") from None
        return self._reader

    def _connect_into(self, future) -> None:
        try:
            self._connect()
        except BaseException as exc:
            with _CLIENT_LOCK:
                self._connecting = None  # the next read tries again
            future.set_exception(exc)
        else:
            future.set_result(None)

    def _connect(self) -> None:
        reader = RowReader(self.table_name, open_channel())
        self._reader, self._pid = reader, os.getpid()

    def _start_replacing(self, old: RowReader) -> None:
        with _CLIENT_LOCK:
            if old.replacing:
                return
            old.replacing = True
        threading.Thread(target=self._replace, args=(old, os.getpid()), name="taar-bigtable-refresh",
                         daemon=True).start()

    def _replace(self, old: RowReader, pid: int) -> None:
        """Connect a new channel with one read, then swap it in; on failure keep ``old`` and retry later."""
        try:
            new = RowReader(self.table_name, open_channel())
            new.attempt(_PING_KEY, REFRESH_CONNECT_S)
        except Exception as exc:
            logger.warning("profile store %s: channel refresh failed, keeping the current one: %s", self.uri, exc)
            old.created = time.monotonic() - CHANNEL_REFRESH_S * old.refresh_share + REFRESH_CONNECT_S
            old.replacing = False
            return
        with _CLIENT_LOCK:
            swapped = self._reader is old and self._pid == pid == os.getpid()
            if swapped:
                self._reader = new
        if not swapped:  # closed or forked meanwhile
            new.close()
            return
        retire = threading.Timer(RETIRE_AFTER_S, old.close)
        retire.daemon = True
        retire.start()

    def warm(self, timeout_s: float) -> bool:
        """Build this process's reader and open its channel with one read; False if not done in time."""
        try:
            self._read_row(_PING_KEY, timeout_s)
        except Exception as exc:
            logger.warning("profile store %s not warm after %.0f ms: %s", self.uri, timeout_s * 1000, exc)
            return False
        return True

    def _read_row(self, row_key: bytes, timeout_s: float) -> bytes | None:
        """The payload of ``row_key``; one deadline for the reader's construction, the wait for a batch,
        every attempt and pause.

        Concurrent reads in this process share ReadRows calls (:class:`Batches`).
        """
        deadline = time.monotonic() + timeout_s
        reader = self._row_reader(timeout_s)
        batches = reader.batches
        with batches.lock:
            slot = batches.join(row_key)
            while not slot.done:
                now = time.monotonic()
                pause = float("inf") if slot.sent else batches.wait_to_send(now)
                if pause == 0.0:
                    batch = batches.take(slot, now)
                    break
                left = deadline - now
                if left <= 0:
                    batches.give_up(slot)
                    raise self._timeout(timeout_s, slot.retried) from slot.retried
                slot.wake.wait(min(left, pause))
            else:
                return self._answer(slot, timeout_s)
        self._lead(reader, batch, now, deadline, timeout_s)
        return self._answer(slot, timeout_s)

    def _lead(self, reader: RowReader, batch: list[Slot], started: float, deadline: float, timeout_s: float) -> None:
        """Send ``batch`` (led by ``batch[0]``) until answered, retrying transient errors inside the
        leader's deadline; each retry carries only the keys still waited for. Settles the slots it
        answers (a key not in a successful stream is absent) and puts the others back in the queue.
        """
        import grpc

        batches, own = reader.batches, batch[0]
        backoff, retrying = BACKOFF_FIRST_S, False  # the first call is counted by take
        keys = [slot.key for slot in batch]
        by_key = {slot.key: slot for slot in batch}
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if retrying:
                    with batches.lock:
                        batches.calls += 1
                retrying = True
                if self.on_call is not None:
                    self.on_call()
                rows = {}
                try:
                    for key, payload in reader.read(keys, left):
                        rows[key] = payload
                except grpc.RpcError as exc:
                    code = exc.code()
                    with batches.lock:
                        for key, payload in rows.items():
                            batches.answer(by_key.pop(key), payload)
                        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                            return  # the leader's deadline: the others wait for another call
                        if not _retryable(exc):
                            for slot in by_key.values():
                                batches.answer(slot, error=exc)
                            return
                        for key in list(by_key):  # the retry carries only the keys still waited for
                            slot = by_key[key]
                            slot.retried = exc
                            if slot.waiting == 0:
                                del by_key[key]
                                batches.forget(slot)
                    keys = list(by_key)
                except InvalidReadRowsStream as exc:
                    with batches.lock:
                        for key, payload in rows.items():
                            batches.answer(by_key.pop(key), payload)
                        for slot in by_key.values():
                            batches.answer(slot, error=exc)
                    return
                else:
                    with batches.lock:
                        for key, slot in by_key.items():
                            batches.answer(slot, rows.get(key))
                    return
                pause = random.uniform(0.0, backoff)  # full jitter: workers hit by one outage spread out
                if own.key not in by_key or time.monotonic() + pause >= deadline:
                    return
                time.sleep(pause)
                backoff = min(2 * backoff, BACKOFF_MAX_S)
        finally:
            with batches.lock:
                batches.requeue(batch)
                own.waiting -= 1
                if own.waiting == 0:
                    batches.forget(own)
                batches.end(started)

    def _answer(self, slot: Slot, timeout_s: float) -> bytes | None:
        """The answer of one read of ``slot`` once its slot is settled or its leader's part is over."""
        if slot.done:
            error = slot.error
            if error is None:
                return slot.payload
            if isinstance(error, InvalidReadRowsStream):
                raise InvalidReadRowsStream(*error.args)
            from google.api_core.exceptions import from_grpc_error

            raise from_grpc_error(error) from error
        raise self._timeout(timeout_s, slot.retried) from slot.retried

    def _timeout(self, timeout_s: float, retried) -> ProfileTimeout:
        cause = f" (after {retried.code().name}: {retried.details()})" if retried is not None else ""
        return ProfileTimeout(f"{self.uri}: read exceeded its {timeout_s * 1000:.0f} ms deadline{cause}")

    def get(self, row_key: str | bytes, timeout_s: float) -> bytes | None:
        return self._read_row(_bytes_key(row_key), timeout_s)

    def ping(self, timeout_s: float) -> bool:
        try:
            self._read_row(_PING_KEY, timeout_s)
        except Exception as exc:  # a health check reports, it does not raise
            logger.warning("profile store %s ping failed: %s", self.uri, exc)
            return False
        return True

    # ------------------------------------------------------------------ clients for writes

    def _data_table(self):
        """This process's data-client table handle (writes only; reads never build it)."""
        if self._table is not None and self._write_pid == os.getpid():
            return self._table
        with _WRITE_LOCK:
            if self._table is None or self._write_pid != os.getpid():
                from google.cloud.bigtable.data import BigtableDataClient

                with warnings.catch_warnings():
                    # The client warns on every construction when the emulator is used.
                    warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
                    client = BigtableDataClient(project=self.project)
                self._client, self._table, self._write_pid = (
                    client, client.get_table(self.instance, self.table), os.getpid()
                )
        return self._table

    def close(self) -> None:
        """Close this process's channel and data client (a later call makes new ones)."""
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        if self._client is not None and self._write_pid == os.getpid():
            self._client.close()
        self._reader = self._pid = self._connecting = None
        self._client = self._table = self._write_pid = None

    # ------------------------------------------------------------------ writes

    def _mutate(self, entries: list, what: str) -> None:
        """Send one batch; raise :class:`ProfileWriteError` when any row failed."""
        from google.cloud.bigtable.data import MutationsExceptionGroup

        try:
            self._data_table().bulk_mutate_rows(
                entries, operation_timeout=WRITE_TIMEOUT_S, attempt_timeout=WRITE_TIMEOUT_S / 2
            )
        except MutationsExceptionGroup as group:
            failed = len(group.exceptions)
            first = group.exceptions[0].__cause__ if group.exceptions else None
            logger.error(
                "%s: %d of %d %s mutations failed in %s", self.uri, failed, len(entries), what, self.uri
            )
            raise ProfileWriteError(failed, len(entries), first) from group

    def put_many(self, rows: Iterable[tuple[str | bytes, bytes]], ts_ms: int) -> int:
        from google.cloud.bigtable.data import RowMutationEntry, SetCell

        timestamp_micros = int(ts_ms) * 1000  # Bigtable default tables keep ms granularity
        count = 0
        for batch in _batches(rows, self.batch_size):
            entries = [
                RowMutationEntry(
                    _bytes_key(key), [SetCell(FAMILY, QUALIFIER, bytes(payload), timestamp_micros)]
                )
                for key, payload in batch
            ]
            self._mutate(entries, "put")
            count += len(entries)
        logger.info("wrote %d profiles to %s", count, self.uri)
        return count

    def delete_many(self, keys: Iterable[str | bytes]) -> int:
        from google.cloud.bigtable.data import DeleteAllFromRow, RowMutationEntry

        count = 0
        for batch in _batches(keys, self.batch_size):
            self._mutate([RowMutationEntry(_bytes_key(key), [DeleteAllFromRow()]) for key in batch], "delete")
            count += len(batch)
        logger.info("deleted %d profile keys from %s", count, self.uri)
        return count

    # ------------------------------------------------------------------ admin

    def ensure_table(self) -> None:
        """Create the table with family ``profile`` and its GC rule when missing.

        An existing table keeps its data; a missing ``profile`` family is added. Uses
        the admin API (with the emulator, the instance need not exist).
        """
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import bigtable

        with warnings.catch_warnings():
            # The clients warn on every construction when the emulator is used.
            warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
            client = bigtable.Client(project=self.project, admin=True)
            try:
                table = client.instance(self.instance).table(self.table)
                if not table.exists():
                    try:
                        table.create(column_families={FAMILY: gc_rule()})
                        logger.info("created Bigtable table %s", self.uri)
                        return
                    except AlreadyExists:
                        pass  # created concurrently: check its families below
                if FAMILY not in table.list_column_families():
                    table.column_family(FAMILY, gc_rule=gc_rule()).create()
                    logger.info("added column family %r to %s", FAMILY, self.uri)
            finally:
                _close_admin_client(client)


def _close_admin_client(client) -> None:
    """Close the gRPC clients a classic ``bigtable.Client`` opened (it has no close of its own)."""
    data_client = getattr(client, "_table_data_client", None)
    if data_client is not None:
        data_client.close()
    admin_client = getattr(client, "_table_admin_client", None)
    if admin_client is not None:
        admin_client.transport.close()
