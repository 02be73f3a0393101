"""Hypothesis strategies for what a hostile or broken device sends: paths, headers, event bodies."""
import json
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote_to_bytes

from hypothesis import strategies as st

from devices.models import DeviceEvent

HWID = "intel-corei7-64"
EVENT_TYPES = sorted(DeviceEvent.Type.values)

# --- paths and methods ----------------------------------------------------------------------------

_segments = st.one_of(
    st.sampled_from(
        [
            "timestamp.json", "snapshot.json", "targets.json", "1.root.json", "2.root.json", "0.root.json", "99999999999.root.json",
            "..", ".", "", "%2e%2e", "%00", "%ff%fe", "%C3%A9", "%%", "%2", "%u002e", "timestamp.json%0a", "timestamp.json%00",
            f"{HWID}-lmp-42", f"{'0' * 64}.{HWID}-lmp-42", "a" * 300, "\\..\\..\\windows", "/etc/passwd",
        ]
    ),
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda b: "".join(f"%{c:02x}" for c in b)),
    st.integers(1, 20_000).map(lambda n: "a" * n),
)
_prefixes = st.sampled_from(["/repo/", "/targets/", "/events", "/device", "/", "", "//repo/", "/REPO/", "/repo", "/device/", "/events/"])


@st.composite
def paths(draw):
    """A request path as the device sent it (percent-encoded), and PATH_INFO as the gateway server makes
    it (percent-decoded bytes read as latin-1)."""
    raw = draw(_prefixes) + "/".join(draw(st.lists(_segments, max_size=4)))
    sent = raw.encode("utf-8", "surrogatepass")
    return sent, unquote_to_bytes(sent).decode("latin-1")


methods = st.one_of(
    st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "PROPFIND"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
)

# --- headers ---------------------------------------------------------------------------------------

_latin1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=80)
header_values = st.one_of(
    _latin1,
    st.sampled_from(["", " ", "production", "main", "production,main", " main ,x", "a" * 64, "a" * 65, "t@g", "a;b", "a|b", "\x00", "main\x00", "\x7f", "\x1b[31m", "Ã©tiquette"]),
    st.integers(1, 100_000).map(lambda n: "x" * n),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass").decode("latin-1")),  # UTF-8 as the gateway server hands it
)
target_headers = st.one_of(header_values, st.sampled_from([f"{HWID}-lmp-42", f"{HWID}-lmp-0", f"{HWID}-lmp-99999999999", f" {HWID}-lmp-42 ", "-lmp-1"]))
etags = st.one_of(header_values, st.sampled_from(["*", 'W/"x"', '"', '""', ",,,", "W/", '"a", W/"b", *']))
lengths = st.one_of(st.none(), st.sampled_from(["", "0", "-1", "abc", "1e3", " 5 ", "1_0", "99999999999999999999", "0x10", "٣"]), st.integers(-10, 70_000).map(str))


@st.composite
def header_sets(draw, nul=False):
    """Headers a device may send; with nul=True the device-named tag and target may hold NUL
    (once accepted, and then refused by PostgreSQL at every check-in flush)."""
    headers = {}
    keep = (lambda value: True) if nul else (lambda value: "\x00" not in value)
    if draw(st.booleans()):
        headers["x-ats-tags"] = draw(header_values.filter(keep))
    if draw(st.booleans()):
        headers["x-ats-target"] = draw(target_headers.filter(keep))
    if draw(st.booleans()):
        headers["if-none-match"] = draw(etags)
    for name in draw(st.lists(st.sampled_from(["accept", "x-forwarded-for", "host", "user-agent", "x-ats-dockerapps", "cookie", "authorization"]), max_size=3)):
        headers[name] = draw(header_values)
    return headers


# --- event bodies ------------------------------------------------------------------------------------

# Times a device might send: ISO 8601 in its many forms and offsets, inside the window the gateway
# takes around its clock (BREAKWATER_EVENT_TIME_WINDOW: 7 days back, 1 day ahead by default).
_now = datetime.now(timezone.utc).replace(tzinfo=None)
_sane_times = st.datetimes(min_value=_now - timedelta(days=6), max_value=_now + timedelta(hours=12)).flatmap(
    lambda moment: st.sampled_from([moment.isoformat() + "Z", moment.isoformat() + "+00:00", moment.isoformat(), moment.isoformat() + "+02:00", moment.isoformat() + "-07:30"])
)


@st.composite
def good_events(draw):
    """An event the gateway documents as valid."""
    event = {"type": draw(st.sampled_from(EVENT_TYPES))}
    if draw(st.booleans()):
        event["target"] = f"{HWID}-lmp-{draw(st.integers(0, 10_000))}"
    if draw(st.booleans()):
        event["version"] = draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        event["success"] = draw(st.booleans())
    if draw(st.booleans()):
        event["detail"] = draw(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=100))
    if draw(st.booleans()):
        event["time"] = draw(_sane_times)
    return event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ("type", "target", "version", "success", "detail", "time", "device")


@st.composite
def wrongly_typed_events(draw):
    """A good event with any field replaced by any JSON value (a list, an object, a number...)."""
    event = draw(good_events())
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        event[name] = draw(json_values)
    return event


def _hostile_text():
    return st.one_of(
        st.text(max_size=30),  # anything, lone surrogates included
        st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\x1b[2J", "\u202e", "\ufeff", "\r\n", "\u2028"]),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=30).map(lambda t: t + "\x00"),
    )


@st.composite
def text_events(draw):
    """A good event with NUL, lone surrogates, control or format characters in its text fields."""
    event = draw(good_events())
    for name in draw(st.lists(st.sampled_from(["detail", "target", "type", "device", "time"]), min_size=1, max_size=2, unique=True)):
        kept = event.get(name) if isinstance(event.get(name), str) and draw(st.booleans()) else ""
        event[name] = kept + draw(_hostile_text())
    return event


_years = st.sampled_from([1, 2, 999, 1000, 1969, 1970, 2038, 2106, 9998, 9999])
_offsets = st.one_of(
    st.sampled_from(["Z", "", "+00:00", "-00:00", "+23:59", "-23:59", "+14:00", "-12:00", "+15:59", "+16:00", "+05:30:15", "+0100", "+01", "+23:59:59.999999"]),
)


@st.composite
def odd_times(draw):
    """Times at the edges of what Python, SQLite and PostgreSQL represent."""
    form = draw(st.sampled_from(["date", "datetime", "text", "number"]))
    if form == "text":
        return draw(st.sampled_from(["", "now", "yesterday", "2030-02-30T00:00:00Z", "2030-13-01", "24:00", "2030-01-01T24:00:00", "T", "2030-W01-1", "20300101T000000Z", "2030-01-01 00:00:00", "0000-01-01T00:00:00Z"]))
    if form == "number":
        return draw(st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=False)))
    year = draw(_years)
    moment = f"{year:04d}-{draw(st.integers(1, 12)):02d}-{draw(st.integers(1, 28)):02d}"
    if form == "datetime":
        moment += f"T{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}:{draw(st.integers(0, 59)):02d}"
        if draw(st.booleans()):
            moment += "." + "9" * draw(st.integers(1, 9))
    return moment + draw(_offsets)


@st.composite
def dated_events(draw):
    event = draw(good_events())
    event["time"] = draw(odd_times())
    return event


def deep(depth, opener="[", closer="]"):
    return (opener * depth + closer * depth).encode()


deep_documents = st.one_of(
    st.integers(100, 30_000).map(deep),
    st.integers(100, 15_000).map(lambda d: b'{"events": ' + deep(d) + b"}"),
    st.integers(100, 10_000).map(lambda d: b'[{"type": "install-started", "detail": ' + deep(d) + b"}]"),
    st.integers(100, 10_000).map(lambda d: (b'{"a":' * d) + b"1" + b"}" * d),
)


def body(events_or_document, wrapped=False):
    document = {"events": events_or_document} if wrapped else events_or_document
    return json.dumps(document).encode("utf-8", "surrogatepass")


# Bodies that are not a list of events, or are too much: refused today, and must stay refused.
malformed_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"events": []}', b'{"events": {}}', b"[1]", b'["install-started"]', b"[null]", b"[[]]", b"\xef\xbb\xbf[]", b"NaN", b"[Infinity]", b"1e999999", b'"' + b"a" * 60_000 + b'"']),
    st.integers(-(2**4000), 2**4000).map(lambda n: str(n).encode()),
    st.lists(st.just({"type": "install-started"}), min_size=101, max_size=150).map(body),
    st.integers(65_537, 200_000).map(lambda n: b"[" + b" " * n + b"]"),
    st.builds(lambda e: body([e]), good_events().map(lambda e: {**e, "version": 2**31})),
    st.builds(lambda e: body([e]), good_events().map(lambda e: {**e, "version": -1})),
    st.builds(lambda e: body([e]), good_events().map(lambda e: {**e, "version": 10**400})),
    st.builds(lambda e: body([e]), good_events().map(lambda e: {**e, "detail": "d" * 2001})),
    st.builds(lambda e: body([e]), good_events().map(lambda e: {**e, "device": str(uuid.uuid4())})),
    st.builds(lambda e: body([e]), good_events().map(lambda e: {**e, "type": "exploded"})),
)
