"""Fuzzing the device gateway in process, through its WSGI interface, as registered devices with
their real certificates: whatever path, method, headers, body or certificate a device sends, the
answer is a documented status with a JSON body and never a server error; a refused request writes
nothing; every event answered 202 is written exactly once by the next flush, and no device's
report touches another's.

BREAKWATER_FUZZ_EXAMPLES sets the examples per property (default 25); bench/fuzz_gateway.py runs
them with a larger budget and counts what was tried.
"""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import assume, example, given
from hypothesis import strategies as st

from devices import checkins, pki
from factory.tuf.models import TufView

from . import strategies as s
from .harness import case, count, fuzz
from .judge import Ledger, events_read, send

# --- paths, methods, headers ---------------------------------------------------------------------


@fuzz()
@given(path=s.paths(), method=s.methods, device=st.integers(0, 2), data=st.data())
def test_any_path_and_method_is_answered_as_documented_and_writes_no_event(fleet, path, method, device, data):
    case("gateway: paths and methods")
    ledger = Ledger(fleet)
    body = data.draw(st.binary(max_size=64)) if method == "POST" else b""
    _, answer, repro = send(fleet, device, "gateway: paths and methods", method=method, path=path[1], body=body)
    ledger.sent(device, repro, answer, events_read(body) if answer.status == 202 else ())
    ledger.flush_and_judge("gateway: paths and methods")


@fuzz()
@example(headers={"x-ats-tags": "\u00c2\u00a1"}, path="/device", device=0)  # "¡" sent as UTF-8
@given(headers=s.header_sets(), path=st.sampled_from(["/device", "/repo/timestamp.json", "/repo/targets.json", "/repo/1.root.json", f"/targets/{s.HWID}-lmp-42"]), device=st.integers(0, 2))
def test_any_headers_are_answered_as_documented_and_a_check_in_is_written_as_read(fleet, headers, path, device):
    case("gateway: headers")
    ledger = Ledger(fleet)
    _, answer, repro = send(fleet, device, "gateway: headers", path=path, headers=headers)
    ledger.sent(device, repro, answer)
    ledger.flush_and_judge("gateway: headers")
    row = fleet.devices[device]
    row.refresh_from_db()
    if answer.status < 400 and "x-ats-tags" in headers:
        # Header values here are the WSGI environ's latin-1 strings; the device meant their bytes as UTF-8.
        sent = headers["x-ats-tags"].encode("latin-1").decode("utf-8")
        assert row.tag == sent.split(",")[0].strip(), repro


# --- certificates -----------------------------------------------------------------------------------

ENCODINGS = [_ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.BMPString, _ASN1Type.UniversalString, _ASN1Type.IA5String]


@st.composite
def subjects(draw, device_uuid, factory_name):
    """Subject attributes (oid, value, encoding): CN, OU and businessCategory missing, repeated,
    or with near-miss values."""
    text = st.text(max_size=70)
    cn = st.one_of(
        st.sampled_from([str(device_uuid), str(device_uuid).upper(), device_uuid.hex, f"{{{device_uuid}}}", f"urn:uuid:{device_uuid}", f"{device_uuid}\x00", f" {device_uuid}"]),
        st.builds(lambda: str(uuid.uuid4())),
        text,
    )
    ou = st.one_of(st.sampled_from([factory_name, "globex", factory_name.upper(), f"{factory_name} ", f"{factory_name}\x00", ""]), text)
    category = st.one_of(st.sampled_from([pki.PRODUCTION, "Production", "production ", "test", "", "production\x00"]), text)
    attributes = []
    for oid, values in ((NameOID.COMMON_NAME, cn), (NameOID.ORGANIZATIONAL_UNIT_NAME, ou), (NameOID.BUSINESS_CATEGORY, category)):
        for value in draw(st.lists(values, min_size=0, max_size=2)):
            attributes.append((oid, value, draw(st.sampled_from(ENCODINGS))))
    return draw(st.permutations(attributes))


def _certificate(fleet, attributes, issuer, serial, validity):
    device = fleet.devices[0]
    if issuer == "factory":
        ca_cert, ca_key = fleet.ca_cert, fleet.ca_key
    elif issuer == "other factory":
        ca_cert, ca_key = fleet.other_ca_cert, fleet.other_ca_key
    else:  # the factory CA's name with another key: a forgery
        ca_cert, ca_key = fleet.ca_cert, pki.key_generate()
    try:
        name = x509.Name([x509.NameAttribute(oid, value, _type=encoding) for oid, value, encoding in attributes])
    except ValueError:
        return None  # cryptography will not build it (e.g. a CN over 64 characters)
    now = datetime.now(timezone.utc)
    start, end = {"valid": (now - timedelta(minutes=5), now + timedelta(days=1)), "expired": (now - timedelta(days=10), now - timedelta(days=1)), "future": (now + timedelta(days=1), now + timedelta(days=2))}[validity]
    key = pki.key_generate()
    try:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(int(device.certificate_serial, 16) if serial == "current" else x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .sign(ca_key, hashes.SHA256())
        )
    except ValueError:
        return None


def _names_the_device(attributes, device, factory_name):
    values = {oid: [v for o, v, _ in attributes if o == oid] for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.BUSINESS_CATEGORY)}
    try:
        cn_ok = len(values[NameOID.COMMON_NAME]) == 1 and uuid.UUID(values[NameOID.COMMON_NAME][0]) == device.uuid
    except ValueError:
        cn_ok = False
    production = values[NameOID.BUSINESS_CATEGORY] == [pki.PRODUCTION]
    return cn_ok and values[NameOID.ORGANIZATIONAL_UNIT_NAME] == [factory_name] and production == device.is_production


@fuzz()
@given(data=st.data(), issuer=st.sampled_from(["factory", "other factory", "forged"]), serial=st.sampled_from(["current", "random"]), validity=st.sampled_from(["valid", "expired", "future"]))
def test_a_certificate_is_let_in_only_if_it_is_the_devices_own(fleet, data, issuer, serial, validity):
    """Validity dates are the TLS handshake's to check (tests/fuzz/test_gateway_tls_fuzz.py); behind
    it, only the registered device's current certificate from its factory's CA is answered."""
    case("gateway: certificates")
    device = fleet.devices[0]
    own_subject = [(NameOID.COMMON_NAME, str(device.uuid), _ASN1Type.UTF8String), (NameOID.ORGANIZATIONAL_UNIT_NAME, fleet.factory.name, _ASN1Type.UTF8String), (NameOID.BUSINESS_CATEGORY, pki.PRODUCTION, _ASN1Type.UTF8String)]
    # A third of the cases keep the device's own subject, so the one certificate that must be let
    # in is tried with every issuer, serial and validity.
    attributes = own_subject if data.draw(st.integers(0, 2)) == 0 else data.draw(subjects(device.uuid, fleet.factory.name))
    cert = _certificate(fleet, attributes, issuer, serial, validity)
    assume(cert is not None)
    fleet.ders[0] = cert.public_bytes(pki.serialization.Encoding.DER)
    ledger = Ledger(fleet)
    _, answer, repro = send(fleet, 0, "gateway: certificates", path="/device")
    ledger.sent(0, repro, answer)
    own = issuer == "factory" and serial == "current" and _names_the_device(attributes, device, fleet.factory.name)
    assert answer.status == (200 if own else 403), f"{answer.status} for a certificate with subject {attributes!r}, issuer {issuer}, serial {serial}"
    if own:
        assert answer.json()["uuid"] == str(device.uuid)
    ledger.flush_and_judge("gateway: certificates")


@pytest.mark.parametrize("unit", ["{factory}\x00", "{factory}\n", "{factory} x", "{factory}\u202e"])
def test_a_certificate_whose_unit_is_no_factory_name_is_refused_before_any_query(fleet, unit):
    # A NUL here once reached the device query: PostgreSQL refused it and every device got a 503.
    device = fleet.devices[0]
    attributes = [(NameOID.COMMON_NAME, str(device.uuid), _ASN1Type.UTF8String), (NameOID.ORGANIZATIONAL_UNIT_NAME, unit.format(factory=fleet.factory.name), _ASN1Type.UTF8String), (NameOID.BUSINESS_CATEGORY, pki.PRODUCTION, _ASN1Type.UTF8String)]
    cert = _certificate(fleet, attributes, "factory", "current", "valid")
    fleet.ders[0] = cert.public_bytes(pki.serialization.Encoding.DER)
    _, answer, _ = send(fleet, 0, "gateway: certificates", path="/device")
    assert answer.status == 403 and "does not name a device" in answer.json()["error"]


# --- event bodies ----------------------------------------------------------------------------------


def _post_one(fleet, name, payload, device=0, **request):
    case(name)
    ledger = Ledger(fleet)
    _, answer, repro = send(fleet, device, name, method="POST", path="/events", body=payload, headers={"content-type": "application/json"}, **request)
    ledger.sent(device, repro, answer, events_read(payload, request.get("content_length")) if answer.status == 202 else ())
    ledger.flush_and_judge(name)
    return answer


@fuzz()
@given(events=st.lists(s.good_events(), min_size=1, max_size=100), wrapped=st.booleans(), device=st.integers(0, 2))
def test_good_events_are_accepted_and_written_exactly_once(fleet, events, wrapped, device):
    answer = _post_one(fleet, "events: good", s.body(events, wrapped), device)
    assert answer.status == 202 and answer.json() == {"accepted": len(events)}


@fuzz()
@given(payload=s.malformed_bodies)
def test_malformed_huge_or_too_many_events_are_refused_and_write_nothing(fleet, payload):
    answer = _post_one(fleet, "events: malformed", payload)
    assert answer.status in (400, 403, 413), answer.status


@fuzz()
@given(events=st.lists(s.good_events(), min_size=1, max_size=5), length=s.lengths)
def test_a_content_length_that_lies_is_answered_as_documented(fleet, events, length):
    _post_one(fleet, "events: content-length", s.body(events), content_length=length)


def _mix(fleet, name, requests):
    """Send every request, then one flush: each device's 202'd events are written exactly once and
    nothing else, whatever the other requests (its own or other devices') were."""
    case(name)
    ledger = Ledger(fleet)
    for device, payload in requests:
        _, answer, repro = send(fleet, device, name, method="POST", path="/events", body=payload)
        ledger.sent(device, repro, answer, events_read(payload) if answer.status == 202 else ())
    ledger.flush_and_judge(name)


def _requests(bad):
    good = st.lists(s.good_events(), min_size=1, max_size=10).map(s.body)
    return st.lists(st.tuples(st.integers(0, 3), st.one_of(good, bad)), min_size=1, max_size=12)


@fuzz()
@given(requests=_requests(s.malformed_bodies))
def test_good_events_are_never_lost_among_refused_reports_of_several_devices(fleet, requests):
    _mix(fleet, "events: mix", requests)


# --- the hostile classes: each was once a 500 or a report that stopped the flush for everyone ------------


@fuzz()
@example(events=[{"type": ["install-started"]}])
@given(events=st.lists(s.wrongly_typed_events(), min_size=1, max_size=3))
def test_events_with_wrong_types_in_any_field_are_refused_or_written_as_sent(fleet, events):
    _post_one(fleet, "events: wrong types", s.body(events))


@fuzz()
@example(payload=s.deep(20_000))
@given(payload=s.deep_documents)
def test_deeply_nested_json_is_refused(fleet, payload):
    answer = _post_one(fleet, "events: deep nesting", payload[: 64 * 1024])
    assert answer.status in (400, 413)


@fuzz()
@example(events=[{"type": "install-started", "detail": "a\x00b"}])
@example(events=[{"type": "install-started", "detail": "\ud800"}])
@given(events=st.lists(s.text_events(), min_size=1, max_size=3))
def test_events_with_nul_surrogates_or_control_characters_are_refused_or_written_as_sent(fleet, events):
    _post_one(fleet, "events: hostile text", s.body(events))


@fuzz()
@example(events=[{"type": "install-started", "time": "2030-01-01T00:00:00+23:00"}])
@example(events=[{"type": "install-started", "time": "9999-12-31T23:00:00-05:00"}])
@given(events=st.lists(s.dated_events(), min_size=1, max_size=3))
def test_events_with_odd_dates_and_offsets_are_refused_or_written_as_sent(fleet, events):
    _post_one(fleet, "events: odd times", s.body(events))


@fuzz()
@example(path="/repo/1.root.json\n", target=None)
@example(path="/events", target=f"{s.HWID}-lmp-42\n")
@given(path=st.sampled_from(["/repo/1.root.json", "/repo/timestamp.json", "/events"]).map(lambda p: p + "\n"), target=st.none() | st.just(f"{s.HWID}-lmp-42\n"))
def test_a_name_with_a_trailing_newline_is_not_a_file_or_a_target(fleet, path, target):
    case("gateway: trailing newline")
    if target is None:
        _, answer, _ = send(fleet, 0, "gateway: trailing newline", path=path)
        assert answer.status == 404
    else:
        answer = _post_one(fleet, "gateway: trailing newline", s.body([{"type": "install-started", "target": target}]))
        assert answer.status == 400


@fuzz()
@example(headers={"x-ats-tags": "main\x00"}, path="/device", device=2)
@given(headers=s.header_sets(nul=True), path=st.sampled_from(["/device", "/repo/timestamp.json"]), device=st.integers(0, 2))
def test_headers_with_nul_are_refused_or_written_as_read(fleet, headers, path, device):
    test_any_headers_are_answered_as_documented_and_a_check_in_is_written_as_read.hypothesis.inner_test(fleet, headers, path, device)


@fuzz()
@example(tag="tag-no-one-made")
@given(tag=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=",;|@"), min_size=1, max_size=64))
def test_tags_a_device_names_never_make_the_server_sign_new_views(fleet, tag):
    case("gateway: device-named tags")
    # Every tag nothing was released for shares one empty view, signed the first time any device
    # needs it: after that, no tag a device names adds a view.
    send(fleet, 0, "gateway: device-named tags", path="/repo/timestamp.json", headers={"x-ats-tags": "first-tag-no-one-made"})
    views = TufView.objects.count()
    send(fleet, 0, "gateway: device-named tags", path="/repo/timestamp.json", headers={"x-ats-tags": tag})
    assert TufView.objects.count() == views, f"x-ats-tags {tag!r} made a new view"


@fuzz()
@example(requests=[(0, s.body([{"type": "install-started"}])), (1, s.body([{"type": "install-started", "detail": "\x00"}])), (2, s.body([{"type": "install-started", "time": "9999-12-31T23:00:00-05:00"}]))])
@given(requests=_requests(st.one_of(s.malformed_bodies, st.lists(st.one_of(s.wrongly_typed_events(), s.text_events(), s.dated_events()), min_size=1, max_size=3).map(s.body), s.deep_documents)))
def test_good_events_are_never_lost_among_any_reports_of_several_devices(fleet, requests):
    _mix(fleet, "events: mix with every hostile class", requests)
