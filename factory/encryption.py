"""Encryption at rest of the private keys the server holds: online TUF keys, device CAs and the
gateway identity. Fernet under a comma-separated key list: during a rotation ("new,old") every
process encrypts with the first key and decrypts with any of them.

Free of Django, like the TUF key code that uses it: callers pass the key list
(settings.TUF_KEY_ENCRYPTION_KEY)."""
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from factory.errors import ApplicationError


def _fernet(keys):
    keys = [k.strip() for k in str(keys or "").split(",") if k.strip()]
    if not keys:
        raise ApplicationError("TUF_KEY_ENCRYPTION_KEY is not set")
    return MultiFernet([Fernet(k.encode()) for k in keys])


def secret_encrypt(data, *, keys):
    """`data` (bytes) encrypted under the first of `keys`."""
    return _fernet(keys).encrypt(bytes(data))


def secret_decrypt(blob, *, keys, what="a stored private key"):
    """The bytes `secret_encrypt` encrypted, under any of `keys`; `what` names them in the refusal."""
    try:
        return _fernet(keys).decrypt(bytes(blob))
    except InvalidToken:
        raise ApplicationError(f"Cannot decrypt {what}: BREAKWATER_KEY_ENCRYPTION_KEY differs from the one that encrypted it") from None
