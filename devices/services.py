"""Writes for devices and device groups, registration tokens, registration and device certificates."""
import hashlib
import random
import secrets
import uuid as uuid_lib
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from factory.auth import authorize
from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from factory.names import name_clean
from factory.plurals import counted, plural
from factory.services import audit_record

from . import pki
from .gateway_identity import gateway_identity_get
from .models import Device, DeviceCA, DeviceCertificate, DeviceGroup, RegistrationToken
from .selectors import uuids_in

GROUP_NAME_MAX = 64


def _validate_group_name(name):
    # , ; | @ and spaces separate the tokens of a rollout's scope on the command line.
    return name_clean(name, what="A group name", max_length=GROUP_NAME_MAX, forbidden=" ,;|@")


def device_group_create(*, factory, name, description="", actor=None):
    authorize(user=actor, factory=factory, action="fleet.manage")
    name = _validate_group_name(name)
    try:
        with transaction.atomic():
            group = DeviceGroup.objects.create(factory=factory, name=name, description=description[:255])
            audit_record(factory=factory, actor=actor, action="group.create", target=name)
    except IntegrityError:
        raise Conflict(f"Device group {name} already exists") from None
    return group


def device_group_rename(*, group, new_name, actor=None):
    authorize(user=actor, factory=group.factory, action="fleet.manage")
    new_name = _validate_group_name(new_name)
    old = group.name
    try:
        with transaction.atomic():
            group.name = new_name
            group.save(update_fields=["name"])
            audit_record(factory=group.factory, actor=actor, action="group.rename", target=new_name, details={"from": old})
    except IntegrityError:
        group.name = old
        raise Conflict(f"Device group {new_name} already exists") from None
    return group


def device_group_delete(*, group, actor=None):
    authorize(user=actor, factory=group.factory, action="fleet.manage")
    with transaction.atomic():
        count = Device.objects.filter(group=group).count()
        audit_record(factory=group.factory, actor=actor, action="group.delete", target=group.name, details={"devices": count})
        group.delete()


def devices_assign_group(*, factory, uuids, group, actor=None):
    """Put the listed devices in `group` (None: no group). Returns (moved count, unknown UUIDs)."""
    authorize(user=actor, factory=factory, action="fleet.manage")
    if group is not None and group.factory_id != factory.id:
        raise NotFound("Device group not found")
    uuids = list(uuids)
    with transaction.atomic():
        known = set(Device.objects.filter(factory=factory, uuid__in=uuids_in(uuids)).values_list("uuid", flat=True))
        moved = Device.objects.filter(factory=factory, uuid__in=uuids_in(known)).update(group=group)
        audit_record(
            factory=factory, actor=actor, action="group.assign", target=group.name if group else "(no group)", details={"devices": moved}
        )
    unknown = [u for u in uuids if u not in known]
    return moved, unknown


def device_create(*, factory, uuid, name, tag, is_production, group=None, hardware_id="", certificate="", serial=""):
    """Insert a registered device. Only the registration service calls this."""
    try:
        with transaction.atomic():
            device = Device.objects.create(
                factory=factory,
                uuid=uuid,
                name=name,
                tag=tag,
                is_production=is_production,
                group=group,
                hardware_id=hardware_id,
                certificate_serial=serial,
                sample_key=random.random(),
            )
            if certificate:
                device.certificate_record = DeviceCertificate.objects.create(device=device, pem=certificate)
            return device
    except IntegrityError:
        raise Conflict(f"Device {uuid} is already registered") from None


# --- registration, certificates and the device lifecycle ---------------------------------------

REGISTRATION_TOKEN_PREFIX = "bwreg"
DEVICE_NAME_MAX = 128
HARDWARE_ID_MAX = 128
TAG_MAX = 64


def _secret_hash(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def tag_clean(tag):
    """`tag` stripped, or ApplicationError: the one rule for tags people give (registration, tag moves)."""
    tag = (tag or "").strip()
    if not tag or len(tag) > TAG_MAX or not tag.isprintable() or any(c.isspace() or c in ",;|@" for c in tag):
        raise ApplicationError(f"Tag {tag[:70]!r} must be 1 to {TAG_MAX} printable characters without spaces or , ; | @")
    return tag


def _validate_device_name(name, default):
    name = (name or "").strip() or default
    if len(name) > DEVICE_NAME_MAX or not name.isprintable():
        raise ApplicationError(f"A device name must be at most {DEVICE_NAME_MAX} printable characters")
    return name


def _validate_hardware_id(hardware_id):
    hardware_id = (hardware_id or "").strip()
    if len(hardware_id) > HARDWARE_ID_MAX or any(c.isspace() for c in hardware_id) or not hardware_id.isprintable():
        raise ApplicationError(f"A hardware ID must be at most {HARDWARE_ID_MAX} characters without spaces")
    return hardware_id


def device_ca_get(*, factory):
    """The factory's device CA, created on first use (a factory created before devices existed has none)."""
    ca = DeviceCA.objects.filter(factory=factory).first()
    if ca is not None:
        return ca
    identity = gateway_identity_get()
    root_cert, root_key = pki.cert_load(identity.device_root_certificate), pki.key_decrypt(identity.device_root_private_key)
    cert, key = pki.device_ca_generate(factory.name, root_cert=root_cert, root_key=root_key)
    try:
        with transaction.atomic():
            ca = DeviceCA.objects.create(factory=factory, certificate=pki.cert_pem(cert), private_key=pki.key_encrypt(key))
            audit_record(factory=factory, actor=None, action="device-ca.create", target=pki.serial_hex(cert))
    except IntegrityError:
        # Another process created it first: theirs is the one.
        ca = DeviceCA.objects.get(factory=factory)
    return ca


_ca_signers = {}


def _ca_signer(ca):
    """(certificate, private key) of a device CA, decrypted once per process."""
    key = (ca.pk, ca.certificate)
    signer = _ca_signers.get(key)
    if signer is None:
        signer = _ca_signers[key] = (pki.cert_load(ca.certificate), pki.key_decrypt(ca.private_key))
    return signer


def registration_token_create(*, factory, actor, tag, name="", group=None, production=False, max_uses=None, expires_days=None, expires_at=None):
    """Create a registration token; return (token row, the plain token, shown once and never stored).

    Devices registering with it get `tag` and `group`; with `production` they may ask for a
    production certificate.
    """
    authorize(user=actor, factory=factory, action="factory.admin")
    tag = tag_clean(tag)
    name = name_clean(name, what="A token name", required=False)
    if group is not None and group.factory_id != factory.id:
        raise NotFound("Device group not found")
    if max_uses is not None:
        try:
            max_uses = int(max_uses)
        except (TypeError, ValueError):
            raise ApplicationError(f"The maximum number of uses {str(max_uses)[:20]!r} is not a number") from None
        if max_uses < 1:
            raise ApplicationError("The maximum number of uses must be at least 1")
    if expires_days is not None and expires_at is not None:
        raise ApplicationError("Give an expiry in days or a date, not both")
    if expires_days is not None:
        try:
            expires_days = float(expires_days)
        except (TypeError, ValueError):
            raise ApplicationError(f"Expiry {str(expires_days)[:20]!r} is not a number of days") from None
        if not 0 < expires_days <= 3650:
            raise ApplicationError("A registration token expires within 0 to 3650 days")
        expires_at = timezone.now() + timedelta(days=expires_days)
    elif expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("The expiry date is in the past")
    prefix = secrets.token_hex(4)
    plain = f"{REGISTRATION_TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = RegistrationToken.objects.create(
            factory=factory,
            name=name,
            prefix=prefix,
            token_hash=_secret_hash(plain),
            tag=tag,
            group=group,
            allow_production=bool(production),
            max_uses=max_uses,
            expires_at=expires_at,
        )
        audit_record(
            factory=factory,
            actor=actor,
            action="registration-token.create",
            target=prefix,
            details={"name": name, "tag": tag, "group": group.name if group else None, "production": bool(production), "max_uses": max_uses},
        )
    return token, plain


def registration_token_revoke(*, token, actor):
    authorize(user=actor, factory=token.factory, action="factory.admin")
    with transaction.atomic():
        revoked = RegistrationToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if revoked:
            audit_record(factory=token.factory, actor=actor, action="registration-token.revoke", target=token.prefix, details={"name": token.name})
    token.refresh_from_db()
    return token


def _token_claim(plain):
    """Lock and return the live token for `plain`; the failure says why, without naming other tokens."""
    if not plain or not isinstance(plain, str) or not plain.startswith(f"{REGISTRATION_TOKEN_PREFIX}_") or len(plain) > 200:
        raise Forbidden("The registration token is not valid")
    token = RegistrationToken.objects.select_for_update(of=("self",)).select_related("factory", "group").filter(token_hash=_secret_hash(plain)).first()
    if token is None:
        raise Forbidden("The registration token is not valid")
    if token.revoked_at is not None:
        raise Forbidden("The registration token was revoked")
    if token.expires_at is not None and token.expires_at <= timezone.now():
        raise Forbidden("The registration token has expired")
    if token.max_uses is not None and token.uses >= token.max_uses:
        raise Forbidden(f"The registration token was already used {token.uses} times, its limit")
    return token


def _certify(*, factory, ca, csr, production_allowed):
    """Check a CSR for `factory` and sign it: (device UUID, production, certificate)."""
    parsed, device_uuid, production = pki.csr_parse(csr, factory_name=factory.name)
    if production and not production_allowed:
        raise Forbidden("This registration does not allow production devices (the CSR asks for businessCategory=production)")
    ca_cert, ca_key = _ca_signer(ca)
    cert = pki.device_certificate_issue(
        ca_cert=ca_cert, ca_key=ca_key, public_key=parsed.public_key(), device_uuid=device_uuid, factory_name=factory.name, production=production
    )
    return device_uuid, production, cert


@dataclass
class Registration:
    device: Device
    certificate: str
    ca_certificate: str


def device_register(*, token, csr, name="", hardware_id="", expected_uuid=None, expected_group=""):
    """A device registers itself with a registration token and a CSR for its own key.

    The certificate's subject (CN = UUID, OU = factory, businessCategory=production if asked for
    and allowed by the token) decides what the device is; the tag and group come from the token.
    `expected_uuid` and `expected_group` are what the request says besides the CSR
    (lmp-device-register's `uuid` and `group`): they must agree with the CSR and the token.
    """
    hardware_id = _validate_hardware_id(hardware_id)
    with transaction.atomic():
        claimed = _token_claim(token)
        factory = claimed.factory
        if expected_group and expected_group != (claimed.group.name if claimed.group else ""):
            raise ApplicationError(f"This registration token puts devices in {'group ' + claimed.group.name if claimed.group else 'no group'}; the request asks for another")
        ca = device_ca_get(factory=factory)
        device_uuid, production, cert = _certify(factory=factory, ca=ca, csr=csr, production_allowed=claimed.allow_production)
        if expected_uuid is not None and str(device_uuid) != expected_uuid.strip().lower():
            raise ApplicationError("The uuid field differs from the CSR's CN; they must be the same device UUID")
        device = device_create(
            factory=factory,
            uuid=device_uuid,
            name=_validate_device_name(name, str(device_uuid)),
            tag=claimed.tag,
            is_production=production,
            group=claimed.group,
            hardware_id=hardware_id,
            certificate=pki.cert_pem(cert),
            serial=pki.serial_hex(cert),
        )
        RegistrationToken.objects.filter(pk=claimed.pk).update(uses=F("uses") + 1)
        audit_record(
            factory=factory,
            actor=None,
            action="device.register",
            target=str(device_uuid),
            details={"token": claimed.prefix, "production": production, "tag": claimed.tag, "group": claimed.group.name if claimed.group else None},
        )
    return Registration(device=device, certificate=device.certificate_record.pem, ca_certificate=ca.certificate)


def devices_register(*, factory, actor, tag, requests, group=None, allow_production=False):
    """Register many devices at once, as a provisioning line does: each request has its own CSR.

    `requests`: iterable of {"csr", "name", "hardware_id"}. Same checks as `device_register`;
    one transaction and one audit entry. Returns the list of Registration, in order.
    """
    authorize(user=actor, factory=factory, action="fleet.manage")
    tag = tag_clean(tag)
    if group is not None and group.factory_id != factory.id:
        raise NotFound("Device group not found")
    ca = device_ca_get(factory=factory)
    rows, pems = [], []
    for request in requests:
        device_uuid, production, cert = _certify(factory=factory, ca=ca, csr=request["csr"], production_allowed=allow_production)
        pems.append(pki.cert_pem(cert))
        rows.append(
            Device(
                factory=factory,
                uuid=device_uuid,
                name=_validate_device_name(request.get("name"), str(device_uuid)),
                tag=tag,
                is_production=production,
                group=group,
                hardware_id=_validate_hardware_id(request.get("hardware_id")),
                certificate_serial=pki.serial_hex(cert),
                sample_key=random.random(),
            )
        )
    if len({row.uuid for row in rows}) != len(rows):
        raise Conflict("The same device UUID appears twice in this registration")
    try:
        with transaction.atomic():
            Device.objects.bulk_create(rows, batch_size=500)
            if rows and rows[0].pk is None:
                # Backends without RETURNING on bulk inserts: read the ids back.
                ids = dict(Device.objects.filter(factory=factory, uuid__in=uuids_in(r.uuid for r in rows)).values_list("uuid", "pk"))
                for row in rows:
                    row.pk = row.id = ids[row.uuid]
            DeviceCertificate.objects.bulk_create([DeviceCertificate(device=row, pem=pem) for row, pem in zip(rows, pems)], batch_size=500)
            audit_record(
                factory=factory,
                actor=actor,
                action="devices.register",
                target=tag,
                details={"devices": len(rows), "group": group.name if group else None, "production": sum(r.is_production for r in rows)},
            )
    except IntegrityError:
        raise Conflict("One of these device UUIDs is already registered") from None
    return [Registration(device=row, certificate=pem, ca_certificate=ca.certificate) for row, pem in zip(rows, pems)]


def device_certificates_renew(*, factory, actor, csrs):
    """Issue new certificates to registered devices (a re-keyed device, a replaced secure element).

    `csrs` maps device UUID -> CSR. The production status is read from each device's current
    certificate and cannot change; the old certificate is refused by the gateway from now on.
    Returns {uuid: certificate PEM}.
    """
    authorize(user=actor, factory=factory, action="factory.admin")
    ca = device_ca_get(factory=factory)
    try:
        wanted = {uuid_lib.UUID(str(u)): csr for u, csr in csrs.items()}
    except ValueError:
        raise ApplicationError("Every device must be named by its UUID") from None
    devices = {d.uuid: d for d in Device.objects.filter(factory=factory, uuid__in=uuids_in(wanted)).select_related("certificate_record")}
    missing = [str(u) for u in wanted if u not in devices]
    if missing:
        raise NotFound(f"{counted(len(missing), 'device')} {plural(len(missing), 'is', 'are')} not registered in factory {factory.name}: {', '.join(missing[:5])}")
    issued = {}
    for device_uuid, csr in wanted.items():
        device = devices[device_uuid]
        current = pki.certificate_facts(pki.cert_load(device.certificate))["production"] if device.certificate else device.is_production
        csr_uuid, production, cert = _certify(factory=factory, ca=ca, csr=csr, production_allowed=current)
        if csr_uuid != device_uuid:
            raise ApplicationError(f"The CSR for device {device_uuid} names {csr_uuid} as its CN")
        if production != current:
            raise ApplicationError(f"Device {device_uuid} is a {'production' if current else 'test'} device; a new certificate cannot change that")
        device.certificate_serial = pki.serial_hex(cert)
        issued[device_uuid] = pki.cert_pem(cert)
    with transaction.atomic():
        Device.objects.bulk_update(list(devices.values()), ["certificate_serial"], batch_size=500)
        DeviceCertificate.objects.bulk_create(
            [DeviceCertificate(device=devices[u], pem=pem) for u, pem in issued.items()],
            update_conflicts=True, unique_fields=["device"], update_fields=["pem"], batch_size=500,
        )
        audit_record(
            factory=factory, actor=actor, action="device.certificate-renew", target=str(next(iter(wanted), "")), details={"devices": len(issued)}
        )
    return issued


def device_delete(*, device, actor):
    """Delete a device and its events; the gateway refuses its certificate from then on."""
    authorize(user=actor, factory=device.factory, action="fleet.manage")
    with transaction.atomic():
        audit_record(
            factory=device.factory, actor=actor, action="device.delete", target=str(device.uuid), details={"name": device.name, "production": device.is_production}
        )
        device.delete()
