"""TUF test support: offline keys, and devices running python-tuf's real client.

`TufDevice` is a device with its own persistent TUF metadata folder, polling through
`ngclient.Updater` with a fetcher that asks the repository exactly what the gateway asks it
(`waves.served_views.device_metadata` / `device_targets`), or that runs each request through
the gateway's WSGI app with the device's certificate, so every byte a test device trusts was
verified by the standard client.
"""
import json
import shutil
import subprocess
from pathlib import Path

from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import FetcherInterface, Updater

from factory.project.gateway.http1 import PEER_CERTIFICATE
from factory.artifacts import synthetic_artifact
from factory.errors import NotFound
from factory.tuf import metadata as md
from factory.tuf.services.root_changes import offline_key_generate
from waves import served_views

BASE_URL = "https://gateway.test/repo/"
TARGETS_URL = "https://gateway.test/targets/"


def offline_targets_key(*, factory, actor, threshold=None):
    """Register a new offline targets key for `factory`; returns its .tgz archive bytes."""
    return offline_key_generate(factory=factory, actor=actor, role="targets", threshold=threshold)


class RepositoryFetcher(FetcherInterface):
    """Serves a device's metadata and targets the way the gateway does; optional tampering."""

    def __init__(self, device, tamper=None):
        self.device = device
        self.tamper = tamper  # callable(filename, bytes) -> bytes
        self.requests = []

    def _fetch(self, url):
        self.device.refresh_from_db()
        if url.startswith(BASE_URL):
            filename = url[len(BASE_URL):]
            self.requests.append(filename)
            try:
                data, _etag = served_views.device_metadata(device=self.device, filename=filename)
            except NotFound:
                raise tuf_exceptions.DownloadHTTPError(f"{filename} not found", 404) from None
            if self.tamper is not None:
                data = self.tamper(filename, data)
            return iter([data])
        if url.startswith(TARGETS_URL):
            name = url[len(TARGETS_URL):]
            if name not in served_views.target_names_for(device=self.device):
                raise tuf_exceptions.DownloadHTTPError(f"{name} not found", 404)
            # A re-release's file is the file of the target whose content it carries.
            data, _etag = served_views.device_metadata(device=self.device, filename="targets.json")
            custom = json.loads(data)["signed"]["targets"][name].get("custom")
            return iter([synthetic_artifact(self.device.factory.name, md.content_source(name, custom)[0])])
        raise tuf_exceptions.DownloadHTTPError(url, 404)


class GatewayFetcher(FetcherInterface):
    """Runs each request through the device gateway's WSGI app, as the device's certificate."""

    def __init__(self, device, tag=None):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from factory.project.gateway.handler import Gateway

        self.gateway = Gateway(device_cache_seconds=0)
        self.der = x509.load_pem_x509_certificate(device.certificate.encode()).public_bytes(Encoding.DER)
        self.tag = tag
        self.requests = []

    def _fetch(self, url):
        for prefix, path in ((BASE_URL, "/repo/"), (TARGETS_URL, "/targets/")):
            if url.startswith(prefix):
                break
        else:
            raise tuf_exceptions.DownloadHTTPError(url, 404)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path + url[len(prefix):], PEER_CERTIFICATE: self.der}
        if self.tag:
            environ["HTTP_X_ATS_TAGS"] = self.tag
        answer = {}

        def start_response(status, headers):
            answer["status"] = int(status.split()[0])

        body = b"".join(self.gateway(environ, start_response))
        self.requests.append((url, answer["status"]))
        if answer["status"] != 200:
            raise tuf_exceptions.DownloadHTTPError(body.decode(errors="replace"), answer["status"])
        return iter([body])


class TufDevice:
    """A device's TUF client state across polls: trusted metadata on disk, installed target."""

    def __init__(self, device, root_dir, via_gateway=False, tag=None):
        self.device = device
        self.via_gateway = via_gateway
        self.tag = tag  # what the device sends as x-ats-tags (through the gateway)
        # The test's tmp_path: pytest removes it, where a TemporaryDirectory of its own would be
        # removed by the garbage collector, with a ResourceWarning in whichever test it runs.
        base = Path(root_dir) / str(device.uuid)
        self.metadata_dir = base / "metadata"
        self.targets_dir = base / "targets"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        # Provisioned with root version 1 of its channel, as at registration.
        self.bootstrap, _ = served_views.device_metadata(device=device, filename="1.root.json")
        self.installed = device.target_version
        self.history = []  # versions after each successful refresh
        self.last_error = None

    def updater(self, tamper=None):
        bootstrap = None if (self.metadata_dir / "root.json").exists() else self.bootstrap
        return Updater(
            str(self.metadata_dir),
            BASE_URL,
            str(self.targets_dir),
            TARGETS_URL,
            fetcher=GatewayFetcher(self.device, tag=self.tag) if self.via_gateway else RepositoryFetcher(self.device, tamper=tamper),
            bootstrap=bootstrap,
        )

    def refresh(self, tamper=None):
        """Run the TUF client workflow; returns the verified targets, or raises its error."""
        try:
            self.updater(tamper=tamper).refresh()
        except Exception as error:
            self.last_error = error
            raise
        self.last_error = None
        self.history.append(self.versions())
        return self.targets()

    def poll(self, tamper=None):
        """Refresh like a device in the field: errors are kept, not raised."""
        try:
            return self.refresh(tamper=tamper)
        except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError):
            return None

    def _read(self, role):
        path = self.metadata_dir / f"{role}.json"
        return json.loads(path.read_bytes()) if path.exists() else None

    def versions(self):
        """Versions of the trusted metadata on disk: {root, timestamp, snapshot, targets}."""
        return {role: (self._read(role) or {}).get("signed", {}).get("version") for role in ("root", "timestamp", "snapshot", "targets")}

    def targets(self):
        """{name: {version, hardware_ids, length}} from the verified targets on disk."""
        data = self._read("targets") or {"signed": {"targets": {}}}
        return {
            name: {
                "version": int(info.get("custom", {}).get("version", 0)),
                "hardware_ids": info.get("custom", {}).get("hardwareIds", []),
                "tags": info.get("custom", {}).get("tags", []),
                "length": info["length"],
            }
            for name, info in data["signed"]["targets"].items()
        }

    def update(self):
        """Poll, then download and install the newest target for the device's hardware ID.

        Returns the installed version; a refresh that fails installs nothing.
        """
        try:
            updater = self.updater()
            updater.refresh()
        except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError) as error:
            self.last_error = error
            return self.installed
        self.last_error = None
        self.history.append(self.versions())
        # Like aktualizr-lite: targets for this hardware ID and the tag the device follows.
        mine = [
            (t["version"], name)
            for name, t in self.targets().items()
            if self.device.hardware_id in t["hardware_ids"] and self.device.tag in t["tags"]
        ]
        if not mine:
            return self.installed
        version, name = max(mine)
        if self.installed is not None and version <= self.installed:
            return self.installed
        info = updater.get_targetinfo(name)
        updater.download_target(info)
        self.installed = version
        return version


# --- a second, independent client: tuf-js -------------------------------------------------------

TUFJS_DIR = Path(__file__).resolve().parents[1] / "tufjs"


def tufjs_missing():
    """Why the tuf-js client cannot run here ('' when it can): no node, or its packages absent."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (TUFJS_DIR / "node_modules" / "tuf-js").is_dir():
        return "tuf-js is not installed: run `make install` (npm ci in tests/tufjs)"
    return ""


class TufJsDevice:
    """A device whose TUF client is tuf-js: each refresh fetches, through the gateway's WSGI app
    and as the device's certificate, the files it serves (every N.root.json, timestamp.json,
    snapshot.json, targets.json), then lets tuf-js verify and update its own trusted metadata."""

    def __init__(self, device, root_dir, tag=None):
        self.fetcher = GatewayFetcher(device, tag=tag)
        self.metadata_dir = Path(root_dir) / f"tufjs-{device.uuid}"
        self.served_dir = Path(root_dir) / f"tufjs-served-{device.uuid}"

    def _collect(self):
        shutil.rmtree(self.served_dir, ignore_errors=True)
        self.served_dir.mkdir(parents=True)
        version = 1
        while True:
            try:
                data = b"".join(self.fetcher._fetch(f"{BASE_URL}{version}.root.json"))
            except tuf_exceptions.DownloadHTTPError:
                break
            (self.served_dir / f"{version}.root.json").write_bytes(data)
            version += 1
        for name in ("timestamp.json", "snapshot.json", "targets.json"):
            (self.served_dir / name).write_bytes(b"".join(self.fetcher._fetch(BASE_URL + name)))

    def refresh(self, tamper=None):
        """{"ok", "versions": {root, timestamp, snapshot, targets}, "targets": [names]} or
        {"ok": False, "error", "message"} as tuf-js reported it. `tamper(name, bytes) -> bytes`
        changes what was served before tuf-js reads it."""
        self._collect()
        if tamper is not None:
            for path in self.served_dir.iterdir():
                path.write_bytes(tamper(path.name, path.read_bytes()))
        result = subprocess.run(
            ["node", str(TUFJS_DIR / "refresh.js"), str(self.metadata_dir), str(self.served_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        lines = result.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"tuf-js printed nothing (exit {result.returncode}): {result.stderr[-2000:]}")
        return json.loads(lines[-1])
