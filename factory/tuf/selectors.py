"""TUF repository reads: what each device is served, production targets facts, expiry warnings.

Device resolution (certificate facts -> view) is cached. After warm-up a metadata request costs
one indexed query (the tag's view tokens): staging decisions are cached under the tag's staging
token and view bytes under the view's token, and both tokens are replaced whenever what they
describe changes, so a stale entry is never read (even with a cache shared by every process).
"""
import base64
import re
import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from tuf.api.metadata import Targets

from factory.errors import NotFound

from . import metadata as md
from .models import EMPTY_TAG, Channel, TufKey, TufRepository, TufRoot, TufRootChange, TufView

ROOT_FILE_RE = re.compile(r"^([1-9][0-9]{0,9})\.root\.json$")
VIEW_FILES = {"timestamp.json": "timestamp", "snapshot.json": "snapshot", "targets.json": "targets"}
CACHE_PREFIX = "bw:tuf:"
CACHE_SECONDS = 24 * 3600


def _etag(digest):
    return f'"{digest[:32]}"'


# --- per-device resolution -------------------------------------------------------------------


def _view_ref(device):
    """(view id, view token, channel) of the view `device` is served."""
    if not device.is_production:
        row = TufView.objects.filter(factory_id=device.factory_id, kind=TufView.Kind.CI).values_list("id", "token").first()
        if row is None:
            raise NotFound("this factory has no TUF repository")
        return row[0], row[1], Channel.CI
    rows = _tag_view_rows(device.factory_id, device.tag)
    production = next((r for r in rows if r["kind"] == TufView.Kind.PRODUCTION), None)
    if production is None:
        # The factory's first device on a tag nothing was released for: its one empty view.
        from .services import production_empty_view_ensure

        view = production_empty_view_ensure(factory_id=device.factory_id)
        return view.id, view.token, Channel.PRODUCTION
    wave = next((r for r in rows if r["kind"] == TufView.Kind.WAVE), None)
    if wave is not None and _staged(device, wave["wave_id"], production["staging_token"]):
        return wave["id"], wave["token"], Channel.PRODUCTION
    return production["id"], production["token"], Channel.PRODUCTION


_tag_views = {}
# Devices name any tag they like, so the gateway's memory of tags is bounded: past this many the
# oldest entry goes (a real tag evicted is read again; nothing else changes).
TAG_VIEWS_MAX = 4096


def _tag_view_rows(factory_id, tag):
    """The view rows (id, kind, token, staging_token, wave_id) devices on `tag` are served from.

    The tag's production view and wave view if it has them; if nothing was released for the
    tag, the factory's shared empty view (tag EMPTY_TAG): whatever tag a device names, no view
    or row is made for it. One query either way. Every device on the tag shares them. The
    device gateway keeps them in process memory for
    settings.BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS (about a second), which takes the one query
    off nearly every poll; everywhere else (0, the default) they are read each time.
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


def _staged(device, wave_id, staging_token):
    """Is the device staged in the wave, on its own or through a full-group rollout?"""
    key = f"{CACHE_PREFIX}staged:{staging_token}:{wave_id}:{device.id}:{device.group_id or 0}"
    staged = cache.get(key)
    if staged is None:
        from waves.models import Wave, WaveDevice, WaveGroup

        query = Wave.objects.filter(pk=wave_id, status=Wave.Status.ACTIVE).annotate(
            by_device=Exists(WaveDevice.objects.filter(wave=OuterRef("pk"), device_id=device.id)),
            by_group=Exists(WaveGroup.objects.filter(wave=OuterRef("pk"), group_id=device.group_id)),
        )
        row = query.values_list("by_device", "by_group").first()
        staged = bool(row and (row[0] or (device.group_id is not None and row[1])))
        cache.set(key, staged, CACHE_SECONDS)
    return staged


def _view_file(view_id, token, field):
    key = f"{CACHE_PREFIX}view:{token}:{field}"
    hit = cache.get(key)
    if hit is not None:
        return hit
    row = TufView.objects.filter(pk=view_id).values_list(field, f"{field}_hash", "token").first()
    if row is None:
        # The view was dropped between the two reads (a wave canceled or completed): retry once.
        raise _ViewGone()
    value = (bytes(row[0]), _etag(row[1]))
    cache.set(f"{CACHE_PREFIX}view:{row[2]}:{field}", value, CACHE_SECONDS)
    return value


class _ViewGone(Exception):
    pass


def device_metadata(*, device, filename):
    """(bytes, etag) of `filename` ("N.root.json", "timestamp.json", "snapshot.json" or
    "targets.json") in the view `device` is served. Raises NotFound for anything else.

    `device` needs factory_id, is_production, tag, group_id and id.
    """
    match = ROOT_FILE_RE.match(filename or "")
    if match:
        channel = Channel.PRODUCTION if device.is_production else Channel.CI
        row = TufRoot.objects.filter(factory_id=device.factory_id, channel=channel, version=int(match.group(1))).values_list("data").first()
        if row is None:
            raise NotFound(f"{filename} does not exist")
        data = bytes(row[0])
        return data, _etag(md.sha256(data))
    field = VIEW_FILES.get(filename)
    if field is None:
        raise NotFound(f"{str(filename)[:80]} does not exist")
    for _ in range(3):
        view_id, token, _channel = _view_ref(device)
        try:
            return _view_file(view_id, token, field)
        except _ViewGone:
            _tag_views.pop((device.factory_id, device.tag), None)
            continue
    raise NotFound(f"{filename} is being re-signed; try again")


def _targets_of_view(view_id, token):
    key = f"{CACHE_PREFIX}names:{token}"
    names = cache.get(key)
    if names is None:
        data, _ = _view_file(view_id, token, "targets")
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


def device_targets(*, device):
    """{target name: {name, length, sha256, version, tags, hardware_ids}} the device may fetch.

    Test devices: the CI targets tagged with the device's tag. Production devices: every target
    of their view (production or wave), which are all tagged with the device's tag.
    """
    for _ in range(3):
        view_id, token, channel = _view_ref(device)
        try:
            targets = _targets_of_view(view_id, token)
        except _ViewGone:
            _tag_views.pop((device.factory_id, device.tag), None)
            continue
        if channel == Channel.CI:
            targets = {name: t for name, t in targets.items() if device.tag in t["tags"]}
        return targets
    raise NotFound("the device's targets are being re-signed; try again")


def target_names_for(*, device):
    """Names of the target files `device` may download (the gateway checks requests against it)."""
    return frozenset(device_targets(device=device))


# --- production targets facts ------------------------------------------------------------------


def _production_targets(factory, tag):
    factory_id = getattr(factory, "pk", factory)
    data = (
        TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag, baseline=False)
        .values_list("targets", flat=True)
        .first()
    )
    return None if data is None else md.parse(data, Targets, f"the production targets of tag {tag}")


def production_targets_versions(*, factory, tag):
    """Versions of the targets in the tag's production targets, ascending; [] if none."""
    targets = _production_targets(factory, tag)
    if targets is None:
        return []
    return sorted({v for v in (md.target_version(t) for t in targets.signed.targets.values()) if v is not None})


def production_targets_version(*, factory, tag):
    """The tag's production targets metadata version (the last completed wave's build), or None."""
    factory_id = getattr(factory, "pk", factory)
    return (
        TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag, baseline=False)
        .values_list("targets_version", flat=True)
        .first()
    )


def production_targets(*, factory, tag):
    """[{name, version, hardware_ids, length, sha256}] of the tag's production targets."""
    targets = _production_targets(factory, tag)
    if targets is None:
        return []
    return sorted(
        (
            {
                "name": name,
                "version": md.target_version(t),
                "hardware_ids": list((t.custom or {}).get("hardwareIds", [])) if isinstance(t.custom, dict) else [],
                "length": t.length,
                "sha256": t.hashes.get("sha256", ""),
            }
            for name, t in targets.signed.targets.items()
        ),
        key=lambda t: (t["version"] or 0, t["name"]),
    )


def production_tags(*, factory):
    """Tags with a production view, and their production targets version (None: baseline)."""
    rows = (
        TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION)
        .exclude(tag=EMPTY_TAG)
        .order_by("tag")
        .values_list("tag", "baseline", "targets_version")
    )
    return [{"tag": tag, "version": None if baseline else version} for tag, baseline, version in rows]


# --- expiry monitor ----------------------------------------------------------------------------


def expiring_targets(*, factory, within_days=30):
    """Offline-signed metadata that expires within `within_days`, soonest first.

    Production and wave targets cannot be re-signed online, so these are warnings for people:
    [{kind, tag, wave, version, expires_at, days_left, expired, message}], kind being
    "production-targets", "wave-targets", "baseline-targets" or "root" (only while offline).
    """
    from waves.models import Wave

    now = timezone.now()
    horizon = now + timedelta(days=float(within_days))
    out = []

    def add(kind, expires_at, message, tag="", wave=None, version=None):
        days = (expires_at - now).total_seconds() / 86400
        out.append(
            {
                "kind": kind,
                "tag": tag,
                "wave": wave,
                "version": version,
                "expires_at": expires_at,
                "days_left": max(0, int(days)),
                "expired": expires_at <= now,
                "message": message,
            }
        )

    for tag, version, expires_at in (
        TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=False, targets_expires_at__lt=horizon)
        .values_list("tag", "targets_version", "targets_expires_at")
    ):
        add("production-targets", expires_at, _expiry_message(f"the production targets of tag {tag} (version {version})", expires_at, now,
            "complete a new wave on the tag to replace them"), tag=tag, version=version)  # fmt: skip
    for name, tag, version, expires_at in Wave.objects.filter(factory=factory, status__in=Wave.OPEN_STATUSES, expires_at__lt=horizon).values_list(
        "name", "tag", "version", "expires_at"
    ):
        add("wave-targets", expires_at, _expiry_message(f"the targets of wave {name} (tag {tag}, version {version})", expires_at, now,
            "complete it before then, or cancel it and start a new wave"), tag=tag, wave=name, version=version)  # fmt: skip
    repository = TufRepository.objects.filter(factory=factory).first()
    if repository is not None:
        baseline_tags = list(TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=True).values_list("tag", flat=True))
        real_tags = sorted(t for t in baseline_tags if t != EMPTY_TAG)
        if baseline_tags and repository.baseline_expires_at < horizon:
            served = f"tag(s) {', '.join(real_tags)}" if real_tags else "production devices on tags without a wave"
            add("baseline-targets", repository.baseline_expires_at, _expiry_message(
                f"the empty production targets served to {served}", repository.baseline_expires_at, now,
                "complete a wave on each of these tags" if real_tags else "complete a wave on each tag those devices follow"))  # fmt: skip
        if not repository.root_online and repository.root_expires_at < horizon:
            add("root", repository.root_expires_at, _expiry_message(f"root version {repository.root_version}", repository.root_expires_at, now,
                "renew it: a root renewal signed with the offline root key"))  # fmt: skip
    out.sort(key=lambda item: item["expires_at"])
    return out


def _expiry_message(what, expires_at, now, advice):
    if expires_at <= now:
        return f"{what} expired on {expires_at:%Y-%m-%d %H:%M} UTC; devices refuse them: {advice}"
    days = (expires_at - now).total_seconds() / 86400
    when = "in less than a day" if days < 1 else f"in {int(days)} day{'s' if int(days) != 1 else ''}"
    return f"{what} expire {when} ({expires_at:%Y-%m-%d %H:%M} UTC): {advice}"


# --- keys and root changes ---------------------------------------------------------------------


def key_list(*, factory):
    """The factory's TUF keys: [{role, keyid, online, created_at, created_by, retired_at}]."""
    rows = TufKey.objects.filter(factory=factory).select_related("created_by").order_by("role", "created_at")
    return [
        {
            "role": k.role,
            "keyid": k.keyid,
            "online": k.online and k.private_encrypted is not None,
            "created_at": k.created_at,
            "created_by": k.created_by.get_username() if k.created_by else "",
            "retired_at": k.retired_at,
        }
        for k in rows
    ]


def repository_summary(*, factory):
    repository = TufRepository.objects.filter(factory=factory).first()
    if repository is None:
        raise NotFound(f"factory {factory.name} has no TUF repository")
    return {
        "root_version": repository.root_version,
        "root_expires_at": repository.root_expires_at,
        "root_online": repository.root_online,
        "production_targets_threshold": repository.production_targets_threshold,
        "offline_targets_keys": TufKey.objects.filter(factory=factory, role="targets", online=False, retired_at__isnull=True).count(),
    }


def root_get(*, factory, channel, version=None):
    """The bytes of a root version (the newest by default), e.g. to bootstrap a device."""
    rows = TufRoot.objects.filter(factory=factory, channel=channel)
    row = rows.filter(version=version).first() if version else rows.order_by("-version").first()
    if row is None:
        raise NotFound(f"{channel} root version {version} does not exist")
    return bytes(row.data)


def root_change_pending(*, factory):
    return TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).first()


def root_change_payloads(*, change):
    """What the pending change needs signed: [{document, payload (base64 of the canonical bytes
    to sign), keyids (keys that may sign it), missing (plain words; '' when complete)}]."""
    from .services import _document_md, _document_missing, _document_signers

    repository = TufRepository.objects.get(factory_id=change.factory_id)
    out = []
    for document in change.documents:
        metadata = _document_md(document)
        out.append(
            {
                "document": document["name"],
                "kind": document["kind"],
                "payload": base64.b64encode(metadata.signed_bytes).decode(),
                "keyids": sorted(_document_signers(change, document, repository)),
                "signed_by": sorted(metadata.signatures),
                "missing": _document_missing(change, document),
            }
        )
    return out



# --- periodic re-signing -----------------------------------------------------------------------


def views_due(*, now=None, limit=None):
    """Ids of the anchors (CI or production views) whose tag needs re-signing, soonest first."""
    from .services import ci_targets_margin, refresh_margin

    now = now or timezone.now()
    soon = now + refresh_margin()
    due = (
        TufView.objects.filter(Q(timestamp_expires_at__lt=soon) | Q(snapshot_expires_at__lt=soon))
        .order_by("timestamp_expires_at")
        .values_list("id", "kind", "factory_id", "tag")
    )
    ci_due = TufView.objects.filter(kind=TufView.Kind.CI, targets_expires_at__lt=now + ci_targets_margin()).values_list("id", flat=True)
    anchors, waves = [], set()
    for view_id, kind, factory_id, tag in due:
        if kind == TufView.Kind.WAVE:
            waves.add((factory_id, tag))
        else:
            anchors.append(view_id)
    if waves:
        q = Q()
        for factory_id, tag in waves:
            q |= Q(factory_id=factory_id, tag=tag)
        anchors += list(TufView.objects.filter(q, kind=TufView.Kind.PRODUCTION).values_list("id", flat=True))
    anchors += list(ci_due)
    ordered = list(dict.fromkeys(anchors))
    return ordered[:limit] if limit else ordered
