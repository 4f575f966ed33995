"""The gthread worker with request headers read in the event loop (SPEC §6.2).

gunicorn's gthread worker hands a connection to a thread as soon as its socket
is readable; a client that sends part of its headers and stalls then holds that
thread. Forty such clients hold every thread of a 2 × 8 fleet, and even
``/__lbheartbeat__`` waits. :class:`TaarThreadWorker` instead collects each
request's header bytes in the worker's poller (non-blocking, no thread) and
submits the connection to the thread pool only once the blank line that ends
the headers has arrived. A connection that has not completed its headers within
``TAAR_HEADER_TIMEOUT_SECONDS`` is closed. Bodies are read by the thread as
before (they are bounded by ``TAAR_MAX_BODY_BYTES``).

HTTP/1.x only, which is what the service speaks (no TLS, no HTTP/2: TLS ends at
the load balancer).
"""

from __future__ import annotations

import errno
import io
import selectors
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

from taar_web.settings import Settings

END_OF_HEADERS = b"\r\n\r\n"
#: Stop collecting and let the parser judge (it refuses oversized headers with a 4xx).
MAX_COLLECT_BYTES = 64 * 1024


class TaarThreadWorker(ThreadWorker):
    """``ThreadWorker`` that never gives a thread to a connection whose headers are incomplete."""

    def init_process(self):
        self.header_timeout_s = Settings.from_env().header_timeout_seconds
        self.header_waiting = {}  # conn -> deadline (monotonic)
        super().init_process()

    @staticmethod
    def _buffered(conn) -> bytes:
        return conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""

    def enqueue_req(self, conn):
        if getattr(conn, "taar_headers_ready", False) or conn.is_http2:
            conn.taar_headers_ready = False
            return super().enqueue_req(conn)
        if END_OF_HEADERS in self._buffered(conn):  # a pipelined request is already complete
            return super().enqueue_req(conn)
        conn.sock.setblocking(False)
        conn.taar_bytes = bytearray()
        self.header_waiting[conn] = time.monotonic() + self.header_timeout_s
        # The poller said the socket is readable: the whole head is usually there already, and
        # reading it now saves a registration and a trip round the event loop per request.
        if not self._collect(conn, registered=False):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_header_bytes, conn))
        return None

    def _unregister(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass

    def _drop(self, conn, registered: bool = True) -> None:
        self.header_waiting.pop(conn, None)
        if registered:
            self._unregister(conn)
        self.nr_conns -= 1
        conn.close()

    def _on_header_bytes(self, conn, sock) -> None:
        self._collect(conn, registered=True)

    def _collect(self, conn, registered: bool) -> bool:
        """Read what the client sent; True once the connection is handed to a thread or dropped.

        ``registered``: the socket is in the poller (and must leave it before a thread gets it).
        """
        try:
            data = conn.sock.recv(MAX_COLLECT_BYTES)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return False
            self._drop(conn, registered)
            return True
        if not data:  # the client went away
            self._drop(conn, registered)
            return True
        conn.taar_bytes += data
        seen = self._buffered(conn) + bytes(conn.taar_bytes)
        if END_OF_HEADERS not in seen and len(seen) < MAX_COLLECT_BYTES:
            return False
        self.header_waiting.pop(conn, None)
        if registered:
            self.poller.unregister(conn.sock)
        conn.init()  # creates the HTTP/1 parser (blocking socket again)
        unreader = conn.parser.unreader
        unreader.buf = io.BytesIO()
        unreader.unread(seen)  # the parser reads what we collected first
        conn.taar_bytes = None
        conn.data_ready = True
        conn.taar_headers_ready = True
        super().enqueue_req(conn)
        return True

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        for conn, deadline in list(self.header_waiting.items()):
            if deadline <= now:
                self._drop(conn)
