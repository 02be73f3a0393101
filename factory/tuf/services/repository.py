"""A factory's TUF repository: made with the factory, and the CI builds published into its CI view.

Creating a factory lives here, above tenancy, because a factory is never without its repository.
"""
import hashlib
import json

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.utils import timezone

from factory import ostree
from factory.artifacts import synthetic_artifact
from factory.auth import authorize
from factory.errors import ApplicationError, Conflict
from factory.models import CiTarget, Factory
from factory.services import audit_record, build_version_check_free

from .. import keys as tuf_keys
from .. import metadata as md
from ..lifetimes import baseline_lifetime, root_lifetime
from ..models import TufKey, TufRepository, TufRoot, TufView
from . import siblings
from .keyring import ROLES, Keyring, private_encrypt, roots_build
from .signed_views import ci_targets_sign, ci_view_publish, next_version, view_sign


def factory_create(*, name, actor=None):
    """A new factory (tenant) with its TUF repository: keys, CI and production roots, CI view."""
    try:
        validate_slug(name)
    except ValidationError:
        raise ApplicationError(f"Factory name {name!r} may only contain letters, digits, '-' and '_'") from None
    with transaction.atomic():
        if Factory.objects.filter(name=name).exists():
            raise Conflict(f"Factory {name} already exists")
        factory = Factory.objects.create(name=name)
        repository_init(factory=factory)
        audit_record(factory=factory, actor=actor, action="factory.create", target=name)
    return factory


def repository_init(*, factory):
    """Create the factory's keys and its CI and production roots (version 1) and its CI view.

    The root key starts online (bootstrap); `offline_key_add(role="root")` takes it offline.
    """
    now = timezone.now()
    with transaction.atomic():
        if TufRepository.objects.filter(factory=factory).exists():
            raise Conflict(f"Factory {factory.name} already has a TUF repository")
        for role in ROLES:
            signer = tuf_keys.key_generate()
            TufKey.objects.create(
                factory=factory,
                role=role,
                keyid=signer.public_key.keyid,
                public=signer.public_key.to_dict(),
                private_encrypted=private_encrypt(signer),
                online=True,
            )
        keyring = Keyring(factory.id)
        baseline = md.targets_build(target_files=[], version=1, expires=now + baseline_lifetime())
        baseline.sign(keyring.online_signer("targets"))
        root_expires = (now + root_lifetime()).replace(microsecond=0)
        TufRepository.objects.create(
            factory=factory,
            root_version=1,
            root_expires_at=root_expires,
            production_targets_threshold=1,
            baseline_targets=md.to_bytes(baseline),
            baseline_expires_at=baseline.signed.expires,
        )
        for channel, root in roots_build(keysets=keyring.keysets(), production_threshold=1, version=1, expires=root_expires).items():
            root.sign(keyring.online_signer("root"))
            data = md.to_bytes(root)
            TufRoot.objects.create(
                factory=factory, channel=channel, version=1, data=data, expires_at=root.signed.expires,
                aktualizr_data=siblings.root_sibling(keyring=keyring, tuf_bytes=data),
            )
        view = TufView(factory=factory, kind=TufView.Kind.CI, tag="")
        ci_targets_sign(view, keyring, now, version=1)
        view_sign(view, keyring, version=next_version(view, now), now=now)
        view.save()


CUSTOM_MAX_BYTES = 64 * 1024
CUSTOM_MAX_DEPTH = 32


def _custom_check(value, path="custom", depth=0):
    """`custom` is copied into every target of the build, signed as canonical JSON (which has no
    fractional numbers) and stored in PostgreSQL (which cannot hold NUL characters)."""
    if depth > CUSTOM_MAX_DEPTH:
        raise ApplicationError(f"The custom field is nested more than {CUSTOM_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            _custom_check(key, f"{path} key", depth + 1)
            _custom_check(item, f"{path}.{str(key)[:40]}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _custom_check(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry
            raise ApplicationError(f"{path}: text must be valid Unicode") from None
        if "\x00" in value:
            raise ApplicationError(f"{path}: text may not contain NUL characters")
    elif isinstance(value, float):
        raise ApplicationError(f"{path}: {value!r} is not an integer; signed TUF metadata has no fractional numbers (send it as a string)")
    elif value is not None and not isinstance(value, (bool, int)):
        raise ApplicationError(f"{path}: only text, integers, true/false, null, lists and objects are allowed")


def ci_build_publish(*, factory, version, hardware_ids, tags, actor=None, targets=None, custom=None):
    """Publish CI build `version`: one target per hardware ID, named <hwid>-lmp-<version>.

    `targets` optionally maps hardware ID -> {"sha256", "length"} for real artifacts; without it
    the demo's synthetic artifact for that target is used, so devices can download and verify it.
    """
    authorize(user=actor, factory=factory, action="targets.publish")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ApplicationError(f"Version {version!r} is not an integer") from None
    if version < 1:
        raise ApplicationError("Version must be a positive integer")
    hardware_ids = sorted({h.strip() for h in hardware_ids if h and h.strip()})
    tags = sorted({t.strip() for t in tags if t and t.strip()})
    if not hardware_ids:
        raise ApplicationError("A CI build needs at least one hardware ID")
    if not tags:
        raise ApplicationError("A CI build needs at least one tag")
    if custom is not None:
        if not isinstance(custom, dict):
            raise ApplicationError("The custom field must be an object")
        _custom_check(custom)
        if len(json.dumps(custom, ensure_ascii=False).encode()) > CUSTOM_MAX_BYTES:
            raise ApplicationError(f"The custom field is larger than {CUSTOM_MAX_BYTES // 1024} KiB; it is copied into every target of the build")
    targets = targets or {}
    if (custom or {}).get("targetFormat") == "OSTREE":
        for hwid in hardware_ids:
            commit = (targets.get(hwid) or {}).get("sha256")
            if not ostree.is_stored(factory_name=factory.name, commit=commit):
                raise ApplicationError(f"An OSTREE target's sha256 is its commit, and commit {commit} of {hwid} is not stored; upload it with `breakwater targets publish-ostree`")
    created = []
    try:
        with transaction.atomic():
            build_version_check_free(factory=factory, version=version)
            for hwid in hardware_ids:
                name = f"{hwid}-lmp-{version}"
                if hwid in targets:
                    sha256, length = targets[hwid]["sha256"], int(targets[hwid]["length"])
                else:
                    blob = synthetic_artifact(factory.name, name)
                    sha256, length = hashlib.sha256(blob).hexdigest(), len(blob)
                created.append(
                    CiTarget.objects.create(
                        factory=factory,
                        name=name,
                        version=version,
                        hardware_id=hwid,
                        sha256=sha256,
                        length=length,
                        custom={**(custom or {}), "version": str(version), "hardwareIds": [hwid], "tags": tags, "name": f"{hwid}-lmp"},
                    )
                )
            ci_view_publish(factory=factory)
            audit_record(factory=factory, actor=actor, action="targets.publish", target=str(version), details={"hardware_ids": hardware_ids, "tags": tags})
    except IntegrityError:
        raise Conflict(f"CI build {version} already has a target for one of {', '.join(hardware_ids)}") from None
    return created


def ostree_build_publish(*, factory, commit, upload, version, hardware_ids, tags, actor=None, custom=None):
    """Import OSTree `commit` from `upload` (`ostree static-delta generate --empty --inline --to=COMMIT
    --filename=F`) into the factory's archive repository and publish CI build `version` with it:
    one target per hardware ID whose sha256 is the commit, `custom.targetFormat` "OSTREE"."""
    authorize(user=actor, factory=factory, action="targets.publish")
    index = ostree.commit_import(factory_name=factory.name, commit=commit, upload=upload)
    audit_record(factory=factory, actor=actor, action="ostree.import", target=commit, details={"objects": len(index["objects"])})
    custom = {**(custom or {}), "targetFormat": "OSTREE"}
    targets = {hwid.strip(): {"sha256": commit, "length": 0} for hwid in hardware_ids if hwid and hwid.strip()}
    return ci_build_publish(factory=factory, version=version, hardware_ids=hardware_ids, tags=tags, actor=actor, targets=targets, custom=custom)
