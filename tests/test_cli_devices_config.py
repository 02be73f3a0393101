"""`breakwater devices config updates UUID --tag TAG` against a live server: the move, what the
device is then handed, and refusals that change nothing."""
import json

from devices.models import Device
from devices.tag_moves import device_config
from factory.models import AuditEntry
from factory.tuf.services.repository import ci_build_publish
from tests.test_cli import cli, env, fast_passwords, one_sentence_error, tokens  # noqa: F401  (fixtures)


def test_devices_config_updates_moves_a_device_to_another_tag(cli, tokens, factory):
    ci_build_publish(factory=factory, version=42, hardware_ids=["hw"], tags=["production", "devel"])
    cli_device = Device.objects.create(factory=factory, name="gw-1", tag="production", hardware_id="hw")
    uuid = str(cli_device.uuid)

    assert "may not do this" in one_sentence_error(cli("devices", "config", "updates", uuid, "--tag", "devel", token=tokens["carol"]))
    assert "not a tag of this factory" in one_sentence_error(cli("devices", "config", "updates", uuid, "--tag", "devl", token=tokens["bob"]))
    assert cli("devices", "config", "updates", uuid, token=tokens["bob"]).code == 2  # --tag is required
    cli_device.refresh_from_db()
    assert cli_device.tag == "production" and not cli_device.config_tag and not AuditEntry.objects.filter(action="device.tag").exists()

    moved = cli("devices", "config", "updates", uuid, "--tag", "devel", token=tokens["bob"])
    assert moved.code == 0, moved.err
    assert "Device gw-1 moved from tag production to devel" in moved.out
    cli_device.refresh_from_db()
    assert cli_device.tag == cli_device.config_tag == "devel"
    assert 'tags = "devel"' in device_config(device=cli_device)["z-50-fioctl.toml"]["Value"]
    # By name too, with --json; moving it to the tag it follows changes nothing but says so.
    again = json.loads(cli("devices", "config", "updates", "gw-1", "--tag", "devel", "--json", token=tokens["bob"]).out)
    assert again["tag"] == again["previous_tag"] == "devel"
    assert json.loads(cli("devices", "show", uuid, "--json", token=tokens["dave"]).out)["tag"] == "devel"
