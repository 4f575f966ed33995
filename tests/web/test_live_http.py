"""HTTP behaviour under real gunicorn (SPEC §6.2): stalled clients, oversized bodies, keepalive.

Raw sockets against ``gunicorn -c python:taar_web.gunicorn_conf`` with one worker of two
threads, so that a handful of misbehaving connections would be enough to starve it.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.fixtures.gunicorn_server import Gunicorn

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2
KEEPALIVE_S = 3


@pytest.fixture
def server(tmp_path, model_store_dir, profile_uri):
    env = {
        "WORKERS": "1", "THREADS": "2", "TAAR_MODEL_STORE": str(model_store_dir), "TAAR_PROFILE_STORE": profile_uri,
        "TAAR_MODEL_MAX_AGE_HOURS": "0", "TAAR_METRICS_BACKEND": "none", "TAAR_MAX_BODY_BYTES": "1024",
        "TAAR_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S), "TAAR_KEEPALIVE_SECONDS": str(KEEPALIVE_S),
        "TAAR_VERSION_FILE": str(tmp_path / "version.json"),
    }
    with Gunicorn(env, tmp_path) as g:
        yield g


def connect(g, timeout=5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", g.port), timeout=timeout)


def read_response(sock) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock, within_s: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_stalled_partial_headers_do_not_block_the_lbheartbeat(server):
    stalled = []
    try:
        for _ in range(40):  # 40 clients that send part of their headers and stop (slowloris)
            sock = connect(server)
            sock.sendall(b"GET /v1/api/recommendations/0000/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            stalled.append(sock)
        time.sleep(0.3)  # the worker has seen them all readable
        for _ in range(3):
            sock = connect(server, timeout=1.0)  # must answer within 1 s
            sock.sendall(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status == 200
            sock.close()
        # the stalled connections are closed once the header timeout passes
        assert all(closed_by_server(sock, HEADER_TIMEOUT_S + 3) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()


def test_headers_sent_in_pieces_within_the_timeout_are_served(server):
    sock = connect(server)
    for piece in (b"GET /__lbhea", b"rtbeat__ HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        sock.sendall(piece)
        time.sleep(0.2)
    assert read_response(sock)[0] == 200
    sock.close()


def test_requests_read_at_once_or_after_waiting_in_the_poller_are_all_served(server):
    # The worker reads a readable connection's head at once; one whose bytes have not arrived
    # yet (a new connection) waits in the poller. Both ways, then keep-alive and pipelining.
    lb = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = connect(server)
    time.sleep(0.3)  # accepted, nothing to read yet
    sock.sendall(lb)
    assert read_response(sock)[0] == 200
    for _ in range(3):  # keep-alive: each head is there when the poller reports the socket
        sock.sendall(lb)
        assert read_response(sock)[0] == 200
    sock.sendall(lb + lb)  # pipelined: the second head is already buffered after the first
    assert [read_response(sock)[0] for _ in range(2)] == [200, 200]
    sock.close()


def test_clients_that_connect_and_leave_do_not_hurt_the_worker(server):
    for _ in range(50):
        connect(server).close()  # some closed before the worker reads, some after
    sock = connect(server, timeout=1.0)
    sock.sendall(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()
    assert server.proc.poll() is None


def test_oversized_body_gets_400_and_the_connection_is_closed_without_draining(server):
    sock = connect(server)
    # declares 10 MB, sends 100 bytes: the server must not wait for (or read) the rest
    sock.sendall(b"POST /v1/api/recommendations/0000/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 10000000\r\n\r\n" + b"x" * 100)
    status, headers, body = read_response(sock)
    assert (status, headers["connection"]) == (400, "close")
    assert b"request body too large" in body
    assert closed_by_server(sock, 3.0)
    sock.close()


def test_small_body_keeps_the_connection_alive(server):
    sock = connect(server)
    body = b'{"options": {"promoted": [["p@x", 1.0]]}}'
    request = (b"POST /v1/api/recommendations/0000/ HTTP/1.1\r\nHost: x\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    for _ in range(2):
        sock.sendall(request)
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (200, "keep-alive")
    sock.close()


def test_keepalive_follows_the_setting(server):
    sock = connect(server)
    sock.sendall(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[1]["connection"] == "keep-alive"
    time.sleep(1.0)  # idle for less than TAAR_KEEPALIVE_SECONDS: the connection is reused
    sock.sendall(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    # idle past it: the server closes the connection
    assert closed_by_server(sock, KEEPALIVE_S + 3)
    sock.close()
