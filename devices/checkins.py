"""Check-ins and events reported through the gateway: coalesced per device, written in batches.

A poll never writes to the database. The gateway records each check-in in a buffer (Redis when
REDIS_URL is set, so every gateway process shares it; else the gateway process's memory) and a
flusher writes the latest check-in of each device with one UPDATE per batch, the client facts
the check-ins carried (User-Agent, OSTree commit, apps) where they changed, and the buffered
events with one INSERT per batch. A plain poll moves only columns no index holds (last seen, the
targets version served): on PostgreSQL its row update is heap-only, so a fleet that polls adds
nothing to the device table's indexes or size (`devices.models.Device`).

A row the database refuses holds back no other: a refused batch is bisected, each attempt in a
transaction of its own, until the refused rows are found; they become dead letters
(`devices.deadletters`) and the rest are written. A database that cannot be reached is another
matter: then nothing is set aside and every row not yet written waits for the next flush.
"""
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import FilteredRelation, Q

from .deadletters import dead_letter_record
from .models import DeadLetter, Device, DeviceEvent, DeviceReport

logger = logging.getLogger(__name__)

BATCH = 500
# What a check-in's headers may say about the client (`reports.client_facts`).
CLIENT_FACTS = ("user_agent", "ostree_hash", "docker_apps")
EVENTS_PER_FLUSH = 20_000

# The database is not there (down, restarting, failing over, a dropped connection): keep the rows.
UNAVAILABLE = (OperationalError, InterfaceError)
# The database, or the conversion to its types, refuses these rows: set them aside.
REFUSED = (DataError, IntegrityError, ValueError, TypeError, OverflowError)
# What a buffered row that is not the row it should be raises while it is converted.
MALFORMED = (KeyError, TypeError, ValueError, OverflowError, AttributeError)


class Unwritten(Exception):
    """The database could not be reached part-way through a write: `pending` holds what was not
    written (rows already committed are not in it, so a retry writes nothing twice)."""

    def __init__(self, pending):
        super().__init__(f"the database could not be reached; {len(pending)} buffered rows kept for the next flush")
        self.pending = pending


@dataclass
class Undecodable:
    """A buffered entry that does not decode (damaged, or written by something else)."""

    kind: str
    raw: bytes
    error: str


@dataclass
class Checkin:
    """The latest check-in of one device. `None` fields were not reported and change nothing."""

    seen: float  # epoch seconds
    target_name: str | None = None
    target_version: int | None = None
    tag: str | None = None
    targets_version: int | None = None  # targets metadata version served, if any
    client: dict | None = None  # {fact: text} of CLIENT_FACTS the request's headers sent

    def merge(self, newer):
        """Fold a later check-in of the same device into this one."""
        if newer.seen >= self.seen:
            self.seen = newer.seen
            if newer.target_name is not None:
                self.target_name, self.target_version = newer.target_name, newer.target_version
            if newer.tag is not None:
                self.tag = newer.tag
            if newer.client:
                self.client = {**(self.client or {}), **newer.client}
        elif newer.client:
            # An older check-in (a restored one, another gateway's) only fills in facts the
            # newer ones did not send.
            self.client = {**newer.client, **(self.client or {})}
        if newer.targets_version is not None and (self.targets_version is None or newer.targets_version > self.targets_version):
            self.targets_version = newer.targets_version


class MemoryBuffer:
    """One gateway process's pending check-ins and events."""

    def __init__(self):
        self._lock = threading.Lock()
        self._checkins = {}
        self._events = []

    def checkin(self, device_id, checkin):
        with self._lock:
            current = self._checkins.get(device_id)
            if current is None:
                self._checkins[device_id] = checkin
            else:
                current.merge(checkin)

    def add_events(self, rows):
        with self._lock:
            self._events.extend(rows)

    def drain_checkins(self):
        with self._lock:
            pending, self._checkins = self._checkins, {}
        return pending

    def drain_events(self, limit=EVENTS_PER_FLUSH):
        with self._lock:
            rows, self._events = self._events[:limit], self._events[limit:]
        return rows

    def restore_checkins(self, pending):
        """Take back check-ins a failed flush drained; newer ones that came meanwhile still win."""
        for device_id, checkin in pending.items():
            self.checkin(device_id, checkin)

    def restore_events(self, rows):
        with self._lock:
            self._events[:0] = rows

    def take_undecodable(self):
        """Check-in entries that did not decode: none in memory, where nothing is serialized."""
        return []

    def keep_undecodable(self, entries):
        pass


class RedisBuffer:
    """Check-ins and events shared by every gateway process through Redis.

    A request only updates this process's memory; each flush first pushes that memory to Redis in
    one pipeline, then drains Redis, so whichever process flushes writes every process's check-ins.
    Check-ins: hashes device id -> last seen, -> latest reported target, -> latest reported tag,
    -> each client fact (a request without the headers leaves the earlier values), and a sorted
    set device id -> highest targets version served (ZADD GT keeps the maximum). Events go
    straight to a list.
    Draining is one MULTI, so two flushers never take the same entries.

    Gateways push whenever their own flush comes, so a device's older check-in (its poll through
    one gateway) can reach Redis after its newer one (through another): a script moves last seen,
    target and tag only forward, and lets an older check-in's client facts fill in only facts not
    held yet, as MemoryBuffer.merge does.
    """

    # KEYS: seen, target, tag, then one hash per client fact (CLIENT_FACTS' order). ARGV per
    # device: id, seen, target or "", tag or "", then each fact or "".
    PUSH = """
        local stride = 1 + #KEYS
        for i = 1, #ARGV, stride do
            local current = redis.call('HGET', KEYS[1], ARGV[i])
            local newer = not current or tonumber(ARGV[i + 1]) >= tonumber(current)
            if newer then
                redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
                if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2]) end
                if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 3]) end
            end
            for k = 4, #KEYS do
                local fact = ARGV[i + k]
                if fact ~= '' then
                    if newer then redis.call('HSET', KEYS[k], ARGV[i], fact) else redis.call('HSETNX', KEYS[k], ARGV[i], fact) end
                end
            end
        end
        return 0
    """
    PUSH_CHUNK = 1000  # devices per script call: Redis serves nobody else while a script runs

    def __init__(self, url, prefix):
        import redis

        self._redis = redis.Redis.from_url(url, **settings.REDIS_SOCKET_OPTIONS)
        self._local = MemoryBuffer()
        self._seen_key = f"{prefix}:seen"
        self._target_key = f"{prefix}:target"
        self._tag_key = f"{prefix}:tag"
        self._served_key = f"{prefix}:targets-served"
        self._client_keys = [f"{prefix}:client:{fact}" for fact in CLIENT_FACTS]
        self._events_key = f"{prefix}:events"
        self._push = self._redis.register_script(self.PUSH)
        self._undecodable = []

    def checkin(self, device_id, checkin):
        self._local.checkin(device_id, checkin)

    def push(self):
        """Move this process's check-ins to Redis."""
        pending = self._local.drain_checkins()
        if not pending:
            return
        items = list(pending.items())
        served = {device_id: c.targets_version for device_id, c in items if c.targets_version is not None}
        keys = [self._seen_key, self._target_key, self._tag_key, *self._client_keys]
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(items), self.PUSH_CHUNK):
            args = []
            for device_id, c in items[start : start + self.PUSH_CHUNK]:
                target = json.dumps([c.target_name, c.target_version]) if c.target_name is not None else ""
                client = c.client or {}
                args += [device_id, repr(c.seen), target, c.tag or "", *(client.get(fact) or "" for fact in CLIENT_FACTS)]
            self._push(keys=keys, args=args, client=pipe)
        if served:
            pipe.zadd(self._served_key, served, gt=True)
        try:
            pipe.execute()
        except Exception:
            # Redis unreachable: keep them in memory for the next push. The script only moves
            # values forward, so a pipeline that partly ran before failing is pushed again safely.
            self._local.restore_checkins(pending)
            raise

    def drain_checkins(self):
        self.push()
        keys = (self._seen_key, self._target_key, self._tag_key, *self._client_keys)
        pipe = self._redis.pipeline(transaction=True)
        for key in keys:
            pipe.hgetall(key)
        pipe.zrange(self._served_key, 0, -1, withscores=True)
        pipe.delete(*keys, self._served_key)
        seen, targets, tags, *facts, served, _ = pipe.execute()
        pending = {}

        def entry(key, field, raw, parse):
            # A damaged entry (written by something else) is set aside, not a crash of every flush.
            try:
                device_id = int(key)
                value = parse(raw)
            except (ValueError, TypeError, OverflowError) as exc:
                self._undecodable.append(Undecodable(DeadLetter.Kind.CHECKIN, b"%s %s=%s" % (key, field, raw), repr(exc)))
                return
            # Entries written between two commands of a drain can lack a last-seen value.
            checkin = pending.setdefault(device_id, Checkin(seen=0.0))
            if field == b"seen":
                checkin.seen = value
            elif field == b"target":
                checkin.target_name, checkin.target_version = value
            elif field == b"tag":
                checkin.tag = value
            elif field == b"targets-served":
                checkin.targets_version = value
            else:
                checkin.client = {**(checkin.client or {}), field.decode(): value}

        for device_id, raw in seen.items():
            entry(device_id, b"seen", raw, _finite)
        for device_id, raw in targets.items():
            entry(device_id, b"target", raw, _target_pair)
        for device_id, raw in tags.items():
            entry(device_id, b"tag", raw, lambda raw: raw.decode())
        for fact, values in zip(CLIENT_FACTS, facts):
            for device_id, raw in values.items():
                entry(device_id, fact.encode(), raw, lambda raw: raw.decode())
        for device_id, score in served:
            entry(device_id, b"targets-served", repr(score).encode(), lambda raw: int(float(raw)))
        return pending

    def take_undecodable(self):
        entries, self._undecodable = self._undecodable, []
        return entries

    def keep_undecodable(self, entries):
        """Entries whose dead letters could not be written now: tried again at the next flush."""
        self._undecodable[:0] = entries

    def restore_checkins(self, pending):
        """Check-ins a failed database write drained: pushed to Redis again at the next flush."""
        self._local.restore_checkins(pending)

    def add_events(self, rows):
        if rows:
            self._redis.rpush(self._events_key, *[json.dumps(row) for row in rows])

    def drain_events(self, limit=EVENTS_PER_FLUSH):
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(self._events_key, 0, limit - 1)
        pipe.ltrim(self._events_key, limit, -1)
        rows, _ = pipe.execute()
        return [self._decode(row) for row in rows]

    @staticmethod
    def _decode(raw):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return Undecodable(DeadLetter.Kind.EVENT, raw, f"not JSON: {exc}")

    def restore_events(self, rows):
        if rows:
            self._redis.lpush(self._events_key, *[row.raw if isinstance(row, Undecodable) else json.dumps(row) for row in reversed(rows)])


def _finite(raw):
    seen = float(raw)
    if seen != seen or seen in (float("inf"), float("-inf")):
        raise ValueError(f"{raw!r} is not a time")
    return seen


def _target_pair(raw):
    name, version = json.loads(raw)
    return name, version


def redis_prefix():
    """Keys are namespaced by database, so a test run and the demo never share a buffer."""
    db = settings.DATABASES["default"]
    return f"breakwater:{db.get('HOST') or ''}:{db.get('PORT') or ''}:{db['NAME']}"


_buffer = None
_buffer_lock = threading.Lock()


def buffer():
    """This process's buffer: Redis when REDIS_URL is set, else memory."""
    global _buffer
    if _buffer is None:
        with _buffer_lock:
            if _buffer is None:
                _buffer = RedisBuffer(settings.REDIS_URL, redis_prefix()) if settings.REDIS_URL else MemoryBuffer()
    return _buffer


# --- writing ----------------------------------------------------------------------------------


def _stamp(epoch):
    return datetime.fromtimestamp(epoch, tz=dt_timezone.utc)


def checkins_write(checkins):
    """Apply {device id: Checkin} to the devices, one UPDATE per batch; returns how many rows it
    changed (a check-in that changes nothing, an older one or a repeated one, writes nothing).

    A check-in older than what the database holds (two gateways flushing out of order) moves
    nothing back: last_seen and targets_version_seen only grow, target and tag follow the latest
    (the tag only while no tag was set from the server: `devices.tag_moves`).
    A check-in the database refuses becomes a dead letter; if the database cannot be reached,
    raises Unwritten with the check-ins not yet written.
    """
    items = sorted(checkins.items())
    handled = set()
    updated = 0
    try:
        for start in range(0, len(items), BATCH):
            updated += _isolated(items[start : start + BATCH], _update_batch, _checkin_refused, handled)
    except UNAVAILABLE as exc:
        raise Unwritten({device_id: c for device_id, c in items if device_id not in handled}) from exc
    return updated


def _checkin_refused(item, error):
    device_id, checkin = item
    known = isinstance(device_id, int) and not isinstance(device_id, bool)
    factory_id = Device.objects.filter(pk=device_id).values_list("factory_id", flat=True).first() if known else None
    dead_letter_record(
        kind=DeadLetter.Kind.CHECKIN,
        raw={"device_id": device_id, **vars(checkin)},
        error=error,
        device_id=device_id if known else None,
        factory_id=factory_id,
    )


def _devices_locked_first(device_ids):
    """Take the devices' key-share locks before a write to a table that refers to them.

    An insert into reports or events locks its own table, then its foreign-key check locks the
    device rows; a statement that locks the device table first and the referring table next (a
    TRUNCATE, an ALTER TABLE of a migration) would then wait on the flush while the flush waits
    on it: a deadlock, in which PostgreSQL aborts one of the two. Locking the devices first puts
    the flush in the same order, so it only waits.
    """
    if connection.vendor != "postgresql":
        return
    ids = sorted({i for i in device_ids if isinstance(i, int) and not isinstance(i, bool)})
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM devices_device WHERE id = ANY(%s) FOR KEY SHARE", [ids])


def _isolated(items, write, refused, handled):
    """Write `items` with `write(part) -> count`; a part the database refuses is halved and each
    half tried again, each attempt in a transaction (a savepoint) of its own, down to the single
    items, which go to `refused(item, error)`. Keys of items dealt with are added to `handled`.

    One refused row among n costs about 2 log2(n) statements; a clean batch costs one.
    """
    written = 0
    parts = [items]
    while parts:
        part = parts.pop()
        try:
            with transaction.atomic():
                written += write(part)
        except UNAVAILABLE:
            raise
        except REFUSED as exc:
            if len(part) > 1:
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
                continue
            refused(part[0], exc)
        handled.update(key for key, _ in part)
    return written


def _checkin_values(device_id, c):
    """One device's values for the UPDATE; ValueError, TypeError or OverflowError if they are not
    what they should be (the batch then finds this row by bisecting)."""
    seen = _stamp(c.seen) if c.seen else None
    if connection.vendor != "postgresql" and seen is not None:
        seen = connection.ops.adapt_datetimefield_value(seen)
    for number in (device_id, c.target_version, c.targets_version):
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            raise TypeError(f"{number!r} is not an integer")
    for text in (c.target_name, c.tag):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{text!r} is not text")
    return [device_id, seen, c.target_name, c.target_version, c.tag, c.targets_version]


def _update_batch(items):
    table = connection.ops.quote_name(Device._meta.db_table)
    postgres = connection.vendor == "postgresql"
    if postgres:
        row = "(%s::bigint, %s::timestamptz, %s::varchar, %s::integer, %s::varchar, %s::integer)"
    else:
        row = "(%s, %s, %s, %s, %s, %s)"
    params = []
    for device_id, c in items:
        params += _checkin_values(device_id, c)
    newer = f"(v.seen IS NOT NULL AND ({table}.last_seen IS NULL OR v.seen >= {table}.last_seen))"
    served_more = f"(v.targets_version IS NOT NULL AND ({table}.targets_version_seen IS NULL OR v.targets_version > {table}.targets_version_seen))"
    # A row the check-in would leave as it is gets no new version at all: PostgreSQL writes one
    # for every row an UPDATE matches, changed or not.
    changes = (
        f"(v.seen IS NOT NULL AND ({table}.last_seen IS NULL OR v.seen > {table}.last_seen))"
        f" OR ({newer} AND v.target_name IS NOT NULL AND ({table}.target_name <> v.target_name"
        f" OR COALESCE({table}.target_version, -1) <> COALESCE(v.target_version, -1)))"
        f" OR ({newer} AND v.tag IS NOT NULL AND {table}.config_tag = '' AND {table}.tag <> v.tag)"
        f" OR {served_more}"
    )
    values = ", ".join([row] * len(items))
    columns = ("id", "seen", "target_name", "target_version", "tag", "targets_version")
    if postgres:
        source = f"(VALUES {values}) AS v({', '.join(columns)})"
    else:
        # SQLite names VALUES columns column1, column2...; (no CTE: Python's sqlite3 before 3.12
        # reports no row count for statements that start with WITH).
        names = ", ".join(f"column{i + 1} AS {name}" for i, name in enumerate(columns))
        source = f"(SELECT {names} FROM (VALUES {values})) AS v"
    sql = f"""
        UPDATE {table} SET
            last_seen = CASE WHEN {newer} THEN v.seen ELSE {table}.last_seen END,
            target_name = CASE WHEN {newer} AND v.target_name IS NOT NULL THEN v.target_name ELSE {table}.target_name END,
            target_version = CASE WHEN {newer} AND v.target_name IS NOT NULL THEN v.target_version ELSE {table}.target_version END,
            tag = CASE WHEN {newer} AND v.tag IS NOT NULL AND {table}.config_tag = '' THEN v.tag ELSE {table}.tag END,
            targets_version_seen = CASE WHEN {served_more} THEN v.targets_version ELSE {table}.targets_version_seen END
        FROM {source} WHERE {table}.id = v.id AND ({changes})
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def clients_write(checkins):
    """Store the client facts that {device id: Checkin} carried as each device's CLIENT report,
    only where they change it; returns how many reports were written.

    Per batch one query reads the devices' stored reports and one upsert writes the changed ones:
    a steady fleet costs a read per BATCH devices and no write, whatever its size. The newest
    value of each fact wins: a check-in older than the stored report (two gateways flushing out
    of order) only fills in facts the report lacks. Facts that are not text, or that the database
    refuses, become dead letters; if the database cannot be reached, raises Unwritten with the
    check-ins (their time and facts only) not yet written.
    """
    items = sorted((device_id, c) for device_id, c in checkins.items() if c.client)
    handled = set()
    written = 0
    try:
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            stored = _clients_stored([device_id for device_id, _ in batch])
            changed = []
            for device_id, c in batch:
                if device_id not in stored:
                    handled.add(device_id)  # deleted since it checked in, or no device at all
                    continue
                factory_id, content, received_at = stored[device_id]
                try:
                    report = _client_report(device_id, c, content, received_at)
                except MALFORMED as exc:
                    _client_refused(device_id, c, factory_id, f"not client facts: {exc!r}")
                    handled.add(device_id)
                    continue
                if report is None:
                    handled.add(device_id)
                else:
                    changed.append((device_id, (report, c, factory_id)))

            def upsert(part):
                _devices_locked_first([device_id for device_id, _ in part])
                reports = [report for _, (report, _, _) in part]
                return len(DeviceReport.objects.bulk_create(reports, update_conflicts=True, unique_fields=["device", "kind"], update_fields=["content", "received_at"]))

            def refused(item, error):
                device_id, (_, c, factory_id) = item
                if Device.objects.filter(pk=device_id).exists():
                    _client_refused(device_id, c, factory_id, error)

            written += _isolated(changed, upsert, refused, handled)
    except UNAVAILABLE as exc:
        raise Unwritten({device_id: Checkin(seen=c.seen, client=c.client) for device_id, c in items if device_id not in handled}) from exc
    return written


def _clients_stored(device_ids):
    """{device id: (factory id, CLIENT report content or None, its received_at or None)} of the
    devices that exist, in one query (a LEFT JOIN on the unique (device, kind) pair)."""
    ids = [i for i in device_ids if isinstance(i, int) and not isinstance(i, bool)]
    rows = (
        Device.objects.filter(pk__in=ids)
        .annotate(client=FilteredRelation("reports", condition=Q(reports__kind=DeviceReport.Kind.CLIENT)))
        .values_list("id", "factory_id", "client__content", "client__received_at")
    )
    return {device_id: rest for device_id, *rest in rows}


def _client_report(device_id, c, content, received_at):
    """The DeviceReport to upsert for a check-in's facts, or None if it changes nothing;
    MALFORMED errors if the facts are not what `reports.client_facts` makes."""
    if not isinstance(c.client, dict):
        raise TypeError("the client facts are not a mapping")
    for fact, value in c.client.items():
        if fact not in CLIENT_FACTS or not isinstance(value, str):
            raise TypeError(f"{fact!r} is not a client fact with text")
    try:
        known = json.loads(content) if content else {}
    except ValueError:
        known = {}
    known = known if isinstance(known, dict) else {}
    seen = _stamp(c.seen)
    if received_at is not None and seen < received_at:
        merged, seen = {**c.client, **known}, received_at
    else:
        merged = {**known, **c.client}
    if merged == known:
        return None
    return DeviceReport(device_id=device_id, kind=DeviceReport.Kind.CLIENT, content=json.dumps(merged, sort_keys=True), received_at=seen)


def _client_refused(device_id, c, factory_id, error):
    dead_letter_record(
        kind=DeadLetter.Kind.CHECKIN, raw={"device_id": device_id, "seen": c.seen, "client": c.client}, error=error, device_id=device_id, factory_id=factory_id
    )


def _event(row):
    """The DeviceEvent of a buffered row; MALFORMED errors if the row is not one."""
    device_id, factory_id = row["device_id"], row["factory_id"]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in (device_id, factory_id)):
        raise TypeError("device_id and factory_id must be integers")
    reported_at = datetime.fromisoformat(row["reported_at"])
    if reported_at.tzinfo is None:
        raise ValueError("reported_at has no UTC offset")
    values = {
        "event_type": row["event_type"],
        "target_name": row.get("target_name") or "",
        "target_version": row.get("target_version"),
        "success": row.get("success"),
        "detail": row.get("detail") or "",
        "event_id": row.get("event_id") or "",
    }
    # A value of another type would reach the database as another SQL type (a list as an array),
    # which it answers with an error that says nothing about the row.
    for name, kinds in _EVENT_TYPES.items():
        if not isinstance(values[name], kinds) or (kinds == _OPTIONAL_INT and isinstance(values[name], bool)):
            raise TypeError(f"{name} is {type(values[name]).__name__}")
    return DeviceEvent(factory_id=factory_id, device_id=device_id, reported_at=reported_at, **values)


_OPTIONAL_INT = (int, type(None))
_EVENT_TYPES = {"event_type": str, "target_name": str, "target_version": _OPTIONAL_INT, "success": (bool, type(None)), "detail": str, "event_id": str}


def _already_stored(events):
    """The (device id, event id) pairs of `events` the database holds already: a batch the client
    re-sent after its first copy was written. One query per BATCH events, on the (device, event
    id) index; events without an id (Breakwater's own shape) cost none."""
    pairs = sorted({(event.device_id, event.event_id) for _, event in events if event.event_id})
    stored = set()
    for start in range(0, len(pairs), BATCH):
        part = pairs[start : start + BATCH]
        wanted = set(part)
        rows = DeviceEvent.objects.filter(device_id__in={d for d, _ in part}, event_id__in={e for _, e in part}).values_list("device_id", "event_id")
        stored.update(pair for pair in rows if pair in wanted)
    return stored


def events_write(rows):
    """Insert buffered event rows (dicts) in batches; returns how many were written.

    Rows of devices deleted since are dropped. A row that is not an event row, or that the
    database refuses, becomes a dead letter and the others are written. If the database cannot
    be reached, raises Unwritten with the rows not yet written.
    """
    if not rows:
        return 0
    handled = set()  # indexes of rows written, dropped or set aside
    try:
        ids = sorted({row.get("device_id") for row in rows if isinstance(row, dict) and isinstance(row.get("device_id"), int)})
        factories = {}
        for start in range(0, len(ids), BATCH):
            factories.update(Device.objects.filter(id__in=ids[start : start + BATCH]).values_list("id", "factory_id"))
        events = []
        for index, row in enumerate(rows):
            if isinstance(row, Undecodable):
                dead_letter_record(kind=row.kind, raw=row.raw, error=row.error)
                handled.add(index)
                continue
            device_id = row.get("device_id") if isinstance(row, dict) else None
            if isinstance(device_id, int) and device_id not in factories:
                handled.add(index)  # the device was deleted since it reported
                continue
            try:
                events.append((index, _event(row)))
            except MALFORMED as exc:
                dead_letter_record(kind=DeadLetter.Kind.EVENT, raw=row, error=f"not an event row: {exc!r}", device_id=device_id, factory_id=factories.get(device_id))
                handled.add(index)
        # A re-sent event (same device, same event id) is written once: copies in this drain are
        # dropped here, copies already written by an earlier flush are dropped after one lookup,
        # and a copy another flusher writes meanwhile is recognised when its insert is refused.
        stored = _already_stored(events)
        unique = []
        for index, event in events:
            key = (event.device_id, event.event_id)
            if event.event_id and key in stored:
                handled.add(index)
                continue
            if event.event_id:
                stored.add(key)
            unique.append((index, event))
        events = unique

        def insert(part):
            _devices_locked_first([event.device_id for _, event in part])
            return len(DeviceEvent.objects.bulk_create([event for _, event in part]))

        def refused(item, error):
            index, event = item
            if not Device.objects.filter(pk=event.device_id).exists():
                return  # deleted between the lookup and the insert
            if event.event_id and DeviceEvent.objects.filter(device_id=event.device_id, event_id=event.event_id).exists():
                return  # a copy written by another flusher since the lookup: not a dead letter
            dead_letter_record(kind=DeadLetter.Kind.EVENT, raw=rows[index], error=error, device_id=event.device_id, factory_id=factories.get(event.device_id))

        written = 0
        for start in range(0, len(events), BATCH):
            written += _isolated(events[start : start + BATCH], insert, refused, handled)
    except UNAVAILABLE as exc:
        raise Unwritten([row for index, row in enumerate(rows) if index not in handled]) from exc
    return written


def _dead_letters_undecodable(buf):
    """Set aside the check-in entries the buffer could not decode; kept if the database is away."""
    entries = buf.take_undecodable()
    for position, entry in enumerate(entries):
        try:
            dead_letter_record(kind=entry.kind, raw=entry.raw, error=entry.error)
        except UNAVAILABLE:
            buf.keep_undecodable(entries[position:])
            raise


def flush(buf=None):
    """Write everything buffered so far; returns (check-ins written, events written).

    Refused rows become dead letters and do not stop the flush. If the database cannot be
    reached, what was not written goes back to the buffer and the error is raised.
    """
    buf = buf or buffer()
    pending = buf.drain_checkins()
    try:
        written = checkins_write(pending) if pending else 0
    except Unwritten as exc:
        # Keep them for the next flush: a device that stops polling would otherwise look offline
        # (and be left out of "online first" samples) although it checked in.
        buf.restore_checkins(exc.pending)
        raise
    except Exception:
        # Batches that did commit are written again harmlessly: a write only moves a device forward.
        buf.restore_checkins(pending)
        raise
    try:
        clients_write(pending)
    except Unwritten as exc:
        buf.restore_checkins(exc.pending)
        raise
    except Exception:
        # Restored with their facts only; the devices' rows were written above.
        buf.restore_checkins({device_id: Checkin(seen=c.seen, client=c.client) for device_id, c in pending.items() if c.client})
        raise
    _dead_letters_undecodable(buf)
    events = 0
    while True:
        rows = buf.drain_events()
        if not rows:
            break
        try:
            events += events_write(rows)
        except Unwritten as exc:
            # Keep the events for the next flush rather than losing a device's failure report.
            buf.restore_events(exc.pending)
            raise
        except Exception:
            buf.restore_events(rows)
            raise
        if len(rows) < EVENTS_PER_FLUSH:
            break
    return written, events


class Flusher(threading.Thread):
    """Flushes the buffer every `interval` seconds until stopped; a final flush on stop."""

    def __init__(self, interval=None, on_tick=None):
        super().__init__(name="breakwater-checkin-flusher", daemon=True)
        self.interval = settings.BREAKWATER_CHECKIN_FLUSH_SECONDS if interval is None else interval
        self.on_tick = on_tick
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            self._tick()
        self._tick()

    def _tick(self):
        try:
            close_old_connections()
            flush()
            if self.on_tick:
                self.on_tick()
        except Exception:
            logger.exception("check-in flush failed; retrying in %.1f s", self.interval)
            close_old_connections()

    def stop(self, timeout=10):
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)


def now():
    return time.time()
