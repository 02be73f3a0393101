"""Signing on the release manager's machine: the offline key archive is read here and never sent.

The server hands out the exact bytes to sign (a wave's targets payloads, TUF and aktualizr); this module signs them
with the archive's targets keys that the factory's production root trusts, and only the
signatures travel.
"""
import base64

from factory.errors import ApplicationError
from factory.plurals import plural
from factory.tuf.keys import key_archive_read, payload_sign

from .client import CliError


class OfflineSigner:
    def __init__(self, signers, source):
        self.signers = signers
        self.source = source

    @classmethod
    def for_factory(cls, ctx, archive_bytes, source, *, role="targets"):
        try:
            pairs = key_archive_read(archive_bytes)
        except ApplicationError as exc:
            raise CliError(f"Cannot use the keys archive {source}: {exc.message}") from None
        root = ctx.client.get(ctx.path("keys/root"), {"production": True})
        trusted = set(root["signed"]["roles"][role]["keyids"])
        signers = [signer for key_role, signer in pairs if key_role == role and signer.public_key.keyid in trusted]
        if not signers:
            held = sorted(signer.public_key.keyid[:12] for key_role, signer in pairs if key_role == role)
            described = f"its {role} {plural(len(held), 'key')} ({', '.join(held)}…) {plural(len(held), 'is', 'are')}" if held else f"it holds no {role} key, which is"
            raise CliError(
                f"The keys archive {source} cannot sign for factory {ctx.client.factory}: {described} not trusted by the "
                "production root; use the archive from `breakwater keys rotate-offline-key`"
            )
        return cls(signers, source)

    def sign(self, payload):
        return [payload_sign(signer, payload) for signer in self.signers]

    def sign_wave(self, wave):
        """{"signatures", "aktualizr_signatures"}: each key signs both of the wave's payloads in
        one step (TUF 1.0, and the flavour aktualizr-lite devices verify)."""
        body = {"signatures": self.sign(base64.b64decode(wave["signing_payload"]))}
        if wave.get("aktualizr_signing_payload"):
            body["aktualizr_signatures"] = self.sign(base64.b64decode(wave["aktualizr_signing_payload"]))
        return body
