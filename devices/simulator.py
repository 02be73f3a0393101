"""The fleet simulator: many devices, each a real TUF client (python-tuf's ngclient) talking to
the gateway over mutual TLS with its own key and certificate, as aktualizr-lite would.

Each simulated device polls its metadata, picks the newest target for its hardware ID and tag,
downloads it (ngclient checks length and hashes), "installs" it (a reboot delay) and reports every
step as an event. A TUF rollback (after a wave is cancelled) makes the refresh fail, so the device
installs nothing. A target that failed is set aside, like aktualizr-lite's rollback targets, until
the device sees new metadata and the gateway says its wave was offered to it again since (a retry). Failures can be injected per group; some devices can stay offline, and some can
never come back after an update.

Where devices come from:
- registered through the real registration endpoint (`register`): a new key and CSR each;
- taken over (`devices.fleet.take_over`, server side): devices already registered (the demo's seeded fleet) get new
  certificates for keys generated here, through the certificate renewal service, exactly as an
  admin re-keys a device. Their old certificates stop working.
Either way each device's key, certificate and TUF metadata live in its own folder, so a restarted
simulator carries on with the same devices.
"""
import heapq
import json
import logging
import os
import random
import shutil
import ssl
import threading
import time
import uuid as uuid_lib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater

from . import pki
from .aktualizr_device import AktualizrDevice, lmp_register

logger = logging.getLogger("breakwater.simulator")

CHUNK = 64 * 1024
IDLE, UPDATING, REBOOTING = "idle", "updating", "rebooting"


# --- identities on disk ---------------------------------------------------------------------


@dataclass
class Identity:
    uuid: str
    name: str
    hardware_id: str
    production: bool
    tag: str
    group: str | None
    serial: str
    target_name: str = ""
    target_version: int | None = None
    source: str = "taken-over"  # or "registered"
    last_seen: float | None = None  # when the server last saw it (epoch), at take-over
    ostree_hash: str = ""  # an aktualizr-lite device's x-ats-ostreehash: the commit it runs
    protocol: str = ""  # "tuf" (python-tuf) or "aktualizr" (aktualizr-lite's); "" until the simulator picks

    def dumps(self):
        return json.dumps(self.__dict__, indent=1)


class Keystore:
    """One folder per device: identity.json, client.pem (certificate + factory CA), client.key,
    and metadata/ (the TUF client's trusted metadata)."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, device_uuid):
        return self.root / str(device_uuid)

    @property
    def server_ca(self):
        return self.root / "gateway-ca.pem"

    def load(self):
        identities = {}
        for path in self.root.glob("*/identity.json"):
            try:
                identities[path.parent.name] = Identity(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                logger.warning("ignoring unreadable identity %s", path)
        return identities

    def save(self, identity, *, key_pem, chain_pem):
        folder = self.folder(identity.uuid)
        if folder.exists() and (folder / "identity.json").exists():
            # A new key means a new device to the server: drop the old trusted metadata too.
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        key_path = folder / "client.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key_pem)
        (folder / "client.pem").write_text(chain_pem)
        (folder / "identity.json").write_text(identity.dumps())

    def update(self, identity):
        (self.folder(identity.uuid) / "identity.json").write_text(identity.dumps())


def register(*, web_url, token, factory_name, keystore, count, hardware_ids, production=True, name_prefix="sim", target_version=None, wait_seconds=60):
    """Register `count` new devices through the registration endpoint; returns their identities."""
    with urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), retries=False) as http:
        return _register(http, web_url=web_url, token=token, factory_name=factory_name, keystore=keystore, count=count,
                         hardware_ids=hardware_ids, production=production, name_prefix=name_prefix, target_version=target_version,
                         wait_seconds=wait_seconds)  # fmt: skip


def _register(http, *, web_url, token, factory_name, keystore, count, hardware_ids, production, name_prefix, target_version, wait_seconds):
    url = web_url.rstrip("/") + "/devices/register/"
    identities = []
    deadline = time.monotonic() + wait_seconds
    for index in range(count):
        key = pki.key_generate()
        device_uuid = uuid_lib.uuid4()
        hwid = hardware_ids[index % len(hardware_ids)]
        body = json.dumps(
            {
                "token": token,
                "csr": pki.device_csr_build(private_key=key, device_uuid=device_uuid, factory_name=factory_name, production=production),
                "name": f"{name_prefix}-{str(device_uuid)[:8]}",
                "hardware_id": hwid,
            }
        )
        while True:
            try:
                response = http.request("POST", url, body=body, headers={"Content-Type": "application/json"})
                break
            except urllib3.exceptions.HTTPError:
                # The web server may still be starting (make demo starts everything at once).
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        data = json.loads(response.data or b"{}")
        if response.status != 201:
            raise RuntimeError(f"registration refused ({response.status}): {data.get('error', response.data[:200])}")
        keystore.server_ca.write_text(data["gateway"]["ca_certificate"])
        identity = Identity(
            uuid=data["uuid"],
            name=data["name"],
            hardware_id=data["hardware_id"],
            production=data["production"],
            tag=data["tag"],
            group=data["group"],
            serial=pki.serial_hex(pki.cert_load(data["certificate"])),
            target_name=f"{hwid}-lmp-{target_version}" if target_version else "",
            target_version=target_version,
            source="registered",
        )
        keystore.save(identity, key_pem=pki.key_pem(key), chain_pem=data["certificate"] + data["ca_certificate"])
        identities.append(identity)
    return identities


def register_lmp(*, web_url, token, factory_name, keystore, count, hardware_ids, tag, production=True, group=None, name_prefix="aklite", target_version=None):
    """Register `count` aktualizr-lite devices as lmp-device-register does (POST /ota/devices/ with
    OSF-TOKEN, files client.pem, root.crt, sota.toml answered); returns their identities."""
    identities = []
    for index in range(count):
        hwid = hardware_ids[index % len(hardware_ids)]
        pending = keystore.root / f".pending-{uuid_lib.uuid4()}"
        name = f"{name_prefix}-{str(uuid_lib.uuid4())[:8]}"
        device_uuid = lmp_register(
            device_api=web_url.rstrip("/") + "/ota/devices/", token=token, folder=pending, factory_name=factory_name,
            hardware_id=hwid, tag=tag, name=name, group=group, production=production,
        )
        keystore.server_ca.write_text((pending / "root.crt").read_text())
        identity = Identity(
            uuid=device_uuid, name=name, hardware_id=hwid, production=production, tag=tag, group=group,
            serial=pki.serial_hex(pki.cert_load((pending / "client.pem").read_text())),
            target_name=f"{hwid}-lmp-{target_version}" if target_version else "", target_version=target_version,
            source="registered", protocol="aktualizr",
        )
        pending.rename(keystore.folder(device_uuid))
        keystore.update(identity)
        identities.append(identity)
    return identities


# --- one device's TUF client ------------------------------------------------------------------


class DeviceFetcher(FetcherInterface):
    """ngclient's network layer for one device: its own certificate, one kept-alive connection,
    the check-in headers, and If-None-Match for timestamp.json (a 304 replays the cached bytes)."""

    def __init__(self, device, pool, timeout):
        self.device = device
        self.pool = pool
        self.timeout = timeout

    def _fetch(self, url):
        path = urlsplit(url).path
        cacheable = path.endswith("/timestamp.json")
        headers = self.device.headers()
        cached = self.device.etags.get(path) if cacheable else None
        if cached:
            headers["If-None-Match"] = cached[0]
        try:
            response = self.pool.request("GET", path, headers=headers, preload_content=False, timeout=self.timeout, retries=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError from exc
        self.device.sim.count("requests")
        if response.status == 304 and cached:
            response.release_conn()
            return iter([cached[1]])
        if response.status >= 400:
            response.drain_conn()
            response.release_conn()
            raise tuf_errors.DownloadHTTPError(f"HTTP {response.status} for {path}", response.status)
        if cacheable:
            body = response.read()
            response.release_conn()
            etag = response.headers.get("ETag")
            if etag:
                self.device.etags[path] = (etag, body)
            return iter([body])
        return self._chunks(response)

    @staticmethod
    def _chunks(response):
        try:
            yield from response.stream(CHUNK)
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError from exc
        finally:
            response.release_conn()


@dataclass(eq=False)
class SimDevice:
    sim: "Simulator"
    identity: Identity
    folder: Path
    offline: bool = False
    never_returns: bool = False
    state: str = IDLE
    pending: dict | None = None
    bad_targets: set = field(default_factory=set)
    # When each set-aside target failed and its version; the timestamp version last asked about.
    failed_at: dict = field(default_factory=dict)
    retry_checked: int | None = None
    etags: dict = field(default_factory=dict)
    outbox: list = field(default_factory=list)
    gone: bool = False
    rollback: bool = False
    polls: int = 0

    def headers(self):
        headers = {"x-ats-tags": self.identity.tag}
        if self.identity.target_name:
            headers["x-ats-target"] = self.identity.target_name
        return headers

    # --- network ---

    def _pool(self):
        context = ssl.create_default_context(cafile=str(self.sim.keystore.server_ca))
        context.load_cert_chain(str(self.folder / "client.pem"), str(self.folder / "client.key"))
        return urllib3.HTTPSConnectionPool(self.sim.host, self.sim.port, maxsize=1, ssl_context=context, retries=False)

    def _updater(self, pool):
        metadata = self.folder / "metadata"
        bootstrap = None
        if not (metadata / "root.json").exists():
            metadata.mkdir(parents=True, exist_ok=True)
            # Trust on first use, over the mutually authenticated connection to the gateway.
            response = pool.request("GET", "/repo/1.root.json", headers=self.headers(), timeout=self.sim.timeout)
            self.sim.count("requests")
            if response.status != 200:
                raise tuf_errors.DownloadHTTPError(f"HTTP {response.status} for 1.root.json", response.status)
            bootstrap = response.data
        return Updater(
            str(metadata),
            self.sim.gateway_url + "/repo/",
            target_dir=str(self.folder),
            target_base_url=self.sim.gateway_url + "/targets/",
            fetcher=DeviceFetcher(self, pool, self.sim.timeout),
            bootstrap=bootstrap,
        )

    def _post_events(self, pool, events=()):
        """Queue events and send everything queued; what cannot be sent now goes with the next step."""
        now = datetime.now(dt_timezone.utc).isoformat()
        self.outbox.extend({**event, "time": now} for event in events)
        if not self.outbox:
            return
        headers = {**self.headers(), "Content-Type": "application/json"}
        response = pool.request("POST", "/events", body=json.dumps(self.outbox), headers=headers, timeout=self.sim.timeout)
        self.sim.count("requests")
        if response.status != 202:
            raise RuntimeError(f"events refused ({response.status}): {response.data[:200]!r}")
        self.sim.count("events", len(self.outbox))
        self.outbox.clear()

    # --- behaviour ---

    def step(self):
        """Run the device's next step; returns seconds until the following one, or None: never."""
        if self.gone or self.offline:
            return None
        pool = self._pool()
        try:
            if self.outbox:
                self._post_events(pool)
            if self.state == REBOOTING:
                return self._finish_install(pool)
            return self._poll(pool)
        finally:
            pool.close()

    def _poll(self, pool):
        self.polls += 1
        self.sim.count("polls")
        try:
            updater = self._updater(pool)
            updater.refresh()
        except tuf_errors.BadVersionNumberError as exc:
            # A version went down: a cancelled wave's rollback. Install nothing, keep polling.
            if not self.rollback:
                logger.info("%s refuses a rollback: %s", self.identity.name, exc)
            self.rollback = True
            self.sim.count("rollback-refused")
            return self.sim.next_poll()
        except tuf_errors.RepositoryError as exc:
            self.sim.count("metadata-rejected")
            logger.warning("%s rejected metadata: %s", self.identity.name, exc)
            return self.sim.next_poll()
        self.rollback = False
        if self.bad_targets:
            self._take_up_retry(pool)
        if self.never_returns and self.state == "checked-in-once":
            self.gone = True
            self.sim.count("gone")
            return None
        target = self._choose_target()
        if target is None:
            return self.sim.next_poll()
        return self._install(pool, updater, target)

    def _take_up_retry(self, pool):
        """A device holding failed targets asks, once per new timestamp, whether its wave was
        offered to it again after the failure; if so it tries that version once more."""
        timestamp = json.loads((self.folder / "metadata" / "timestamp.json").read_bytes())["signed"]["version"]
        if timestamp == self.retry_checked:
            return
        self.retry_checked = timestamp
        response = pool.request("GET", "/device", headers=self.headers(), timeout=self.sim.timeout)
        self.sim.count("requests")
        retry = json.loads(response.data).get("retry") if response.status == 200 else None
        if not retry:
            return
        offered_at = datetime.fromisoformat(retry["offered_at"])
        again = {name for name, (at, version) in self.failed_at.items() if version == retry["version"] and at < offered_at}
        if again:
            self.bad_targets -= again
            for name in again:
                del self.failed_at[name]
            self.sim.count("retries-taken")

    def _choose_target(self):
        signed = json.loads((self.folder / "metadata" / "targets.json").read_bytes())["signed"]
        best = None
        for name, meta in (signed.get("targets") or {}).items():
            custom = meta.get("custom") or {}
            try:
                version = int(custom.get("version"))
            except (TypeError, ValueError):
                continue
            if self.identity.hardware_id not in (custom.get("hardwareIds") or []):
                continue
            if self.identity.tag not in (custom.get("tags") or []):
                continue
            if name in self.bad_targets or (self.identity.target_version or 0) >= version:
                continue
            if best is None or version > best[1]:
                best = (name, version)
        return best

    def _install(self, pool, updater, target):
        name, version = target
        info = updater.get_targetinfo(name)
        if info is None:
            return self.sim.next_poll()
        self.state = UPDATING
        self.sim.count("updates-started")
        # Failure rates are per group, and groups change: ask the gateway which one it is in now.
        response = pool.request("GET", "/device", headers=self.headers(), timeout=self.sim.timeout)
        self.sim.count("requests")
        if response.status == 200:
            self.identity.group = json.loads(response.data).get("group")
        self._post_events(pool, [{"type": "download-started", "target": name, "version": version}])
        path = self.folder / "download"
        try:
            updater.download_target(info, filepath=str(path))
        except (tuf_errors.DownloadError, tuf_errors.RepositoryError) as exc:
            self.state = IDLE
            self.sim.count("download-failed")
            self._post_events(pool, [{"type": "download-completed", "target": name, "version": version, "success": False, "detail": str(exc)[:500]}])
            return self.sim.next_poll()
        finally:
            path.unlink(missing_ok=True)
        self._post_events(
            pool,
            [
                {"type": "download-completed", "target": name, "version": version, "success": True},
                {"type": "install-started", "target": name, "version": version},
                {"type": "install-applied", "target": name, "version": version, "success": True, "detail": "reboot required"},
            ],
        )
        self.pending = {"name": name, "version": version, "custom": info.custom}
        self.state = REBOOTING
        return self.sim.reboot_delay

    def _finish_install(self, pool):
        name, version, custom = self.pending["name"], self.pending["version"], self.pending.get("custom")
        self.pending = None
        self.state = IDLE
        if self.sim.fails(self.identity.group, custom):
            # The new image did not boot healthy: roll back to the running version.
            self.bad_targets.add(name)
            self.failed_at[name] = (datetime.now(dt_timezone.utc), version)
            self.sim.count("failed")
            self._post_events(
                pool, [{"type": "install-completed", "target": name, "version": version, "success": False, "detail": "simulated failure: health check failed, rolled back"}]
            )
            return 0.0
        self.identity.target_name, self.identity.target_version = name, version
        self.sim.keystore.update(self.identity)
        self.sim.count("updated")
        self._post_events(pool, [{"type": "install-completed", "target": name, "version": version, "success": True}])
        if self.never_returns:
            # One last check-in on the new version, then silence.
            self.state = "checked-in-once"
        return 0.0


# --- the fleet --------------------------------------------------------------------------------


class Simulator:
    def __init__(
        self,
        *,
        identities,
        keystore,
        gateway_url,
        interval=60.0,
        threads=16,
        fail_rates=None,
        offline_ratio=0.0,
        never_return=0,
        reboot_delay=5.0,
        timeout=30.0,
        seed=None,
        out=None,
        aktualizr_share=0.0,
    ):
        self.keystore = keystore
        self.gateway_url = gateway_url.rstrip("/")
        url = urlsplit(self.gateway_url)
        self.host, self.port = url.hostname, url.port or 443
        self.interval = float(interval)
        self.threads = int(threads)
        self.fail_rates = dict(fail_rates or {})
        self.reboot_delay = float(reboot_delay)
        self.timeout = urllib3.Timeout(connect=min(10.0, timeout), read=timeout)
        self.random = random.Random(seed)
        self.out = out
        self._counts = Counter()
        self._lock = threading.Lock()
        kinds = {"tuf": SimDevice, "aktualizr": AktualizrDevice}
        picker = random.Random(seed)  # its own stream, so the kinds change no other random choice
        for identity in identities:
            # A device keeps its kind across restarts; a new one is aktualizr-lite with that share.
            if identity.protocol not in kinds:
                identity.protocol = "aktualizr" if aktualizr_share and picker.random() < float(aktualizr_share) else "tuf"
                if (keystore.folder(identity.uuid) / "identity.json").exists():
                    keystore.update(identity)
        self.devices = [kinds[i.protocol](sim=self, identity=i, folder=keystore.folder(i.uuid)) for i in identities]
        order = list(self.devices)
        self.random.shuffle(order)
        # The devices the server has not seen for longest stay offline, so a seeded fleet's
        # offline devices are the ones that keep quiet (a stable sort keeps the shuffle for ties).
        now = time.time()
        order.sort(key=lambda d: d.identity.last_seen if d.identity.last_seen is not None else now)
        offline = int(round(len(order) * float(offline_ratio)))
        for device in order[:offline]:
            device.offline = True
        production = [d for d in order[offline:] if d.identity.production]
        self.random.shuffle(production)
        for device in production[: int(never_return)]:
            device.never_returns = True

    # --- knobs used by the devices ---

    def count(self, what, n=1):
        with self._lock:
            self._counts[what] += n

    def next_poll(self):
        return self.interval * self.random.uniform(0.9, 1.1)

    def fails(self, group, custom=None):
        """Whether this install fails its health check, at the group's failure rate.

        The simulated failures model a bad build: its image does not boot healthy on some of the
        group's devices. A re-release (a revert, or a rollback: `custom.rerelease_of` is present)
        carries an earlier build's very content, the one these devices ran before and the release
        manager chose because it worked, so it installs without the simulated failure. Without
        that, a group set to fail would fail the revert as it failed the bad build, and the
        demo could never show devices getting back.
        """
        if isinstance(custom, dict) and custom.get("rerelease_of"):
            return False
        rate = self.fail_rates.get(group or "-", self.fail_rates.get("*", 0.0))
        return self.random.random() < rate

    # --- running ---

    def _step(self, device):
        try:
            return device.step()
        except Exception as exc:  # network errors, refused requests: the device retries later
            self.count("errors")
            logger.debug("%s: %s", device.identity.name, exc)
            if device.state == UPDATING:
                device.state = IDLE
            return self.next_poll()

    def cycle(self):
        """Poll every online device once, carrying any update it starts through to its reboot and
        the check-in after it. For tests: returns when the whole fleet is done."""
        from concurrent.futures import ThreadPoolExecutor

        def drive(device):
            self._step(device)
            if device.state == REBOOTING:
                self._step(device)  # the reboot: install-completed, success or failure
                self._step(device)  # the check-in that follows, on the new version if it booted

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(drive, self.devices))

    def run(self, duration=None, progress_every=10.0):
        """Poll forever (or `duration` seconds) with a pool of threads; print progress."""
        started = time.monotonic()
        deadline = started + duration if duration else None
        queue = [(started + self.random.uniform(0, self.interval), index) for index, d in enumerate(self.devices) if not d.offline]
        heapq.heapify(queue)
        condition = threading.Condition()
        stop = threading.Event()

        def worker():
            while not stop.is_set():
                with condition:
                    while not stop.is_set():
                        now = time.monotonic()
                        if queue and queue[0][0] <= now:
                            _, index = heapq.heappop(queue)
                            break
                        condition.wait(timeout=min(1.0, queue[0][0] - now) if queue else 1.0)
                    else:
                        return
                delay = self._step(self.devices[index])
                if delay is not None:
                    with condition:
                        heapq.heappush(queue, (time.monotonic() + delay, index))
                        condition.notify()

        workers = [threading.Thread(target=worker, name=f"sim-{n}", daemon=True) for n in range(self.threads)]
        for thread in workers:
            thread.start()
        last = started
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(min(progress_every, max(0.05, (deadline or float("inf")) - time.monotonic())))
                now = time.monotonic()
                if now - last >= progress_every or (deadline and now >= deadline):
                    self.print_progress(now - started)
                    last = now
        finally:
            stop.set()
            with condition:
                condition.notify_all()
            for thread in workers:
                thread.join(timeout=self.timeout.read_timeout or 30)
        return self.summary()

    def summary(self):
        with self._lock:
            counts = dict(self._counts)
        versions = Counter(d.identity.target_version for d in self.devices)
        kinds = Counter(d.identity.protocol for d in self.devices)
        return {
            "devices": len(self.devices),
            "offline": sum(d.offline for d in self.devices),
            "updating": sum(d.state in (UPDATING, REBOOTING) for d in self.devices),
            "held": sum(d.rollback for d in self.devices),
            "gone": sum(d.gone for d in self.devices),
            "kinds": dict(sorted(kinds.items())),
            "versions": dict(sorted(versions.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))),
            **counts,
        }

    def print_progress(self, elapsed):
        s = self.summary()
        versions = ", ".join(f"v{v}: {n}" if v is not None else f"none: {n}" for v, n in s["versions"].items())
        kinds = ", ".join(f"{k} {n}" for k, n in s["kinds"].items())
        line = (
            f"[{elapsed:7.0f}s] devices {s['devices']} ({kinds}; offline {s['offline']}, gone {s['gone']}) | "
            f"polled {s.get('polls', 0)} ({s.get('polls', 0) / max(elapsed, 1e-9):.1f}/s), requests {s.get('requests', 0)} | "
            f"updating {s['updating']}, updated {s.get('updated', 0)}, failed {s.get('failed', 0)}, "
            f"rollback refused {s['held']}, errors {s.get('errors', 0)} | {versions}"
        )
        if self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()
        else:
            print(line, flush=True)
