"""Writes for factories, members, API tokens, the audit log and CI builds."""
import hashlib
import json
import secrets
from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.utils import timezone

from .auth import actor_name, authorize
from .errors import ApplicationError, Conflict
from .models import ApiToken, AuditEntry, CiTarget, Factory, Membership, Role
from .names import name_clean

TOKEN_PREFIX = "bw"


def audit_record(*, factory, actor, action, target="", details=None):
    """Append one audit row. Call it inside the service's transaction so both land or neither."""
    return AuditEntry.objects.create(
        factory=factory,
        actor=actor,
        actor_name=actor_name(actor),
        action=action,
        target=str(target)[:255],
        details=details or {},
    )


@contextmanager
def audit_maintenance(*, using=DEFAULT_DB_ALIAS):
    """A transaction in which the database lets audit rows be deleted (never updated): for wiping
    whole data sets only (`manage.py flush`, the test harness, factory_purge). Everywhere else the
    audit log's triggers refuse (factory/migrations/0004_audit_append_only.py)."""
    connection = connections[using]
    with transaction.atomic(using=using):
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('breakwater.audit_maintenance', 'on', true)")
            else:
                cursor.execute("INSERT INTO factory_audit_maintenance DEFAULT VALUES")
        yield
        # Also undone by the rollback if the block raises; reset here for an enclosing transaction.
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('breakwater.audit_maintenance', 'off', true)")
            else:
                cursor.execute("DELETE FROM factory_audit_maintenance")


def factory_purge(*, factory):
    """Delete a factory with everything it owns, its audit log included. For throwaway factories
    (benchmarks): a real factory's history is kept, so Factory.delete() refuses while it has one."""
    with audit_maintenance():
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute(f"DELETE FROM {AuditEntry._meta.db_table} WHERE factory_id = %s", [factory.pk])
        Factory.objects.filter(pk=factory.pk).delete()


def factory_create(*, name, actor=None):
    from django.core.validators import validate_slug
    from django.core.exceptions import ValidationError

    try:
        validate_slug(name)
    except ValidationError:
        raise ApplicationError(f"factory name {name!r} may only contain letters, digits, '-' and '_'") from None
    with transaction.atomic():
        if Factory.objects.filter(name=name).exists():
            raise Conflict(f"factory {name} already exists")
        factory = Factory.objects.create(name=name)
        from .tuf.services import repository_init

        repository_init(factory=factory)
        audit_record(factory=factory, actor=actor, action="factory.create", target=name)
    return factory


def user_create(*, username, factory, role, password=None, actor=None):
    """Create (or update) a user and give them `role` in `factory`."""
    if role not in Role.values:
        raise ApplicationError(f"unknown role {role!r}; choose one of {', '.join(Role.values)}")
    authorize(user=actor, factory=factory, action="factory.admin")
    User = get_user_model()
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        if password:
            user.set_password(password)
            user.save(update_fields=["password"])
        elif created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        Membership.objects.update_or_create(user=user, factory=factory, defaults={"role": role})
        audit_record(factory=factory, actor=actor, action="member.set", target=username, details={"role": role})
    return user


def _token_hash(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def api_token_create(*, user, factory, name="", actor=None):
    """Return (token row, the plain token). The plain token is shown once and never stored."""
    if actor is not None and actor != user:
        authorize(user=actor, factory=factory, action="factory.admin")
    if not Membership.objects.filter(user=user, factory=factory).exists():
        raise ApplicationError(f"{user.get_username()} is not a member of factory {factory.name}")
    name = name_clean(name, what="a token name", required=False)
    prefix = secrets.token_hex(4)
    plain = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ApiToken.objects.create(factory=factory, user=user, name=name, prefix=prefix, token_hash=_token_hash(plain))
        audit_record(factory=factory, actor=actor or user, action="token.create", target=prefix, details={"user": user.get_username(), "name": name})
    return token, plain


def api_token_revoke(*, token, actor):
    if actor != token.user:
        authorize(user=actor, factory=token.factory, action="factory.admin")
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if updated:
            audit_record(factory=token.factory, actor=actor, action="token.revoke", target=token.prefix)


def api_token_authenticate(plain):
    """The live token for `plain`, or None. Touches last_used_at at most once a minute."""
    if not plain or not plain.startswith(f"{TOKEN_PREFIX}_"):
        return None
    token = (
        ApiToken.objects.select_related("user", "factory")
        .filter(token_hash=_token_hash(plain), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


CUSTOM_MAX_BYTES = 64 * 1024
CUSTOM_MAX_DEPTH = 32


def _custom_check(value, path="custom", depth=0):
    """`custom` is copied into every target of the build, signed as canonical JSON (which has no
    fractional numbers) and stored in PostgreSQL (which cannot hold NUL characters)."""
    if depth > CUSTOM_MAX_DEPTH:
        raise ApplicationError(f"custom is nested more than {CUSTOM_MAX_DEPTH} levels deep")
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
    from .artifacts import synthetic_artifact

    authorize(user=actor, factory=factory, action="targets.publish")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ApplicationError(f"version {version!r} is not an integer") from None
    if version < 1:
        raise ApplicationError("version must be a positive integer")
    hardware_ids = sorted({h.strip() for h in hardware_ids if h and h.strip()})
    tags = sorted({t.strip() for t in tags if t and t.strip()})
    if not hardware_ids:
        raise ApplicationError("a CI build needs at least one hardware ID")
    if not tags:
        raise ApplicationError("a CI build needs at least one tag")
    if custom is not None:
        if not isinstance(custom, dict):
            raise ApplicationError("custom must be an object")
        _custom_check(custom)
        if len(json.dumps(custom, ensure_ascii=False).encode()) > CUSTOM_MAX_BYTES:
            raise ApplicationError(f"custom is larger than {CUSTOM_MAX_BYTES // 1024} KiB; it is copied into every target of the build")
    targets = targets or {}
    created = []
    try:
        with transaction.atomic():
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
            from .tuf.services import ci_view_publish

            ci_view_publish(factory=factory)
            audit_record(factory=factory, actor=actor, action="targets.publish", target=str(version), details={"hardware_ids": hardware_ids, "tags": tags})
    except IntegrityError:
        raise Conflict(f"CI build {version} already has a target for one of {', '.join(hardware_ids)}") from None
    return created
