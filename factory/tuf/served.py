"""The signed metadata devices are served, by view: a tag's view rows and the bytes of a view's
files. Plain values in and out; which view a device gets is decided above (waves/served_views.py).

Each file comes in two flavours (factory.tuf.flavours): TUF 1.0, and the libaktualizr one; the
caller says which. Its bytes and ETag are the flavour's own, and so are the cache keys.

Cached so that after warm-up a metadata request costs one indexed query (the tag's view tokens):
view bytes are cached under the view's token, which is replaced whenever the bytes change, so a
stale entry is never read (even with a cache shared by every process).
"""
import re
import time

from django.conf import settings
from django.core.cache import cache
from tuf.api.metadata import Targets

from factory.errors import NotFound

from . import metadata as md
from .flavours import AKTUALIZR, TUF
from .models import EMPTY_TAG, Channel, TufRoot, TufView

ROOT_FILE_RE = re.compile(r"^([1-9][0-9]{0,9})\.root\.json$")
VIEW_FILES = {"timestamp.json": "timestamp", "snapshot.json": "snapshot", "targets.json": "targets"}
CACHE_PREFIX = "bw:tuf:"
CACHE_SECONDS = 24 * 3600


class ViewGone(Exception):
    """The view was dropped between two reads (a wave canceled or completed): resolve again."""


def _etag(digest):
    return f'"{digest[:32]}"'


def ci_view(*, factory_id):
    """(view id, view token) of the factory's CI view, which every test device is served."""
    row = TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.CI).values_list("id", "token").first()
    if row is None:
        raise NotFound("This factory has no TUF repository")
    return row[0], row[1]


_tag_views = {}
# Devices name any tag they like, so the gateway's memory of tags is bounded: past this many the
# oldest entry goes (a real tag evicted is read again; nothing else changes).
TAG_VIEWS_MAX = 4096


def tag_views(*, factory_id, tag):
    """The view rows ({id, kind, token, staging_token, wave_id, tag}) devices on `tag` are served from.

    The tag's production view and wave view if it has them; if nothing was released for the
    tag, the factory's shared empty view (tag EMPTY_TAG): whatever tag a device names, no view
    or row is made for it. [] before the factory's first production device made the empty view.
    One query either way. Every device on the tag shares them. The device gateway keeps them in
    process memory for settings.BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS (about a second), which
    takes the one query off nearly every poll; everywhere else (0, the default) they are read
    each time.
    """
    seconds = getattr(settings, "BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS", 0)
    key = (factory_id, tag)
    if seconds > 0:
        hit = _tag_views.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
    rows = list(
        TufView.objects.filter(
            factory_id=factory_id, tag__in=[tag, EMPTY_TAG], kind__in=[TufView.Kind.PRODUCTION, TufView.Kind.WAVE]
        ).values("id", "kind", "token", "staging_token", "wave_id", "tag")
    )
    own = [r for r in rows if r["tag"] == tag]
    if not any(r["kind"] == TufView.Kind.PRODUCTION for r in own):
        own = [r for r in rows if r["tag"] == EMPTY_TAG and r["kind"] == TufView.Kind.PRODUCTION]
    if seconds > 0 and own:
        _tag_views.pop(key, None)
        _tag_views[key] = (time.monotonic() + seconds, own)
        while len(_tag_views) > TAG_VIEWS_MAX:
            try:
                _tag_views.pop(next(iter(_tag_views)), None)
            except (RuntimeError, StopIteration):  # another thread changed it meanwhile
                break
    return own


def tag_views_forget(*, factory_id, tag):
    """Drop the gateway's memory of the tag's rows (one of its views is gone)."""
    _tag_views.pop((factory_id, tag), None)


def _column(field, flavour):
    if flavour == TUF:
        return field
    if flavour == AKTUALIZR:
        return f"aktualizr_{field}"
    raise ValueError(f"unknown metadata flavour {flavour!r}")


def root_file(*, factory_id, production, filename, flavour=TUF):
    """(bytes, etag) of `filename` if it names a root ("N.root.json") of the device's channel;
    None if it names no root at all. Raises NotFound for a root version that does not exist."""
    match = ROOT_FILE_RE.match(filename or "")
    if not match:
        return None
    channel = Channel.PRODUCTION if production else Channel.CI
    column = _column("data", flavour)
    row = TufRoot.objects.filter(factory_id=factory_id, channel=channel, version=int(match.group(1))).values_list(column).first()
    if row is None or not row[0]:
        # An empty aktualizr root is one signed before the flavour existed by a key gone offline.
        raise NotFound(f"{filename} does not exist")
    data = bytes(row[0])
    return data, _etag(md.sha256(data))


def view_field(filename):
    """The view file `filename` names ("timestamp", "snapshot" or "targets"); NotFound otherwise."""
    field = VIEW_FILES.get(filename)
    if field is None:
        raise NotFound(f"{str(filename)[:80]} does not exist")
    return field


def view_file(*, view_id, token, field, flavour=TUF):
    """(bytes, etag) of one file of a view in `flavour`. Raises ViewGone if the view no longer
    exists, NotFound if it has no file in this flavour yet (offline-signed before it existed)."""
    column = _column(field, flavour)
    key = f"{CACHE_PREFIX}view:{token}:{column}"
    hit = cache.get(key)
    if hit is not None:
        return hit
    row = TufView.objects.filter(pk=view_id).values_list(column, f"{column}_hash", "token").first()
    if row is None:
        raise ViewGone()
    if not row[0]:
        raise NotFound(f"{field}.json is not signed for this client yet; it is with the next signing of the release")
    value = (bytes(row[0]), _etag(row[1]))
    cache.set(f"{CACHE_PREFIX}view:{row[2]}:{column}", value, CACHE_SECONDS)
    return value


def view_targets(*, view_id, token):
    """{target name: {name, length, sha256, version, tags, hardware_ids}} of a view's targets."""
    key = f"{CACHE_PREFIX}names:{token}"
    names = cache.get(key)
    if names is None:
        data, _ = view_file(view_id=view_id, token=token, field="targets")
        targets = md.parse(data, Targets).signed.targets
        names = {
            name: {
                "name": name,
                "length": target.length,
                "sha256": target.hashes.get("sha256", ""),
                "version": md.target_version(target),
                "tags": list((target.custom or {}).get("tags", []) if isinstance(target.custom, dict) else []),
                "hardware_ids": list((target.custom or {}).get("hardwareIds", []) if isinstance(target.custom, dict) else []),
            }
            for name, target in targets.items()
        }
        cache.set(key, names, CACHE_SECONDS)
    return names
