"""Wave init, complete and cancel: the seed's rules, through the services."""
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone
from tuf.api.metadata import Metadata

from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from factory.models import AuditEntry
from factory.tuf.services.repository import ci_build_publish
from waves.models import Wave
from waves.selectors import wave_list
from waves.services import wave_cancel, wave_complete, wave_init

from .conftest import HWIDS, TAG, make_wave


def targets_of(wave):
    return Metadata.from_bytes(bytes(wave.targets)).signed


def test_init_holds_production_targets_plus_the_build_retagged(factory, bob, builds, offline_key):
    first = make_wave(factory, bob, offline_key, name="first", version=41)
    wave_complete(wave=first, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)
    signed = targets_of(wave)
    assert signed.version == 42
    assert set(signed.targets) == {f"{h}-lmp-{v}" for h in HWIDS for v in (41, 42)}
    for hwid in HWIDS:
        assert signed.targets[f"{hwid}-lmp-42"].unrecognized_fields["custom"]["tags"] == [TAG]
    assert wave.status == "unsigned"
    expected = timezone.now() + timedelta(days=365)
    assert abs((signed.expires - expected).total_seconds()) < 120


def test_init_can_prune_old_versions_and_set_expiry(factory, bob, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="w40", version=40), actor=bob)
    wave_complete(wave=make_wave(factory, bob, offline_key, name="w41", version=41), actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="w42", version=42, tag=TAG, prune="40", expires_days=30)
    assert {t.split("-lmp-")[1] for t in targets_of(wave).targets} == {"41", "42"}
    assert abs((targets_of(wave).expires - (timezone.now() + timedelta(days=30))).total_seconds()) < 120
    wave_cancel(wave=wave, actor=bob)
    at = (timezone.now() + timedelta(days=90)).replace(microsecond=0)
    wave = wave_init(factory=factory, actor=bob, name="w42b", version=42, tag=TAG, expires_at=at.isoformat())
    assert targets_of(wave).expires == at


def test_init_from_another_source_tag(factory, bob, offline_key):
    ci_build_publish(factory=factory, version=50, hardware_ids=HWIDS, tags=["main"])
    with pytest.raises(ApplicationError, match="no targets for tag production"):
        wave_init(factory=factory, actor=bob, name="w50", version=50, tag=TAG)
    wave = wave_init(factory=factory, actor=bob, name="w50", version=50, tag=TAG, source_tag="main")
    assert all(t.unrecognized_fields["custom"]["tags"] == [TAG] for t in targets_of(wave).targets.values())


def test_a_dry_run_init_creates_nothing(factory, bob, builds):
    wave = wave_init(factory=factory, actor=bob, name="preview", version=42, tag=TAG, dry_run=True)
    assert wave.pk is None and targets_of(wave).version == 42
    assert not Wave.objects.exists() and not AuditEntry.objects.filter(action="wave.init").exists()


@pytest.mark.parametrize(
    "kwargs, error, kind",
    [
        ({"version": 99}, "CI build 99 does not exist", NotFound),
        ({"version": "forty"}, "is not a number", ApplicationError),
        ({"name": "bad name"}, "Wave name", ApplicationError),
        ({"name": "x" * 65}, "Wave name", ApplicationError),
        ({"name": "v42\n"}, "Wave name", ApplicationError),  # a name ends headers and lines of output
        ({"tag": "production\n"}, "tag", ApplicationError),
        ({"name": "new"}, "reserved", ApplicationError),
        ({"tag": ""}, "tag", ApplicationError),
        ({"expires_days": 0}, "between 2 and 3650", ApplicationError),
        ({"expires_days": 10, "expires_at": "2030-01-01T00:00:00Z"}, "not both", ApplicationError),
        ({"expires_at": "yesterday"}, "RFC 3339", ApplicationError),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "in the future", ApplicationError),
        ({"expires_at": "2030-01-01T00:00:00"}, "time zone", ApplicationError),
        ({"prune": "41"}, "Cannot prune 41", ApplicationError),
        ({"prune": "x"}, "not a version number", ApplicationError),
    ],
)
def test_bad_inits_are_refused_and_change_nothing(factory, bob, builds, kwargs, error, kind):
    args = {"name": "w", "version": 42, "tag": TAG, **kwargs}
    with pytest.raises(kind, match=error):
        wave_init(factory=factory, actor=bob, **args)
    assert not Wave.objects.exists()


def test_version_must_be_higher_than_production_and_not_in_it(factory, bob, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="w42", version=42), actor=bob)
    with pytest.raises(Conflict, match="already in the production targets"):
        wave_init(factory=factory, actor=bob, name="again", version=42, tag=TAG)
    with pytest.raises(ApplicationError, match="must be higher than tag production's current production targets version 42"):
        wave_init(factory=factory, actor=bob, name="older", version=41, tag=TAG)
    assert wave_init(factory=factory, actor=bob, name="newer", version=43, tag=TAG).version == 43


def test_one_open_wave_per_tag_and_unique_names(factory, bob, builds, offline_key):
    make_wave(factory, bob, offline_key, name="one", version=42)
    with pytest.raises(Conflict, match="Wave one is still active on tag production"):
        wave_init(factory=factory, actor=bob, name="two", version=43, tag=TAG)
    # another tag is fine, but not the same name
    ci_build_publish(factory=factory, version=44, hardware_ids=HWIDS, tags=["eu"])
    with pytest.raises(Conflict, match="named one already exists"):
        wave_init(factory=factory, actor=bob, name="one", version=44, tag="eu")
    assert wave_init(factory=factory, actor=bob, name="eu-44", version=44, tag="eu").tag == "eu"


def test_the_database_refuses_a_second_open_wave_on_a_tag(factory, bob, builds):
    wave = wave_init(factory=factory, actor=bob, name="one", version=42, tag=TAG)
    with pytest.raises(IntegrityError), transaction.atomic():
        Wave.objects.create(factory=factory, name="two", version=43, tag=TAG, expires_at=wave.expires_at)


def test_complete_and_cancel_rules(factory, bob, builds, offline_key):
    a = make_wave(factory, bob, offline_key, name="a", version=42)
    wave_cancel(wave=a, actor=bob)
    with pytest.raises(Conflict, match="Wave a is canceled; it cannot be completed"):
        wave_complete(wave=a, actor=bob)
    with pytest.raises(Conflict, match="already canceled"):
        wave_cancel(wave=a, actor=bob)
    b = make_wave(factory, bob, offline_key, name="b", version=42)
    wave_complete(wave=b, actor=bob)
    with pytest.raises(Conflict, match="Wave b is complete; it cannot be canceled"):
        wave_cancel(wave=b, actor=bob)
    with pytest.raises(Conflict, match="already complete"):
        wave_complete(wave=b, actor=bob)
    unsigned = wave_init(factory=factory, actor=bob, name="c", version=43, tag=TAG)
    with pytest.raises(Conflict, match="not signed yet"):
        wave_complete(wave=unsigned, actor=bob)
    assert wave_cancel(wave=unsigned, actor=bob).status == "canceled"
    actions = list(AuditEntry.objects.filter(action__in=["wave.complete", "wave.cancel"]).values_list("action", "target"))
    assert actions == [("wave.cancel", "a"), ("wave.complete", "b"), ("wave.cancel", "c")]


@pytest.mark.parametrize("user", ["carol", "dave", "eve"])
def test_only_release_managers_and_admins_change_waves(request, factory, bob, builds, offline_key, user):
    actor = request.getfixturevalue(user)
    with pytest.raises(Forbidden):
        wave_init(factory=factory, actor=actor, name="w", version=42, tag=TAG)
    wave = make_wave(factory, bob, offline_key)
    for action in (wave_complete, wave_cancel):
        with pytest.raises(Forbidden):
            action(wave=wave, actor=actor)
    wave.refresh_from_db()
    assert wave.status == "active"


def test_wave_list_puts_open_waves_first_and_filters(factory, bob, builds, offline_key):
    wave_complete(wave=make_wave(factory, bob, offline_key, name="old", version=41), actor=bob)
    make_wave(factory, bob, offline_key, name="newer", version=42)
    assert [w.name for w in wave_list(factory=factory)] == ["newer", "old"]
    assert [w.name for w in wave_list(factory=factory, status="complete")] == ["old"]
    assert [w.name for w in wave_list(factory=factory, tag="other")] == []
    assert [w.name for w in wave_list(factory=factory, per_page=1, page=2)] == ["old"]
    with pytest.raises(ApplicationError, match="Unknown wave status"):
        wave_list(factory=factory, status="bogus")
