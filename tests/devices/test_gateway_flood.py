"""The gateway keeps serving devices while idle, slow and half-finished connections are held open,
closes those connections after their deadlines, and refuses what it does not speak with a 4xx.

Two real gateway processes: one with long deadlines (the flood is still open when the device
polls, which the tests check), one with deadlines of two seconds (the flood is closed by the
server; the tests wait for that with a generous limit, they never time it). Flood connections come
from other loopback addresses (127.0.0.2 and up) than the device (127.0.0.1), so the per-address
cap is tested on its own.
"""
import socket
import ssl
import time

import pytest

from tests.devices.conftest import device_pool, gateway_start, gateway_stop, tls_context

PER_ADDRESS = 20
SHORT = "2"
# A TLS record header announcing a ClientHello whose bytes never come.
STALLED_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.fixture(scope="module")
def patient_process(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        gateway = gateway_start(
            tmp_path_factory.mktemp("gateway-patient"),
            {
                **{f"BREAKWATER_GATEWAY_{name}_TIMEOUT": "120" for name in ("HANDSHAKE", "HEADER", "BODY", "KEEPALIVE")},
                "BREAKWATER_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
            },
            threads=2,
        )
    yield gateway
    gateway_stop(gateway)


@pytest.fixture(scope="module")
def strict_process(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        gateway = gateway_start(
            tmp_path_factory.mktemp("gateway-strict"),
            {f"BREAKWATER_GATEWAY_{name}_TIMEOUT": SHORT for name in ("HANDSHAKE", "HEADER", "BODY", "KEEPALIVE")},
            threads=2,
        )
    yield gateway
    gateway_stop(gateway)


@pytest.fixture
def patient(patient_process, transactional_db):
    patient_process.identity_restore()
    return patient_process


@pytest.fixture
def strict(strict_process, transactional_db):
    strict_process.identity_restore()
    return strict_process


class Flood:
    """Connections held open by the test; closed when the test ends."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.sockets = []
        self._next = 0

    def source(self):
        """Spread over 127.0.0.2 ... so that no address reaches the per-address cap."""
        self._next += 1
        return f"127.0.0.{2 + self._next // (PER_ADDRESS // 2)}"

    def tcp(self, source=None):
        sock = socket.create_connection(("127.0.0.1", self.gateway.port), timeout=30, source_address=(source or self.source(), 0))
        self.sockets.append(sock)
        return sock

    def stalled_handshake(self):
        sock = self.tcp()
        sock.sendall(STALLED_HELLO)
        return sock

    def tls(self, device):
        sock = tls_context(device).wrap_socket(self.tcp(), server_hostname="127.0.0.1")
        self.sockets.append(sock)
        return sock

    def trickled_head(self, device):
        sock = self.tls(device)
        sock.sendall(b"GET /repo/timestamp.json HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        return sock

    def unfinished_body(self, device):
        sock = self.tls(device)
        sock.sendall(b"POST /events HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1000\r\n\r\n[{\"type\":")
        return sock

    def close(self):
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def flood(request):
    floods = []

    def make(gateway):
        floods.append(Flood(gateway))
        return floods[-1]

    yield make
    for f in floods:
        f.close()


def still_open(sock):
    """The server has not closed it: nothing to read yet, no EOF."""
    sock.setblocking(False)
    try:
        data = sock.recv(1)
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return bool(data)


def closed_by_server(sock, limit=60.0, trickle=None):
    """Read (sending a byte of `trickle` now and then) until the server closes; what it sent."""
    received = b""
    deadline = time.monotonic() + limit
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            if trickle:
                try:
                    sock.sendall(trickle)
                except OSError:
                    return received
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            return received
        if not data:
            return received
        received += data
    raise AssertionError(f"the server did not close the connection in {limit:.0f} s")


def raw_answer(gateway, device, request_bytes):
    """Send raw bytes over the device's TLS connection; return (status, body) and that it closed."""
    sock = tls_context(device).wrap_socket(socket.create_connection(("127.0.0.1", gateway.port), timeout=30), server_hostname="127.0.0.1")
    try:
        sock.sendall(request_bytes)
        data = closed_by_server(sock)
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def poll(gateway, device):
    return device_pool(gateway, device).request("GET", "/repo/timestamp.json", headers={"x-ats-tags": "production"})


def test_a_device_is_served_while_idle_slow_and_unfinished_connections_are_held_open(patient, factory, register, flood):
    device = register(factory)
    held = flood(patient)
    idle = [held.tcp() for _ in range(60)]
    stalled = [held.stalled_handshake() for _ in range(20)]
    trickled = [held.trickled_head(device) for _ in range(10)]
    unfinished = [held.unfinished_body(device) for _ in range(10)]
    for _ in range(3):
        response = poll(patient, device)
        assert response.status == 200, response.data
        assert response.json()["signed"]["_type"] == "timestamp"
    # The flood was still there while the device was served: what was tested is what was claimed.
    assert all(still_open(sock) for sock in idle + stalled + trickled + unfinished)


def test_stalled_connections_are_closed_by_the_server_after_their_deadline(strict, factory, register, flood):
    device = register(factory)
    held = flood(strict)
    assert closed_by_server(held.tcp()) == b""
    assert closed_by_server(held.stalled_handshake()) == b""
    # A head trickled a byte at a time gains nothing: the deadline counts from its first byte.
    answer = closed_by_server(held.trickled_head(device), trickle=b"a")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert closed_by_server(held.unfinished_body(device)).startswith(b"HTTP/1.1 408 ")
    # A kept-alive connection with no next request is closed too, silently.
    sock = held.tls(device)
    sock.sendall(b"GET /device HTTP/1.1\r\nHost: gateway\r\n\r\n")
    answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"408" not in answer.split(b"\r\n", 1)[0]
    assert poll(strict, device).status == 200


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /repo/timestamp.json HTTP/1.1\r\nHost: g\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: g\r\n\r\n", 414),
        (b"POST /events HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n\r\n", 413),
        (b"POST /events HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[{}]\n\r\n0\r\n\r\n", 411),
        (b"GET /repo/timestamp.json HTTP/1.1\r\nHost: g\r\nthis line has no colon\r\n\r\n", 400),
        (b"GET /repo/timestamp.json HTTP/1.1\r\nHost: g\r\n folded: value\r\n\r\n", 400),
        (b"GET /repo/timestamp.json HTTP/1.1\r\nHost : g\r\n\r\n", 400),
        (b"POST /events HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]", 400),
        (b"BREW /repo/timestamp.json HTTP/1.1\r\nHost: g\r\n\r\n", 405),
        (b"\x00\x01GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET /repo/timestamp.json\r\n\r\n", 400),
        (b"GET /repo/timestamp.json HTTP/2.0\r\n\r\n", 505),
        (b"GET repo/timestamp.json HTTP/1.1\r\n\r\n", 400),
    ],
    ids=["head too large", "request line too long", "body too large", "chunked body", "header without colon",
         "folded header", "space before colon", "two lengths", "unknown method", "binary junk", "no version",
         "HTTP/2", "not a path"],
)  # fmt: skip
def test_requests_the_gateway_does_not_speak_get_a_4xx_and_a_close(patient, factory, register, request_bytes, status):
    device = register(factory)
    answered, body = raw_answer(patient, device, request_bytes)
    assert answered == status, body
    assert b"error" in body
    # Nothing of it reached the device's record: the next poll is served as ever.
    assert poll(patient, device).status == 200


def test_a_body_too_large_is_refused_before_it_is_sent(patient, factory, register):
    device = register(factory)
    sock = tls_context(device).wrap_socket(socket.create_connection(("127.0.0.1", patient.port), timeout=30), server_hostname="127.0.0.1")
    try:
        # The head only: the 413 comes without waiting for the 100,000 bytes announced.
        sock.sendall(b"POST /events HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n\r\n")
        assert closed_by_server(sock).startswith(b"HTTP/1.1 413 ")
    finally:
        sock.close()


def test_a_device_sending_a_body_too_large_reads_the_413_not_a_reset(patient, factory, register):
    # As an HTTP client does: the head and the whole body in one go, then the answer. Closed with
    # the body unread, the socket would answer with a reset and the device would never see the 413
    # (a client like aktualizr-lite drops a batch on a 413 and sends it again on anything else).
    device = register(factory)
    for _ in range(5):
        sock = tls_context(device).wrap_socket(socket.create_connection(("127.0.0.1", patient.port), timeout=30), server_hostname="127.0.0.1")
        try:
            sock.sendall(b"POST /events HTTP/1.1\r\nHost: g\r\nContent-Length: 300000\r\n\r\n" + b"[" * 300_000)
            assert closed_by_server(sock).startswith(b"HTTP/1.1 413 ")
        finally:
            sock.close()


def test_keep_alive_and_http_1_0_are_spoken(patient, factory, register):
    device = register(factory)
    sock = tls_context(device).wrap_socket(socket.create_connection(("127.0.0.1", patient.port), timeout=30), server_hostname="127.0.0.1")
    try:
        # Two requests in one write (pipelined), then an HTTP/1.0 one that asks for a close.
        sock.sendall(b"GET /device HTTP/1.1\r\nHost: g\r\n\r\nGET /device HTTP/1.1\r\nHost: g\r\n\r\nGET /device HTTP/1.0\r\n\r\n")
        answer = closed_by_server(sock)
    finally:
        sock.close()
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert answer.count(f'"uuid": "{device.uuid}"'.encode()) == 3
    assert answer.count(b"Connection: close\r\n") == 1


def test_the_per_address_cap_refuses_connections_past_it_and_no_one_else(patient, factory, register, flood):
    device = register(factory)
    held = flood(patient)
    first = [held.tcp(source="127.0.0.200") for _ in range(PER_ADDRESS)]
    one_too_many = held.tcp(source="127.0.0.200")
    assert closed_by_server(one_too_many) == b""
    assert all(still_open(sock) for sock in first)
    # Another address is not affected.
    assert poll(patient, device).status == 200
    assert still_open(held.tcp(source="127.0.0.201"))
