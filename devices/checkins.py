"""Check-ins and events reported through the gateway: coalesced per device, written in batches.

A poll never writes to the database. The gateway records each check-in in a buffer (Redis when
REDIS_URL is set, so every gateway process shares it; else the gateway process's memory) and a
flusher writes the latest check-in of each device with one UPDATE per batch, and the buffered
events with one INSERT per batch.
"""
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from .models import Device, DeviceEvent

logger = logging.getLogger(__name__)

BATCH = 500
EVENTS_PER_FLUSH = 20_000


@dataclass
class Checkin:
    """The latest check-in of one device. `None` fields were not reported and change nothing."""

    seen: float  # epoch seconds
    target_name: str | None = None
    target_version: int | None = None
    tag: str | None = None
    targets_version: int | None = None  # targets metadata version served, if any

    def merge(self, newer):
        """Fold a later check-in of the same device into this one."""
        if newer.seen >= self.seen:
            self.seen = newer.seen
            if newer.target_name is not None:
                self.target_name, self.target_version = newer.target_name, newer.target_version
            if newer.tag is not None:
                self.tag = newer.tag
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


class RedisBuffer:
    """Check-ins and events shared by every gateway process through Redis.

    A request only updates this process's memory; each flush first pushes that memory to Redis in
    one pipeline, then drains Redis, so whichever process flushes writes every process's check-ins.
    Check-ins: hashes device id -> last seen, -> latest reported target, -> latest reported tag
    (a request without the headers leaves the earlier values), and a sorted set device id ->
    highest targets version served (ZADD GT keeps the maximum). Events go straight to a list.
    Draining is one MULTI, so two flushers never take the same entries.

    Gateways push whenever their own flush comes, so a device's older check-in (its poll through
    one gateway) can reach Redis after its newer one (through another): a script moves last seen,
    target and tag only forward, as MemoryBuffer.merge does.
    """

    # KEYS: seen, target, tag. ARGV: device id, seen, target or "", tag or "" per device.
    PUSH = """
        for i = 1, #ARGV, 4 do
            local current = redis.call('HGET', KEYS[1], ARGV[i])
            if not current or tonumber(ARGV[i + 1]) >= tonumber(current) then
                redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
                if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2]) end
                if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 3]) end
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
        self._events_key = f"{prefix}:events"
        self._push = self._redis.register_script(self.PUSH)

    def checkin(self, device_id, checkin):
        self._local.checkin(device_id, checkin)

    def push(self):
        """Move this process's check-ins to Redis."""
        pending = self._local.drain_checkins()
        if not pending:
            return
        items = list(pending.items())
        served = {device_id: c.targets_version for device_id, c in items if c.targets_version is not None}
        keys = [self._seen_key, self._target_key, self._tag_key]
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(items), self.PUSH_CHUNK):
            args = []
            for device_id, c in items[start : start + self.PUSH_CHUNK]:
                target = json.dumps([c.target_name, c.target_version]) if c.target_name is not None else ""
                args += [device_id, repr(c.seen), target, c.tag or ""]
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
        keys = (self._seen_key, self._target_key, self._tag_key)
        pipe = self._redis.pipeline(transaction=True)
        for key in keys:
            pipe.hgetall(key)
        pipe.zrange(self._served_key, 0, -1, withscores=True)
        pipe.delete(*keys, self._served_key)
        seen, targets, tags, served, _ = pipe.execute()
        pending = {int(k): Checkin(seen=float(v)) for k, v in seen.items()}

        def entry(device_id):
            # Entries written between two commands of a drain can lack a last-seen value.
            return pending.setdefault(int(device_id), Checkin(seen=0.0))

        for device_id, raw in targets.items():
            entry(device_id).target_name, entry(device_id).target_version = json.loads(raw)
        for device_id, tag in tags.items():
            entry(device_id).tag = tag.decode()
        for device_id, score in served:
            entry(device_id).targets_version = int(score)
        return pending

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
        return [json.loads(row) for row in rows]

    def restore_events(self, rows):
        if rows:
            self._redis.lpush(self._events_key, *[json.dumps(row) for row in reversed(rows)])


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
    """Apply {device id: Checkin} to the devices, one UPDATE per batch; returns rows updated.

    A check-in older than what the database holds (two gateways flushing out of order) moves
    nothing back: last_seen and targets_version_seen only grow, target and tag follow the latest.
    """
    items = sorted(checkins.items())
    updated = 0
    for start in range(0, len(items), BATCH):
        updated += _update_batch(items[start : start + BATCH])
    return updated


def _update_batch(items):
    table = connection.ops.quote_name(Device._meta.db_table)
    postgres = connection.vendor == "postgresql"
    if postgres:
        row = "(%s::bigint, %s::timestamptz, %s::varchar, %s::integer, %s::varchar, %s::integer)"
    else:
        row = "(%s, %s, %s, %s, %s, %s)"
    params = []
    for device_id, c in items:
        seen = _stamp(c.seen) if c.seen else None
        params += [
            device_id,
            seen if postgres or seen is None else connection.ops.adapt_datetimefield_value(seen),
            c.target_name,
            c.target_version,
            c.tag,
            c.targets_version,
        ]
    newer = f"(v.seen IS NOT NULL AND ({table}.last_seen IS NULL OR v.seen >= {table}.last_seen))"
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
            tag = CASE WHEN {newer} AND v.tag IS NOT NULL THEN v.tag ELSE {table}.tag END,
            targets_version_seen = CASE
                WHEN v.targets_version IS NOT NULL AND ({table}.targets_version_seen IS NULL OR v.targets_version > {table}.targets_version_seen)
                THEN v.targets_version ELSE {table}.targets_version_seen END
        FROM {source} WHERE {table}.id = v.id
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def events_write(rows):
    """Insert buffered event rows (dicts) in batches; rows of devices deleted since are dropped."""
    if not rows:
        return 0
    existing = set()
    ids = sorted({row["device_id"] for row in rows})
    for start in range(0, len(ids), BATCH):
        existing.update(Device.objects.filter(id__in=ids[start : start + BATCH]).values_list("id", flat=True))
    events = [
        DeviceEvent(
            factory_id=row["factory_id"],
            device_id=row["device_id"],
            event_type=row["event_type"],
            target_name=row.get("target_name") or "",
            target_version=row.get("target_version"),
            success=row.get("success"),
            detail=row.get("detail") or "",
            reported_at=datetime.fromisoformat(row["reported_at"]),
        )
        for row in rows
        if row["device_id"] in existing
    ]
    with transaction.atomic():
        DeviceEvent.objects.bulk_create(events, batch_size=BATCH)
    return len(events)


def flush(buf=None):
    """Write everything buffered so far; returns (check-ins written, events written)."""
    buf = buf or buffer()
    pending = buf.drain_checkins()
    try:
        written = checkins_write(pending) if pending else 0
    except Exception:
        # Keep them for the next flush: a device that stops polling would otherwise look offline
        # (and be left out of "online first" samples) although it checked in. Batches that did
        # commit are written again harmlessly, since a write only moves a device forward.
        buf.restore_checkins(pending)
        raise
    events = 0
    while True:
        rows = buf.drain_events()
        if not rows:
            break
        try:
            events += events_write(rows)
        except Exception:
            # Keep the events for the next flush rather than losing a device's failure report.
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
