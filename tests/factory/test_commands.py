"""The management commands that demos, tests and scripts rely on."""
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from devices.models import Device
from factory.models import AuditEntry, CiTarget, Factory, Membership
from factory.services import api_token_authenticate
from factory.tuf.models import TufKey
from factory.tuf.selectors import production_targets_version
from waves.models import Wave


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_factory(db):
    assert "Created factory acme" in run("create_factory", "acme")
    assert Factory.objects.filter(name="acme").exists()
    with pytest.raises(CommandError, match="already exists"):
        run("create_factory", "acme")
    with pytest.raises(CommandError, match="may only contain"):
        run("create_factory", "bad name")


def test_create_user_with_and_without_password(factory):
    run("create_user", "rita", "--factory", "acme", "--role", "release-manager", "--password", "rita-pass-1")
    assert get_user_model().objects.get(username="rita").check_password("rita-pass-1")
    out = run("create_user", "quinn", "--factory", "acme", "--role", "qa")
    password = out.split("Password: ")[1].strip()
    assert get_user_model().objects.get(username="quinn").check_password(password)
    assert Membership.objects.get(user__username="quinn").role == "qa"
    with pytest.raises(CommandError):
        run("create_user", "x", "--factory", "acme", "--role", "owner")
    with pytest.raises(CommandError, match="Factory nope does not exist"):
        run("create_user", "x", "--factory", "nope", "--role", "qa")


def test_create_api_token_prints_a_working_token(factory, bob):
    token = run("create_api_token", "bob", "--factory", "acme").strip()
    assert api_token_authenticate(token).user == bob
    with pytest.raises(CommandError, match="user nobody does not exist"):
        run("create_api_token", "nobody", "--factory", "acme")


def test_publish_target(factory):
    out = run("publish_target", "--factory", "acme", "--version", "42", "--hardware-id", "rpi4", "--hardware-id", "imx8", "--tag", "production")
    assert "Published imx8-lmp-42" in out and "Published rpi4-lmp-42" in out
    target = CiTarget.objects.get(name="rpi4-lmp-42")
    assert target.version == 42 and target.custom["tags"] == ["production"] and target.custom["hardwareIds"] == ["rpi4"]
    assert len(target.sha256) == 64 and target.length > 0
    with pytest.raises(CommandError, match="already has a target"):
        run("publish_target", "--factory", "acme", "--version", "42", "--hardware-id", "rpi4")
    assert AuditEntry.objects.filter(action="targets.publish").count() == 1


def test_seed_fleet(factory):
    out = run("seed_fleet", "--factory", "acme", "--tag", "production", "--group", "canary=5", "--group", "beta=7", "--ungrouped", "3", "--test-devices", "4", "--version", "41")
    assert "Registered 15 production and 4 test devices" in out
    assert Device.objects.filter(group__name="canary", is_production=True).count() == 5
    assert Device.objects.filter(group__isnull=True, is_production=True).count() == 3
    assert Device.objects.filter(is_production=False).count() == 4
    assert set(Device.objects.values_list("target_version", flat=True)) == {41}
    with pytest.raises(CommandError):
        run("seed_fleet", "--factory", "acme", "--tag", "production", "--group", "canary")


def snapshot():
    return {
        "factories": list(Factory.objects.values_list("name", flat=True)),
        "members": sorted(Membership.objects.values_list("user__username", "role")),
        "targets": sorted(CiTarget.objects.values_list("name", "sha256")),
        "devices": Device.objects.count(),
        "groups": sorted(Device.objects.values_list("group__name", flat=True).distinct(), key=str),
        "waves": sorted(Wave.objects.values_list("name", "status", "version")),
        "offline_keys": TufKey.objects.filter(role="targets", online=False).count(),
    }


def test_demo_twice_gives_the_same_data(db):
    out = run("demo")
    assert "release-demo-pass" in out
    first = snapshot()
    run("demo")
    assert snapshot() == first
    assert first["devices"] == 1050
    assert Device.objects.filter(is_production=True, group__name="canary").count() == 5
    assert Device.objects.filter(is_production=True, group__name="beta").count() == 20
    assert Device.objects.filter(is_production=False).count() == 50
    # production targets at 41 for tag production, reached through a signed, completed wave
    assert production_targets_version(factory=Factory.objects.get(name="demo"), tag="production") == 41
    assert first["waves"] == [("initial-41", "complete", 41)] and first["offline_keys"] == 1
