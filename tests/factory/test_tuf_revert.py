"""A revert, as devices' TUF clients see it: the earlier build's content comes back under a new,
higher version, so python-tuf's client (which never goes down) installs it; builds and
re-releases share one sequence of numbers."""
import pytest
from tuf.api.metadata import Metadata

from factory.errors import ApplicationError, Conflict, NotFound
from factory.models import AuditEntry, RereleaseVersion
from factory.tuf.services.repository import ci_build_publish
from waves.models import Wave
from waves.services import wave_cancel, wave_complete, wave_revert, wave_rollout, wave_sign

from .test_tuf_waves import HWIDS, TAG, archive, fleet, make_wave  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def targets_of(wave):
    return Metadata.from_bytes(bytes(wave.targets)).signed.targets


def never_down(client):
    for role in ("timestamp", "snapshot", "targets"):
        seen = [h[role] for h in client.history if h[role] is not None]
        assert seen == sorted(seen), (client.device.name, role, seen)


def test_a_revert_re_releases_the_earlier_build_above_everything_served(factory, bob, archive, fleet):
    production = [c for c in fleet.values() if c.device.is_production]
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)
    assert all(c.update() == 41 for c in production)
    wave_complete(wave=make_wave(factory, bob, archive, "v42-bad", 42), actor=bob)
    assert all(c.update() == 42 for c in production)

    # CI published builds up to 44: the re-release takes 45, the next number of the one sequence.
    revert = wave_revert(factory=factory, actor=bob, name="back-to-41", tag=TAG, to_version=41, prune=[42])
    assert (revert.version, revert.rerelease_of, revert.build_version) == (45, 41, 41)
    files = targets_of(revert)
    for hwid in HWIDS:
        old, new = files[f"{hwid}-lmp-41"], files[f"{hwid}-lmp-45"]
        assert new.hashes == old.hashes and new.length == old.length
        custom = new.unrecognized_fields["custom"]
        assert custom["version"] == "45" and custom["tags"] == [TAG]
        assert custom["rerelease_of"] == {"target": f"{hwid}-lmp-41", "version": 41}
        assert f"{hwid}-lmp-42" not in files  # pruned: the bad build is gone from the tag
    assert AuditEntry.objects.filter(action="wave.revert", target="back-to-41").exists()

    # Unsigned: nobody sees it. Signed and rolled out to one device: only it moves.
    first, rest = production[0], production[1:]
    wave_sign(wave=revert, actor=bob, key_archive=archive)
    wave_rollout(wave=revert, actor=bob, uuids=str(first.device.uuid))
    assert first.update() == 45  # downloaded and verified: build 41's bytes under the new name
    assert all(c.update() == 42 for c in rest)
    wave_complete(wave=revert, actor=bob)
    assert all(c.update() == 45 for c in production)
    for client in production:
        never_down(client)

    # CI cannot publish 45: one number, one content. Its next build is 46.
    with pytest.raises(Conflict, match="taken by a re-release of build 41.*publish this build as 46"):
        ci_build_publish(factory=factory, version=45, hardware_ids=HWIDS, tags=[TAG])
    ci_build_publish(factory=factory, version=46, hardware_ids=HWIDS, tags=[TAG])
    wave_complete(wave=make_wave(factory, bob, archive, "v46", 46), actor=bob)
    assert all(c.update() == 46 for c in production)


def test_a_canceled_re_release_still_keeps_later_waves_above_it(factory, bob, archive, fleet):
    production = [c for c in fleet.values() if c.device.is_production]
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)
    revert = wave_sign(wave=wave_revert(factory=factory, actor=bob, name="again-40", tag=TAG, to_version=40), actor=bob, key_archive=archive)
    wave_rollout(wave=revert, actor=bob, uuids=str(production[0].device.uuid))
    assert production[0].update() == 45
    wave_cancel(wave=revert, actor=bob)
    # Build 44 is below the 45 that device was served: it can only come as a re-release.
    with pytest.raises(ApplicationError, match="served version 45.*waves revert NAME production --to 44"):
        make_wave(factory, bob, archive, "v44", 44)
    wave_complete(wave=wave_sign(wave=wave_revert(factory=factory, actor=bob, name="w44", tag=TAG, to_version=44), actor=bob, key_archive=archive), actor=bob)
    assert all(c.update() == 46 for c in production)
    assert sorted(RereleaseVersion.objects.values_list("version", "build_version")) == [(45, 40), (46, 44)]


@pytest.mark.parametrize(
    "kwargs, error, kind",
    [
        ({"to_version": 99}, "Build 99 is neither in the production targets", NotFound),
        ({"to_version": "x"}, "is not a number", ApplicationError),
        ({"name": "v41"}, "already exists", Conflict),
        ({"prune": [43]}, "Cannot prune 43", ApplicationError),
    ],
)
def test_bad_reverts_change_nothing(factory, bob, archive, fleet, kwargs, error, kind):
    wave_complete(wave=make_wave(factory, bob, archive, "v41", 41), actor=bob)
    args = {"factory": factory, "actor": bob, "name": "back", "tag": TAG, "to_version": 40, **kwargs}
    with pytest.raises(kind, match=error):
        wave_revert(**args)
    assert Wave.objects.count() == 1 and not RereleaseVersion.objects.exists()


def test_a_dry_run_revert_claims_no_number(factory, bob, archive, fleet):
    wave = wave_revert(factory=factory, actor=bob, name="preview", tag=TAG, to_version=40, dry_run=True)
    assert wave.pk is None and wave.version == 45
    assert not RereleaseVersion.objects.exists() and not Wave.objects.exists()
