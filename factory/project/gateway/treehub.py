"""The gateway's /treehub/: the OSTree repository as aktualizr-lite pulls it, for one device's own
commits only (the OSTREE targets of its view: a target's sha256 is the commit)."""
import json
import os
from functools import lru_cache

from factory import ostree
from factory.errors import NotFound
from waves.served_views import device_targets

OBJECT_MAX_BYTES = 256 * 1024**2  # read whole into memory (the handler answers with bytes)


@lru_cache(maxsize=4096)
def _allowed(factory_name, commit, mtime_ns):
    files = ostree.commit_files(factory_name=factory_name, commit=commit)
    return frozenset(files["objects"]) | frozenset(files["deltas"])


def allowed_files(device):
    """Treehub paths the device may fetch: the objects and deltas of its view's OSTree commits."""
    factory_name = device.factory.name
    allowed = set()
    for target in device_targets(device=device).values():
        commit = target.get("sha256") or ""
        if not ostree.COMMIT.match(commit):
            continue
        try:
            mtime = os.stat(ostree.repo_path(factory_name) / "index" / f"{commit}.json").st_mtime_ns
            allowed |= _allowed(factory_name, commit, mtime)
        except (OSError, NotFound):
            continue
    return allowed


def _json(status, payload):
    return status, [("Content-Type", "application/json")], json.dumps(payload).encode()


def treehub(device, method, path):
    """(status, headers, body) for /treehub/<path>; 404 for anything the device may not fetch."""
    if path == "download-urls":
        # aktualizr-lite asks for a CDN first; a 404 tells it to pull from the gateway itself.
        if method != "POST":
            return _json(405, {"error": "Use POST"})
        return _json(404, {"error": "No download URLs; pull from this server"})
    if method not in ("GET", "HEAD"):
        return _json(405, {"error": "Use GET"})
    if path == "config":
        return 200, [("Content-Type", "text/plain")], b"[core]\nrepo_version=1\nmode=archive-z2\nindexed-deltas=true\n"
    target = ostree.served_file(factory_name=device.factory.name, path=path)
    if target is None:
        return _json(404, {"error": "No such treehub file"})
    try:
        if path not in allowed_files(device):
            return _json(404, {"error": "This object is not in the device's commits"})
    except NotFound as exc:
        return _json(404, {"error": exc.message})
    try:
        with open(target, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > OBJECT_MAX_BYTES:
                return _json(404, {"error": "This object is too large to serve"})
            body = handle.read()
    except OSError:
        return _json(404, {"error": "This object is not stored on this server"})
    return 200, [("Content-Type", "application/octet-stream")], body if method == "GET" else b""
