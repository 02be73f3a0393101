"""A simulated device speaking aktualizr-lite's protocol (notes: aklite rules a-d, f, g), with its own
verifier of the libaktualizr metadata flavour written from libaktualizr's rules, and registration
as lmp-device-register does it. Django-free: the simulator drives it beside the python-tuf devices.
"""
import base64
import binascii
import hashlib
import json
import logging
import os
import socket
import ssl
import time
import tomllib
import uuid as uuid_lib
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from factory.plurals import counted

from . import pki

logger = logging.getLogger("breakwater.simulator")

USER_AGENT = "Aktualizr/2024.12-breakwater-simulator"
INITIAL_TARGET = "Initial Target"
TYPES = {"root": "Root", "targets": "Targets", "snapshot": "Snapshot", "timestamp": "Timestamp"}
METHODS = {"ed25519", "rsassa-pss", "rsassa-pss-sha256"}
LIMITS = {"root": 64 * 1024, "timestamp": 64 * 1024, "snapshot": 64 * 1024, "targets": 8 * 1024 * 1024}
MAX_ROOTS = 1000
IDLE, UPDATING, REBOOTING = "idle", "updating", "rebooting"


# --- the verifier -----------------------------------------------------------------------------


class MetadataRefused(Exception):
    """libaktualizr would reject this metadata (the check fails, nothing is installed)."""


class RollbackRefused(MetadataRefused):
    """A version went down: libaktualizr's "Rollback attempt"."""


class FetchFailed(Exception):
    """A fetch answered non-2xx/3xx, failed, or was over its size limit."""


def canonical(value):
    """jsoncpp's compact writer as libaktualizr uses it, for ASCII-escaped integer-only JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _now_text(now):
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(raw, role):
    try:
        document = json.loads(raw)
        signed, signatures = document["signed"], document["signatures"]
    except (ValueError, KeyError, TypeError):
        raise MetadataRefused(f"{role}: not a signed document") from None
    if not isinstance(signed, dict) or not isinstance(signatures, list):
        raise MetadataRefused(f"{role}: not a signed document")
    kind = signed.get("_type")
    # Root is only compared lower-cased; the other roles' parsers compare exactly.
    if role == "root":
        if not isinstance(kind, str) or kind.lower() != "root":
            raise MetadataRefused(f"root: _type {kind!r}")
    elif kind != TYPES[role]:
        raise MetadataRefused(f"{role}: _type must be exactly {TYPES[role]!r}, not {kind!r}")
    if not isinstance(signed.get("version"), int) or isinstance(signed.get("version"), bool):
        raise MetadataRefused(f"{role}: version is not an integer")
    expires = signed.get("expires")
    if not isinstance(expires, str) or len(expires) != 20 or not expires.endswith("Z"):
        raise MetadataRefused(f"{role}: invalid timestamp {expires!r}")
    try:
        datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise MetadataRefused(f"{role}: invalid timestamp {expires!r}") from None
    return signed, signatures


def _check_signatures(root, role, signed, signatures, what):
    """A threshold of `role`'s keys in `root` (a signed root dict) must have signed `signed`."""
    keys = root.get("keys") or {}
    roles = {str(name).lower(): value for name, value in (root.get("roles") or {}).items()}
    role_def = roles.get(role)
    if not isinstance(role_def, dict):
        raise MetadataRefused(f"{what}: root has no {role} role")
    threshold = role_def.get("threshold")
    if not isinstance(threshold, int) or not 1 <= threshold <= 1000:
        raise MetadataRefused(f"{what}: IllegalThreshold {threshold!r}")
    message = canonical(signed)
    seen, valid = set(), 0
    for signature in signatures:
        if not isinstance(signature, dict):
            raise MetadataRefused(f"{what}: signature is not an object")
        method = signature.get("method")
        if not isinstance(method, str) or method.lower() not in METHODS:
            raise MetadataRefused(f"{what}: Unsupported sign method {method!r}")
        keyid = signature.get("keyid")
        if keyid in seen:
            raise MetadataRefused(f"{what}: NonUniqueSignatures")
        seen.add(keyid)
        if keyid not in keys or keyid not in (role_def.get("keyids") or []):
            continue
        key = keys[keyid]
        if str(key.get("keytype", "")).lower() != "ed25519":
            continue  # a simulator without RSA support counts it as not valid
        try:
            # Standard base64 only: a hex or URL-safe sig does not decode to a valid signature.
            raw = base64.b64decode(signature["sig"], validate=True)
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["keyval"]["public"])).verify(raw, message)
        except (binascii.Error, ValueError, KeyError, TypeError, InvalidSignature):
            continue
        valid += 1
    if valid < threshold:
        problem = "BadKeyId" if len(signatures) == 1 else "UnmetThreshold"
        raise MetadataRefused(f"{what}: {problem} ({counted(valid, 'valid signature')}, threshold {threshold})")


def _check_hashes(meta, raw, what, *, required):
    hashes = meta.get("hashes") if isinstance(meta, dict) else None
    wanted = {k: v for k, v in (hashes or {}).items() if k in ("sha256", "sha512")} if isinstance(hashes, dict) else {}
    if not wanted:
        if required:
            raise MetadataRefused(f"{what}: No hash found")
        return
    # Over the canonical re-serialisation of the whole document, not over the bytes received.
    text = canonical(json.loads(raw))
    for algorithm, value in wanted.items():
        if hashlib.new(algorithm, text).hexdigest() != value:
            raise MetadataRefused(f"{what}: {algorithm} hash mismatch")


class AktualizrVerifier:
    """The trusted image-repository state aktualizr-lite keeps in its sqlite database, and the update
    it runs on every check (root chain, timestamp, then snapshot and targets when they changed)."""

    def __init__(self, state=None):
        state = state or {}
        self.root = state.get("root")  # the signed part of each trusted document
        self.timestamp = state.get("timestamp")
        self.snapshot = state.get("snapshot")
        self.targets = state.get("targets")
        self.snapshot_raw = state.get("snapshot_raw")
        self.targets_raw = state.get("targets_raw")

    def state(self):
        return {k: getattr(self, k) for k in ("root", "timestamp", "snapshot", "targets", "snapshot_raw", "targets_raw")}

    def _roots(self, fetch):
        if self.root is None:
            signed, signatures = _parse(fetch("1.root.json", "root"), "root")
            _check_signatures(signed, "root", signed, signatures, "1.root.json")  # trust on first use
            self.root = signed
        for _ in range(MAX_ROOTS):
            name = f"{self.root['version'] + 1}.root.json"
            try:
                raw = fetch(name, "root")
            except FetchFailed:
                return  # any failure ends the chain; the current root stays
            signed, signatures = _parse(raw, "root")
            _check_signatures(self.root, "root", signed, signatures, f"{name} (old root keys)")
            _check_signatures(signed, "root", signed, signatures, f"{name} (its own keys)")
            if signed["version"] != self.root["version"] + 1:
                raise MetadataRefused(f"{name}: RootRotationError (version {signed['version']})")
            self.root = signed
            self.timestamp = self.snapshot = self.targets = self.snapshot_raw = self.targets_raw = None

    def refresh(self, fetch, now=None):
        """Update from `fetch(filename, role) -> bytes` (raises FetchFailed); returns the trusted
        targets' `targets` object. Raises MetadataRefused when libaktualizr would."""
        now_text = _now_text(now or datetime.now(dt_timezone.utc))
        self._roots(fetch)
        if self.root["expires"] < now_text:
            raise MetadataRefused("root: ExpiredMetadata")

        signed, signatures = _parse(fetch("timestamp.json", "timestamp"), "timestamp")
        _check_signatures(self.root, "timestamp", signed, signatures, "timestamp.json")
        meta = (signed.get("meta") or {}).get("snapshot.json") if isinstance(signed.get("meta"), dict) else None
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("hashes"), dict)
            and isinstance(meta.get("length"), int)
            and isinstance(meta.get("version"), int)
        ):
            raise MetadataRefused("invalid timestamp.json")
        if self.timestamp is not None and self.timestamp["version"] > signed["version"]:
            raise RollbackRefused("timestamp.json: Rollback attempt")
        self.timestamp = signed
        if signed["expires"] < now_text:
            raise MetadataRefused("timestamp: ExpiredMetadata")

        if not self._stored_matches(self.snapshot_raw, meta):
            raw = fetch("snapshot.json", "snapshot")
            _check_hashes(meta, raw, "snapshot.json", required=True)
            snapshot, signatures = _parse(raw, "snapshot")
            _check_signatures(self.root, "snapshot", snapshot, signatures, "snapshot.json")
            if snapshot["version"] != meta["version"]:
                raise MetadataRefused("snapshot.json: VersionMismatch")
            entries = snapshot.get("meta")
            if not isinstance(entries, dict) or not all(isinstance(m, dict) and isinstance(m.get("version"), int) for m in entries.values()):
                raise MetadataRefused("snapshot.json: every meta entry needs an integer version")
            if self.snapshot is not None and self.snapshot["version"] > snapshot["version"]:
                raise RollbackRefused("snapshot.json: Rollback attempt")
            self.snapshot, self.snapshot_raw = snapshot, raw.decode() if isinstance(raw, bytes) else raw
        if self.snapshot["expires"] < now_text:
            raise MetadataRefused("snapshot: ExpiredMetadata")

        targets_meta = self.snapshot["meta"].get("targets.json") or {}
        if self.targets is None or not self._stored_matches(self.targets_raw, targets_meta, version=self.targets["version"]):
            raw = fetch("targets.json", "targets")
            _check_hashes(targets_meta, raw, "targets.json", required=False)
            targets, signatures = _parse(raw, "targets")
            _check_signatures(self.root, "targets", targets, signatures, "targets.json")
            if targets["version"] != targets_meta.get("version", -1):
                raise MetadataRefused("targets.json: VersionMismatch")
            if self.targets is not None and self.targets["version"] > targets["version"]:
                raise RollbackRefused("targets.json: Rollback attempt")
            if not isinstance(targets.get("targets"), dict):
                raise MetadataRefused("targets.json: targets is not an object")
            self.targets, self.targets_raw = targets, raw.decode() if isinstance(raw, bytes) else raw
        if self.targets["expires"] < now_text:
            raise MetadataRefused("targets: ExpiredMetadata")
        return self.targets["targets"]

    @staticmethod
    def _stored_matches(stored_raw, meta, version=None):
        """Whether the stored document is still the one `meta` describes (so it is not fetched)."""
        if stored_raw is None:
            return False
        if version is not None and meta.get("version") != version:
            return False
        hashes = meta.get("hashes") or {}
        if not hashes:
            return version is not None
        text = canonical(json.loads(stored_raw))
        return all(hashlib.new(a, text).hexdigest() == v for a, v in hashes.items() if a in ("sha256", "sha512"))


# --- target selection -------------------------------------------------------------------------


def target_version(custom):
    """custom.version as std::stoi(str, nullptr, 0) reads it: base auto-detected, -1 if unreadable."""
    text = str(custom.get("version", "")).strip()
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    for prefix, base, digits in (("0x", 16, "0123456789abcdefABCDEF"), ("0X", 16, "0123456789abcdefABCDEF"), ("0", 8, "01234567"), ("", 10, "0123456789")):
        if text.startswith(prefix) and (prefix != "0" or len(text) > 1):
            rest = text[len(prefix):]
            head = ""
            for char in rest:
                if char not in digits:
                    break
                head += char
            if head:
                return sign * int(head, base)
            if prefix == "0":
                return 0
            return -1
    return -1


def target_select(targets, *, hardware_id, tags):
    """aktualizr-lite's candidate: OSTREE targets (else, as Breakwater serves today, blob targets),
    exactly one hardwareIds entry equal to ours, a tag of ours, the highest version; or None."""
    entries = [(name, meta) for name, meta in targets.items() if isinstance(meta, dict) and isinstance(meta.get("custom"), dict)]
    ostree = [(n, m) for n, m in entries if m["custom"].get("targetFormat") == "OSTREE"]
    best = None
    for name, meta in ostree or entries:
        custom = meta["custom"]
        hwids = custom.get("hardwareIds")
        if not isinstance(hwids, list) or len(hwids) != 1 or hwids[0] != hardware_id:
            continue
        if tags:
            target_tags = custom.get("tags")
            if not isinstance(target_tags, list) or not any(t in target_tags for t in tags):
                continue
        version = target_version(custom)
        if best is None or version > best[1]:
            best = (name, version, meta)
    return best


# --- registration, as lmp-device-register ----------------------------------------------------


def lmp_csr(key, *, device_uuid, factory_name, production):
    names = [x509.NameAttribute(NameOID.COMMON_NAME, str(device_uuid)), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory_name)]
    if production:
        names.append(x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "production"))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def lmp_register(*, device_api, token, folder, factory_name, hardware_id, tag, name="", group=None, production=True, wait_seconds=60):
    """Register one device like lmp-device-register (HEAD ping, POST of strings with OSF-TOKEN,
    201 expected) and write pkey.pem and the files the answer names into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    device_uuid = str(uuid_lib.uuid4())
    body = {
        "use-ostree-server": "true",
        "sota-config-dir": "/var/sota",
        "hardware-id": hardware_id,
        "name": name,
        "uuid": device_uuid,
        "csr": lmp_csr(key, device_uuid=device_uuid, factory_name=factory_name, production=production),
        "overrides": {"pacman": {"tags": f'"{tag}"'}},
    }
    if group:
        body["group"] = group
    with urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), retries=False) as http:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                ping = http.request("HEAD", device_api)
                if ping.status < 500:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{device_api} does not answer")
            time.sleep(1)
        response = http.request(
            "POST", device_api, body=json.dumps(body, indent=4).replace("/", "\\/"), headers={"Content-type": "application/json", "OSF-TOKEN": token}
        )
    if response.status != 201:
        raise RuntimeError(f"Unable to create device: HTTP_{response.status} {response.data[:200]!r}")
    files = json.loads(response.data)
    pkey = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    _write(folder / "pkey.pem", pkey, private=True)
    sota = []
    for filename, content in files.items():
        if not isinstance(content, str) or "/" in filename or filename.startswith("."):
            continue
        if filename.endswith("sota.toml"):
            sota.append(content + "\n")
        else:
            _write(folder / filename, content)
    (folder / "sota.toml").write_text("".join(sota))
    return device_uuid


def lmp_register_identity(*, device_api, token, folder, factory_name, hardware_id, tag, name, group=None, production=True, wait_seconds=60):
    """lmp_register, then the fields of the simulator's Identity for the new device (its group is
    the token's; the device learns it from GET /device)."""
    device_uuid = lmp_register(
        device_api=device_api, token=token, folder=folder, factory_name=factory_name, hardware_id=hardware_id,
        tag=tag, name=name, group=group, production=production, wait_seconds=wait_seconds,
    )
    serial = pki.serial_hex(pki.cert_load((Path(folder) / "client.pem").read_text()))
    return {
        "uuid": device_uuid, "name": name, "hardware_id": hardware_id, "production": production, "tag": tag,
        "group": group, "serial": serial, "source": "registered", "protocol": "aktualizr",
    }


def _write(path, text, private=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)


@dataclass
class SotaConfig:
    server: str
    repo_server: str
    ostree_server: str
    hardware_id: str
    tags: list

    @classmethod
    def load(cls, path):
        config = tomllib.loads(Path(path).read_text())
        server = config["tls"]["server"].rstrip("/")
        tags = [t for t in config.get("pacman", {}).get("tags", "").replace(",", " ").split() if t]
        return cls(
            server=server,
            repo_server=config.get("uptane", {}).get("repo_server", server + "/repo").rstrip("/"),
            ostree_server=config.get("pacman", {}).get("ostree_server", server + "/treehub").rstrip("/"),
            hardware_id=config.get("provision", {}).get("primary_ecu_hardware_id") or socket.gethostname(),
            tags=tags,
        )


# --- the device -------------------------------------------------------------------------------


def _device_time():
    return datetime.now(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class AktualizrDevice:
    """One device running aktualizr-lite's daemon loop against the gateway. `sim` supplies counts,
    the poll interval and failure injection (devices/simulator.py's Simulator)."""

    sim: object
    identity: object
    folder: Path
    offline: bool = False
    never_returns: bool = False
    state: str = IDLE
    pending: dict | None = None
    bad_targets: set = field(default_factory=set)
    outbox: list = field(default_factory=list)
    gone: bool = False
    rollback: bool = False
    polls: int = 0
    telemetry_sent: bool = False
    ecu: str = field(default_factory=lambda: str(uuid_lib.uuid4()))
    kind = "aktualizr"

    def __post_init__(self):
        self.folder = Path(self.folder)

    # --- configuration and state on disk ---

    @cached_property
    def config(self):
        path = self.folder / "sota.toml"
        if path.exists():
            return SotaConfig.load(path)
        tags = [self.identity.tag] if self.identity.tag else []
        return SotaConfig(self.sim.gateway_url, self.sim.gateway_url + "/repo", self.sim.gateway_url + "/treehub", self.identity.hardware_id, tags)

    def _verifier(self):
        path = self.folder / "aktualizr-db.json"
        return AktualizrVerifier(json.loads(path.read_text()) if path.exists() else None)

    def _verifier_save(self, verifier):
        (self.folder / "aktualizr-db.json").write_text(json.dumps(verifier.state()))

    def headers(self, *, tuf=False):
        config = self.config
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        tags = config.tags[:1] if tuf else config.tags
        if tags:
            headers["x-ats-tags"] = ",".join(tags)
        headers["x-ats-target"] = self.identity.target_name or INITIAL_TARGET
        headers["x-ats-ostreehash"] = getattr(self.identity, "ostree_hash", "") or "unknown"
        return headers

    def _pool(self):
        ca = self.folder / "root.crt"
        key = self.folder / "pkey.pem"
        context = ssl.create_default_context(cafile=str(ca if ca.exists() else self.sim.keystore.server_ca))
        context.load_cert_chain(str(self.folder / "client.pem"), str(key if key.exists() else self.folder / "client.key"))
        # Where sota.toml says the server is (the gateway, for a device registered by lmp).
        server = urlsplit(self.config.server)
        return urllib3.HTTPSConnectionPool(server.hostname, server.port or 443, maxsize=1, ssl_context=context, retries=False)

    def _request(self, pool, method, path, **kwargs):
        response = pool.request(method, path, timeout=self.sim.timeout, **kwargs)
        self.sim.count("requests")
        return response

    # --- telemetry ---

    def _telemetry(self, pool):
        if self.telemetry_sent:
            return
        config_text = (self.folder / "sota.toml").read_text() if (self.folder / "sota.toml").exists() else "[tls]\n"
        headers = self.headers()
        puts = [
            ("/system_info/config", config_text.encode(), "application/toml"),
            ("/system_info/network", json.dumps({"local_ipv4": "10.0.0.2", "mac": "02:00:00:00:00:01", "hostname": self.identity.name}).encode(), "application/json"),
            ("/system_info", json.dumps({"id": self.identity.name, "class": "system", "product": "breakwater simulator"}).encode(), "application/json"),
        ]
        for path, body, content_type in puts:
            try:
                self._request(pool, "PUT", path, body=body, headers={**headers, "Content-Type": content_type})
            except urllib3.exceptions.HTTPError as exc:  # only logged by the real client
                logger.debug("%s telemetry %s: %s", self.identity.name, path, exc)
        self.telemetry_sent = True

    # --- events ---

    def _event(self, kind, target_name, version, correlation, **extra):
        event = {"ecu": self.ecu, "correlationId": correlation, "targetName": target_name, "version": str(version), **extra}
        return {"id": str(uuid_lib.uuid4()), "deviceTime": _device_time(), "eventType": {"id": kind, "version": 0}, "event": event}

    def _flush(self, pool, events=()):
        """One POST per event, oldest first; 2xx/3xx and 404 and 413 drop it, anything else keeps it."""
        self.outbox.extend(events)
        headers = {**self.headers(), "Content-Type": "application/json"}
        while self.outbox:
            event = self.outbox[0]
            try:
                response = self._request(pool, "POST", "/events", body=canonical([event]), headers=headers)
            except urllib3.exceptions.HTTPError:
                return
            if 200 <= response.status < 400:
                self.sim.count("events")
            elif response.status not in (404, 413):
                logger.debug("%s events kept (%s)", self.identity.name, response.status)
                return
            self.outbox.pop(0)

    # --- behaviour ---

    def step(self):
        """Run the device's next step; returns seconds until the following one, or None: never."""
        if self.gone or self.offline:
            return None
        pool = self._pool()
        try:
            if self.outbox:
                self._flush(pool)
            if self.state == REBOOTING:
                return self._finalize(pool)
            return self._check(pool)
        finally:
            pool.close()

    def _fetcher(self, pool):
        headers = self.headers(tuf=True)
        repo = urlsplit(self.config.repo_server).path.rstrip("/")

        def fetch(filename, role):
            try:
                response = pool.request("GET", f"{repo}/{filename}", headers=headers, timeout=self.sim.timeout, preload_content=False, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                raise FetchFailed(str(exc)) from exc
            self.sim.count("requests")
            try:
                if not 200 <= response.status < 400:
                    raise FetchFailed(f"HTTP {response.status} for {filename}")
                body = response.read(LIMITS[role] + 1)
                if len(body) > LIMITS[role]:
                    raise FetchFailed(f"{filename} over {LIMITS[role]} bytes")
                return body
            finally:
                response.release_conn()

        return fetch

    def _check(self, pool):
        self.polls += 1
        self.sim.count("polls")
        self.sim.count("aktualizr-polls")
        self._telemetry(pool)
        verifier = self._verifier()
        try:
            targets = verifier.refresh(self._fetcher(pool))
        except RollbackRefused as exc:
            if not self.rollback:
                logger.info("%s refuses a rollback: %s", self.identity.name, exc)
            self.rollback = True
            self.sim.count("rollback-refused")
            return self.sim.next_poll()
        except (MetadataRefused, FetchFailed) as exc:
            self.sim.count("metadata-rejected")
            logger.warning("%s (aktualizr) rejected metadata: %s", self.identity.name, exc)
            return self.sim.next_poll()
        finally:
            if verifier.root is not None:
                self._verifier_save(verifier)
        self.rollback = False
        if self.never_returns and self.state == "checked-in-once":
            self.gone = True
            self.sim.count("gone")
            return None
        config = self.config
        candidate = target_select(targets, hardware_id=config.hardware_id, tags=config.tags)
        if candidate is None or candidate[0] == self.identity.target_name or candidate[0] in self.bad_targets:
            return self.sim.next_poll()
        return self._install(pool, candidate)

    def _install(self, pool, candidate):
        name, version, meta = candidate
        correlation = f"{version}-{uuid_lib.uuid4()}"
        self.state = UPDATING
        self.sim.count("updates-started")
        response = self._request(pool, "GET", "/device", headers=self.headers())
        if response.status == 200:
            self.identity.group = json.loads(response.data).get("group")
        current = self.identity.target_name or INITIAL_TARGET
        self._flush(pool, [self._event("EcuDownloadStarted", name, version, correlation, details=f"Updating from {current} to {name}")])
        error = self._download(pool, name, meta)
        if error:
            self.state = IDLE
            self.bad_targets.add(name)
            self.sim.count("download-failed")
            self._flush(pool, [self._event("EcuDownloadCompleted", name, version, correlation, success=False, details=error[:2048])])
            return self.sim.next_poll()
        self._flush(
            pool,
            [
                self._event("EcuDownloadCompleted", name, version, correlation, success=True, details=""),
                self._event("EcuInstallationStarted", name, version, correlation),
                self._event("EcuInstallationApplied", name, version, correlation, details="Installation succeeded, now reboot is required"),
            ],
        )
        self.pending = {
            "name": name, "version": version, "correlation": correlation, "sha256": (meta.get("hashes") or {}).get("sha256", ""), "custom": meta["custom"],
        }  # fmt: skip
        self.state = REBOOTING
        return self.sim.reboot_delay

    def _download(self, pool, name, meta):
        """What aktualizr-lite fetches to install `name`; returns an error text or ''."""
        sha256 = (meta.get("hashes") or {}).get("sha256", "")
        if meta["custom"].get("targetFormat") == "OSTREE":
            ostree_headers = {"User-Agent": "libostree/2022.7", "X-Correlation-ID": name}
            treehub = urlsplit(self.config.ostree_server).path.rstrip("/")
            response = self._request(pool, "GET", f"{treehub}/config", headers=ostree_headers)
            if response.status == 404:
                return ""  # no treehub on this server yet: the pull is simulated
            if response.status != 200 or b"archive" not in response.data:
                return f"treehub config: HTTP {response.status}"
            response = self._request(pool, "GET", f"{treehub}/objects/{sha256[:2]}/{sha256[2:]}.commit", headers=ostree_headers)
            if response.status not in (200, 404):
                return f"commit object: HTTP {response.status}"
            return ""
        response = self._request(pool, "GET", f"/targets/{name}", headers=self.headers(), preload_content=False)
        try:
            if response.status != 200:
                return f"HTTP {response.status} for {name}"
            digest, length = hashlib.sha256(), 0
            for chunk in response.stream(64 * 1024):
                digest.update(chunk)
                length += len(chunk)
            if isinstance(meta.get("length"), int) and meta["length"] and length != meta["length"]:
                return f"{name}: length {length}, expected {meta['length']}"
            if sha256 and digest.hexdigest() != sha256:
                return f"{name}: sha256 mismatch"
            return ""
        finally:
            response.release_conn()

    def _finalize(self, pool):
        name, version, correlation = self.pending["name"], self.pending["version"], self.pending["correlation"]
        sha256, custom = self.pending["sha256"], self.pending.get("custom")
        self.pending = None
        self.state = IDLE
        # A re-release installs without the simulated failure: see Simulator.fails.
        if self.sim.fails(self.identity.group, custom):
            self.bad_targets.add(name)
            self.sim.count("failed")
            self._flush(pool, [self._event("EcuInstallationCompleted", name, version, correlation, success=False, details="simulated failure: health check failed, rolled back")])
            return 0.0
        self.identity.target_name, self.identity.target_version = name, version
        self.identity.ostree_hash = sha256
        self.sim.keystore.update(self.identity)
        self.sim.count("updated")
        self.sim.count("aktualizr-updated")
        self._flush(pool, [self._event("EcuInstallationCompleted", name, version, correlation, success=True, details="")])
        if self.never_returns:
            self.state = "checked-in-once"
        return 0.0
