"""Changing CI targets after CI published them: their tags (`targets tag`) and taking them out of
the CI targets metadata (`targets prune`). Both re-sign the CI view, so test devices see the change
at their next poll; production targets, signed offline, are never touched here.

What production and open waves still need, which pruning must keep, is decided above this module
(waves.build_pruning): it passes in the rows to remove.
"""
import re

from django.db import transaction
from django.utils import timezone

from factory.auth import actor_name, authorize
from factory.errors import ApplicationError, NotFound
from factory.models import CiTarget, PrunedTarget, RereleaseVersion
from factory.plurals import counted
from factory.services import audit_record

from .. import metadata as md
from ..models import TufView
from .signed_views import ci_view_publish

TAG_MAX = 64
TAGS_MAX = 50
REFS_MAX = 1000
VERSION_MAX = 2**31 - 1
# A tag travels in `x-ats-tags` headers (comma-separated) and on command lines.
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def tags_clean(tags):
    """The tags, trimmed, deduplicated and sorted; ApplicationError naming the bad ones."""
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set)):
        raise ApplicationError("Tags must be a list of tag names")
    cleaned = sorted({t.strip() for t in tags if isinstance(t, str) and t.strip()})
    if not cleaned:
        raise ApplicationError("Give at least one tag")
    bad = [t for t in cleaned if len(t) > TAG_MAX or not TAG_RE.match(t)]
    if bad:
        shown = ", ".join(repr(t[:TAG_MAX]) for t in bad[:5])
        raise ApplicationError(
            f"Not a tag: {shown}; a tag is at most {TAG_MAX} letters, digits, '.', '_', '+' or '-', starting with a letter or digit"
        )
    if len(cleaned) > TAGS_MAX:
        raise ApplicationError(f"A target may have at most {TAGS_MAX} tags")
    return cleaned


def _production_names(factory):
    """{target name: tag} of the names in the factory's production targets (re-releases included)."""
    names = {}
    for tag, data in TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=False).values_list("tag", "targets"):
        for name in md.parse(bytes(data), md.Targets, f"the production targets of tag {tag}").signed.targets:
            names.setdefault(name, tag)
    return names


def ci_targets_resolve(*, factory, refs, lock=True):
    """The CI target rows `refs` name (target names, or build numbers for all of a build's targets),
    in name order, locked for the caller's transaction. One NotFound lists every ref that names
    no CI target, saying what it is instead (pruned, a re-release, production only)."""
    if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
        raise ApplicationError("Targets must be a list of target names or build versions")
    refs = list(dict.fromkeys(str(r).strip() for r in refs if str(r).strip()))
    if not refs:
        raise ApplicationError("Name at least one target or build version")
    if len(refs) > REFS_MAX:
        raise ApplicationError(f"Name at most {REFS_MAX} targets or versions at a time")
    digits = {r for r in refs if _is_version(r)}
    versions = {int(r) for r in digits}
    names = set(refs) - digits
    rows = CiTarget.objects.filter(factory=factory)
    if lock:
        rows = rows.select_for_update()
    found = list(rows.filter(version__in=versions).order_by("id")) + list(rows.filter(name__in=names).order_by("id"))
    missing = [r for r in refs if not any((t.version == int(r) if r in digits else t.name == r) for t in found)]
    if missing:
        raise NotFound("No such CI target: " + "; ".join(_missing_reason(factory, r) for r in missing[:10]) + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
    unique = {t.pk: t for t in found}
    return sorted(unique.values(), key=lambda t: (t.version, t.name))


def _is_version(ref):
    # Build numbers are stored in 32-bit columns; a longer run of digits can only be a name.
    return ref.isascii() and ref.isdigit() and int(ref) <= VERSION_MAX


def _missing_reason(factory, ref):
    if _is_version(ref):
        version = int(ref)
        rerelease = RereleaseVersion.objects.filter(factory=factory, version=version).first()
        if rerelease is not None:
            return f"version {version} is a re-release of build {rerelease.build_version}, not a CI build (production targets change only through waves)"
        pruned = PrunedTarget.objects.filter(factory=factory, version=version).order_by("pruned_at").first()
        if pruned is not None:
            return f"build {version} was pruned (by {pruned.pruned_by_name} on {pruned.pruned_at:%Y-%m-%d})"
        return f"CI build {version} does not exist"
    pruned = PrunedTarget.objects.filter(factory=factory, name=ref).first()
    if pruned is not None:
        return f"{ref[:255]} was pruned (by {pruned.pruned_by_name} on {pruned.pruned_at:%Y-%m-%d})"
    tag = _production_names(factory).get(ref)
    if tag is not None:
        return f"{ref} is in the production targets of tag {tag}, not a CI target: production targets change only through waves"
    return f"{ref[:255]!r} is neither a CI target name nor a build version"


def ci_targets_tag(*, factory, actor, refs, tags, append=False):
    """Set (or with `append`, add to) the tags of the CI targets `refs` names, and re-sign the CI
    targets so test devices on the new tags see them and those on dropped tags no longer do.

    Returns [{"name", "version", "before", "after"}]; the CI view is re-signed and the change
    audited only if some target's tags changed. Production targets (and waves, whose targets were
    signed with their own tags) are not affected: CI tags reach test devices only.
    """
    authorize(user=actor, factory=factory, action="targets.publish")
    tags = tags_clean(tags)
    with transaction.atomic():
        rows = ci_targets_resolve(factory=factory, refs=refs)
        changes = []
        for row in rows:
            before = list(row.tags)
            after = sorted(set(before) | set(tags)) if append else tags
            if len(after) > TAGS_MAX:
                raise ApplicationError(f"{row.name} would have {counted(len(after), 'tag')}; a target may have at most {TAGS_MAX}")
            changes.append({"name": row.name, "version": row.version, "before": before, "after": after})
            if after != before:
                row.custom = {**row.custom, "tags": after}
                row.save(update_fields=["custom"])
        changed = [c for c in changes if c["before"] != c["after"]]
        if changed:
            ci_view_publish(factory=factory)
            audit_record(
                factory=factory,
                actor=actor,
                action="targets.tag",
                target=",".join(sorted({str(c["version"]) for c in changed})),
                details={"tags": tags, "append": bool(append), "targets": {c["name"]: {"from": c["before"], "to": c["after"]} for c in changed}},
            )
    return changes


def ci_targets_remove(*, factory, actor, rows):
    """Take `rows` out of the CI targets (in the caller's transaction, rows locked by it) and
    re-sign the CI view. Each leaves a PrunedTarget, so its name and number are never reused."""
    now = timezone.now()
    PrunedTarget.objects.bulk_create(
        [
            PrunedTarget(
                factory=factory, name=t.name, version=t.version, hardware_id=t.hardware_id, sha256=t.sha256, tags=list(t.tags),
                pruned_at=now, pruned_by_name=actor_name(actor),
            )
            for t in rows
        ]
    )  # fmt: skip
    CiTarget.objects.filter(pk__in=[t.pk for t in rows]).delete()
    ci_view_publish(factory=factory)
