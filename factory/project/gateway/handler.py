"""The device gateway: what a device asks over mutual TLS, answered for that device only.

The server (`factory.project.gateway.server`, CERT_REQUIRED against the device root CA) refuses a client
without a certificate chaining to the device root at the handshake and hands this handler the
verified peer certificate (`http1.PEER_CERTIFICATE` in the environ); the handler refuses
it unless it is the current certificate of a registered device, issued by that device's own
factory CA. A device reads only its own view:

    GET  /repo/<N>.root.json, /repo/timestamp.json, /repo/snapshot.json, /repo/targets.json
    GET  /targets/<name>        a target file of the device's targets metadata
    GET  /treehub/...           OSTree objects and deltas of the device's own commits (treehub.py)
    POST /events                download and install progress, for the device itself only
                                (a JSON array: aktualizr-lite's events; an object: Breakwater's)
    PUT  /system_info           lshw JSON      \
    PUT  /system_info/network   JSON            | the latest of each is kept (devices.telemetry)
    PUT  /system_info/config    TOML text       |
    POST /apps-states           JSON           /
    GET  /device                what the gateway knows about the device
    GET  /config                config fragments set from the server (fioconfig's shape): the tag

Every request is a check-in (last seen; `x-ats-tags` and `x-ats-target` headers carry the tag and
the current target; User-Agent, `x-ats-ostreehash` and `x-ats-dockerapps` what the client is),
buffered and written in batches by `devices.checkins`: no database write per request, and after
warm-up no database read per request either.
"""
import copy
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid as uuid_lib
from collections import OrderedDict
from http import HTTPStatus

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

import django  # noqa: E402

django.setup()

from cryptography.x509.oid import NameOID  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.validators import slug_re  # noqa: E402
from django.db import DatabaseError, close_old_connections, connections  # noqa: E402

from devices import checkins, pki, reports  # noqa: E402
from devices.models import Device, DeviceCA, DeviceReport  # noqa: E402
from devices.tag_moves import device_config  # noqa: E402
from devices.telemetry import device_report_store  # noqa: E402
from factory.artifacts import synthetic_artifact  # noqa: E402
from factory.errors import NotFound  # noqa: E402
from factory.tuf import metadata as md  # noqa: E402
from factory.tuf.flavours import flavour_of  # noqa: E402
from waves.retries import device_retry_offer, with_retry_offer  # noqa: E402
from waves.served_views import device_metadata  # noqa: E402

from .http1 import PEER_CERTIFICATE  # noqa: E402
from .treehub import treehub  # noqa: E402

logger = logging.getLogger("breakwater.gateway")

REPO_FILE = re.compile(r"^(?:[1-9][0-9]{0,9}\.)?(?:root|timestamp|snapshot|targets)\.json\Z")
CA_CACHE_SECONDS = 60.0
# path -> (method, kind, parser) of what a device reports about itself
TELEMETRY = {
    "/system_info": ("PUT", DeviceReport.Kind.SYSTEM_INFO, reports.telemetry_json_parse),
    "/system_info/network": ("PUT", DeviceReport.Kind.NETWORK, reports.telemetry_json_parse),
    "/system_info/config": ("PUT", DeviceReport.Kind.CONFIG, reports.telemetry_text_parse),
    "/apps-states": ("POST", DeviceReport.Kind.APPS_STATES, reports.telemetry_json_parse),
}


class Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class LRU:
    """A small thread-safe LRU map."""

    def __init__(self, size):
        self.size = size
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            value = self._data.get(key, default)
            if key in self._data:
                self._data.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self):
        with self._lock:
            self._data.clear()


class Peer:
    """What a verified client certificate says."""

    __slots__ = ("cert", "fingerprint", "uuid", "factory", "production", "serial")

    def __init__(self, der):
        cert = pki.cert_load(der)
        self.cert = cert
        self.fingerprint = hashlib.sha256(der).digest()
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        categories = cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)
        try:
            self.uuid = uuid_lib.UUID(names[0].value) if len(names) == 1 else None
        except ValueError:
            self.uuid = None
        # A factory name is a slug (factory_create's rule): anything else in OU names no factory,
        # and a NUL or control character never reaches a query.
        self.factory = units[0].value if len(units) == 1 and slug_re.match(units[0].value) else None
        # The production flag is read from the certificate and nothing else.
        self.production = len(categories) == 1 and categories[0].value == pki.PRODUCTION
        self.serial = pki.serial_hex(cert)


def _etag_matches(header, etag):
    if not header:
        return False
    bare = etag.strip('"')
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == "*" or candidate.strip('"') == bare:
            return True
    return False


class OutageLog:
    """Logs the first error of an outage with its traceback, then one line per `every` seconds
    with how many more there were: thousands of polls a second must not flood the log."""

    def __init__(self, message, every=10.0, clock=time.monotonic):
        self.message, self.every, self.clock = message, every, clock
        self._lock = threading.Lock()
        self._last = None
        self._suppressed = 0

    def report(self):
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last < self.every:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            logger.error("%s (%d more since the last report)", self.message, suppressed, exc_info=True)
        else:
            logger.exception(self.message)


def gateway_devices():
    """Devices as the gateway caches them: with their factory, group and last retry offer, so a
    request served from the cache reads nothing."""
    return with_retry_offer(Device.objects.select_related("factory", "group"))


class Gateway:
    def __init__(self, device_cache_seconds=None):
        self.device_cache_seconds = (
            settings.BREAKWATER_GATEWAY_DEVICE_CACHE_SECONDS if device_cache_seconds is None else device_cache_seconds
        )
        self._peers = LRU(20_000)  # certificate DER -> Peer
        self._devices = LRU(20_000)  # (factory name, uuid) -> (expires, Device or None)
        self._issuers = LRU(20_000)  # (certificate DER, CA PEM) -> issued by that CA?
        self._cas = LRU(1_000)  # factory id -> (expires, CA PEM, CA certificate)
        self._targets = LRU(256)  # targets ETag -> (version, {name: (length, sha256)})
        self._artifacts = LRU(256)  # (factory, name, sha256) -> bytes
        self._outage_log = OutageLog("database error in the gateway")

    # --- the server's door, and WSGI for in-process callers -----------------------------------

    def __call__(self, environ, start_response):
        status, headers, body = self.respond(environ)
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    def respond(self, environ):
        """(status, headers, body) for one request; never raises."""
        try:
            status, headers, body = self.handle(environ)
        except Refused as exc:
            status, headers, body = self._json(exc.status, {"error": exc.message})
        except DatabaseError:
            # A dropped database connection (a restart, a failover): reconnect on the next request.
            # Every poll fails alike meanwhile: one traceback, then a count every few seconds.
            self._outage_log.report()
            close_old_connections()
            _close_connections()
            status, headers, body = self._json(503, {"error": "The gateway cannot reach its database; retry later"})
        except Exception:
            logger.exception("gateway error")
            status, headers, body = self._json(500, {"error": "Internal error"})
        headers.append(("Content-Length", str(len(body))))
        return status, headers, body

    def handle(self, environ):
        peer = self.peer(environ)
        device = self.device(peer)
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        seen = checkins.now()
        try:
            tag = reports.checkin_tag(environ.get("HTTP_X_ATS_TAGS"))
            target_name = reports.checkin_target(environ.get("HTTP_X_ATS_TARGET"))
        except reports.ReportError as exc:
            raise Refused(400, exc.message) from None
        checkin = checkins.Checkin(
            seen=seen, target_name=target_name, target_version=reports.target_version(target_name), tag=tag, client=reports.client_facts(environ) or None
        )
        # The view follows the tag the device says it follows, at once; the database catches up
        # with the next flush. A tag set from the server wins until the device follows it too.
        view_device = device
        if tag is not None and tag != device.tag and not device.config_tag:
            view_device = copy.copy(device)
            view_device.tag = tag
        try:
            if path.startswith("/repo/"):
                self._allow(method, "GET")
                response = self.metadata(view_device, path[len("/repo/") :], environ, checkin)
            elif path.startswith("/targets/"):
                self._allow(method, "GET")
                response = self.target_file(view_device, path[len("/targets/") :])
            elif path.startswith("/treehub/"):
                response = treehub(view_device, method, path[len("/treehub/") :])
            elif path == "/events":
                self._allow(method, "POST")
                response = self.events(device, environ)
            elif path in TELEMETRY:
                allowed, kind, parse = TELEMETRY[path]
                self._allow(method, allowed)
                response = self.telemetry(device, environ, kind, parse)
            elif path == "/device":
                self._allow(method, "GET")
                response = self._json(200, self.device_facts(device, peer))
            elif path == "/config":
                self._allow(method, "GET")
                response = self._json(200, device_config(device=device))
            else:
                raise Refused(404, "No such resource")
        finally:
            # A refused request of an authenticated device still tells us it is alive.
            checkins.buffer().checkin(device.pk, checkin)
        return response

    # --- who is asking ------------------------------------------------------------------------

    def peer(self, environ):
        der = environ.get(PEER_CERTIFICATE)
        if not der:
            raise Refused(403, "A client certificate is required")
        peer = self._peers.get(der)
        if peer is None:
            peer = Peer(der)
            self._peers.put(der, peer)
        if peer.uuid is None or not peer.factory:
            raise Refused(403, "The client certificate does not name a device (CN = UUID, OU = factory)")
        return peer

    def device(self, peer):
        """The registered device this certificate belongs to, or Refused."""
        key = (peer.factory, peer.uuid)
        now = time.monotonic()
        cached = self._devices.get(key)
        if cached is None or cached[0] <= now:
            device = gateway_devices().filter(factory__name=peer.factory, uuid=peer.uuid).first()
            cached = (now + self.device_cache_seconds, device)
            self._devices.put(key, cached)
        device = cached[1]
        if device is None:
            raise Refused(403, "This device is not registered (unknown or deleted)")
        ca_pem, ca_cert = self._factory_ca(device.factory_id, peer.cert.issuer)
        der_key = (peer.fingerprint, ca_pem)
        issued = self._issuers.get(der_key)
        if issued is None:
            issued = ca_cert is not None and pki.issued_by(peer.cert, ca_cert)
            self._issuers.put(der_key, issued)
        if not issued:
            raise Refused(403, "The certificate was not issued by the device's factory CA")
        if peer.serial != device.certificate_serial:
            raise Refused(403, "This certificate is not the device's current certificate")
        if peer.production != device.is_production:
            raise Refused(403, "The certificate's production status does not match the device's registration")
        return device

    def _factory_ca(self, factory_id, issuer):
        """The factory's device CA; read again when the certificate names another issuer, in case
        the CA was replaced since it was cached."""
        now = time.monotonic()
        cached = self._cas.get(factory_id)
        if cached is None or cached[0] <= now or (cached[2] is not None and cached[2].subject != issuer):
            pem = DeviceCA.objects.filter(factory_id=factory_id).values_list("certificate", flat=True).first()
            cached = (now + CA_CACHE_SECONDS, pem, pki.cert_load(pem) if pem else None)
            self._cas.put(factory_id, cached)
        return cached[1], cached[2]

    @staticmethod
    def _allow(method, allowed):
        if method != allowed:
            raise Refused(405, f"Use {allowed}")

    # --- what it gets -------------------------------------------------------------------------

    def metadata(self, device, filename, environ, checkin):
        if not REPO_FILE.match(filename):
            raise Refused(404, "No such metadata file")
        try:
            data, etag = device_metadata(device=device, filename=filename, flavour=flavour_of(environ.get("HTTP_USER_AGENT")))
        except NotFound as exc:
            raise Refused(404, exc.message) from None
        if filename.endswith("targets.json"):
            checkin.targets_version = self._targets_info(data, etag)[0]
        quoted = f'"{etag.strip(chr(34))}"'
        headers = [("ETag", quoted), ("Cache-Control", "no-cache")]
        if _etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
            return 304, headers, b""
        return 200, [("Content-Type", "application/json")] + headers, bytes(data)

    def _targets_info(self, data, etag):
        info = self._targets.get(etag)
        if info is None:
            signed = json.loads(data)["signed"]
            # A re-release carries an earlier target's content: its file is that target's.
            files = {
                name: (int(meta.get("length", -1)), (meta.get("hashes") or {}).get("sha256"), md.content_source(name, meta.get("custom"))[0])
                for name, meta in (signed.get("targets") or {}).items()
            }
            info = (int(signed["version"]), files)
            self._targets.put(etag, info)
        return info

    def target_file(self, device, name):
        if not reports.TARGET_NAME.match(name):
            raise Refused(404, "No such target")
        try:
            data, etag = device_metadata(device=device, filename="targets.json")
        except NotFound:
            raise Refused(404, "No targets for this device") from None
        files = self._targets_info(data, etag)[1]
        if name not in files and "." in name:
            # Consistent snapshots name target files "<sha256>.<name>".
            digest, _, rest = name.partition(".")
            if rest in files and files[rest][1] == digest:
                name = rest
        if name not in files:
            raise Refused(404, "This target is not in the device's targets")
        length, sha256, source = files[name]
        key = (device.factory.name, source, sha256)
        blob = self._artifacts.get(key)
        if blob is None:
            blob = synthetic_artifact(device.factory.name, source)
            if len(blob) != length or hashlib.sha256(blob).hexdigest() != sha256:
                raise Refused(404, "This target's file is not stored on this server")
            self._artifacts.put(key, blob)
        return 200, [("Content-Type", "application/octet-stream")], blob

    @staticmethod
    def _body(environ, limit, what):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Refused(400, "Bad Content-Length") from None
        if length > limit:
            # Refused before reading: the body is never held in memory.
            raise Refused(413, f"At most {limit} bytes of {what} per request")
        return environ["wsgi.input"].read(length) if length > 0 else b""

    def events(self, device, environ):
        """Buffer a device's events: all of a request, or (400, 403, 413) none of it."""
        body = self._body(environ, reports.MAX_BODY, "events")
        try:
            events = reports.events_parse(body)
        except reports.ReportError as exc:
            return self._json(exc.status, exc.payload())
        rows = [self._event_row(device, event, index) for index, event in enumerate(events)]
        checkins.buffer().add_events(rows)
        return self._json(202, {"accepted": len(rows)})

    def telemetry(self, device, environ, kind, parse):
        """Keep the device's latest report of this kind: all of it, or (400, 413) nothing."""
        body = self._body(environ, reports.MAX_TELEMETRY_BODY, "report")
        try:
            content = parse(body)
        except reports.ReportError as exc:
            return self._json(exc.status, exc.payload())
        device_report_store(device_id=device.pk, kind=kind, content=content)
        return self._json(200, {"stored": kind})

    @staticmethod
    def _event_row(device, event, index):
        if event.device is not None and event.device != str(device.uuid):
            # A device reports for itself only; the whole request is refused.
            raise Refused(403, f"Event {index} names another device; a device may report only for itself")
        return {
            "device_id": device.pk,
            "factory_id": device.factory_id,
            "event_type": event.event_type,
            "target_name": event.target_name,
            "target_version": event.target_version,
            "success": event.success,
            "detail": event.detail,
            "reported_at": event.reported_at.isoformat(),
            "event_id": event.event_id,
        }

    @staticmethod
    def device_facts(device, peer):
        return {
            "uuid": str(device.uuid),
            "name": device.name,
            "factory": device.factory.name,
            "production": peer.production,
            "tag": device.tag,
            "group": device.group.name if device.group_id else None,
            "hardware_id": device.hardware_id,
            "target_name": device.target_name,
            "target_version": device.target_version,
            # `aktualizr-lite status` shows the device's name from this key.
            "Name": device.name,
            # When a release manager (or a plan) last offered the device's wave to it again after
            # it failed: a device that set the failed target aside may take it up again.
            "retry": device_retry_offer(device),
        }

    @staticmethod
    def _json(status, payload):
        return status, [("Content-Type", "application/json")], json.dumps(payload).encode()


def _close_connections():
    for conn in connections.all(initialized_only=True):
        conn.close()


application = Gateway()
