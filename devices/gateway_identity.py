"""The gateway's TLS identity: the CA devices trust the gateway by, the server certificate it
presents, and the device root CA that every factory's device CA chains to; generated on first
use and re-issued as hosts are added or expiry nears. Also where devices are told to reach it."""
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from factory.errors import ApplicationError

from . import pki
from .models import GatewayIdentity


def gateway_identity_get(*, hosts=None):
    """The gateway's TLS trust (GatewayIdentity), generated on first use.

    The server certificate is re-issued by the same CA when it does not cover every host in
    `hosts` (default: the settings' gateway hosts) or nears its expiry, so devices that trust the
    CA keep trusting the gateway.
    """
    hosts = [h.strip() for h in (hosts if hosts is not None else settings.BREAKWATER_GATEWAY_HOSTS) if h and h.strip()]
    if not hosts:
        raise ApplicationError("The gateway needs at least one host name or address")
    identity = GatewayIdentity.objects.filter(name="default").first()
    if identity is None:
        ca_cert, ca_key = pki.gateway_ca_generate()
        cert, key = pki.gateway_certificate_issue(ca_cert=ca_cert, ca_key=ca_key, hosts=hosts)
        root_cert, root_key = pki.device_root_generate()
        try:
            with transaction.atomic():
                return GatewayIdentity.objects.create(
                    name="default",
                    ca_certificate=pki.cert_pem(ca_cert),
                    ca_private_key=pki.key_encrypt(ca_key),
                    certificate=pki.cert_pem(cert),
                    private_key=pki.key_encrypt(key),
                    hosts=hosts,
                    device_root_certificate=pki.cert_pem(root_cert),
                    device_root_private_key=pki.key_encrypt(root_key),
                )
        except IntegrityError:
            # Another process created it first: theirs is the one.
            identity = GatewayIdentity.objects.get(name="default")
    current = pki.cert_load(identity.certificate)
    expiring = current.not_valid_after_utc < timezone.now() + timedelta(days=30)
    if not set(hosts) <= pki.certificate_hosts(current) or expiring:
        with transaction.atomic():
            identity = GatewayIdentity.objects.select_for_update().get(pk=identity.pk)
            all_hosts = sorted(set(hosts) | set(identity.hosts))
            ca_cert, ca_key = pki.cert_load(identity.ca_certificate), pki.key_decrypt(identity.ca_private_key)
            cert, key = pki.gateway_certificate_issue(ca_cert=ca_cert, ca_key=ca_key, hosts=all_hosts)
            identity.certificate = pki.cert_pem(cert)
            identity.private_key = pki.key_encrypt(key)
            identity.hosts = all_hosts
            identity.save(update_fields=["certificate", "private_key", "hosts", "updated_at"])
    return identity


def gateway_endpoint():
    """Where devices reach the gateway and the CA they trust it by: {"url", "ca_certificate"}."""
    if settings.BREAKWATER_GATEWAY_SERVER_CA:
        ca = Path(settings.BREAKWATER_GATEWAY_SERVER_CA).read_text()
    else:
        ca = gateway_identity_get(hosts=settings.BREAKWATER_GATEWAY_HOSTS).ca_certificate
    return {"url": settings.BREAKWATER_GATEWAY_URL, "ca_certificate": ca}
