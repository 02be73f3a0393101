"""Marking a CI build bad, and the check every new wave and rollout of a build passes.

A bad build may not go into a new wave, a re-release or a rollout on any tag, nor become a tag's
production targets, until it is unmarked. The rule lives here; waves.services calls
`build_check_not_bad` wherever a build could reach more devices.
"""
from django.db import IntegrityError, transaction
from django.utils import timezone

from .auth import actor_name, authorize
from .errors import ApplicationError, Conflict, NotFound
from .models import BadBuild, CiTarget, PrunedTarget, RereleaseVersion
from .services import audit_record

REASON_MAX = BadBuild.REASON_MAX


# --- reads ---------------------------------------------------------------------------------------


def bad_builds(*, factory, versions=None):
    """{version: BadBuild} of the factory's builds marked bad (only of `versions`, if given)."""
    rows = BadBuild.objects.filter(factory=factory)
    if versions is not None:
        rows = rows.filter(version__in=[v for v in versions if v is not None])
    return {bad.version: bad for bad in rows}


def build_bad(*, factory, version):
    """The BadBuild row of build `version`, or None if it is not marked bad."""
    return BadBuild.objects.filter(factory=factory, version=version).first()


def bad_build_message(bad):
    """What every door says about a bad build: 'Build 42 is marked bad (reason, by bob on 2026-12-03)'."""
    return f"Build {bad.version} is marked bad ({bad.reason}, by {bad.marked_by_name} on {bad.marked_at:%Y-%m-%d})"


# --- the check -----------------------------------------------------------------------------------


def _build_lock(factory, version):
    """Lock the build's target rows for the caller's transaction; their ids ([] if none).

    Marking takes the same locks, so a wave or rollout checking the build and a mark landing at
    the same moment run one after the other: the check sees the mark, or the mark waits for the
    rollout that passed the check to commit.
    """
    return list(CiTarget.objects.select_for_update().filter(factory=factory, version=version).order_by("id").values_list("id", flat=True))


def build_check_not_bad(*, factory, version, lock=False):
    """Refuse (Conflict) if build `version` is marked bad. With `lock`, inside the caller's
    transaction, the build's rows stay locked until it commits (see _build_lock)."""
    if lock and not _build_lock(factory, version):
        # Pruned between the caller's first read of the build and this lock (pruning takes it too).
        pruned = PrunedTarget.objects.filter(factory=factory, version=version).first()
        if pruned is not None:
            raise NotFound(f"Build {version} was just pruned by {pruned.pruned_by_name}")
    bad = build_bad(factory=factory, version=version)
    if bad is not None:
        raise Conflict(f"{bad_build_message(bad)}: unmark it first", code="build_bad", extra={"version": bad.version})


# --- writes --------------------------------------------------------------------------------------


def _reason_clean(reason, *, what):
    reason = reason.strip() if isinstance(reason, str) else ""
    if "\x00" in reason:
        raise ApplicationError("The reason may not contain NUL characters")
    if not reason:
        raise ApplicationError(f"Say why ({what}): the reason is recorded with the build and in the audit log")
    if len(reason) > REASON_MAX:
        raise ApplicationError(f"The reason may be at most {REASON_MAX} characters")
    return reason


def _version(value):
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ApplicationError(f"Build version {str(value)[:20]!r} is not a number") from None
    if version < 1:
        raise ApplicationError("A build version is a positive integer")
    return version


def _build_require(factory, version):
    """Lock the build (see _build_lock), or NotFound saying what the number is if not a build."""
    if _build_lock(factory, version):
        return
    rerelease = RereleaseVersion.objects.filter(factory=factory, version=version).first()
    if rerelease is not None:
        raise NotFound(f"Version {version} is a re-release of build {rerelease.build_version}, not a CI build; mark build {rerelease.build_version} instead")
    raise NotFound(f"CI build {version} does not exist")


def build_mark_bad(*, factory, actor, version, reason):
    """Mark CI build `version` bad: no new wave, re-release or rollout of it on any tag until unmarked."""
    authorize(user=actor, factory=factory, action="wave.manage")
    version = _version(version)
    reason = _reason_clean(reason, what="marking a build bad")
    with transaction.atomic():
        _build_require(factory, version)
        existing = build_bad(factory=factory, version=version)
        if existing is not None:
            raise Conflict(f"Build {version} is already marked bad ({existing.reason}, by {existing.marked_by_name} on {existing.marked_at:%Y-%m-%d})")
        try:
            with transaction.atomic():
                bad = BadBuild.objects.create(
                    factory=factory, version=version, reason=reason, marked_by=actor, marked_by_name=actor_name(actor), marked_at=timezone.now()
                )
        except IntegrityError:
            raise Conflict(f"Build {version} was just marked bad by someone else") from None
        audit_record(factory=factory, actor=actor, action="build.mark-bad", target=str(version), details={"reason": reason})
    return bad


def build_unmark_bad(*, factory, actor, version, reason):
    """Take the mark off build `version`: it can go into waves and rollouts again."""
    authorize(user=actor, factory=factory, action="wave.manage")
    version = _version(version)
    reason = _reason_clean(reason, what="unmarking a bad build")
    with transaction.atomic():
        _build_require(factory, version)
        bad = build_bad(factory=factory, version=version)
        if bad is None:
            raise Conflict(f"Build {version} is not marked bad")
        bad.delete()
        audit_record(
            factory=factory,
            actor=actor,
            action="build.unmark-bad",
            target=str(version),
            details={"reason": reason, "was_marked_for": bad.reason, "was_marked_by": bad.marked_by_name},
        )
    return bad
