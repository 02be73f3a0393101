"""What a device may report to the gateway: its event bodies and its check-in headers, checked
against one strict schema before anything is buffered.

Everything a device sends is checked here, in this order: body size, UTF-8, JSON nesting depth
(scanned on the bytes, before the parser can recurse), JSON itself, then each event field by
field. A report that breaks a rule raises `ReportError` naming the event and the field; the
gateway answers 400 (413 for size and counts) and buffers nothing of that request. What passes is
plain data the database always takes: text without NUL, unpaired surrogates or control
characters, integers within their columns, and times in UTC within a window around the server's
clock. So no device's report can stop the flush that writes everyone's.

A new event shape (another client's JSON) is a new `EventShape` in `EVENT_SHAPES`: it says how to
recognise its objects and maps them to `EventReport` with the field checks below.
"""
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings

from factory.plurals import counted

from .models import DeviceEvent

MAX_BODY = 64 * 1024
MAX_EVENTS = 100
MAX_DEPTH = 8  # a list of events in {"events": [...]} is 3 deep; objects inside fields add a few
MAX_FIELDS = 32  # keys per event object, unknown ones included
MAX_DETAIL = 2000
MAX_TIME_TEXT = 64
MAX_TAGS_HEADER = 1024  # aktualizr-lite sends every tag it follows, comma-separated
# No real time zone is further than 14 hours from UTC; PostgreSQL refuses offsets past 15:59.
MAX_OFFSET = timedelta(hours=14)

EVENT_TYPES = frozenset(DeviceEvent.Type.values)
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,254}\Z")
TAG = re.compile(r"^[^\s,;|@]{1,64}\Z")
VERSION_IN_NAME = re.compile(r"-(\d{1,9})\Z")
MAX_VERSION = 2**31 - 1  # versions are stored in 32-bit integer columns

# Tab and newline are how error output is laid out (a failed install's log lines), so detail
# keeps them. Every other C0 control, DEL and the C1 controls are refused in every field: they
# have no place in a report, and in a terminal, a log viewer or a CSV export they can move the
# cursor, rewrite a line (CR) or start an escape sequence (ESC, CSI) that hides what was reported.
_CONTROLS = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])
_REFUSED_IN_DETAIL = re.compile("[" + re.escape(_CONTROLS.replace("\t", "").replace("\n", "")) + "\ud800-\udfff]")
_REFUSED_IN_TEXT = re.compile("[" + re.escape(_CONTROLS) + "\ud800-\udfff]")


class ReportError(Exception):
    """A report the schema refuses: `status` 400 or 413, which event and field, and why."""

    def __init__(self, message, *, status=400, event=None, field=None):
        super().__init__(message)
        self.status = status
        self.event = event
        self.field = field

    @property
    def message(self):
        # With an event or a field the message is a predicate they complete into a sentence:
        # "In event 3, detail must be text", "Event 3 is not an object", "x-ats-tags must name a tag".
        text = str(self)
        if self.event is not None and self.field is not None:
            return f"In event {self.event}, {self.field} {text}"
        if self.event is not None:
            return f"Event {self.event} {text}"
        if self.field is not None:
            return f"{self.field} {text}"
        return text

    def payload(self):
        return {"error": self.message, "event": self.event, "field": self.field}


@dataclass(frozen=True)
class EventReport:
    """One event as the schema accepted it: every value fits its column."""

    event_type: str
    target_name: str
    target_version: int | None
    success: bool | None
    detail: str
    reported_at: datetime  # UTC
    device: str | None = None  # the UUID the event names, if it names one (lower case)
    event_id: str = ""  # the client's own id of the event (aktualizr-lite's "id"), for dedupe


def target_version(name):
    """The version a target name ends with (`...-lmp-42` is 42), or None."""
    match = VERSION_IN_NAME.search(name or "")
    return int(match.group(1)) if match else None


def time_window():
    """(how far back, how far ahead) of the server's clock a reported time may be."""
    back, ahead = settings.BREAKWATER_EVENT_TIME_WINDOW
    return timedelta(days=back), timedelta(days=ahead)


# --- the body ---------------------------------------------------------------------------------


def json_depth(data, limit=MAX_DEPTH):
    """The deepest nesting of arrays and objects in JSON bytes, or a lower bound past `limit`.

    Brackets inside strings do not count. Scanning bytes is safe for UTF-8: no byte of a multibyte
    sequence is an ASCII quote, backslash or bracket.
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            # Two values for one field: which one counts would depend on the parser.
            raise ReportError("appears twice in one object", field=key)
        obj[key] = value
    return obj


def _no_constant(name):
    raise ReportError(f"{name} is not a JSON number")


def body_parse(body):
    """The JSON value of a request body, or ReportError: size, encoding, depth, syntax."""
    if len(body) > MAX_BODY:
        raise ReportError(f"At most {MAX_BODY} bytes of events per request", status=413)
    if not body.strip():
        raise ReportError("The body is empty; send a JSON list of events")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError("The body must be UTF-8 JSON") from None
    if json_depth(body) > MAX_DEPTH:
        raise ReportError(f"The JSON is nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except ValueError:  # JSONDecodeError, and integers of more than 4,300 digits
        raise ReportError("The body must be JSON") from None


def events_parse(body, *, now=None):
    """Every event of a request body as EventReport, or ReportError for the first bad one.

    Events a shape accepts but Breakwater does not record (aktualizr-lite's
    MetadataUpdateCompleted, ids of a newer client) are checked like the others and left out.
    """
    data = body_parse(body)
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"events"})
        if unknown:
            raise ReportError('is not a field of a report; send {"events": [...]}', field=unknown[0])
        data = data.get("events")
    if not isinstance(data, list) or not data:
        raise ReportError('Send a JSON list of events (or {"events": [...]})')
    if len(data) > MAX_EVENTS:
        raise ReportError(f"At most {MAX_EVENTS} events per request", status=413)
    now = now or datetime.now(dt_timezone.utc)
    events = [event_parse(item, index, now=now) for index, item in enumerate(data)]
    return [event for event in events if event is not None]


def event_parse(item, index, *, now):
    if not isinstance(item, dict):
        raise ReportError("is not an object", event=index)
    if len(item) > MAX_FIELDS:
        raise ReportError(f"has more than {MAX_FIELDS} fields", event=index)
    for shape in EVENT_SHAPES:
        if shape.recognizes(item):
            return shape.parse(item, index, now=now)
    raise ReportError("is not an event this gateway knows", event=index)


# --- field checks -----------------------------------------------------------------------------


class _Fields:
    """Field checks for one event object; each raises ReportError naming the event and field."""

    def __init__(self, item, index):
        self.item = item
        self.index = index

    def refuse(self, field, message):
        raise ReportError(message, event=self.index, field=field)

    def text(self, field, *, max_length, pattern=None, multiline=False, required=False):
        value = self.item.get(field)
        if value is None or value == "":
            if required:
                self.refuse(field, "is required")
            return ""
        if not isinstance(value, str):
            self.refuse(field, "must be text")
        if len(value) > max_length:
            self.refuse(field, f"must be at most {max_length} characters")
        bad = (_REFUSED_IN_DETAIL if multiline else _REFUSED_IN_TEXT).search(value)
        if bad:
            char = bad.group()
            what = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else f"the control character U+{ord(char):04X}"
            self.refuse(field, f"may not contain {what}")
        if pattern is not None and not pattern.match(value):
            self.refuse(field, "is not well formed")
        return value

    def choice(self, field, choices):
        value = self.item.get(field)
        # Checked as text first: a list or an object is not hashable, a number is not a type.
        if not isinstance(value, str) or value not in choices:
            self.refuse(field, f"must be one of {', '.join(sorted(choices))}")
        return value

    def integer(self, field, *, default=None, maximum=MAX_VERSION):
        value = self.item.get(field, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
            self.refuse(field, f"must be a whole number from 0 to {maximum}")
        return value

    def boolean(self, field):
        value = self.item.get(field)
        if value is not None and not isinstance(value, bool):
            self.refuse(field, "must be true, false or absent")
        return value

    def time(self, field, *, now):
        value = self.item.get(field)
        if value is None:
            return now
        if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
            self.refuse(field, "must be an ISO 8601 timestamp")
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.refuse(field, "must be an ISO 8601 timestamp")
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt_timezone.utc)
        offset = stamp.utcoffset()
        if abs(offset) > MAX_OFFSET:
            self.refuse(field, "has a UTC offset beyond ±14:00")
        back, ahead = time_window()
        try:
            stamp = stamp.astimezone(dt_timezone.utc)
        except OverflowError:  # year 9999 west of UTC is in year 10000 in UTC
            stamp = None
        if stamp is None or not now - back <= stamp <= now + ahead:
            self.refuse(field, f"must be within {counted(back.days, 'day')} before and {counted(ahead.days, 'day')} after the server's clock (UTC {now:%Y-%m-%dT%H:%M:%SZ})")
        return stamp

    def device(self, field):
        value = self.item.get(field)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 64:
            self.refuse(field, "must be the device's UUID")
        return value.strip().lower()


class EventShape:
    """How one client's event objects look, and how they map to EventReport."""

    def recognizes(self, item):
        raise NotImplementedError

    def parse(self, item, index, *, now):
        raise NotImplementedError


class BreakwaterEvent(EventShape):
    """Breakwater's own shape (the simulator's): {"type", "target", "version", "success",
    "detail", "time", "device"}.

    Other fields are ignored and never stored: a client that adds one (a newer version, an
    aktualizr-lite field) keeps reporting. They are bounded all the same by the body size, the
    depth and the number of fields per object.
    """

    def recognizes(self, item):
        return "type" in item

    def parse(self, item, index, *, now):
        fields = _Fields(item, index)
        event_type = fields.choice("type", EVENT_TYPES)
        target = fields.text("target", max_length=255, pattern=TARGET_NAME)
        return EventReport(
            event_type=event_type,
            target_name=target,
            target_version=fields.integer("version", default=target_version(target)),
            success=fields.boolean("success"),
            detail=fields.text("detail", max_length=MAX_DETAIL, multiline=True),
            reported_at=fields.time("time", now=now),
            device=fields.device("device"),
        )


# aktualizr-lite's event ids -> Breakwater's event types. None: accepted and not recorded.
AKTUALIZR_EVENT_TYPES = {
    "EcuDownloadStarted": DeviceEvent.Type.DOWNLOAD_STARTED,
    "EcuDownloadCompleted": DeviceEvent.Type.DOWNLOAD_COMPLETED,
    "EcuInstallationStarted": DeviceEvent.Type.INSTALL_STARTED,
    "EcuInstallationApplied": DeviceEvent.Type.INSTALL_APPLIED,
    "EcuInstallationCompleted": DeviceEvent.Type.INSTALL_COMPLETED,
    "MetadataUpdateCompleted": None,  # a poll that found new metadata: the check-in already says so
}
EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
EVENT_TYPE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z")
DIGITS = re.compile(r"^[0-9]{1,10}\Z")


MAX_AKTUALIZR_DETAIL = 4096  # the client caps details at 2048 characters and adds a marker


def _aktualizr_details(value, fields):
    """aktualizr-lite's details: the output of the tools it ran (ostree, docker compose), which
    may hold colour escapes and carriage returns. Control characters are replaced, not refused: a
    refused batch is re-sent every 10 s for ever and holds back every later event of the device.
    What is stored still holds none of them."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        fields.refuse("details", "must be text")
    if len(value) > MAX_AKTUALIZR_DETAIL:
        fields.refuse("details", f"must be at most {MAX_AKTUALIZR_DETAIL} characters")
    return _REFUSED_IN_DETAIL.sub("\ufffd", value.replace("\r\n", "\n"))


class AktualizrEvent(EventShape):
    """aktualizr-lite's shape: {"id", "deviceTime", "eventType": {"id", "version"}, "event":
    {"ecu", "correlationId", "targetName", "version", "success", "details"}}.

    `ecu` is the client's name for its primary ECU, never an identity: the certificate is. An
    event id this gateway does not know (a newer client's) is accepted and not recorded, since
    aktualizr-lite re-sends a batch answered with a 400 every 10 s for ever; a known id with a
    bad field is a 400 all the same, as for every shape, because that batch is broken whoever
    sends it.
    """

    def recognizes(self, item):
        return "eventType" in item

    def parse(self, item, index, *, now):
        outer = _Fields(item, index)
        event_id = outer.text("id", max_length=64, pattern=EVENT_ID, required=True)
        reported_at = outer.time("deviceTime", now=now)
        kind = item.get("eventType")
        if not isinstance(kind, dict):
            outer.refuse("eventType", 'must be an object {"id", "version"}')
        kind_fields = _Fields(kind, index)
        type_id = kind_fields.text("id", max_length=64, pattern=EVENT_TYPE_ID, required=True)
        kind_fields.integer("version", maximum=MAX_VERSION)
        body = item.get("event", {})
        if not isinstance(body, dict):
            outer.refuse("event", "must be an object")
        if len(body) > MAX_FIELDS:
            outer.refuse("event", f"has more than {MAX_FIELDS} fields")
        fields = _Fields(body, index)
        fields.text("ecu", max_length=255)
        fields.text("correlationId", max_length=255)
        target = fields.text("targetName", max_length=255, pattern=TARGET_NAME)
        version = body.get("version")
        if isinstance(version, str) and DIGITS.match(version) and int(version) <= MAX_VERSION:
            version = int(version)  # custom.version is a string in targets metadata
        elif version == "":
            version = None
        else:
            version = fields.integer("version")
        if version is None:
            version = target_version(target)
        success = fields.boolean("success")
        detail = _aktualizr_details(body.get("details"), fields)
        event_type = AKTUALIZR_EVENT_TYPES.get(type_id)
        if event_type is None:
            return None
        return EventReport(
            event_type=str(event_type),
            target_name=target,
            target_version=version,
            success=success,
            detail=detail,
            reported_at=reported_at,
            event_id=event_id,
        )


EVENT_SHAPES = (BreakwaterEvent(), AktualizrEvent())


# --- check-in headers -------------------------------------------------------------------------


def _header_text(raw, header, max_length):
    # WSGI hands headers over as ISO-8859-1 text; devices send UTF-8.
    if len(raw) > max_length:
        raise ReportError(f"must be at most {max_length} bytes", field=header)
    try:
        value = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ReportError("must be UTF-8", field=header) from None
    if _REFUSED_IN_TEXT.search(value):
        raise ReportError("may not contain control characters", field=header)
    return value


def checkin_tag(raw):
    """The tag an `x-ats-tags` header names (the first of a comma-separated list), or None."""
    if raw is None:
        return None
    value = _header_text(raw, "x-ats-tags", MAX_TAGS_HEADER)
    tag = value.split(",")[0].strip()
    if not TAG.match(tag):
        raise ReportError("must name a tag (at most 64 characters, no spaces or , ; | @)", field="x-ats-tags")
    return tag


INITIAL_TARGET = "Initial Target"  # what aktualizr-lite sends before it has installed anything


def checkin_target(raw):
    """The target name an `x-ats-target` header reports, "" for a device that has none yet
    (`Initial Target`), or None when the header is absent."""
    if raw is None:
        return None
    value = _header_text(raw, "x-ats-target", 255 + 16).strip()
    if value == INITIAL_TARGET:
        return ""
    if not TARGET_NAME.match(value):
        raise ReportError("is not a valid target name", field="x-ats-target")
    return value


# --- what the client says about itself: recorded when valid, ignored when not ------------------
#
# These headers only inform the device page. A bad value is dropped, not refused: refusing it
# would cut the device off on every path (it sends the same headers on each request), and on
# /events aktualizr-lite would re-send the refused batch every 10 s for ever. The values that
# decide what a device is served or counted as (x-ats-tags, x-ats-target) stay refused.

MAX_USER_AGENT = 256
MAX_DOCKER_APPS = 1024
OSTREE_HASH = re.compile(r"^[0-9a-f]{64}\Z")


def _optional_header(raw, max_length):
    if raw is None or len(raw) > max_length:
        return None
    try:
        value = raw.encode("latin-1").decode("utf-8").strip()
    except UnicodeError:
        return None
    if not value or _REFUSED_IN_TEXT.search(value) or not value.isprintable():
        return None
    return value


def client_facts(environ):
    """{"user_agent", "ostree_hash", "docker_apps"} from a request's headers, each only if valid
    (absent or invalid ones are left out); {} when none is."""
    facts = {}
    user_agent = _optional_header(environ.get("HTTP_USER_AGENT"), MAX_USER_AGENT)
    if user_agent is not None:
        facts["user_agent"] = user_agent
    ostree_hash = _optional_header(environ.get("HTTP_X_ATS_OSTREEHASH"), 64)
    if ostree_hash is not None and OSTREE_HASH.match(ostree_hash.lower()):
        facts["ostree_hash"] = ostree_hash.lower()
    apps = _optional_header(environ.get("HTTP_X_ATS_DOCKERAPPS"), MAX_DOCKER_APPS)
    if apps is not None:
        facts["docker_apps"] = apps
    return facts


# --- telemetry: the latest of each kind, checked like every report ----------------------------

MAX_TELEMETRY_BODY = 64 * 1024  # the gateway server refuses bodies past 64 KiB before this
# lshw nests a device's buses and their children; its JSON runs deeper than an event list.
MAX_TELEMETRY_DEPTH = 24
MAX_TELEMETRY_KEY = 256


def _telemetry_value_check(value, path):
    """Every string (keys too) is text without control characters other than tab and newline,
    and every number a finite one; ReportError naming the path of the first that is not."""
    stack = [(value, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if len(key) > MAX_TELEMETRY_KEY or _REFUSED_IN_TEXT.search(key):
                    raise ReportError("has a key that is too long or holds control characters", field=where or "body")
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            if _REFUSED_IN_DETAIL.search(value):
                raise ReportError("may not contain control characters or unpaired surrogates", field=(where or "body")[:200])


def telemetry_json_parse(body):
    """A JSON telemetry body (lshw, network, apps states) as compact JSON text, or ReportError."""
    if len(body) > MAX_TELEMETRY_BODY:
        raise ReportError(f"At most {MAX_TELEMETRY_BODY} bytes per report", status=413)
    if not body.strip():
        raise ReportError("The body is empty; send JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError("The body must be UTF-8 JSON") from None
    if json_depth(body, MAX_TELEMETRY_DEPTH) > MAX_TELEMETRY_DEPTH:
        raise ReportError(f"The JSON is nested more than {MAX_TELEMETRY_DEPTH} levels deep")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except ValueError:
        raise ReportError("The body must be JSON") from None
    if not isinstance(data, (dict, list)):
        raise ReportError("The body must be a JSON object or list")
    _telemetry_value_check(data, "")
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def telemetry_text_parse(body):
    """A text telemetry body (the client's TOML configuration) as text, or ReportError.

    Kept as the device sent it, not parsed: the client writes its own dump of its settings and
    Breakwater only shows it; it is text under the same rules as an event's detail.
    """
    if len(body) > MAX_TELEMETRY_BODY:
        raise ReportError(f"At most {MAX_TELEMETRY_BODY} bytes per report", status=413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError("The body must be UTF-8 text") from None
    text = text.replace("\r\n", "\n")
    bad = _REFUSED_IN_DETAIL.search(text)
    if bad:
        raise ReportError(f"may not contain the control character U+{ord(bad.group()):04X}" if not "\ud800" <= bad.group() <= "\udfff" else "may not contain unpaired surrogates", field="body")
    return text
