"""Fuzzing the real gateway process over mutual TLS, with fewer cases than in process (a fifth of
BREAKWATER_FUZZ_EXAMPLES): raw requests of any path, method, header bytes and body are answered
with a status below 500 and the gateway keeps serving; good events sent among bad ones are all
written once by the gateway's own flusher; expired and not-yet-valid certificates end at the
handshake."""
import json
import socket
import ssl
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given
from hypothesis import strategies as st

from devices import pki
from devices.models import Device, DeviceEvent
from devices.services import device_ca_get
from factory.tuf.services.repository import ci_build_publish
from tests.devices.conftest import device_pool, tls_context, wait_for, write_identity

from . import strategies as s
from .harness import TLS_EXAMPLES, case, count, fuzz


def raw_request(gateway, device, request):
    """Send raw bytes over a mutual TLS connection; (status, headers, body) or None if the server
    closed the connection without an answer."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as plain:
        with tls_context(device).wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            chunks = []
            try:
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, ssl.SSLError, TimeoutError):
                pass
    data = b"".join(chunks)
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.decode("latin-1").lower().split(": ", 1) for line in lines[1:] if b": " in line)
    return int(lines[0].split()[1]), headers, body


header_bytes = st.one_of(st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b), s.header_values.map(lambda v: v.encode("latin-1")))


@st.composite
def raw_requests(draw):
    method = draw(s.methods).encode()
    path = draw(s.paths())[0] or b"/"
    headers = [(b"Host", b"127.0.0.1"), (b"Connection", b"close")]
    for name in draw(st.lists(st.sampled_from([b"x-ats-tags", b"x-ats-target", b"If-None-Match", b"Content-Type", b"X-Other"]), max_size=3)):
        headers.append((name, draw(header_bytes)))
    body = draw(st.one_of(st.just(b""), s.malformed_bodies.map(lambda b: b[:70_000]), st.lists(s.good_events(), min_size=1, max_size=3).map(s.body)))
    if body or method == b"POST":
        headers.append((b"Content-Length", str(len(body)).encode()))
    return method + b" " + path + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body


@pytest.fixture
def tls_devices(gateway, factory, register):
    ci_build_publish(factory=factory, version=42, hardware_ids=[s.HWID], tags=["production"])
    return [register(factory), register(factory)]


@fuzz(TLS_EXAMPLES)
@given(request=raw_requests())
def test_any_raw_request_over_mutual_tls_is_answered_below_500_and_the_gateway_keeps_serving(gateway, tls_devices, request):
    case("tls: raw requests")
    answer = raw_request(gateway, tls_devices[0], request)
    if answer is not None:
        status, headers, body = answer
        count("tls: raw requests", status=status)
        assert status < 500, f"{status} {body[:200]!r} for {request[:500]!r}"
        if headers.get("content-type") == "application/json" and status >= 400 and not request.startswith(b"HEAD "):
            assert json.loads(body)["error"]
    assert device_pool(gateway, tls_devices[1]).request("GET", "/device").status == 200


@fuzz(TLS_EXAMPLES)
@given(requests=st.lists(st.tuples(st.integers(0, 1), st.one_of(st.lists(s.good_events(), min_size=1, max_size=5).map(s.body), s.malformed_bodies.map(lambda b: b[:70_000]))), min_size=1, max_size=6))
def test_good_events_over_mutual_tls_are_written_exactly_once(gateway, tls_devices, requests):
    case("tls: events mix")
    # A new connection per request: after refusing a body it did not read, the gateway closes a
    # kept-alive connection without saying so (reported; not what this property is about).
    pools = [lambda d=d: device_pool(gateway, d) for d in tls_devices]
    ids = [Device.objects.get(uuid=d.uuid).pk for d in tls_devices]
    before = {pk: DeviceEvent.objects.filter(device_id=pk).exclude(detail__startswith="marker ").count() for pk in ids}
    accepted = {pk: 0 for pk in ids}
    for index, payload in requests:
        response = pools[index]().request("POST", "/events", body=payload, headers={"Content-Type": "application/json"})
        count("tls: events mix", status=response.status)
        assert response.status < 500, f"{response.status} for {payload[:300]!r}"
        if response.status == 202:
            accepted[ids[index]] += response.json()["accepted"]
    count("tls: events mix", accepted=sum(accepted.values()))
    wanted = {pk: before[pk] + accepted[pk] for pk in ids}
    # The gateway flushes every 0.2 s here; a marker event reported last shows the flush passed.
    marker = f"marker {uuid.uuid4()}"
    assert pools[0]().request("POST", "/events", body=s.body([{"type": "install-applied", "detail": marker}])).status == 202
    assert wait_for(lambda: DeviceEvent.objects.filter(device_id=ids[0], detail=marker).exists())
    now = {pk: DeviceEvent.objects.filter(device_id=pk).exclude(detail__startswith="marker ").count() for pk in ids}
    count("tls: events mix", lost=sum(max(0, wanted[pk] - now[pk]) for pk in ids))
    assert now == wanted, f"events stored {now}, accepted {wanted} after {requests!r}"[:2000]


@pytest.mark.parametrize("validity", ["expired", "not yet valid"])
def test_a_certificate_outside_its_validity_ends_at_the_handshake(gateway, factory, register, tmp_path, validity):
    device = register(factory)
    ca = device_ca_get(factory=factory)
    ca_cert, ca_key = pki.cert_load(ca.certificate), pki.key_decrypt(ca.private_key)
    now = datetime.now(timezone.utc)
    start, end = (now - timedelta(days=10), now - timedelta(days=1)) if validity == "expired" else (now + timedelta(days=1), now + timedelta(days=2))
    key = pki.key_generate()
    registered = pki.cert_load(device.response["certificate"])
    cert = (
        x509.CertificateBuilder()
        .subject_name(registered.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(registered.serial_number)  # even the device's current serial
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(ca_key, hashes.SHA256())
    )
    forged = write_identity(tmp_path / "outside", key=key, chain_pem=pki.cert_pem(cert) + ca.certificate, server_ca_pem=Path(device.server_ca).read_text(), device_uuid=device.uuid)
    with pytest.raises(Exception) as caught:
        device_pool(gateway, forged).request("GET", "/device")
    assert "CERTIFICATE" in str(caught.value).upper() or "SSL" in str(caught.value).upper(), caught.value
