"""A targets key rotation is refused while a wave holds targets signed with the key being replaced
that the rotation cannot re-sign: a wave waiting for its offline signatures, a plan's armed
rollback. Nothing changes; once they are signed, canceled or disarmed it goes through."""
import pytest

from factory.errors import Conflict
from factory.tuf.models import TufKey, TufRootChange
from factory.tuf.services import root_changes
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from tests.factory.test_tuf_waves import TAG, archive, fleet, make_wave  # noqa: F401  (fixtures)
from waves.models import Wave
from waves.plans.services import plan_set, plan_start
from waves.services import wave_cancel, wave_complete, wave_init, wave_sign

from .test_plans_rollback import PHASES

pytestmark = pytest.mark.django_db(transaction=True)


def keys_state(factory):
    return (
        list(TufKey.objects.filter(factory=factory).values_list("keyid", "retired_at").order_by("keyid")),
        TufRootChange.objects.filter(factory=factory).count(),
    )


def test_an_unsigned_wave_holds_a_targets_rotation_until_it_is_signed(factory, bob, archive, fleet):
    wave = wave_init(factory=factory, actor=bob, name="v42", version=42, tag=TAG)
    assert wave.status == Wave.Status.UNSIGNED
    before = keys_state(factory)
    with pytest.raises(Conflict, match="Wave v42 waits for its offline signatures"):
        root_changes.online_key_rotate(factory=factory, actor=bob, role="targets")
    assert keys_state(factory) == before
    # The timestamp key signs no wave's targets: its rotation goes through.
    assert root_changes.online_key_rotate(factory=factory, actor=bob, role="timestamp").status == "applied"
    wave_sign(wave=wave, actor=bob, key_archive=archive)
    wave_complete(wave=wave, actor=bob)
    assert root_changes.online_key_rotate(factory=factory, actor=bob, role="targets").status == "applied"


def test_an_armed_rollback_holds_a_targets_rotation_on_every_door(factory, bob, archive, fleet, as_user):  # noqa: F811
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)
    wave = make_wave(factory, bob, archive, "v42", 42)
    plan_set(wave=wave, actor=bob, phases=PHASES)
    plan = plan_start(wave=wave, actor=bob, rollback={"scope": "staged", "key_archive": archive})
    assert plan.rollback_wave.status == Wave.Status.ARMED
    before = keys_state(factory)
    api = as_user("bob")
    response = api.post("keys/online/rotate", {"role": "targets"})
    assert response.status_code == 409 and "armed rollback" in response.json()["detail"]
    assert keys_state(factory) == before
    # Canceling the wave disarms the rollback; then the rotation may go on.
    wave_cancel(wave=wave, actor=bob)
    assert api.post("keys/online/rotate", {"role": "targets"}).status_code == 200
