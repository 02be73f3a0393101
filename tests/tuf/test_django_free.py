"""The TUF key and metadata code (both flavours), and the key encryption it shares with the server, import no
Django and no Celery: the CLI signs on a release manager's machine with them."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, types

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("django", "celery"):
                raise ImportError(f"{name} may not be imported here")
            return None

    sys.meta_path.insert(0, Refuse())
    # factory/__init__.py is the project's business; factory/tuf/__init__.py runs as usual.
    package = types.ModuleType("factory")
    package.__path__ = ["factory"]
    sys.modules["factory"] = package

    from cryptography.fernet import Fernet
    from factory import encryption
    from factory.tuf import aktualizr, flavours, keys, metadata

    signer = keys.key_generate()
    archive = keys.key_archive_write([("targets", signer)])
    [(role, again)] = keys.key_archive_read(archive)
    assert role == "targets" and again.public_key.keyid == signer.public_key.keyid
    key = Fernet.generate_key().decode()
    assert encryption.secret_decrypt(encryption.secret_encrypt(b"pem", keys=key), keys=key) == b"pem"
    assert metadata.sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    signed = {"_type": "Targets", "version": 1, "expires": "2030-01-01T00:00:00Z", "targets": {}}
    document = aktualizr.document_signed(signed, [signer])
    root = {"keys": {signer.public_key.keyid: aktualizr.key_json(signer.public_key.to_dict())},
            "roles": {"targets": {"keyids": [signer.public_key.keyid], "threshold": 1}}}
    assert aktualizr.threshold_met(root, "targets", document) and flavours.flavour_of("Aktualizr/1") == flavours.AKTUALIZR
    print("django-free")
    """
)


def test_keys_metadata_and_encryption_import_no_django_or_celery():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django-free"

