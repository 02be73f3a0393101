"""Waves whose targets carry the online targets key refuse its rotation.

A wave waiting for its offline signatures and a plan's armed rollback hold targets signed with
the online targets key when they were made; the rotation re-signs what is served, not these. Once
the old key is retired they would no longer verify: the wave could never be signed, and the
rollback a halt activates would be refused by every device. So a targets rotation waits until
they are signed and active (then the rotation's own check applies), canceled or disarmed.
"""
from factory.errors import Conflict
from factory.tuf.signals import online_key_rotating

from .models import Wave


def refuse_targets_rotation_over_pending_waves(sender, *, factory, role, **kwargs):
    if role != "targets":
        return
    pending = Wave.objects.filter(factory=factory, status__in=[Wave.Status.UNSIGNED, Wave.Status.ARMED]).order_by("name").first()
    if pending is None:
        return
    if pending.status == Wave.Status.ARMED:
        raise Conflict(
            f"Wave {pending.name} is a plan's armed rollback, signed with the online targets key being replaced: "
            "let its plan finish or cancel the plan's wave before rotating the targets key"
        )
    raise Conflict(
        f"Wave {pending.name} waits for its offline signatures and holds targets signed with the online targets key "
        "being replaced: sign or cancel it before rotating the targets key"
    )


def connect():
    online_key_rotating.connect(refuse_targets_rotation_over_pending_waves, dispatch_uid="waves.key_rotation")
