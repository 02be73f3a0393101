"""Wave writes: init, sign, rollout, complete, cancel, and QA's saved device lists. A build marked
bad (factory.builds) gets no new wave, re-release, rollout or completion here.

Every door (dashboard, API, CLI, plans, tasks) calls these; they check the role, lock the wave
row so concurrent commands on one wave run one after another, and write the audit log.
"""
import logging
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, Sum
from django.utils import timezone

from devices.models import Device, DeviceGroup
from devices.selectors import uuids_in
from devices.uuids import parse_uuid_list
from factory.auth import authorize
from factory.builds import build_check_not_bad
from factory.errors import ApplicationError, Conflict, NotFound
from factory.models import CiTarget
from factory.plurals import plural
from factory.selectors import release_version_next
from factory.services import audit_record, rerelease_version_claim
from factory.tuf import selectors as tuf_selectors
from factory.tuf.services import signed_views, wave_targets

from . import armed
from .models import Rollout, Wave, WaveDevice, WaveGroup
from .ostree_deltas import wave_deltas_enqueue
from .rollout_counts import candidates_count_capped, rollout_count_enqueue
from .outcomes import not_updated_q, version_updated
from .scope import limit_parse, sample_size, scope_require
from . import selectors
from .selectors import offline_cutoff

logger = logging.getLogger(__name__)

# \Z, not $: "$" also matches before a final line break.
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# Words the dashboard uses in wave URLs (/waves/new/, /waves/lists/).
RESERVED_WAVE_NAMES = {"new", "lists"}
DEFAULT_EXPIRES_DAYS = 365
MAX_EXPIRES_DAYS = 3650


# --- init and sign ---------------------------------------------------------------------------


def _validate_name(name, what):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ApplicationError(f"{what} {str(name)[:70]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def _expiry(expires_days, expires_at, now):
    if expires_days is not None and expires_at is not None:
        raise ApplicationError("Give either an expiry in days or an expiry date, not both")
    if expires_at is not None:
        if isinstance(expires_at, str):
            try:
                expires_at = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            except ValueError:
                raise ApplicationError(f"Expiry {expires_at[:40]!r} is not an RFC 3339 date-time") from None
        if timezone.is_naive(expires_at):
            raise ApplicationError("The expiry date needs a time zone (e.g. 2027-06-01T00:00:00Z)")
        if expires_at <= now + timedelta(days=1):
            raise ApplicationError("The expiry date must be more than a day in the future")
        if expires_at > now + timedelta(days=MAX_EXPIRES_DAYS):
            raise ApplicationError(f"The expiry date may be at most {MAX_EXPIRES_DAYS} days away")
        return expires_at.replace(microsecond=0)
    days = DEFAULT_EXPIRES_DAYS if expires_days is None else expires_days
    try:
        days = int(days)
    except (TypeError, ValueError):
        raise ApplicationError(f"Expiry days {days!r} is not a whole number") from None
    if not 1 < days <= MAX_EXPIRES_DAYS:
        raise ApplicationError(f"Expiry days must be between 2 and {MAX_EXPIRES_DAYS}")
    return (now + timedelta(days=days)).replace(microsecond=0)


def _int_list(values, what):
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values) if v]
    out = []
    for value in values or ():
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            raise ApplicationError(f"{what} {str(value)[:20]!r} is not a version number") from None
    return sorted(set(out))


def _wave_new_checks(*, factory, actor, name, tag, source_tag, prune):
    """What every new wave (a build's or a re-release) must pass; returns the prune versions."""
    authorize(user=actor, factory=factory, action="wave.manage")
    _validate_name(name, "Wave name")
    if name.lower() in RESERVED_WAVE_NAMES:
        raise ApplicationError(f"{name!r} is reserved; choose another wave name")
    _validate_name(tag, "Tag")
    if source_tag:
        _validate_name(source_tag, "Source tag")
    prune = _int_list(prune, "Prune version")
    production_versions = tuf_selectors.production_targets_versions(factory=factory, tag=tag)
    unknown = [v for v in prune if v not in production_versions]
    if unknown:
        raise ApplicationError(f"Cannot prune {', '.join(map(str, unknown))}: not in the production targets of tag {tag}")
    if Wave.objects.filter(factory=factory, name=name).exists():
        raise Conflict(f"A wave named {name} already exists")
    open_wave = Wave.objects.filter(factory=factory, tag=tag, status__in=Wave.OPEN_STATUSES).first()
    if open_wave is not None:
        raise Conflict(f"Wave {open_wave.name} is still {open_wave.status} on tag {tag}; complete or cancel it first")
    open_tags = Wave.objects.filter(factory=factory, status__in=Wave.OPEN_STATUSES).values_list("tag", flat=True)
    signed_views.production_tag_admit(factory_id=factory.id, tag=tag, open_wave_tags=open_tags)
    return prune


def _version(value, what):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApplicationError(f"{what} {str(value)[:20]!r} is not a number") from None


def wave_version_refusals(*, factory, tag, versions):
    """{version: the error} of the builds in `versions` that cannot be a new wave on `tag`
    (wave_init raises it; the create-wave form shows it next to the build, disabled).

    Devices only move up: a wave goes above the tag's production targets and above every version
    its devices were served.
    """
    production_versions = tuf_selectors.production_targets_versions(factory=factory, tag=tag)
    current = tuf_selectors.production_targets_version(factory=factory, tag=tag)
    served = selectors.tag_served_version(factory=factory, tag=tag)
    refusals = {}
    for version in versions:
        if version in production_versions:
            refusals[version] = Conflict(f"Version {version} is already in the production targets of tag {tag}")
        elif current is not None and version <= current:
            refusals[version] = ApplicationError(f"Version {version} must be higher than tag {tag}'s current production targets version {current}")
        # The same build again (a canceled wave re-initialized) is the same version with the same content.
        elif served is not None and version < served.version:
            refusals[version] = ApplicationError(
                f"Devices on tag {tag} were served version {served.version} (wave {served.name}); build {version} can reach them "
                f"only as a re-release at a higher version: breakwater waves revert NAME {tag} --to {version}"
            )
    return refusals


def wave_init(
    *, factory, actor, name, version, tag, prune=(), expires_days=None, expires_at=None, source_tag=None, dry_run=False,
    signatures=None, key_archive=None, aktualizr_signatures=None,
):  # fmt: skip
    """Create a wave of CI build `version` for production devices on `tag`.

    The wave holds the tag's production targets plus the build's targets, signed by the online
    targets key; devices see it only once `wave_sign` has met the production root's threshold.
    With `signatures` or `key_archive` the wave is signed in the same transaction: a key that
    cannot sign, a bad archive or a tag over BREAKWATER_TUF_MAX_TAGS leaves no wave behind.
    """
    authorize(user=actor, factory=factory, action="wave.manage")
    version = _version(version, "Target version")
    now = timezone.now()
    expires = _expiry(expires_days, expires_at, now)
    build = CiTarget.objects.filter(factory=factory, version=version)
    if not build.exists():
        raise NotFound(f"CI build {version} does not exist")
    wanted_tag = source_tag or tag
    if not any(wanted_tag in t.tags for t in build):
        raise ApplicationError(f"CI build {version} has no targets for tag {wanted_tag}")
    build_check_not_bad(factory=factory, version=version)
    refusal = wave_version_refusals(factory=factory, tag=tag, versions=[version]).get(version)
    if refusal is not None:
        raise refusal
    prune = _wave_new_checks(factory=factory, actor=actor, name=name, tag=tag, source_tag=source_tag, prune=prune)
    targets = wave_targets.wave_targets_build(factory=factory, tag=tag, version=version, prune=prune, expires_at=expires, source_tag=source_tag)
    wave = Wave(
        factory=factory,
        name=name,
        version=version,
        tag=tag,
        source_tag=source_tag or "",
        pruned_versions=prune,
        expires_at=expires,
        targets=targets,
        created_by=actor,
    )
    if dry_run:
        return wave
    with transaction.atomic():
        build_check_not_bad(factory=factory, version=version, lock=True)
        return _wave_open(wave, actor, signatures=signatures, key_archive=key_archive, aktualizr_signatures=aktualizr_signatures)


def wave_revert(
    *, factory, actor, name, tag, to_version, prune=(), expires_days=None, expires_at=None, source_tag=None, dry_run=False,
    signatures=None, key_archive=None, aktualizr_signatures=None,
):  # fmt: skip
    """Take `tag` back to build `to_version`: a wave that re-releases that build's content (the
    same hashes, the same OSTree commit) under new target names at the next number of the
    factory's build sequence. Devices' clients only ever move up (a higher version, a higher TUF
    targets version), so going back is a release above everything the tag has served. Signed
    offline and rolled out in phases like any wave.
    """
    authorize(user=actor, factory=factory, action="wave.manage")
    to_version = _version(to_version, "Build version")
    build_check_not_bad(factory=factory, version=to_version)
    now = timezone.now()
    expires = _expiry(expires_days, expires_at, now)
    prune = _wave_new_checks(factory=factory, actor=actor, name=name, tag=tag, source_tag=source_tag, prune=prune)

    def build(version):
        targets = wave_targets.rerelease_targets_build(
            factory=factory, tag=tag, build_version=to_version, version=version, prune=prune, expires_at=expires, source_tag=source_tag
        )
        return Wave(
            factory=factory,
            name=name,
            version=version,
            rerelease_of=to_version,
            tag=tag,
            source_tag=source_tag or "",
            pruned_versions=prune,
            expires_at=expires,
            targets=targets,
            created_by=actor,
        )

    if dry_run:
        return build(release_version_next(factory=factory))
    with transaction.atomic():
        build_check_not_bad(factory=factory, version=to_version, lock=True)
        wave = build(rerelease_version_claim(factory=factory, build_version=to_version))
        return _wave_open(wave, actor, signatures=signatures, key_archive=key_archive, aktualizr_signatures=aktualizr_signatures)


def _wave_open(wave, actor, *, signatures, key_archive, aktualizr_signatures):
    """Save a new wave (in the caller's transaction), audit it, and sign it if signatures came."""
    try:
        with transaction.atomic():
            wave.save()
    except IntegrityError:
        # Lost a race with a concurrent init: the database constraints decided.
        raise Conflict(f"Another wave was just created on tag {wave.tag} or with the name {wave.name}") from None
    details = {
        "version": wave.version,
        "tag": wave.tag,
        "prune": wave.pruned_versions,
        "expires": wave.expires_at.isoformat(),
        "source_tag": wave.source_tag,
    }
    if wave.rerelease_of is not None:
        details["rerelease_of"] = wave.rerelease_of
    audit_record(factory=wave.factory, actor=actor, action="wave.revert" if wave.rerelease_of else "wave.init", target=wave.name, details=details)
    wave_deltas_enqueue(wave=wave)
    if signatures or key_archive or aktualizr_signatures:
        wave = wave_sign(wave=wave, actor=actor, signatures=signatures, key_archive=key_archive, aktualizr_signatures=aktualizr_signatures)
    return wave


def wave_sign(*, wave, actor, signatures=None, key_archive=None, aktualizr_signatures=None):
    """Add offline signatures (made elsewhere, or here from a key archive held in memory).

    Each key signs both payloads, the TUF targets' and their aktualizr sibling's; the wave is
    signed (active) once both meet the production root's threshold.
    """
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    if not signatures and not key_archive and not aktualizr_signatures:
        raise ApplicationError("Give signatures or a key archive to sign with")
    with transaction.atomic():
        wave = _locked(wave)
        if wave.status != Wave.Status.UNSIGNED:
            raise Conflict(f"Wave {wave.name} is {wave.status}; only an unsigned wave takes signatures")
        signatures, aktualizr_signatures = list(signatures or []), list(aktualizr_signatures or [])
        if key_archive:
            tuf, aktualizr = wave_targets.key_archive_signatures_both(targets_bytes=bytes(wave.targets), archive_bytes=key_archive)
            signatures, aktualizr_signatures = signatures + tuf, aktualizr_signatures + aktualizr
        targets, threshold_met = wave_targets.wave_signatures_add(
            factory=wave.factory, targets_bytes=bytes(wave.targets), signatures=signatures, aktualizr_signatures=aktualizr_signatures
        )
        wave.targets = targets
        fields = ["targets"]
        if threshold_met:
            wave.status = Wave.Status.ACTIVE
            wave.activated_at = timezone.now()
            fields += ["status", "activated_at"]
        wave.save(update_fields=fields)
        if threshold_met:
            wave_targets.wave_view_publish(wave=wave)
        audit_record(
            factory=wave.factory,
            actor=actor,
            action="wave.sign",
            target=wave.name,
            details={"keyids": [s.get("keyid", "") for s in signatures], "active": threshold_met},
        )
        _views_changed(wave)
    return wave


# --- rollout ---------------------------------------------------------------------------------


@dataclass
class RolloutResult:
    wave: Wave
    dry_run: bool
    group_name: str = ""
    full_group: bool = False
    # None for a full-group rollout (not a preview): the group is staged, its devices are counted
    # after the commit, into the rollout's device_count.
    count: int | None = 0
    devices: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    rollout: Rollout | None = None

    @property
    def message(self):
        verb = "would be" if self.dry_run else "is being"
        scope = f' in group "{self.group_name}"' if self.group_name else ""
        # fioctl's words and number format (no thousands separator): scripts written for it read these.
        if self.full_group:
            # A large group's count follows the rollout (waves/rollout_counts.py).
            which = "every device" if self.count is None else f"all {self.count} {plural(self.count, 'device')}"
            return f"A Wave {verb} rolled out to {which}{scope}; devices that join the group later get it too"
        return f"A Wave {verb} rolled out to {self.count} {plural(self.count, 'device')}{scope}"


def _locked(wave):
    """Lock the wave's row and refresh the caller's instance, so it sees the committed state."""
    factory = wave.factory if Wave.factory.is_cached(wave) else None
    wave.refresh_from_db(from_queryset=Wave.objects.select_for_update())
    if factory is not None and factory.pk == wave.factory_id:
        # A wave never changes factory: keep the one loaded rather than read it again.
        wave.factory = factory
    return wave


def _views_changed(wave):
    # In the same transaction as the change: gateways polling meanwhile still read the old token
    # and cache under it, and the new one commits with the staging, so no crash between the two
    # can leave gateways serving a cached "not staged" answer. Lock order as everywhere: the
    # wave's row, then the tag's views.
    signed_views.views_changed(factory=wave.factory, tag=wave.tag)


def wave_rollout(*, wave, actor, group=None, limit=None, uuids=None, dry_run=False, progress=None, phase=None):
    """Stage devices of an active wave: a group, a sample, an exact UUID list, or a mix.

    Candidates are production devices on the wave's tag (in the group, in the list), minus
    devices already staged (individually or through their group) and devices already on the
    wave's version or newer. A dry run selects the same way and changes nothing.
    `progress(done, total)`, if given, is called as the staged rows are written; `phase`, the
    plan phase this rollout is (a batch of).
    """
    factory = wave.factory
    authorize(user=actor, factory=factory, action="rollout.preview" if dry_run else "wave.manage")
    group_name = group or None
    parsed_limit = limit_parse(limit)
    listed = None
    if uuids is not None and not (isinstance(uuids, str) and not uuids.strip()):
        listed = parse_uuid_list(uuids)
    scope_require(group=group_name, limit=parsed_limit, uuids=listed)
    group_obj = None
    if group_name is not None:
        group_obj = DeviceGroup.objects.filter(factory=factory, name=group_name).first()
        if group_obj is None:
            raise NotFound(f"Device group {group_name} does not exist")
    full_group = group_obj is not None and parsed_limit is None and listed is None

    with transaction.atomic():
        # Lock the wave: rollouts, complete and cancel on one wave run one after another, so a
        # device is never staged twice and a racing complete/cancel sees a finished rollout.
        wave = _locked(wave) if not dry_run else Wave.objects.select_related("factory").get(pk=wave.pk)
        if wave.status != Wave.Status.ACTIVE:
            raise Conflict(f"Wave {wave.name} is {wave.status}; only an active wave can be rolled out")
        # Dry runs too: a preview of a rollout that would be refused says so.
        build_check_not_bad(factory=factory, version=wave.build_version, lock=not dry_run)
        result = RolloutResult(wave=wave, dry_run=dry_run, group_name=group_name or "", full_group=full_group)
        scope = Device.objects.filter(factory=factory, is_production=True, tag=wave.tag)
        if group_obj is not None:
            scope = scope.filter(group=group_obj)

        if full_group:
            if WaveGroup.objects.filter(wave=wave, group=group_obj).exists():
                raise Conflict(f"Wave {wave.name} was already rolled out to every device in group {group_obj.name}")
            if dry_run:
                candidates = _candidates(scope, wave, group_staged=False)
                result.devices = _device_rows(candidates.order_by("name", "id"))
                result.count = len(result.devices)
                return result
            # The group row stages every device of it, now and later, in a time that does not
            # grow with the group: a small group is counted here, a large one after the commit.
            result.count = candidates_count_capped(scope, _candidates(scope, wave, group_staged=False))
            rollout = _rollout_record(wave, actor, group_obj, limit, 0, True, result.count, phase)
            WaveGroup.objects.create(wave=wave, group=group_obj, rollout=rollout)
            if result.count is None:
                rollout_count_enqueue(rollout)
        else:
            if listed is not None:
                # A UUID list bounds the scope to at most MAX_UUIDS devices: one query reads them
                # all, and the reasons, the sample and the percentage are worked out from it.
                listed_rows, result.skipped, listed_in_scope = _listed(wave=wave, listed=listed, group=group_obj)
            n = None
            if parsed_limit is not None:
                n = sample_size(parsed_limit, in_scope=lambda: listed_in_scope if listed is not None else scope.count())
            # Whether the group is staged as a whole, asked once by its index: left to the
            # candidates' query, the planner guesses from the staged groups' statistics, and a
            # guess that the group is staged (so that nothing is left) plans a pass over the
            # whole fleet (4 s at 10,000,000 devices instead of an index range).
            group_staged = None if group_obj is None else WaveGroup.objects.filter(wave=wave, group=group_obj).exists()
            if listed is not None:
                selected = _sample_rows(listed_rows, n) if n is not None else sorted(listed_rows, key=lambda r: (r["name"], r["id"]))
            elif group_staged:
                selected = []  # every device of the group is staged through it
            elif n is not None:
                selected = _sample(_candidates(scope, wave, group_staged=group_staged), n)
            else:
                selected = _device_rows(_candidates(scope, wave, group_staged=group_staged).order_by("name", "id"))
            result.devices = selected
            result.count = len(selected)
            if dry_run:
                return result
            if not selected:
                raise ApplicationError("No device matches this rollout: nothing was staged", code="rollout_empty", extra={"skipped": result.skipped})
            rollout = _rollout_record(wave, actor, group_obj, limit, len(listed or ()), False, len(selected), phase)
            _stage(wave, rollout, [row["id"] for row in selected], progress)
            _statistics_refresh_after(wave, rollout, phase)
        result.rollout = rollout
        audit_record(
            factory=factory,
            actor=actor,
            action="wave.rollout",
            target=wave.name,
            details={
                "rollout": rollout.pk,
                "group": group_name or "",
                "limit": str(limit or ""),
                "uuids": len(listed or ()),
                "full_group": full_group,
                "devices": result.count,
                "skipped": len(result.skipped),
            },
        )
        _views_changed(wave)
    return result


def _rollout_record(wave, actor, group, limit, uuids_count, full_group, count, phase=None):
    return Rollout.objects.create(
        wave=wave,
        phase=phase,
        created_by=actor,
        group=group,
        group_name=group.name if group else "",
        limit=str(limit or "").strip(),
        uuids_count=uuids_count,
        full_group=full_group,
        device_count=count,
        options={"group": group.name if group else None, "limit": str(limit or "").strip() or None, "uuids": uuids_count},
    )


def _candidates(scope, wave, *, group_staged=None):
    """Exclude devices already staged in this wave (alone or via their group) or already updated.

    `group_staged=False` says the caller has checked that the scope's one group is not staged
    as a whole; leaving that test out lets PostgreSQL estimate the rows and hash the staged
    devices once (24 ms for a 100,000-device group) instead of probing the index per device.
    """
    # NOT EXISTS, not NOT IN: PostgreSQL turns it into an anti-join or a probe of the
    # (wave, device) unique index, where NOT IN over 900,000 staged rows degrades to a scan per device.
    conditions = [
        ~Exists(WaveDevice.objects.filter(wave=wave, device_id=OuterRef("pk"))),
        not_updated_q(wave),
    ]
    if group_staged is not False:
        conditions.append(~Exists(WaveGroup.objects.filter(wave=wave, group_id=OuterRef("group_id"))))
    return scope.filter(*conditions)


def _online(cutoff):
    # Worked out in SQL: loading 10,000 timestamps into Python costs more than the query.
    return ExpressionWrapper(Q(last_seen__gte=cutoff), output_field=BooleanField())


def _row(r):
    return {
        "id": r["id"],
        "uuid": str(r["uuid"]),
        "name": r["name"],
        "group": r["group__name"] or "",
        "target_version": r["target_version"],
        "online": bool(r["online"]),
    }


def _device_rows(queryset, cutoff=None):
    rows = queryset.annotate(online=_online(cutoff or offline_cutoff())).values("id", "uuid", "name", "group__name", "target_version", "online")
    return [_row(r) for r in rows]


def _sample(candidates, n):
    """A pseudo-random sample of `n` candidates, recently active devices first.

    Each device carries a random `sample_key`; a sample is the window of keys starting at a
    random point (wrapping around), read in index order: online devices first, then offline.
    It stays an index range scan however many devices are already staged.
    """
    start = random.random()
    cutoff = offline_cutoff()
    online = candidates.filter(last_seen__gte=cutoff)
    offline = candidates.exclude(last_seen__gte=cutoff)
    chosen = []
    for part in (online, offline):
        for window in (part.filter(sample_key__gte=start), part.filter(sample_key__lt=start)):
            if len(chosen) >= n:
                return chosen
            chosen += _device_rows(window.order_by("sample_key")[: n - len(chosen)], cutoff)
    return chosen


def _listed(*, wave, listed, group):
    """The listed devices that are candidates, why each other one is not (unknown, test device,
    other tag, other group, already staged, already updated), and how many are in scope."""
    rows = (
        Device.objects.filter(factory=wave.factory, uuid__in=uuids_in(listed))
        .annotate(
            online=_online(offline_cutoff()),
            staged=Exists(WaveDevice.objects.filter(wave=wave, device_id=OuterRef("pk")))
            | Exists(WaveGroup.objects.filter(wave=wave, group_id=OuterRef("group_id")))
        )
        .values("id", "uuid", "name", "is_production", "tag", "group_id", "group__name", "target_version", "online", "staged")
    )
    devices = {d["uuid"]: d for d in rows}
    candidates, skipped, in_scope = [], [], 0
    for uuid in listed:
        d = devices.get(uuid)
        reason = None
        if d is None:
            reason = "unknown device"
        elif not d["is_production"]:
            reason = "test device"
        elif d["tag"] != wave.tag:
            reason = f"other tag ({d['tag']})"
        elif group is not None and d["group_id"] != group.id:
            reason = "other group"
        else:
            in_scope += 1
            if d["staged"]:
                reason = "already staged"
            elif version_updated(d["target_version"], wave):
                reason = "already updated"
        if reason:
            skipped.append({"uuid": str(uuid), "reason": reason})
        else:
            candidates.append(_row(d))
    return candidates, skipped, in_scope


def _sample_rows(rows, n):
    """The same sampling rule for rows already in hand: online first, then random."""
    shuffled = random.sample(rows, len(rows))
    shuffled.sort(key=lambda r: not r["online"])
    return shuffled[:n]


STAGE_CHUNK = 1000
# See _statistics_refresh_after: a rollout staging at least this many devices, a tenth or more of
# what the wave had staged, refreshes the planner's statistics of the staged rows.
STATISTICS_MIN_STAGED = 1000


def _statistics_refresh_after(wave, rollout, phase=None):
    """ANALYZE the staged rows after this rollout commits, when it grew the wave by a tenth.

    The planner knows a wave's staged rows only from the table's statistics, and autovacuum
    refreshes them once a tenth of the whole table changed: long after a new wave's first
    rollouts. Until then it takes the wave for empty and, in the next rollout, compares every
    candidate with every staged row (4 s with 10,000 staged on 1,000,000 devices, instead of
    0.2 s). After the commit, so no rollout holds the table's ANALYZE lock while it runs.
    """
    added = rollout.device_count
    if connection.vendor != "postgresql" or added < STATISTICS_MIN_STAGED:
        return
    if phase is not None:
        # A plan's batch: what its phase staged before it is in memory, and no more than the
        # wave holds, so the refresh runs as often or more, without a statement per tick.
        earlier = phase.staged_count
    else:
        earlier = Rollout.objects.filter(wave=wave, full_group=False).exclude(pk=rollout.pk).aggregate(n=Sum("device_count"))["n"] or 0
    if added * 10 < earlier + added:
        return

    def analyze():
        try:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE waves_wavedevice")
        except DatabaseError:
            # The rollout is committed; stale statistics only slow the next one down.
            logger.exception("refreshing the staged rows' statistics failed")

    transaction.on_commit(analyze)


def _stage(wave, rollout, device_ids, progress=None):
    # One statement for all rows, unless someone watches the progress: then chunks, still in
    # the rollout's one transaction.
    chunk = STAGE_CHUNK if progress else len(device_ids)
    for start in range(0, len(device_ids), chunk):
        ids = device_ids[start : start + chunk]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO waves_wavedevice (wave_id, device_id, rollout_id) SELECT %s, unnest(%s::bigint[]), %s",
                    [wave.id, ids, rollout.id],
                )
        else:
            WaveDevice.objects.bulk_create([WaveDevice(wave=wave, device_id=i, rollout=rollout) for i in ids], batch_size=2000)
        if progress:
            progress(start + len(ids), len(device_ids))


# --- complete and cancel -----------------------------------------------------------------------


def wave_complete(*, wave, actor):
    """The wave's targets (bytes and signatures unchanged) become the tag's production targets."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    with transaction.atomic():
        wave = _locked(wave)
        if wave.status == Wave.Status.CANCELED:
            raise Conflict(f"Wave {wave.name} is canceled; it cannot be completed")
        if wave.status == Wave.Status.COMPLETE:
            raise Conflict(f"Wave {wave.name} is already complete")
        if wave.status == Wave.Status.UNSIGNED:
            raise Conflict(f"Wave {wave.name} is not signed yet; sign it before completing it")
        if wave.status == Wave.Status.ARMED:
            # Armed, it was never rolled out: completing it would move every production device
            # of the tag back without a phase, a gate or a halt having asked for it.
            raise Conflict(f"Wave {wave.name} is a plan's pre-signed rollback, armed until the plan halts on a failure; it cannot be completed by hand")
        # Completing makes the build every production device's on the tag: the widest rollout.
        build_check_not_bad(factory=wave.factory, version=wave.build_version, lock=True)
        wave_targets.production_targets_promote(wave=wave)
        wave.status = Wave.Status.COMPLETE
        wave.finished_at = timezone.now()
        wave.finished_by = actor
        wave.save(update_fields=["status", "finished_at", "finished_by"])
        audit_record(factory=wave.factory, actor=actor, action="wave.complete", target=wave.name, details={"version": wave.version, "tag": wave.tag})
        armed.rollback_disarm(wave=wave, actor=actor, reason=f"wave {wave.name} was completed")
        _views_changed(wave)
    return wave


def wave_cancel(*, wave, actor, for_rollback=False):
    """Stop serving the wave. Devices already on it stay; no other device is updated to it.

    `for_rollback`: the plan's scheduler (no user) cancels it because the plan halted and its
    pre-signed rollback takes over (waves/plans/rollback.py), so that rollback stays armed here.
    """
    if not for_rollback:
        authorize(user=actor, factory=wave.factory, action="wave.manage")
    with transaction.atomic():
        wave = _locked(wave)
        if wave.status == Wave.Status.COMPLETE:
            raise Conflict(f"Wave {wave.name} is complete; it cannot be canceled")
        if wave.status == Wave.Status.CANCELED:
            raise Conflict(f"Wave {wave.name} is already canceled")
        was_active = wave.status == Wave.Status.ACTIVE
        if was_active:
            wave_targets.wave_view_drop(wave=wave)
        wave.status = Wave.Status.CANCELED
        wave.finished_at = timezone.now()
        wave.finished_by = actor
        wave.save(update_fields=["status", "finished_at", "finished_by"])
        details = {"version": wave.version, "tag": wave.tag}
        if for_rollback:
            details["rolled_back"] = True
        audit_record(factory=wave.factory, actor=actor, action="wave.cancel", target=wave.name, details=details)
        if not for_rollback:
            armed.rollback_disarm(wave=wave, actor=actor, reason=f"wave {wave.name} was canceled")
        _views_changed(wave)
    return wave
