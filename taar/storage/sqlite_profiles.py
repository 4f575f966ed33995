"""Profile store in a SQLite file, for local runs, the demo and tests (SPEC §3.6).

Table ``profiles(row_key TEXT PRIMARY KEY, payload BLOB NOT NULL, ts INTEGER NOT NULL)``
holds the same zlib(JSON) payloads as Bigtable, keyed by the same hashed client id.
The database runs in WAL mode so the service's readers never wait for the loader.

Connections are per thread (``threading.local``), opened on first use and forgotten
after a fork or a pickle round trip. Reads honour a deadline (SPEC §3.7): a progress
handler aborts the statement once the deadline has passed and the busy timeout is
capped by the time left, so a locked or slow database yields :class:`ProfileTimeout`
instead of a stalled request. Writes mimic Bigtable's "newest cell wins": a row is
only overwritten by a payload stamped at the same or a later time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from .base import ProfileTimeout

logger = logging.getLogger(__name__)

#: SQLite virtual-machine instructions between two deadline checks during a read.
PROGRESS_STEPS = 1000
#: How long a write waits for another writer's lock before failing.
WRITE_BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS profiles ("
    "row_key TEXT PRIMARY KEY, payload BLOB NOT NULL, ts INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS profiles_ts ON profiles (ts)",
)
_UPSERT = (
    "INSERT INTO profiles (row_key, payload, ts) VALUES (?, ?, ?) "
    "ON CONFLICT (row_key) DO UPDATE SET payload = excluded.payload, ts = excluded.ts "
    "WHERE excluded.ts >= profiles.ts"
)
_SELECT = "SELECT payload FROM profiles WHERE row_key = ?"
_DEADLINE_CODES = (sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY)


def _text_key(row_key: str | bytes) -> str:
    return row_key.decode("utf-8") if isinstance(row_key, bytes) else str(row_key)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


class SQLiteProfileStore:
    """A profile store in the SQLite file ``path`` (``sqlite:///<path>``)."""

    def __init__(self, path: str | os.PathLike, batch_size: int = 5000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path)
        self.batch_size = batch_size
        self._local = threading.local()
        self._pid = os.getpid()

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.path.as_posix()}"

    def __repr__(self) -> str:
        return f"SQLiteProfileStore({self.uri!r})"

    def __getstate__(self) -> dict:
        return {"path": self.path, "batch_size": self.batch_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["batch_size"])

    # ------------------------------------------------------------------ connections

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after a fork).

        Opening does not touch the database file, so it cannot wait for a lock
        outside the read deadline; WAL mode is persistent in the file and is set
        by the writers (:meth:`_writer`).
        """
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: autocommit; writers open their own transactions.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=WRITE_BUSY_TIMEOUT_S)
            self._local.conn = conn
            self._local.busy_ms = int(WRITE_BUSY_TIMEOUT_S * 1000)
            self._local.wal = False
        return conn

    def _writer(self) -> sqlite3.Connection:
        """This thread's connection, in WAL mode, waiting up to a writer's busy timeout."""
        conn = self._connection()
        self._set_busy_timeout(conn, int(WRITE_BUSY_TIMEOUT_S * 1000))
        if not self._local.wal:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; the loader rewrites anyway
            self._local.wal = True
        return conn

    def _set_busy_timeout(self, conn: sqlite3.Connection, busy_ms: int) -> None:
        if self._local.busy_ms != busy_ms:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
            self._local.busy_ms = busy_ms

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ reads

    def _query_one(self, sql: str, params: tuple, timeout_s: float):
        """Run ``sql`` and return its first row, aborting once ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        conn = self._connection()
        # Waiting for a lock is not covered by the progress handler: cap it too.
        self._set_busy_timeout(conn, max(1, int(timeout_s * 1000)))
        conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
        try:
            return conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError as exc:
            # SQLITE_INTERRUPT: the progress handler fired; SQLITE_BUSY: the capped lock wait ran out.
            if exc.sqlite_errorcode in _DEADLINE_CODES or time.monotonic() >= deadline:
                raise ProfileTimeout(
                    f"{self.uri}: read exceeded its {timeout_s * 1000:.0f} ms deadline"
                ) from exc
            raise
        finally:
            conn.set_progress_handler(None, 0)

    def get(self, row_key: str | bytes, timeout_s: float) -> bytes | None:
        row = self._query_one(_SELECT, (_text_key(row_key),), timeout_s)
        return None if row is None else bytes(row[0])

    def ping(self, timeout_s: float) -> bool:
        try:
            self._query_one("SELECT 1 FROM profiles LIMIT 1", (), timeout_s)
        except (sqlite3.Error, ProfileTimeout) as exc:
            logger.warning("profile store %s ping failed: %s", self.uri, exc)
            return False
        return True

    # ------------------------------------------------------------------ writes

    def ensure_table(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._writer()
        for statement in _SCHEMA:
            conn.execute(statement)

    def _run_batches(self, sql: str, rows: Iterable[tuple]) -> int:
        conn = self._writer()
        count = 0
        for batch in _batches(rows, self.batch_size):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, batch)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            count += len(batch)
        return count

    def put_many(self, rows: Iterable[tuple[str | bytes, bytes]], ts_ms: int) -> int:
        ts_ms = int(ts_ms)
        count = self._run_batches(_UPSERT, ((_text_key(k), bytes(p), ts_ms) for k, p in rows))
        logger.info("wrote %d profiles to %s", count, self.uri)
        return count

    def delete_many(self, keys: Iterable[str | bytes]) -> int:
        count = self._run_batches("DELETE FROM profiles WHERE row_key = ?", ((_text_key(k),) for k in keys))
        logger.info("deleted %d profile keys from %s", count, self.uri)
        return count

    def gc(self, older_than_ts_ms: int) -> int:
        """Delete rows stamped before ``older_than_ts_ms``: the 90-day GC rule of SPEC §3.1."""
        conn = self._writer()
        deleted = conn.execute("DELETE FROM profiles WHERE ts < ?", (int(older_than_ts_ms),)).rowcount
        logger.info(
            "garbage-collected %d profiles older than ts %d from %s", deleted, older_than_ts_ms, self.uri
        )
        return deleted
