"""Pruning CI targets (`targets prune`): which go, which stay and why.

A build stays while a tag's production targets carry it (or a re-release of it) or an open wave
(unsigned, active, or armed as a plan's rollback) releases it: pruning takes targets out of the
CI targets metadata only, and never what production or a wave in progress needs. Bad builds may
be pruned. The removal itself, its tombstones and the re-signing are factory.tuf.services.ci_targets.
"""
from dataclasses import dataclass, field

from django.db import transaction

from factory.auth import authorize
from factory.errors import ApplicationError
from factory.models import CiTarget
from factory.plurals import counted
from factory.services import audit_record
from factory.tuf import metadata as md
from factory.tuf.models import TufView
from factory.tuf.services.ci_targets import ci_targets_remove, ci_targets_resolve, tags_clean

from .models import Wave

KEEP_LAST_MAX = 10_000
# Waves whose build must stay: not finished, or armed as a plan's pre-signed rollback.
NEEDING_STATUSES = (*Wave.OPEN_STATUSES, Wave.Status.ARMED)


@dataclass
class PruneResult:
    dry_run: bool
    # [{"name", "version", "hardware_id", "tags"}]
    pruned: list = field(default_factory=list)
    # [{"name", "version", "hardware_id", "tags", "reason"}]
    kept: list = field(default_factory=list)


def builds_needed(*, factory):
    """{build version: why it must stay}: the builds production targets and open waves need."""
    needed = {}
    views = TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=False).order_by("tag").values_list("tag", "targets")
    for tag, data in views:
        targets = md.parse(bytes(data), md.Targets, f"the production targets of tag {tag}").signed.targets
        for path, target in targets.items():
            _, build = md.content_source(path, target.custom if isinstance(target.custom, dict) else {})
            for version in {build, md.target_version(target)} - {None}:
                needed.setdefault(version, f"in the production targets of tag {tag}")
    for name, status, version, rerelease_of in (
        Wave.objects.filter(factory=factory, status__in=NEEDING_STATUSES).order_by("created_at").values_list("name", "status", "version", "rerelease_of")
    ):
        needed.setdefault(rerelease_of or version, f"released by {status} wave {name}")
    return needed


def _row(target, reason=None):
    row = {"name": target.name, "version": target.version, "hardware_id": target.hardware_id, "tags": list(target.tags)}
    if reason is not None:
        row["reason"] = reason
    return row


def _by_tag(factory, tags, keep_last):
    """(candidates, kept) for `--by-tag`: the targets whose tags are exactly `tags` (as fioctl
    matches them), minus the newest `keep_last` builds among them. Targets that carry the tags and
    others too are kept: pruning them would take them from test devices on the other tags."""
    wanted = set(tags)
    candidates, kept = [], []
    for target in CiTarget.objects.select_for_update().filter(factory=factory).order_by("-version", "name"):
        have = set(target.tags)
        if have == wanted:
            candidates.append(target)
        elif wanted <= have:
            others = ", ".join(sorted(have - wanted))
            kept.append(_row(target, f"also tagged {others}: set its tags with `targets tag` first"))
    newest = sorted({t.version for t in candidates}, reverse=True)[:keep_last or 0]
    if newest:
        label = ",".join(sorted(wanted))
        newest_builds = f"one of the newest {counted(keep_last, 'build')}" if keep_last != 1 else "the newest build"
        kept += [_row(t, f"{newest_builds} of tag {label}") for t in candidates if t.version in newest]
        candidates = [t for t in candidates if t.version not in newest]
    return candidates, kept


def ci_targets_prune(*, factory, actor, targets=(), by_tag=None, keep_last=None, dry_run=False):
    """Take CI targets out of the CI targets metadata: those `targets` names (target names or
    build versions), or with `by_tag` those tagged exactly so, keeping the newest `keep_last`
    builds. What production or an open wave needs is kept and said why. `dry_run` reports the
    same and changes nothing. Returns a PruneResult."""
    authorize(user=actor, factory=factory, action="view" if dry_run else "targets.publish")
    targets = list(targets or [])
    if bool(targets) == bool(by_tag):
        raise ApplicationError("Name the targets or build versions to prune, or give by_tag, not both")
    if keep_last is not None:
        if not by_tag:
            raise ApplicationError("The keep_last option works only with by_tag: it keeps the newest builds of that tag")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or not 0 <= keep_last <= KEEP_LAST_MAX:
            raise ApplicationError(f"The keep_last option must be a number of builds from 0 to {KEEP_LAST_MAX}")
    result = PruneResult(dry_run=bool(dry_run))
    with transaction.atomic():
        # Candidate rows are locked before reading what is needed: a wave init or rollout locks
        # its build's rows too, so it either sees the targets gone or is seen here.
        if by_tag:
            candidates, result.kept = _by_tag(factory, tags_clean(by_tag), keep_last)
        else:
            candidates = ci_targets_resolve(factory=factory, refs=targets)
        needed = builds_needed(factory=factory) if candidates else {}
        going = [t for t in candidates if t.version not in needed]
        result.kept += [_row(t, needed[t.version]) for t in candidates if t.version in needed]
        result.kept.sort(key=lambda r: (-r["version"], r["name"]))
        result.pruned = [_row(t) for t in sorted(going, key=lambda t: (-t.version, t.name))]
        if dry_run or not going:
            return result
        ci_targets_remove(factory=factory, actor=actor, rows=going)
        audit_record(
            factory=factory,
            actor=actor,
            action="targets.prune",
            target=",".join(str(v) for v in sorted({t.version for t in going})),
            details={
                "targets": [t.name for t in going],
                "by_tag": list(by_tag or []),
                "keep_last": keep_last,
                "kept": {r["name"]: r["reason"] for r in result.kept[:200]},
            },
        )
    return result
