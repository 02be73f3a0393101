"""Hooks of the TUF repository for the layers above it, which it cannot import.

`online_key_rotating` is sent inside an online key rotation's transaction, once the repository
is locked, with `factory` and `role`. A receiver that knows of metadata signed with the key being
replaced, which the rotation cannot re-sign (waves keep offline-signed targets this layer does
not see), raises an ApplicationError to refuse the rotation; nothing has changed yet.
"""
from django.dispatch import Signal

online_key_rotating = Signal()
