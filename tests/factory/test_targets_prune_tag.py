"""`targets prune` and `targets tag` through the services and the REST API: what test devices
(python-tuf's client) see afterwards, what production and open waves keep, roles, the audit log,
and bad input that changes nothing."""
import pytest

from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from factory.models import AuditEntry, CiTarget, PrunedTarget
from factory.selectors import release_version_next
from factory.tuf.models import TufView
from factory.tuf.services.ci_targets import ci_targets_tag
from factory.tuf.services.repository import ci_build_publish
from waves.build_pruning import ci_targets_prune
from waves.services import wave_cancel, wave_complete, wave_init, wave_sign

from .test_api import as_user, assert_error, tokens  # noqa: F401 (fixtures)
from .test_tuf_repository import make_device
from .tuf_client import TufDevice, offline_targets_key

pytestmark = pytest.mark.django_db

HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def builds(factory):
    for version in (40, 41, 42, 43):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=["main"])


def names(factory):
    return set(CiTarget.objects.filter(factory=factory).values_list("name", flat=True))


def ci_targets_version(factory):
    return TufView.objects.get(factory=factory, kind=TufView.Kind.CI).targets_version


def released(factory, bob, *, complete, version=41, tag="main", name="w41"):
    """A wave of `version` on `tag`, signed; completed (production) or left active."""
    archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name=name, version=version, tag=tag), actor=bob, key_archive=archive)
    return wave_complete(wave=wave, actor=bob) if complete else wave


# --- prune: services ---------------------------------------------------------------------------


def test_pruning_named_targets_takes_them_from_test_devices_and_metadata_versions_rise(factory, bob, builds, tmp_path):
    device = TufDevice(make_device(factory, production=False, tag="main"), tmp_path)
    before = device.refresh()
    assert {"intel-corei7-64-lmp-40", "raspberrypi4-64-lmp-40", "intel-corei7-64-lmp-43"} <= set(before)
    versions_before = device.versions()

    result = ci_targets_prune(factory=factory, actor=bob, targets=["40", "intel-corei7-64-lmp-43"])
    assert [t["name"] for t in result.pruned] == ["intel-corei7-64-lmp-43", "intel-corei7-64-lmp-40", "raspberrypi4-64-lmp-40"]
    assert result.kept == [] and not result.dry_run

    after = device.refresh()  # python-tuf verified the re-signed metadata
    assert "intel-corei7-64-lmp-40" not in after and "raspberrypi4-64-lmp-40" not in after and "intel-corei7-64-lmp-43" not in after
    assert "raspberrypi4-64-lmp-43" in after and "intel-corei7-64-lmp-42" in after
    for role in ("targets", "snapshot", "timestamp"):
        assert device.versions()[role] > versions_before[role]

    entry = AuditEntry.objects.get(factory=factory, action="targets.prune")
    assert entry.actor_name == "bob" and entry.target == "40,43"
    assert sorted(entry.details["targets"]) == ["intel-corei7-64-lmp-40", "intel-corei7-64-lmp-43", "raspberrypi4-64-lmp-40"]
    # The numbers stay taken: CI cannot publish 43 or 40 again, and the next number is above them.
    assert PrunedTarget.objects.filter(factory=factory).count() == 3
    with pytest.raises(Conflict, match="Build 43 was pruned"):
        ci_build_publish(factory=factory, version=43, hardware_ids=["other-hw"], tags=["main"])
    with pytest.raises(Conflict, match="Build 40 was pruned"):
        ci_build_publish(factory=factory, version=40, hardware_ids=HWIDS, tags=["main"])
    assert release_version_next(factory=factory) == 44


def test_by_tag_keep_last_keeps_the_newest_builds_and_what_carries_other_tags(factory, bob, builds):
    ci_build_publish(factory=factory, version=44, hardware_ids=HWIDS[:1], tags=["main", "qa"])
    result = ci_targets_prune(factory=factory, actor=bob, by_tag=["main"], keep_last=2)
    assert sorted({t["version"] for t in result.pruned}) == [40, 41]
    kept = {t["name"]: t["reason"] for t in result.kept}
    assert kept["intel-corei7-64-lmp-44"].startswith("also tagged qa")
    assert kept["raspberrypi4-64-lmp-43"] == kept["intel-corei7-64-lmp-42"] == "one of the newest 2 builds of tag main"
    assert {n for n in names(factory)} == {f"{h}-lmp-{v}" for h in HWIDS for v in (42, 43)} | {"intel-corei7-64-lmp-44"}


def test_production_and_open_waves_keep_their_builds_and_say_why_bad_builds_go(factory, bob, builds):
    released(factory, bob, complete=True, version=41, tag="main")
    ci_build_publish(factory=factory, version=45, hardware_ids=HWIDS, tags=["main"])
    active = released(factory, bob, complete=False, version=45, tag="main", name="w45")
    from factory.builds import build_mark_bad

    build_mark_bad(factory=factory, actor=bob, version=40, reason="boot loop")

    dry = ci_targets_prune(factory=factory, actor=bob, by_tag=["main"], dry_run=True)
    kept = {t["name"]: t["reason"] for t in dry.kept}
    assert kept["intel-corei7-64-lmp-41"] == "in the production targets of tag main"
    assert kept["raspberrypi4-64-lmp-45"] == "released by active wave w45"
    assert sorted({t["version"] for t in dry.pruned}) == [40, 42, 43]  # the bad build 40 may go
    assert dry.dry_run and len(names(factory)) == 10  # nothing changed
    assert not AuditEntry.objects.filter(action="targets.prune").exists()

    done = ci_targets_prune(factory=factory, actor=bob, by_tag=["main"])
    assert done.pruned == dry.pruned and done.kept == dry.kept
    assert names(factory) == {f"{h}-lmp-{v}" for h in HWIDS for v in (41, 45)}
    # Once the wave is canceled its build may go too; production's build still stays.
    wave_cancel(wave=active, actor=bob)
    again = ci_targets_prune(factory=factory, actor=bob, targets=["45", "41"])
    assert {t["version"] for t in again.pruned} == {45}
    assert {t["reason"] for t in again.kept} == {"in the production targets of tag main"}


def test_prune_refusals_change_nothing(factory, bob, carol, dave, builds):
    before, version = names(factory), ci_targets_version(factory)
    cases = [
        (ApplicationError, dict(targets=[])),
        (ApplicationError, dict(targets=["40"], by_tag=["main"])),
        (ApplicationError, dict(targets=["40"], keep_last=1)),
        (ApplicationError, dict(by_tag=["main"], keep_last=-1)),
        (ApplicationError, dict(by_tag=["bad tag"])),
        (NotFound, dict(targets=["40", "99", "nope-lmp-1"])),
    ]
    for error, kwargs in cases:
        with pytest.raises(error):
            ci_targets_prune(factory=factory, actor=bob, **kwargs)
    for who in (carol, dave):
        with pytest.raises(Forbidden, match=r"targets\.publish"):
            ci_targets_prune(factory=factory, actor=who, targets=["40"])
        assert ci_targets_prune(factory=factory, actor=who, targets=["40"], dry_run=True).pruned  # a dry run is a read
    assert names(factory) == before and ci_targets_version(factory) == version
    with pytest.raises(NotFound) as missing:
        ci_targets_prune(factory=factory, actor=bob, targets=["99", "nope-lmp-1"])
    assert "CI build 99 does not exist" in missing.value.message and "'nope-lmp-1' is neither" in missing.value.message
    ci_targets_prune(factory=factory, actor=bob, targets=["40"])
    with pytest.raises(NotFound, match="build 40 was pruned .by bob"):
        ci_targets_prune(factory=factory, actor=bob, targets=["40"])


# --- tag: services -----------------------------------------------------------------------------


def tagged(targets, tag):
    """The names a test device on `tag` installs from: the verified CI targets carrying the tag."""
    return {name for name, t in targets.items() if tag in t["tags"]}


def test_tagging_moves_targets_between_test_devices_tags(factory, bob, builds, tmp_path):
    device = TufDevice(make_device(factory, production=False, tag="main"), tmp_path)
    assert "intel-corei7-64-lmp-42" in tagged(device.refresh(), "main") and tagged(device.refresh(), "qa") == set()
    version = device.versions()["targets"]

    changes = ci_targets_tag(factory=factory, actor=bob, refs=["42"], tags=["qa"])
    assert {(c["name"], tuple(c["before"]), tuple(c["after"])) for c in changes} == {
        (f"{h}-lmp-42", ("main",), ("qa",)) for h in HWIDS
    }
    targets = device.refresh()  # verified by python-tuf, at a higher targets version
    assert device.versions()["targets"] > version
    assert tagged(targets, "qa") == {f"{h}-lmp-42" for h in HWIDS} and "intel-corei7-64-lmp-42" not in tagged(targets, "main")

    ci_targets_tag(factory=factory, actor=bob, refs=["intel-corei7-64-lmp-42"], tags=["main"], append=True)
    assert CiTarget.objects.get(name="intel-corei7-64-lmp-42").tags == ["main", "qa"]
    targets = device.refresh()
    assert "intel-corei7-64-lmp-42" in tagged(targets, "main") and "intel-corei7-64-lmp-42" in tagged(targets, "qa")

    entries = AuditEntry.objects.filter(factory=factory, action="targets.tag").order_by("id")
    assert [e.details["append"] for e in entries] == [False, True]
    assert entries[1].details["targets"] == {"intel-corei7-64-lmp-42": {"from": ["qa"], "to": ["main", "qa"]}}

    # The same tags again change nothing: no re-signing, no audit row.
    version = ci_targets_version(factory)
    unchanged = ci_targets_tag(factory=factory, actor=bob, refs=["intel-corei7-64-lmp-42"], tags=["qa"], append=True)
    assert unchanged[0]["before"] == unchanged[0]["after"] and ci_targets_version(factory) == version
    assert entries.count() == 2


def test_tagging_never_touches_production_and_refusals_change_nothing(factory, bob, carol, dave, builds):
    released(factory, bob, complete=True, version=41, tag="main")
    production = bytes(TufView.objects.get(factory=factory, kind=TufView.Kind.PRODUCTION, tag="main").targets)
    ci_targets_tag(factory=factory, actor=bob, refs=["41"], tags=["qa"])
    assert bytes(TufView.objects.get(factory=factory, kind=TufView.Kind.PRODUCTION, tag="main").targets) == production

    before = {t.name: t.tags for t in CiTarget.objects.filter(factory=factory)}
    version = ci_targets_version(factory)
    for refs, tags in ((["42"], []), (["42"], ["a,b"]), (["42"], ["x" * 65]), ([], ["qa"]), (["42", "99"], ["qa"])):
        with pytest.raises(ApplicationError):
            ci_targets_tag(factory=factory, actor=bob, refs=refs, tags=tags)
    for who in (carol, dave):
        with pytest.raises(Forbidden):
            ci_targets_tag(factory=factory, actor=who, refs=["42"], tags=["qa"])
    assert {t.name: t.tags for t in CiTarget.objects.filter(factory=factory)} == before and ci_targets_version(factory) == version


# --- the REST API ------------------------------------------------------------------------------


def test_api_prune_dry_run_then_prune(factory, builds, as_user):
    carol = as_user("carol")
    dry = carol.post("targets/prune", {"by_tag": ["main"], "keep_last": 3, "dry_run": True})
    assert dry.status_code == 200, dry.content
    assert dry.json()["dry_run"] is True and {t["name"] for t in dry.json()["pruned"]} == {f"{h}-lmp-40" for h in HWIDS}
    assert len(dry.json()["kept"]) == 6 and dry.json()["kept"][0]["reason"] == "one of the newest 3 builds of tag main"
    assert_error(carol.post("targets/prune", {"by_tag": ["main"], "keep_last": 3}), 403, "forbidden")
    assert len(names(factory)) == 8

    bob = as_user("bob")
    done = bob.post("targets/prune", {"targets": ["40", "raspberrypi4-64-lmp-41"]})
    assert done.status_code == 200, done.content
    assert [t["name"] for t in done.json()["pruned"]] == ["raspberrypi4-64-lmp-41", "intel-corei7-64-lmp-40", "raspberrypi4-64-lmp-40"]
    assert_error(bob.post("targets/prune", {"targets": ["40"]}), 404, "not_found")
    assert_error(bob.post("targets/prune", {}), 400, "invalid")
    assert_error(bob.post("targets/prune", {"by_tag": ["main"], "keep_last": -1}), 400)
    assert_error(bob.post("targets/prune", {"targets": ["a\x00b"]}), 400)
    assert len(names(factory)) == 5


def test_api_tag_and_its_errors(factory, builds, as_user):
    bob = as_user("bob")
    response = bob.post("targets/tags", {"targets": ["43"], "tags": ["qa", "main"], "append": False})
    assert response.status_code == 200, response.content
    assert [c["after"] for c in response.json()["changed"]] == [["main", "qa"], ["main", "qa"]] and response.json()["unchanged"] == []
    again = bob.post("targets/tags", {"targets": ["intel-corei7-64-lmp-43"], "tags": ["qa"], "append": True}).json()
    assert again["changed"] == [] and again["unchanged"][0]["after"] == ["main", "qa"]
    assert_error(as_user("dave").post("targets/tags", {"targets": ["43"], "tags": ["x"]}), 403, "forbidden")
    assert_error(bob.post("targets/tags", {"targets": ["99"], "tags": ["x"]}), 404, "not_found")
    assert_error(bob.post("targets/tags", {"targets": ["43"], "tags": []}), 400)
    assert_error(bob.post("targets/tags", {"targets": ["43"], "tags": ["white space"]}), 400, "invalid")
    assert CiTarget.objects.get(name="raspberrypi4-64-lmp-43").tags == ["main", "qa"]


def test_openapi_describes_the_new_routes(client):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path in ("targets/prune", "targets/tags", "waves/{wave}/rollouts/{rollout}/devices"):
        assert f"/api/v1/factories/{{factory}}/{path}" in paths
    prune = paths["/api/v1/factories/{factory}/targets/prune"]["post"]
    assert {"200", "400", "403", "404"} <= set(prune["responses"])


def test_a_pruned_build_cannot_go_into_a_wave_even_if_read_before_it_was_pruned(factory, bob, builds):
    from factory.builds import build_check_not_bad
    from django.db import transaction

    offline_targets_key(factory=factory, actor=bob)
    ci_targets_prune(factory=factory, actor=bob, targets=["43"])
    with pytest.raises(NotFound, match="CI build 43 does not exist"):
        wave_init(factory=factory, actor=bob, name="w43", version=43, tag="main")
    # A wave init that read the build before the prune locks its rows afterwards and finds none.
    with pytest.raises(NotFound, match="Build 43 was just pruned by bob"), transaction.atomic():
        build_check_not_bad(factory=factory, version=43, lock=True)


def test_a_build_re_released_in_production_is_kept_even_when_its_own_targets_left(factory, bob, builds):
    from waves.services import wave_revert

    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name=f"w{version}", version=version, tag="main"), actor=bob, key_archive=archive)
        wave_complete(wave=wave, actor=bob)
    back = wave_revert(factory=factory, actor=bob, name="back-to-41", tag="main", to_version=41, prune=[41, 42])
    wave_complete(wave=wave_sign(wave=back, actor=bob, key_archive=archive), actor=bob)
    # Production now serves only the re-release (version 44, build 41's content).
    result = ci_targets_prune(factory=factory, actor=bob, targets=["41", "42"], dry_run=True)
    assert {t["version"] for t in result.pruned} == {42}
    assert {(t["version"], t["reason"]) for t in result.kept} == {(41, "in the production targets of tag main")}
