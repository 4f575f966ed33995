"""Profile store in Cloud Bigtable (SPEC §3.1, §3.6, §3.7).

Layout: one row per hashed client id, column family ``profile`` (GC rule: union of
max age 90 days and max 1 version), qualifier ``payload``, cell value the zlib(JSON)
payload, cell timestamp the end of the job's logical date (millisecond granularity).

Reads and writes use the google-cloud-bigtable data client; :meth:`ensure_table`
uses the admin API. Clients are created on first use in each process (after a
fork, a new one is made) and are not part of the pickled state. With
``BIGTABLE_EMULATOR_HOST`` set both clients talk to the emulator with anonymous
credentials. A read has one deadline for the whole operation, client
construction included: the client is built by a helper thread that a read waits
for only as long as its deadline allows; retries happen only inside the deadline,
and running out maps to :class:`ProfileTimeout`. The service calls :meth:`warm`
in each worker at start (gunicorn ``post_fork``), so requests find a connected
client.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice

from .base import ProfileTimeout, ProfileWriteError

logger = logging.getLogger(__name__)

FAMILY = "profile"
QUALIFIER = b"payload"
MAX_AGE = dt.timedelta(days=90)
#: The table's operation timeout for one batch of mutations (retries included).
WRITE_TIMEOUT_S = 120.0

_PING_KEY = b"__taar_ping__"
# Guards client creation so that concurrent first requests make one client, not several.
_CLIENT_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    """A fork while another thread held the lock must not leave the child deadlocked."""
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()


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


class BigtableProfileStore:
    """A profile store at ``bigtable://<project>/<instance>/<table>``."""

    def __init__(self, project: str, instance: str, table: str, batch_size: int = 1000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.project = project
        self.instance = instance
        self.table = table
        self.batch_size = batch_size
        self._client = None
        self._table = None
        self._pid = None
        self._connecting = None  # (pid, Future) of the client construction in flight

    @property
    def uri(self) -> str:
        return f"bigtable://{self.project}/{self.instance}/{self.table}"

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

    # ------------------------------------------------------------------ clients

    def _data_table(self, timeout_s: float | None = None):
        """This process's data-API table handle; waits at most ``timeout_s`` for its construction.

        The client is built once per process by a helper thread, so a request
        whose deadline runs out leaves it building for the next one instead of
        blocking past the deadline.
        """
        if self._table is not None and self._pid == os.getpid():
            return self._table
        with _CLIENT_LOCK:
            pending = self._connecting
            if pending is None or pending[0] != os.getpid():
                future = concurrent.futures.Future()
                pending = self._connecting = (os.getpid(), future)
                threading.Thread(target=self._connect_into, args=(future,), name="taar-bigtable-connect",
                                 daemon=True).start()
        try:
            pending[1].result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise ProfileTimeout(f"{self.uri}: client not ready within {timeout_s * 1000:.0f} ms") from None
        return self._table

    def _connect_into(self, future) -> None:
        try:
            self._connect()
        except BaseException as exc:
            with _CLIENT_LOCK:
                self._connecting = None  # the next read tries again
            future.set_exception(exc)
        else:
            future.set_result(None)

    def warm(self, timeout_s: float) -> bool:
        """Build this process's client and open its channel with one read; False if not done in time."""
        started = time.monotonic()
        try:
            self._data_table(timeout_s)
            left = timeout_s - (time.monotonic() - started)
            if left > 0:
                self._read_row(_PING_KEY, left)
        except Exception as exc:
            logger.warning("profile store %s not warm after %.0f ms: %s", self.uri, timeout_s * 1000, exc)
            return False
        return True

    def _connect(self) -> None:
        from google.cloud.bigtable.data import BigtableDataClient

        with warnings.catch_warnings():
            # The client warns on every construction when the emulator is used.
            warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
            client = BigtableDataClient(project=self.project)
        self._client, self._table, self._pid = (
            client,
            client.get_table(self.instance, self.table),
            os.getpid(),
        )

    def close(self) -> None:
        """Close this process's data client (a later call makes a new one)."""
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = self._table = self._pid = self._connecting = None

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _row_filter():
        from google.cloud.bigtable.data import row_filters

        return row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter(FAMILY),
                row_filters.ColumnQualifierRegexFilter(QUALIFIER),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )

    def _read_row(self, row_key: bytes, timeout_s: float):
        from google.api_core.exceptions import DeadlineExceeded

        started = time.monotonic()
        table = self._data_table(timeout_s)
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            raise ProfileTimeout(f"{self.uri}: read exceeded its {timeout_s * 1000:.0f} ms deadline")
        try:
            return table.read_row(
                row_key,
                row_filter=self._row_filter(),
                operation_timeout=left,
                attempt_timeout=left,
            )
        except DeadlineExceeded as exc:
            raise ProfileTimeout(f"{self.uri}: read exceeded its {timeout_s * 1000:.0f} ms deadline") from exc

    def get(self, row_key: str | bytes, timeout_s: float) -> bytes | None:
        row = self._read_row(_bytes_key(row_key), timeout_s)
        if row is None:
            return None
        cells = row.get_cells(FAMILY, QUALIFIER)
        return cells[0].value if cells else None

    def ping(self, timeout_s: float) -> bool:
        try:
            self._read_row(_PING_KEY, timeout_s)
        except Exception as exc:  # a health check reports, it does not raise
            logger.warning("profile store %s ping failed: %s", self.uri, exc)
            return False
        return True

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
