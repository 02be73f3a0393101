"""Rollout selection, table-driven from the seed's own scenarios."""
import uuid

import pytest
from django.db import transaction

from devices.models import Device, DeviceGroup
from devices.services import devices_assign_group
from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from waves.models import Rollout, WaveDevice, WaveGroup
from waves.selectors import device_wave, rollout_device_uuids
from waves.services import wave_cancel, wave_complete, wave_rollout

from .conftest import TAG, seed


def staged(wave):
    return set(WaveDevice.objects.filter(wave=wave).values_list("device__uuid", flat=True))


def uuids_of(queryset):
    return {d.uuid for d in queryset}


def test_canary_then_beta_then_complete(factory, bob, fleet100, wave):
    """fioctl waves rollout v2.0-update --group canary; --group beta; complete"""
    canary = wave_rollout(wave=wave, actor=bob, group="canary")
    assert canary.full_group and canary.count == 5
    assert canary.message == 'A Wave is being rolled out to all 5 devices in group "canary"; devices that join the group later get it too'
    beta = wave_rollout(wave=wave, actor=bob, group="beta")
    assert beta.count == 20
    assert set(WaveGroup.objects.filter(wave=wave).values_list("group__name", flat=True)) == {"canary", "beta"}
    for device in fleet100:
        expected = device.is_production and device.group is not None
        assert (device_wave(device=device) == wave) is expected, device.name
    wave_complete(wave=wave, actor=bob)
    wave.refresh_from_db()
    assert wave.status == "complete"


def test_limit_5_then_limit_20_stages_25_distinct_production_devices(factory, bob, fleet100, wave):
    first = wave_rollout(wave=wave, actor=bob, limit="5")
    second = wave_rollout(wave=wave, actor=bob, limit=20)
    assert first.count == 5 and second.count == 20
    assert first.message == "A Wave is being rolled out to 5 devices"
    chosen = staged(wave)
    assert len(chosen) == 25
    assert not {d["uuid"] for d in first.devices} & {d["uuid"] for d in second.devices}
    assert all(d.is_production and d.tag == TAG for d in Device.objects.filter(uuid__in=chosen))


def test_group_positional_with_chunks_then_the_rest(factory, bob, builds, offline_key):
    """fioctl waves rollout v2.0-update us-east --limit=5 / 20 / 100 / (the rest)"""
    from .conftest import make_wave

    seed(factory, groups={"us-east": 200, "us-west": 30})
    wave = make_wave(factory, bob, offline_key)
    counts = [wave_rollout(wave=wave, actor=bob, group="us-east", limit=n).count for n in (5, 20, 100)]
    assert counts == [5, 20, 100]
    assert len(staged(wave)) == 125
    rest = wave_rollout(wave=wave, actor=bob, group="us-east")
    assert rest.full_group
    # the remainder: devices of the group not already staged individually
    assert rest.count == 75
    us_east = Device.objects.filter(group__name="us-east")
    assert all(device_wave(device=d) == wave for d in us_east)
    assert not any(device_wave(device=d) for d in Device.objects.filter(group__name="us-west"))


def test_group_from_a_canary_list_then_limited_phase_lists_then_whole_group(factory, bob, builds, offline_key):
    """--group eu-emea --uuids @canary.lst; --limit 100 --uuids @phaseN.lst; --group eu-emea"""
    from .conftest import make_wave

    seed(factory, groups={"eu-emea": 400, "apac": 50})
    wave = make_wave(factory, bob, offline_key)
    eu = [str(u) for u in Device.objects.filter(group__name="eu-emea").order_by("name").values_list("uuid", flat=True)]
    apac = [str(u) for u in Device.objects.filter(group__name="apac").values_list("uuid", flat=True)]
    canary = eu[:15] + apac[:5]  # a canary list that strays outside the group
    phases = [eu[0:100], eu[100:200], eu[200:300]]

    result = wave_rollout(wave=wave, actor=bob, group="eu-emea", uuids="\n".join(canary))
    assert result.count == 15
    assert {s["uuid"]: s["reason"] for s in result.skipped} == {u: "other group" for u in apac[:5]}

    # phase 1 intersects the canary list: those 15 are already staged, 85 remain; --limit 100 takes them all
    p1 = wave_rollout(wave=wave, actor=bob, group="eu-emea", limit="100", uuids=",".join(phases[0]))
    assert p1.count == 85
    assert sum(1 for s in p1.skipped if s["reason"] == "already staged") == 15
    p2 = wave_rollout(wave=wave, actor=bob, group="eu-emea", limit="50", uuids=";".join(phases[1]))
    assert p2.count == 50 and {d["uuid"] for d in p2.devices} <= set(phases[1])
    rest = wave_rollout(wave=wave, actor=bob, group="eu-emea")
    assert rest.count == 400 - 150
    assert all(device_wave(device=d) == wave for d in Device.objects.filter(group__name="eu-emea"))


def test_fleet_wide_limit_within_a_preselected_list(factory, bob, fleet100, wave):
    """--limit 100/400/... --uuids @pre-selected.lst: every phase stays inside the list"""
    pre = [str(u) for u in Device.objects.filter(is_production=True).values_list("uuid", flat=True)[:60]]
    chosen = set()
    for n in (10, 20, 30):
        result = wave_rollout(wave=wave, actor=bob, limit=n, uuids=" ".join(pre))
        picked = {d["uuid"] for d in result.devices}
        assert result.count == n and picked <= set(pre) and not picked & chosen
        chosen |= picked
    # the list is used up: nothing left to stage
    with pytest.raises(ApplicationError, match="No device matches"):
        wave_rollout(wave=wave, actor=bob, limit=10, uuids=" ".join(pre))


def test_print_uuids_edit_and_roll_out_as_is(factory, bob, carol, fleet100, wave):
    preview = wave_rollout(wave=wave, actor=carol, limit=10, dry_run=True)
    assert preview.message == "A Wave would be rolled out to 10 devices"
    edited = [d["uuid"] for d in preview.devices][:-2]  # QA removes two devices
    result = wave_rollout(wave=wave, actor=bob, uuids="\n".join(edited))
    assert sorted(d["uuid"] for d in result.devices) == sorted(edited)
    assert sorted(rollout_device_uuids(rollout=result.rollout)) == sorted(edited)


def test_a_dry_run_changes_nothing(factory, bob, carol, fleet100, wave):
    before = (WaveDevice.objects.count(), WaveGroup.objects.count(), Rollout.objects.count())
    for kwargs in ({"limit": "5"}, {"group": "canary"}, {"uuids": str(fleet100.first().uuid)}, {"limit": "10%"}):
        result = wave_rollout(wave=wave, actor=carol, dry_run=True, **kwargs)
        assert result.rollout is None and result.count > 0
    assert (WaveDevice.objects.count(), WaveGroup.objects.count(), Rollout.objects.count()) == before


# A long list takes another path to the database (an array parameter on PostgreSQL).
@pytest.mark.parametrize("padding", [0, 150], ids=["short list", "long list"])
def test_listed_devices_that_are_not_candidates_come_back_with_the_reason(factory, bob, fleet100, wave, padding):

    test_device = Device.objects.filter(is_production=False).first()
    seed(factory, ungrouped=1, tag="staging")
    other_tag = Device.objects.get(tag="staging")
    updated = Device.objects.filter(is_production=True, group__isnull=True).first()
    Device.objects.filter(pk=updated.pk).update(target_version=42)
    already = wave_rollout(wave=wave, actor=bob, limit=1).devices[0]["uuid"]
    canary = Device.objects.filter(group__name="canary").first()
    wave_rollout(wave=wave, actor=bob, group="canary")
    unknown = str(uuid.uuid4())
    # the fleet-wide sample of one above may have picked any beta device
    good = Device.objects.filter(is_production=True, group__name="beta").exclude(uuid=already).first()

    unknowns = [str(uuid.uuid4()) for _ in range(padding)]
    listed = [unknown, str(test_device.uuid), str(other_tag.uuid), str(updated.uuid), already, str(canary.uuid), str(good.uuid), *unknowns]
    result = wave_rollout(wave=wave, actor=bob, uuids=",".join(listed))
    assert [d["uuid"] for d in result.devices] == [str(good.uuid)]
    assert {s["uuid"]: s["reason"] for s in result.skipped} == {
        **dict.fromkeys(unknowns, "unknown device"),
        unknown: "unknown device",
        str(test_device.uuid): "test device",
        str(other_tag.uuid): "other tag (staging)",
        str(updated.uuid): "already updated",
        already: "already staged",
        str(canary.uuid): "already staged",
    }


def test_a_device_of_another_factory_is_unknown(factory, other_factory, bob, fleet100, wave):
    seed(other_factory, ungrouped=1)
    stranger = Device.objects.get(factory=other_factory)
    result = wave_rollout(wave=wave, actor=bob, uuids=str(stranger.uuid), dry_run=True)
    assert result.count == 0 and result.skipped == [{"uuid": str(stranger.uuid), "reason": "unknown device"}]


def test_devices_joining_a_fully_rolled_out_group_later_get_the_wave(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    newcomer = Device.objects.filter(is_production=True, group__isnull=True).first()
    assert device_wave(device=newcomer) is None
    devices_assign_group(factory=factory, uuids=[newcomer.uuid], group=DeviceGroup.objects.get(name="canary"), actor=bob)
    newcomer.refresh_from_db()
    assert device_wave(device=newcomer) == wave
    # and a later fleet-wide sample never picks devices staged through their group
    result = wave_rollout(wave=wave, actor=bob, limit=100, dry_run=True)
    assert not {d["uuid"] for d in result.devices} & {str(d.uuid) for d in Device.objects.filter(group__name="canary")}


def test_updated_devices_and_newer_are_never_candidates(factory, bob, fleet100, wave):
    Device.objects.filter(is_production=True, group__name="beta").update(target_version=42)
    Device.objects.filter(is_production=True, group__name="canary").update(target_version=43)
    result = wave_rollout(wave=wave, actor=bob, limit=100, dry_run=True)
    assert result.count == 75
    assert wave_rollout(wave=wave, actor=bob, group="beta", dry_run=True).count == 0


def test_limit_prefers_online_devices(factory, bob, builds, offline_key):
    from .conftest import make_wave

    seed(factory, ungrouped=50, online_ratio=0.0)
    seed(factory, ungrouped=10, online_ratio=1.0)
    wave = make_wave(factory, bob, offline_key)
    result = wave_rollout(wave=wave, actor=bob, limit=10, dry_run=True)
    assert all(d["online"] for d in result.devices)
    result = wave_rollout(wave=wave, actor=bob, limit=15, dry_run=True)
    assert sum(d["online"] for d in result.devices) == 10


def test_percentages_round_up_over_the_devices_in_scope(factory, bob, fleet100, wave):
    assert wave_rollout(wave=wave, actor=bob, limit="10%", dry_run=True).count == 10
    assert wave_rollout(wave=wave, actor=bob, group="beta", limit="11%", dry_run=True).count == 3  # ceil(2.2)
    wave_rollout(wave=wave, actor=bob, group="beta", limit="50%")
    # scope is the devices in the group, staged or not: 50% of 20 again is 10 more
    assert wave_rollout(wave=wave, actor=bob, group="beta", limit="50%").count == 10
    assert wave_rollout(wave=wave, actor=bob, group="beta", limit="50%", dry_run=True).count == 0


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, "Choose what to roll out to"),
        ({"limit": "0"}, "between 1 and 10,000"),
        ({"limit": "10001"}, "between 1 and 10,000"),
        ({"limit": "-5"}, "must be a number"),
        ({"limit": "abc"}, "must be a number"),
        ({"limit": "101%"}, "between 1% and 100%"),
        ({"limit": "0%"}, "between 1% and 100%"),
        ({"uuids": "nope"}, "Not a device UUID: 'nope'"),
        ({"uuids": ",;"}, "empty"),
    ],
)
def test_bad_rollouts_are_refused_and_change_nothing(factory, bob, fleet100, wave, kwargs, error):
    with pytest.raises(ApplicationError, match=error):
        wave_rollout(wave=wave, actor=bob, **kwargs)
    assert not Rollout.objects.exists() and not WaveDevice.objects.exists()


def test_unknown_group_is_not_found(factory, bob, fleet100, wave):
    with pytest.raises(NotFound, match="Device group nope does not exist"):
        wave_rollout(wave=wave, actor=bob, group="nope")


def test_a_full_group_rollout_twice_is_a_conflict(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="canary")
    with pytest.raises(Conflict, match="already rolled out to every device in group canary"):
        wave_rollout(wave=wave, actor=bob, group="canary")


def test_ten_thousand_uuids_is_the_cap(factory, bob, fleet100, wave):
    many = ",".join(str(uuid.uuid4()) for _ in range(10_001))
    with pytest.raises(ApplicationError, match="at most 10,000"):
        wave_rollout(wave=wave, actor=bob, uuids=many)


def test_percentage_over_the_cap_is_refused(factory, bob, fleet100, wave, monkeypatch):
    monkeypatch.setattr("waves.scope.MAX_UUIDS", 30)
    with pytest.raises(ApplicationError, match="more than the 30 one rollout may stage"):
        wave_rollout(wave=wave, actor=bob, limit="50%")


def test_rollout_of_a_finished_wave_is_refused(factory, bob, fleet100, wave):
    wave_cancel(wave=wave, actor=bob)
    with pytest.raises(Conflict, match="canceled; only an active wave"):
        wave_rollout(wave=wave, actor=bob, limit=5)


@pytest.mark.parametrize("user, dry_run, allowed", [("bob", False, True), ("alice", False, True), ("carol", True, True), ("carol", False, False), ("dave", True, False), ("eve", True, False)])
def test_roles(request, factory, fleet100, wave, user, dry_run, allowed):
    actor = request.getfixturevalue(user)
    if allowed:
        assert wave_rollout(wave=wave, actor=actor, limit=1, dry_run=dry_run).count == 1
    else:
        with pytest.raises(Forbidden):
            wave_rollout(wave=wave, actor=actor, limit=1, dry_run=dry_run)
        assert not WaveDevice.objects.exists()


def test_every_rollout_is_recorded_with_its_exact_list(factory, bob, fleet100, wave):
    result = wave_rollout(wave=wave, actor=bob, limit=7)
    rollout = Rollout.objects.get()
    assert rollout.created_by == bob and rollout.limit == "7" and rollout.device_count == 7
    assert sorted(rollout_device_uuids(rollout=rollout)) == sorted(d["uuid"] for d in result.devices)
    from factory.models import AuditEntry

    entry = AuditEntry.objects.filter(action="wave.rollout").get()
    assert entry.actor == bob and entry.details["devices"] == 7


def test_a_rollout_replaces_the_tags_staging_token_in_its_own_transaction(factory, bob, fleet100, wave):
    # Gateways cache "staged or not" under this token: it must commit with the staging itself,
    # not in a step after the commit that a crash could skip.
    from factory.tuf.models import TufView

    def token():
        return TufView.objects.get(factory=factory, kind=TufView.Kind.PRODUCTION, tag=TAG).staging_token

    before = token()
    with transaction.atomic():
        wave_rollout(wave=wave, actor=bob, group="canary")
        assert token() != before


def _analyzed_rows():
    """The staged rows as the last ANALYZE counted them (pg_class.reltuples; -1 if never)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'waves_wavedevice'")
        return cursor.fetchone()[0]


@pytest.mark.postgres
def test_a_rollout_that_grows_the_wave_by_a_tenth_refreshes_the_planners_statistics(
    factory, bob, fleet100, wave, monkeypatch, django_capture_on_commit_callbacks
):
    # Without fresh statistics the planner takes a new wave for empty and the next rollout compares
    # every candidate with every staged row: seconds at 10,000 devices (bench/dashboard.py).
    monkeypatch.setattr("waves.services.STATISTICS_MIN_STAGED", 20)
    with django_capture_on_commit_callbacks(execute=True) as small:
        wave_rollout(wave=wave, actor=bob, limit=5)
    assert small == [] and _analyzed_rows() != 5  # below the minimum: nothing to do
    with django_capture_on_commit_callbacks(execute=True) as grown:
        wave_rollout(wave=wave, actor=bob, limit=40)
    assert len(grown) == 1 and _analyzed_rows() == 45
    with django_capture_on_commit_callbacks(execute=True) as dry:
        wave_rollout(wave=wave, actor=bob, limit=40, dry_run=True)
    assert dry == []
    with django_capture_on_commit_callbacks(execute=True) as tenth:
        wave_rollout(wave=wave, actor=bob, limit=20)  # 20 more on 45: over a tenth
    assert len(tenth) == 1 and _analyzed_rows() == 65
    monkeypatch.setattr("waves.services.STATISTICS_MIN_STAGED", 1)
    with django_capture_on_commit_callbacks(execute=True) as slight:
        wave_rollout(wave=wave, actor=bob, limit=3)  # 3 more on 65: under a tenth
    assert slight == [] and _analyzed_rows() == 65


def test_the_message_counts_one_device_as_one_device(factory, bob, fleet100, wave):
    one = Device.objects.filter(factory=factory, is_production=True).first()
    assert wave_rollout(wave=wave, actor=bob, uuids=str(one.uuid), dry_run=True).message == "A Wave would be rolled out to 1 device"
    assert wave_rollout(wave=wave, actor=bob, limit="2", dry_run=True).message == "A Wave would be rolled out to 2 devices"


def test_a_large_full_group_rollout_is_recorded_then_counted_after_the_commit(factory, bob, fleet100, wave, monkeypatch, django_capture_on_commit_callbacks):
    """The request counts a group only up to a cap: a larger group is staged by its group row at
    once, and its device count follows the commit, once, even when sent twice."""
    from waves import rollout_counts, tasks

    monkeypatch.setattr(rollout_counts, "INLINE_COUNT_MAX", 3)
    sent = []
    monkeypatch.setattr(rollout_counts.rollout_group_count_task, "delay", lambda rollout_id: sent.append(rollout_id))
    with django_capture_on_commit_callbacks(execute=True):
        result = wave_rollout(wave=wave, actor=bob, group="beta")
    assert result.full_group and result.count is None
    assert result.message == 'A Wave is being rolled out to every device in group "beta"; devices that join the group later get it too'
    rollout = Rollout.objects.get(pk=result.rollout.pk)
    assert rollout.device_count is None and sent == [rollout.pk]
    # Staged already, before any count.
    assert all(device_wave(device=d) == wave for d in Device.objects.filter(is_production=True, group__name="beta"))

    # The status beat sends an uncounted rollout again; counting is once-only.
    with django_capture_on_commit_callbacks(execute=True):
        tasks.wave_status_schedule()
    assert sent == [rollout.pk, rollout.pk]
    assert rollout_counts.rollout_group_count(rollout_id=rollout.pk) == 20
    assert rollout_counts.rollout_group_count(rollout_id=rollout.pk) is None
    assert Rollout.objects.get(pk=rollout.pk).device_count == 20
    # A group within the cap is counted in the request.
    monkeypatch.setattr(rollout_counts, "INLINE_COUNT_MAX", 5)
    with django_capture_on_commit_callbacks(execute=True):
        canary = wave_rollout(wave=wave, actor=bob, group="canary")
    assert canary.count == 5 and Rollout.objects.get(pk=canary.rollout.pk).device_count == 5 and len(sent) == 2


def test_a_full_group_rollout_survives_a_broker_that_is_down(factory, bob, fleet100, wave, monkeypatch, django_capture_on_commit_callbacks):
    from waves import rollout_counts

    monkeypatch.setattr(rollout_counts, "INLINE_COUNT_MAX", 3)

    def down(rollout_id):
        raise ConnectionRefusedError("the broker is down")

    monkeypatch.setattr(rollout_counts.rollout_group_count_task, "delay", down)
    with django_capture_on_commit_callbacks(execute=True):
        result = wave_rollout(wave=wave, actor=bob, group="beta")
    assert WaveGroup.objects.filter(wave=wave, group__name="beta", rollout=result.rollout).exists()
    assert Rollout.objects.get(pk=result.rollout.pk).device_count is None


def test_a_group_staged_as_a_whole_leaves_no_device_for_its_limited_rollouts(factory, bob, fleet100, wave):
    wave_rollout(wave=wave, actor=bob, group="beta")
    assert wave_rollout(wave=wave, actor=bob, group="beta", limit=5, dry_run=True).count == 0
    with pytest.raises(ApplicationError, match="No device matches this rollout"):
        wave_rollout(wave=wave, actor=bob, group="beta", limit="50%")
    # Another group's limited rollout still samples its own devices.
    assert wave_rollout(wave=wave, actor=bob, group="canary", limit=2).count == 2
