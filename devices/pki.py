"""X.509 for devices: the factory device CA, device certificates from CSRs, the gateway's TLS identity.

Pure functions over `cryptography` objects; the services decide when to call them and store the
results. A device certificate's subject is CN = device UUID, OU = factory, and
`businessCategory=production` (OID 2.5.4.15) for a production device and nothing else.
"""
import ipaddress
import secrets
import uuid as uuid_lib
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

from factory.encryption import secret_decrypt, secret_encrypt
from factory.errors import ApplicationError

PRODUCTION = "production"
CA_DAYS = 20 * 365
DEVICE_CERT_DAYS = 10 * 365
SERVER_CERT_DAYS = 2 * 365
CSR_MAX_BYTES = 8192
RSA_MIN_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CertificateError(ApplicationError):
    """A CSR or certificate that Breakwater will not accept."""


def _now():
    return datetime.now(timezone.utc)


def key_encrypt(private_key):
    # The same key list as the online TUF keys': one rotation covers both.
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return secret_encrypt(pem, keys=settings.TUF_KEY_ENCRYPTION_KEY)


def key_decrypt(blob):
    pem = secret_decrypt(blob, keys=settings.TUF_KEY_ENCRYPTION_KEY, what="a stored private key")
    return serialization.load_pem_private_key(pem, password=None)


def key_generate():
    """A device or CA key: ECDSA P-256, as aktualizr-lite devices use."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(private_key):
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_load(pem_or_der):
    data = pem_or_der.encode() if isinstance(pem_or_der, str) else bytes(pem_or_der)
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def serial_hex(cert):
    return format(cert.serial_number, "x")


def _name(common_name, unit=None, production=False, organization="Breakwater"):
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if production:
        attributes.append(x509.NameAttribute(NameOID.BUSINESS_CATEGORY, PRODUCTION))
    return x509.Name(attributes)


def _ca_certificate(subject, key, days, *, issuer_cert=None, issuer_key=None, path_length=0):
    """A CA certificate, self-signed unless an issuer is given."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def device_root_generate():
    """The device root CA: it signs every factory's device CA, and gateways trust only it."""
    key = key_generate()
    return _ca_certificate(_name(f"Breakwater device root CA {secrets.token_hex(4)}"), key, CA_DAYS, path_length=1), key


def device_ca_generate(factory_name, *, root_cert, root_key):
    """A new device CA for a factory, signed by the device root: (certificate, private key)."""
    key = key_generate()
    # A random suffix keeps the subject unique if a factory's CA is ever replaced.
    subject = _name(f"{factory_name} device CA {secrets.token_hex(4)}", unit=factory_name)
    return _ca_certificate(subject, key, CA_DAYS, issuer_cert=root_cert, issuer_key=root_key), key


def _check_public_key(public_key):
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, EC_CURVES):
            raise CertificateError(f"The CSR's key uses curve {public_key.curve.name}; use P-256 or P-384")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < RSA_MIN_BITS:
            raise CertificateError(f"The CSR's RSA key has {public_key.key_size} bits; at least {RSA_MIN_BITS} are required")
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise CertificateError("The CSR's key type is not supported; use ECDSA P-256, Ed25519 or RSA")


def _single(name, oid, what):
    values = name.get_attributes_for_oid(oid)
    if len(values) > 1:
        raise CertificateError(f"The CSR subject has several {what} values")
    return values[0].value if values else None


def csr_parse(csr_pem, *, factory_name):
    """Check a device's CSR; return (csr, device UUID, production requested).

    The CSR must be self-signed by its key, name the device UUID as CN and the factory as OU, and
    may carry businessCategory=production and nothing else in that attribute.
    """
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode()
    if not csr_pem or len(csr_pem) > CSR_MAX_BYTES:
        raise CertificateError(f"A CSR (PEM, at most {CSR_MAX_BYTES} bytes) is required")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise CertificateError("The CSR is not a valid PEM certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # unsupported signature algorithms raise here
        valid = False
    if not valid:
        raise CertificateError("The CSR's signature does not verify with its own key")
    try:
        # cryptography parses the key and the subject only when asked: a request whose signature
        # verifies can still hold a key or a name it cannot read.
        public_key, subject = csr.public_key(), csr.subject
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError("The CSR's key or subject is not valid DER") from None
    _check_public_key(public_key)
    common_name = _single(subject, NameOID.COMMON_NAME, "CN")
    if not common_name:
        raise CertificateError("The CSR subject needs CN = the device UUID")
    try:
        device_uuid = uuid_lib.UUID(common_name)
    except ValueError:
        raise CertificateError(f"The CSR's CN {common_name[:40]!r} is not a UUID") from None
    unit = _single(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU")
    if unit != factory_name:
        raise CertificateError(f"The CSR's OU must be the factory name {factory_name!r}, not {str(unit)[:64]!r}")
    category = _single(subject, NameOID.BUSINESS_CATEGORY, "businessCategory")
    if category not in (None, PRODUCTION):
        raise CertificateError(f"The CSR's businessCategory may only be {PRODUCTION!r}; {str(category)[:40]!r} is not allowed")
    return csr, device_uuid, category == PRODUCTION


def device_certificate_issue(*, ca_cert, ca_key, public_key, device_uuid, factory_name, production, days=DEVICE_CERT_DAYS):
    """Sign a client certificate for a device. The subject is built here, never copied from the CSR."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(str(device_uuid), unit=factory_name, production=production))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def device_csr_build(*, private_key, device_uuid, factory_name, production):
    """What a device does before registering: a CSR for its own key (used by the simulator and seeding)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(str(device_uuid), unit=factory_name, production=production, organization="Breakwater device"))
        .sign(private_key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM).decode()


def certificate_facts(cert):
    """What a device certificate says: UUID, factory, production, serial, validity."""
    subject = cert.subject
    common_name = _first(subject, NameOID.COMMON_NAME)
    try:
        device_uuid = uuid_lib.UUID(common_name) if common_name else None
    except ValueError:
        device_uuid = None
    return {
        "uuid": device_uuid,
        "factory": _first(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        "production": _first(subject, NameOID.BUSINESS_CATEGORY) == PRODUCTION,
        "serial": serial_hex(cert),
        "subject": subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
    }


def _first(name, oid):
    values = name.get_attributes_for_oid(oid)
    return values[0].value if values else None


def issued_by(cert, ca_cert):
    """True if `ca_cert` signed `cert` (names and signature)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def gateway_ca_generate():
    key = key_generate()
    return _ca_certificate(_name(f"Breakwater gateway CA {secrets.token_hex(4)}"), key, CA_DAYS), key


def gateway_certificate_issue(*, ca_cert, ca_key, hosts):
    """The gateway's server certificate, valid for each host name or IP address in `hosts`."""
    key = key_generate()
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "breakwater-gateway"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=SERVER_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def certificate_hosts(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
