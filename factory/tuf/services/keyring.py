"""A factory's live TUF keys: who may sign which role, online signers decrypted on demand, and
the checks that offline signatures are real and enough."""
from django.conf import settings
from securesystemslib.signer import SSlibKey

from factory.encryption import secret_decrypt, secret_encrypt
from factory.errors import ApplicationError

from .. import keys as tuf_keys
from .. import metadata as md
from ..models import Channel, TufKey

ROLES = tuf_keys.ROLES


def private_encrypt(signer):
    """An online key's private key as stored (TufKey.private_encrypted)."""
    return secret_encrypt(signer.private_bytes, keys=settings.TUF_KEY_ENCRYPTION_KEY)


class Keyring:
    """The factory's live keys, loaded once per operation; online signers decrypted on demand."""

    def __init__(self, factory_id, rows=None):
        self.factory_id = factory_id
        if rows is None:
            rows = TufKey.objects.filter(factory_id=factory_id, retired_at__isnull=True).order_by("id")
        self.rows = list(rows)
        self._signers = {}

    @classmethod
    def for_factories(cls, factory_ids):
        """{factory id: Keyring} in one query."""
        rows = {factory_id: [] for factory_id in factory_ids}
        for row in TufKey.objects.filter(factory_id__in=list(rows), retired_at__isnull=True).order_by("id"):
            rows[row.factory_id].append(row)
        return {factory_id: cls(factory_id, keys) for factory_id, keys in rows.items()}

    def keys(self, role):
        return [SSlibKey.from_dict(row.keyid, dict(row.public)) for row in self.rows if row.role == role]

    def keysets(self):
        return {role: self.keys(role) for role in ROLES}

    def online_keyids(self):
        return {row.keyid for row in self.rows if row.online and row.private_encrypted is not None}

    def signer(self, role):
        """The online signer of `role`, or None (a root key taken offline)."""
        if role not in self._signers:
            row = next((r for r in self.rows if r.role == role and r.online and r.private_encrypted is not None), None)
            if row is None:
                self._signers[role] = None
            else:
                key = SSlibKey.from_dict(row.keyid, dict(row.public))
                pem = secret_decrypt(row.private_encrypted, keys=settings.TUF_KEY_ENCRYPTION_KEY, what="an online TUF key")
                self._signers[role] = tuf_keys.signer_from_pem(pem, key)
        return self._signers[role]

    def online_signer(self, role):
        signer = self.signer(role)
        if signer is None:
            raise ApplicationError(f"The factory has no online {role} key")
        return signer


def roots_build(*, keysets, production_threshold, version, expires):
    return {
        Channel.CI: md.root_build(keys=keysets, targets_threshold=1, version=version, expires=expires),
        Channel.PRODUCTION: md.root_build(keys=keysets, targets_threshold=production_threshold, version=version, expires=expires),
    }


def offline_targets_keyids(keyring):
    return {row.keyid for row in keyring.rows if row.role == "targets" and not row.online}


def signatures_verified(*, key_for, payload, signatures, what):
    """Parse and verify {"keyid", "sig"} dicts; any unknown key or bad signature refuses them all."""
    if not isinstance(signatures, (list, tuple)):
        raise ApplicationError("Signatures must be a list of objects with keyid and sig")
    verified = []
    for value in signatures:
        signature = tuf_keys.signature_parse(value)
        key = key_for(signature.keyid)
        if key is None:
            raise ApplicationError(f"Key {signature.keyid} may not sign {what}")
        if not tuf_keys.signature_verify(key, signature, payload):
            raise ApplicationError(f"The signature by key {signature.keyid} does not verify over {what}")
        verified.append(signature)
    return verified


def production_threshold_met(root, targets_md, online_keyids):
    result = md.targets_verification(root, targets_md)
    # The threshold must include at least one offline key: an online key alone never suffices.
    return result.verified and any(keyid not in online_keyids for keyid in result.signed)
