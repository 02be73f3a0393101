"""TUF repository reads: production targets facts, expiry warnings, roots, keys and root changes,
and the views due for re-signing. What devices are served is factory.tuf.served."""
import base64
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from tuf.api.metadata import Root, Targets

from factory.errors import NotFound
from factory.plurals import counted, plural

from . import aktualizr as ak
from . import metadata as md
from .lifetimes import ci_targets_margin, refresh_margin
from .models import EMPTY_TAG, TufKey, TufRepository, TufRoot, TufRootChange, TufView


# --- production targets facts ------------------------------------------------------------------


def production_targets_md(factory, tag):
    """The tag's production targets as Metadata[Targets] (None while it serves the baseline)."""
    factory_id = getattr(factory, "pk", factory)
    data = (
        TufView.objects.filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag, baseline=False)
        .values_list("targets", flat=True)
        .first()
    )
    return None if data is None else md.parse(data, Targets, f"the production targets of tag {tag}")


def production_targets_versions(*, factory, tag):
    """Versions of the targets in the tag's production targets, ascending; [] if none."""
    targets = production_targets_md(factory, tag)
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
    targets = production_targets_md(factory, tag)
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


def expiring_targets(*, factory, within_days=30, waves=()):
    """Offline-signed metadata that expires within `within_days`, soonest first.

    Production and wave targets cannot be re-signed online, so these are warnings for people:
    [{kind, tag, wave, version, expires_at, days_left, expired, message}], kind being
    "production-targets", "wave-targets", "baseline-targets" or "root" (only while offline).
    `waves` are the factory's open waves, whose targets are signed offline too:
    [{name, tag, version, expires_at}] (waves.expiry.expiring_targets passes them).
    """
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
        add("production-targets", expires_at, _expiry_message(f"The production targets of tag {tag} (version {version})", expires_at, now,
            "complete a new wave on the tag to replace them"), tag=tag, version=version)  # fmt: skip
    for wave in waves:
        name, tag, version, expires_at = wave["name"], wave["tag"], wave["version"], wave["expires_at"]
        if expires_at >= horizon:
            continue
        add("wave-targets", expires_at, _expiry_message(f"The targets of wave {name} (tag {tag}, version {version})", expires_at, now,
            "complete it before then, or cancel it and start a new wave"), tag=tag, wave=name, version=version)  # fmt: skip
    repository = TufRepository.objects.filter(factory=factory).first()
    if repository is not None:
        baseline_tags = list(TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION, baseline=True).values_list("tag", flat=True))
        real_tags = sorted(t for t in baseline_tags if t != EMPTY_TAG)
        if baseline_tags and repository.baseline_expires_at < horizon:
            served = f"{plural(len(real_tags), 'tag')} {', '.join(real_tags)}" if real_tags else "production devices on tags without a wave"
            add("baseline-targets", repository.baseline_expires_at, _expiry_message(
                f"The empty production targets served to {served}", repository.baseline_expires_at, now,
                "complete a wave on each of these tags" if real_tags else "complete a wave on each tag those devices follow"))  # fmt: skip
        if not repository.root_online and repository.root_expires_at < horizon:
            add("root", repository.root_expires_at, _expiry_message(f"Root version {repository.root_version}", repository.root_expires_at, now,
                "renew it: a root renewal signed with the offline root key", one=True))  # fmt: skip
    out.sort(key=lambda item: item["expires_at"])
    return out


def _expiry_message(what, expires_at, now, advice, *, one=False):
    """`what` is targets (plural) unless `one`: "The targets of wave v2 expire", "Root version 3 expires"."""
    if expires_at <= now:
        return f"{what} expired on {expires_at:%Y-%m-%d %H:%M} UTC; devices refuse {'it' if one else 'them'}: {advice}"
    days = (expires_at - now).total_seconds() / 86400
    when = "in less than a day" if days < 1 else f"in {counted(int(days), 'day')}"
    return f"{what} {'expires' if one else 'expire'} {when} ({expires_at:%Y-%m-%d %H:%M} UTC): {advice}"


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
        raise NotFound(f"Factory {factory.name} has no TUF repository")
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
        raise NotFound(f"The {channel} root version {version} does not exist")
    return bytes(row.data)


def root_versions(*, factory, channel):
    """Every root version of a channel, oldest first: what a device walks from 1.root.json up."""
    rows = TufRoot.objects.filter(factory=factory, channel=channel).order_by("version")
    return [
        {"version": row.version, "filename": f"{row.version}.root.json", "expires_at": row.expires_at, "created_at": row.created_at,
         "sha256": md.sha256(bytes(row.data)), "length": len(bytes(row.data))}
        for row in rows
    ]  # fmt: skip


def root_change_pending(*, factory):
    return TufRootChange.objects.filter(factory=factory, status=TufRootChange.Status.PENDING).first()


def root_current(*, factory_id, channel):
    """The newest root of a channel, as Metadata[Root]."""
    row = TufRoot.objects.filter(factory_id=factory_id, channel=channel).order_by("-version").first()
    if row is None:
        raise NotFound("This factory has no TUF repository")
    return md.parse(row.data, Root, "the stored root")


def document_bytes(document):
    """The signed metadata a root change document holds, as stored (base64 in the change's JSON)."""
    return base64.b64decode(document["data"].encode())


def document_md(document):
    return md.parse(document_bytes(document), Root if document["kind"].startswith("root-") else Targets)


def document_signers(change, document, repository):
    """Key id -> Key of the keys that may sign `document`."""
    if document["kind"].startswith("root-"):
        channel = document["kind"][len("root-"):]
        new_root = document_md(document).signed
        previous = root_current(factory_id=change.factory_id, channel=channel).signed
        keyids = set(previous.roles["root"].keyids) | set(new_root.roles["root"].keyids)
        keys = {**previous.keys, **new_root.keys}
        return {k: keys[k] for k in keyids}
    production_root = document_md(next(d for d in change.documents if d["kind"] == "root-production")).signed
    return {k: production_root.keys[k] for k in production_root.roles["targets"].keyids}


def document_missing(change, document):
    """Plain words for what the document still needs, or '' if it is complete."""
    metadata = document_md(document)
    if document["kind"].startswith("root-"):
        channel = document["kind"][len("root-"):]
        previous = root_current(factory_id=change.factory_id, channel=channel).signed
        result = md.root_verification(metadata, previous)
        if result.verified:
            return ""
        return "root keys " + ", ".join(sorted(k[:8] for k in result.unsigned))
    production_root = document_md(next(d for d in change.documents if d["kind"] == "root-production")).signed
    result = md.targets_verification(production_root, metadata)
    if result.verified:
        return ""
    return counted(result.missing, "more targets key signature")


# Each document's libaktualizr sibling is signed in the same step, named "<document>@aktualizr".
AKTUALIZR_SUFFIX = "@aktualizr"


def document_aktualizr_bytes(document):
    """The document's aktualizr sibling as signed so far (unsigned for a change made before the
    flavour existed)."""
    if document.get("aktualizr_data"):
        return base64.b64decode(document["aktualizr_data"].encode())
    return ak.document(ak.sibling_signed(document_bytes(document)), [])


def aktualizr_root_signed(root_md):
    """The aktualizr sibling's signed content of a TUF root (keys and roles are the same)."""
    return ak.signed_from_tuf(root_md.signed.to_dict())


def document_aktualizr_missing(change, document):
    """What the document's aktualizr sibling still needs, or ''."""
    data = document_aktualizr_bytes(document)
    if document["kind"].startswith("root-"):
        channel = document["kind"][len("root-"):]
        previous = aktualizr_root_signed(root_current(factory_id=change.factory_id, channel=channel))
        new = ak.parse(data)[0]
        unsigned = set()
        for root in (previous, new):
            good, threshold = ak.signed_by(root, "root", data)
            if len(good) < threshold:
                unsigned |= set(root["roles"]["root"]["keyids"]) - good
        return "" if not unsigned else "root keys " + ", ".join(sorted(k[:8] for k in unsigned)) + " (aktualizr flavour)"
    production_root = ak.parse(document_aktualizr_bytes(next(d for d in change.documents if d["kind"] == "root-production")))[0]
    good, threshold = ak.signed_by(production_root, "targets", data)
    if len(good) >= threshold:
        return ""
    return f"{counted(threshold - len(good), 'more targets key signature')} (aktualizr flavour)"


def root_change_payloads(*, change):
    """What the pending change needs signed: [{document, payload (base64 of the canonical bytes
    to sign), keyids (keys that may sign it), missing (plain words; '' when complete)}]."""
    repository = TufRepository.objects.get(factory_id=change.factory_id)
    out = []
    for document in change.documents:
        metadata = document_md(document)
        out.append(
            {
                "document": document["name"],
                "kind": document["kind"],
                "payload": base64.b64encode(metadata.signed_bytes).decode(),
                "keyids": sorted(document_signers(change, document, repository)),
                "signed_by": sorted(metadata.signatures),
                "missing": document_missing(change, document),
            }
        )
        data = document_aktualizr_bytes(document)
        signed, signatures = ak.parse(data)
        out.append(
            {
                "document": document["name"] + AKTUALIZR_SUFFIX,
                "kind": document["kind"],
                "payload": base64.b64encode(ak.payload(signed)).decode(),
                "keyids": out[-1]["keyids"],
                "signed_by": sorted({s.get("keyid", "") for s in signatures}),
                "missing": document_aktualizr_missing(change, document),
            }
        )
    return out


# --- periodic re-signing -----------------------------------------------------------------------


def views_due(*, now=None, limit=None):
    """Ids of the anchors (CI or production views) whose tag needs re-signing, soonest first."""
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
