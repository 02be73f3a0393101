"""Writes for members, API tokens and the audit log.

A factory is created with its TUF repository and CI builds are published into it by
factory.tuf.services.repository, above this module: tenancy knows nothing of TUF."""
import hashlib
import secrets
from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from .auth import actor_name, authorize
from .errors import ApplicationError, Conflict
from .models import ApiToken, AuditEntry, Factory, Membership, PrunedTarget, RereleaseVersion, Role
from .names import name_clean
from .selectors import release_version_next

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


def user_create(*, username, factory, role, password=None, actor=None):
    """Create (or update) a user and give them `role` in `factory`."""
    if role not in Role.values:
        raise ApplicationError(f"Unknown role {role!r}; choose one of {', '.join(Role.values)}")
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
    name = name_clean(name, what="A token name", required=False)
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


def rerelease_version_claim(*, factory, build_version):
    """Take the next number of the factory's build sequence for a re-release of `build_version`.

    Inside the caller's transaction: the factory's row is locked, as CI's publish locks it, so a
    re-release and a build published at the same moment never get the same number.
    """
    Factory.objects.select_for_update().filter(pk=factory.pk).first()
    version = release_version_next(factory=factory)
    RereleaseVersion.objects.create(factory=factory, version=version, build_version=int(build_version))
    return version


def build_version_check_free(*, factory, version):
    """Refuse a CI build numbered like a re-release or a pruned build: one number, one content. Locks the factory's
    row for the caller's transaction (see rerelease_version_claim)."""
    Factory.objects.select_for_update().filter(pk=factory.pk).first()
    taken = RereleaseVersion.objects.filter(factory=factory, version=version).first()
    if taken is not None:
        raise Conflict(
            f"Version {version} is taken by a re-release of build {taken.build_version}: builds and re-releases share one "
            f"sequence of numbers; publish this build as {release_version_next(factory=factory)} or later"
        )
    pruned = PrunedTarget.objects.filter(factory=factory, version=version).first()
    if pruned is not None:
        raise Conflict(
            f"Build {version} was pruned (by {pruned.pruned_by_name} on {pruned.pruned_at:%Y-%m-%d}) and its number is not reused; "
            f"publish this build as {release_version_next(factory=factory)} or later"
        )
