"""The `breakwater` CLI against a live server: configuration and login, error messages and exit
codes, JSON and tables, local signing, keys, groups, device lists, targets and tokens."""
import base64
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from devices.fleet import fleet_load_for_benchmark
from devices.models import Device, DeviceEvent, DeviceGroup, RegistrationToken
from factory.cli.main import main
from factory.models import CiTarget
from factory.services import api_token_create
from factory.tuf.keys import key_archive_read, key_archive_write, key_generate
from factory.tuf.models import TufKey, TufRoot, TufView
from factory.tuf.services.repository import ci_build_publish
from tests import aktualizr_verify
from tests.factory.test_views import login
from tests.tuf_helpers import offline_targets_key
from waves import expiry
from waves.models import SavedDeviceList, Wave, WaveDevice

TAG = "production"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def env(live_server, monkeypatch, tmp_path):
    for name in ("BREAKWATER_URL", "BREAKWATER_TOKEN", "BREAKWATER_FACTORY", "BREAKWATER_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BREAKWATER_CONFIG", str(tmp_path / "config" / "breakwater.json"))
    return SimpleNamespace(url=live_server.url, config=tmp_path / "config" / "breakwater.json", tmp=tmp_path)


@pytest.fixture
def cli(env, capsys, monkeypatch):
    """run(*argv, token=..., stdin=...) -> (code, stdout, stderr), the CLI in this process."""

    def run(*argv, token=None, url=None, stdin=None):
        if url is not False:
            monkeypatch.setenv("BREAKWATER_URL", url or env.url)
        if token:
            monkeypatch.setenv("BREAKWATER_TOKEN", token)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return SimpleNamespace(code=code, out=captured.out, err=captured.err)

    return run


@pytest.fixture
def tokens(factory, other_factory, alice, bob, carol, dave, eve):
    return {
        user.username: api_token_create(user=user, factory=user.memberships.first().factory)[1] for user in (alice, bob, carol, dave, eve)
    }


@pytest.fixture
def fleet(factory):
    ci_build_publish(factory=factory, version=41, hardware_ids=["intel-corei7-64"], tags=[TAG])
    ci_build_publish(factory=factory, version=42, hardware_ids=["intel-corei7-64"], tags=[TAG])
    fleet_load_for_benchmark(factory=factory, tag=TAG, groups={"canary": 5, "beta": 20}, ungrouped=75, test_devices=10, version=41)
    return Device.objects.filter(factory=factory)


@pytest.fixture
def keys_file(factory, bob, tmp_path):
    path = tmp_path / "targets.only.key.tgz"
    path.write_bytes(offline_targets_key(factory=factory, actor=bob))
    return path


def private_key_hex(path):
    with tarfile.open(path) as archive:
        (member,) = [m for m in archive.getmembers() if m.name.endswith(".sec")]
        return json.loads(archive.extractfile(member).read())["keyval"]["private"]


def one_sentence_error(result, code=1):
    assert result.code == code, (result.out, result.err)
    assert result.err.startswith("Error: ") and "Traceback" not in result.err
    return result.err


# --- configuration, login, and errors a person can act on ---------------------------------------


def test_login_checks_the_token_and_saves_a_private_config(cli, env, tokens):
    result = cli("login", "--url", env.url, url=False, stdin=tokens["bob"] + "\n")
    assert result.code == 0, result.err
    assert "as bob (release-manager) in factory acme" in result.out
    assert stat.S_IMODE(os.stat(env.config).st_mode) == 0o600
    saved = json.loads(env.config.read_text())
    assert saved == {"url": env.url, "token": tokens["bob"], "factory": "acme"}
    os.environ.pop("BREAKWATER_URL", None)
    whoami = cli("whoami", url=False)
    assert whoami.code == 0 and "bob" in whoami.out and "release-manager" in whoami.out
    assert cli("logout", url=False).code == 0
    assert "token" not in json.loads(env.config.read_text())
    assert "No API token is configured" in one_sentence_error(cli("waves", "list", url=False))


def test_login_with_a_bad_token_saves_nothing(cli, env, factory):
    err = one_sentence_error(cli("login", "--url", env.url, url=False, stdin="bw_00000000_nope\n"))
    assert "rejected the API token" in err and "breakwater login" in err
    assert not env.config.exists()


def test_unconfigured_cli_says_how_to_configure(cli):
    assert "breakwater login --url" in one_sentence_error(cli("status", url=False))


def test_bad_token_is_explained(cli, factory):
    err = one_sentence_error(cli("waves", "list", token="bw_deadbeef_not-a-real-token"))
    assert "rejected the API token" in err and "BREAKWATER_TOKEN" in err


def test_server_down_is_explained(cli, tokens):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = one_sentence_error(cli("waves", "list", token=tokens["bob"], url=f"http://127.0.0.1:{port}"))
    assert "Cannot connect" in err and f"127.0.0.1:{port}" in err


def test_a_url_that_is_not_breakwater_is_explained(cli, env, tokens):
    err = one_sentence_error(cli("waves", "list", "-f", "acme", token=tokens["bob"], url=env.url + "/not-here"))
    assert "not the Breakwater API" in err


def test_malformed_url_is_explained(cli, tokens):
    assert "must start with http" in one_sentence_error(cli("status", token=tokens["bob"], url="localhost:8000"))


def test_token_of_another_factory(cli, tokens, factory):
    err = one_sentence_error(cli("waves", "list", "--factory", "acme", token=tokens["eve"]))
    assert "belongs to factory globex, not acme" in err


def test_usage_errors_exit_2(cli, tokens, fleet):
    assert cli("no-such-command").code == 2
    assert cli("waves", "rollout").code == 2
    both = cli("waves", "rollout", "w", "canary", "--group", "beta", token=tokens["bob"])
    assert both.code == 2 and "not both" in both.err
    assert cli("waves", "init", "w", "forty-two", TAG, token=tokens["bob"]).code == 2
    assert cli("waves", "list", "-S", "bogus").code == 2
    assert cli("--help").code == 0


def test_a_rollout_to_nothing_is_refused_by_the_server(cli, tokens, fleet, keys_file):
    # The CLI keeps no copy of the rule: it sends what was typed and prints the server's refusal.
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=tokens["bob"]).code == 0
    nothing = cli("waves", "rollout", "v2", token=tokens["bob"])
    assert nothing.code == 1 and "Choose what to roll out to" in one_sentence_error(nothing)
    assert not WaveDevice.objects.exists()


def test_wrong_role_is_one_sentence_and_qa_may_preview(cli, tokens, fleet, keys_file):
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=tokens["bob"]).code == 0
    err = one_sentence_error(cli("waves", "rollout", "v2", "--limit", "5", token=tokens["carol"]))
    assert "Role qa may not do this" in err
    preview = cli("waves", "rollout", "v2", "--limit", "5", "--dry-run", "--print-names", token=tokens["carol"])
    assert preview.code == 0 and len(preview.out.split()) == 5 and "would be rolled out to 5 devices" in preview.err
    assert not WaveDevice.objects.exists()


# --- waves: local signing, init variants, show, list, status ------------------------------------


def test_init_signs_locally_and_only_signatures_reach_the_server(cli, tokens, fleet, keys_file, monkeypatch):
    sent = []
    from factory.cli import client as client_module

    original = client_module.Client.request

    def spy(self, method, path, **kwargs):
        sent.append(json.dumps(kwargs.get("payload")))
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(client_module.Client, "request", spy)
    result = cli("waves", "init", "-k", keys_file, "v2.0-update", 42, TAG, token=tokens["bob"])
    assert result.code == 0, result.err
    assert Wave.objects.get(name="v2.0-update").status == "active"
    secret = private_key_hex(keys_file)
    archive_b64 = base64.b64encode(keys_file.read_bytes()).decode()
    assert sent and all(secret not in body and archive_b64 not in body for body in sent)
    assert not any("key_archive" in body for body in sent) and any("signatures" in body for body in sent)
    # Both payloads signed in the same step: the libaktualizr flavour too.
    assert any("aktualizr_signatures" in body for body in sent)
    assert_aktualizr_wave_signed(Wave.objects.get(name="v2.0-update"))


def assert_aktualizr_wave_signed(wave):
    """The wave's aktualizr-flavour targets meet the aktualizr production root's threshold."""
    view = TufView.objects.get(wave=wave)
    root = json.loads(bytes(TufRoot.objects.filter(factory=wave.factory, channel="production").latest("version").aktualizr_data))["signed"]
    targets = json.loads(bytes(view.aktualizr_targets))
    aktualizr_verify._verify(root, "targets", targets["signed"], targets["signatures"], "the wave's targets")
    assert root["roles"]["targets"]["threshold"] == 2


def test_init_without_keys_then_sign(cli, tokens, fleet, keys_file):
    created = cli("waves", "init", "v2", 42, TAG, "--expires-days", 30, "--prune", "", token=tokens["bob"])
    assert created.code == 0 and "unsigned" in created.out and "breakwater waves sign v2" in created.out
    assert Wave.objects.get(name="v2").status == "unsigned"
    signed = cli("waves", "sign", "v2", "-k", keys_file, token=tokens["bob"])
    assert signed.code == 0 and "signed and active" in signed.out
    assert Wave.objects.get(name="v2").status == "active"
    assert_aktualizr_wave_signed(Wave.objects.get(name="v2"))
    assert "only an unsigned wave" in one_sentence_error(cli("waves", "sign", "v2", "-k", keys_file, token=tokens["bob"]))


def test_status_commands_print_the_expiry_warnings_the_dashboard_shows(cli, tokens, fleet, keys_file, client, dave):
    """A wave whose offline-signed targets expire within 30 days: `waves status` and `status` say
    so, as the dashboard's banner does, and the API carries the same warning."""
    cli("waves", "init", "v2", 42, TAG, "--expires-days", 10, "-k", keys_file, token=tokens["bob"])
    shown = cli("waves", "status", "v2", token=tokens["dave"])
    assert shown.code == 0, shown.err
    assert "WARNING: The targets of wave v2 (tag " in shown.out and "complete it before then" in shown.out
    fleet_status = cli("status", token=tokens["dave"])
    assert "WARNING: The targets of wave v2" in fleet_status.out
    api = json.loads(cli("waves", "status", "v2", "--json", token=tokens["dave"]).out)
    assert [w["wave"] for w in api["warnings"]] == ["v2"] and api["warnings"][0]["days_left"] in (9, 10)
    # A wave far from expiry prints no warning.
    cli("waves", "cancel", "v2", token=tokens["bob"])
    cli("waves", "init", "v3", 42, TAG, "-k", keys_file, token=tokens["bob"])
    assert "WARNING" not in cli("waves", "status", "v3", token=tokens["dave"]).out
    login(client, dave)
    assert "expiry-warnings" not in client.get(reverse("wave-detail", args=["v3"])).content.decode()


def test_the_dashboard_and_the_cli_warn_of_the_same_expiring_targets(cli, tokens, fleet, keys_file, client, dave):
    """Both read waves.expiry: a wave's page and `waves status` warn of its tag's production
    targets expiring as well as of its own; the status page and `status` of everything."""
    ci_build_publish(factory=fleet.first().factory, version=43, hardware_ids=["intel-corei7-64"], tags=[TAG])
    cli("waves", "init", "v2", 42, TAG, "--expires-days", 10, "-k", keys_file, token=tokens["bob"])
    cli("waves", "complete", "v2", token=tokens["bob"])
    cli("waves", "init", "v3", 43, TAG, "--expires-days", 20, "-k", keys_file, token=tokens["bob"])
    v3 = Wave.objects.get(name="v3")
    warnings = [w["message"] for w in expiry.wave_expiring_targets(wave=v3)]
    assert len(warnings) == 2 and warnings[0].startswith("The production targets of tag production (version 42) expire in")
    login(client, dave)
    page = client.get(reverse("wave-detail", args=["v3"])).content.decode()
    shown = cli("waves", "status", "v3", token=tokens["dave"]).out
    for message in warnings:
        assert f"WARNING: {message}" in shown and escape(message) in page
    everything = [w["message"] for w in expiry.expiring_targets(factory=v3.factory)]
    status_page = client.get(reverse("factory-status")).content.decode()
    status = cli("status", token=tokens["dave"]).out
    assert everything == warnings
    for message in everything:
        assert f"WARNING: {message}" in status and escape(message) in status_page


def test_init_with_an_untrusted_key_creates_nothing(cli, tokens, fleet, tmp_path):
    stranger = tmp_path / "stranger.tgz"
    stranger.write_bytes(key_archive_write([("targets", key_generate())]))
    err = one_sentence_error(cli("waves", "init", "-k", stranger, "v2", 42, TAG, token=tokens["bob"]))
    assert "not trusted by the production root" in err
    assert not Wave.objects.exists()
    assert "does not exist" in one_sentence_error(cli("waves", "init", "-k", tmp_path / "missing.tgz", "v2", 42, TAG, token=tokens["bob"]))
    garbage = tmp_path / "garbage.tgz"
    garbage.write_bytes(b"not an archive")
    assert "Cannot use the keys archive" in one_sentence_error(cli("waves", "init", "-k", garbage, "v2", 42, TAG, token=tokens["bob"]))
    assert not Wave.objects.exists()


def test_init_dry_run_prints_the_wave_and_creates_nothing(cli, tokens, fleet, keys_file):
    result = cli("waves", "init", "-d", "v2", 42, TAG, token=tokens["bob"])
    assert result.code == 0
    assert "intel-corei7-64-lmp-42" in json.loads(result.out)["targets"]["signed"]["targets"]
    assert not Wave.objects.exists()


def test_list_show_status_tables_and_json(cli, tokens, fleet, keys_file):
    bob = tokens["bob"]
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=bob).code == 0
    assert cli("waves", "rollout", "v2", "canary", token=bob).code == 0
    assert cli("waves", "rollout", "v2", "--limit", "3", token=bob).code == 0
    listing = cli("waves", "list", token=tokens["dave"])
    assert listing.out.splitlines()[0].split() == ["NAME", "VERSION", "TAG", "STATUS", "CREATED", "AT", "FINISHED", "AT"]
    assert listing.out.splitlines()[2].split()[:4] == ["v2", "42", TAG, "active"]
    assert json.loads(cli("waves", "list", "--json", token=bob).out)["items"][0]["name"] == "v2"
    shown = cli("waves", "show", "v2", "-s", token=bob)
    assert "group canary (whole group)" in shown.out and "limit 3" in shown.out and "intel-corei7-64-lmp-42" in shown.out
    status = cli("waves", "status", "v2", "--offline-threshold", "2", token=bob)
    assert "GROUP" in status.out and "FAILED" in status.out and "## Device Group: canary" in status.out
    as_json = json.loads(cli("waves", "status", "--json", token=bob).out)
    assert as_json[0]["name"] == "v2" and as_json[0]["totals"]["scheduled"] == 8
    factory_status = json.loads(cli("status", "--json", token=bob).out)
    assert factory_status["active_wave_status"][0]["name"] == "v2"
    assert "does not exist" in one_sentence_error(cli("waves", "show", "nope", token=bob))


def test_complete_without_a_name_needs_exactly_one_active_wave(cli, tokens, fleet):
    assert "no active wave" in one_sentence_error(cli("waves", "complete", token=tokens["bob"]))


def test_uuids_from_stdin_and_a_saved_list(cli, tokens, fleet, keys_file, env):
    bob = tokens["bob"]
    picks = [str(d.uuid) for d in fleet.filter(is_production=True, group__isnull=True).order_by("name")[:4]]
    listed = env.tmp / "picks.lst"
    listed.write_text(";".join(picks))
    created = cli("device-lists", "create", "picks", "--uuids", f"@{listed}", token=tokens["carol"])
    assert created.code == 0 and "4 devices" in created.out
    shown = cli("device-lists", "show", "picks", token=tokens["dave"])
    assert shown.out.split() == picks
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=bob).code == 0
    rolled = cli("waves", "rollout", "v2", "--uuids", "@-", "--print-uuids", token=bob, stdin=shown.out)
    assert rolled.code == 0 and sorted(rolled.out.split()) == sorted(picks)
    assert {str(u) for u in WaveDevice.objects.values_list("device__uuid", flat=True)} == set(picks)
    assert "does not exist" in one_sentence_error(cli("waves", "rollout", "v2", "--uuids", "@/no/such/file.lst", token=bob))
    nobody = cli("waves", "rollout", "v2", "--uuids", f"{picks[0]},00000000-0000-4000-8000-00000000abcd", token=bob)
    assert nobody.code == 1 and "nothing was staged" in nobody.err
    assert f"{picks[0]}  already staged" in nobody.err and "00000000-0000-4000-8000-00000000abcd  unknown device" in nobody.err
    updated = cli("device-lists", "update", "picks", "--uuids", picks[0], "--rename", "one", token=tokens["carol"])
    assert updated.code == 0 and SavedDeviceList.objects.get().name == "one"
    assert cli("device-lists", "delete", "one", token=tokens["carol"]).code == 0
    assert not SavedDeviceList.objects.exists()


def test_a_list_or_group_name_with_line_breaks_is_refused_and_nothing_is_saved(cli, tokens, factory):
    uuid = "00000000-0000-4000-8000-00000000abcd"
    refused = one_sentence_error(cli("device-lists", "create", 'x"; filename=evil.sh\r\nX: 1', "--uuids", uuid, token=tokens["carol"]))
    assert "A device list name may only hold printable characters" in refused
    assert "printable" in one_sentence_error(cli("config", "device-group", "create", "canary\x1b[2J", token=tokens["bob"]))
    assert not SavedDeviceList.objects.exists() and not DeviceGroup.objects.filter(factory=factory).exists()


def test_device_text_in_a_table_cannot_drive_the_terminal_or_forge_a_row(cli, tokens, fleet, factory):
    device = fleet.filter(is_production=True).order_by("name").first()
    DeviceEvent.objects.create(
        factory=factory, device=device, event_type="install-completed", target_version=42, success=False,
        detail="disk\x1b[2J\r\nforged  row", reported_at=timezone.now(),
    )
    shown = cli("devices", "events", device.uuid, token=tokens["dave"])
    assert shown.code == 0 and "\x1b" not in shown.out and "\r" not in shown.out
    assert len(shown.out.splitlines()) == 3 and "disk\\x1b[2J\\r\\nforged  row" in shown.out


# --- devices and groups -------------------------------------------------------------------------


def test_devices_list_show_and_filters(cli, tokens, fleet):
    dave = tokens["dave"]
    listing = cli("devices", "list", "--by-group", "canary", token=dave)
    assert listing.code == 0 and len(listing.out.splitlines()) == 2 + 5
    assert listing.out.splitlines()[0].split()[:3] == ["NAME", "UUID", "GROUP"]
    test_devices = json.loads(cli("devices", "list", "--only-non-prod", "--json", token=dave).out)
    assert test_devices["total"] == 10 and not any(d["production"] for d in test_devices["items"])
    paged = cli("devices", "list", "-n", "10", token=dave)
    assert "devices 1-10 of 110: more on the next page: --page 2" in paged.err
    assert len(paged.out.splitlines()) == 2 + 10  # the hint is on stderr: a pipe reads the table only
    # fioctl's default page: 500 devices, so this fleet fits on one page and no hint is printed.
    whole = cli("devices", "list", token=dave)
    assert len(whole.out.splitlines()) == 2 + 110 and "next page" not in whole.err
    device = fleet.get(name="beta-0002")
    shown = cli("devices", "show", str(device.uuid), token=dave)
    assert "beta-0002" in shown.out and "Group:" in shown.out
    assert "does not exist" in one_sentence_error(cli("devices", "show", "00000000-0000-0000-0000-000000000000", token=dave))


def test_devices_list_name_pattern_columns_and_sort(cli, tokens, fleet):
    dave = tokens["dave"]
    beta = cli("devices", "list", "beta-00?2", "--columns", "name,group,version", token=dave)
    assert beta.code == 0, beta.err
    assert beta.out.splitlines()[0].split() == ["NAME", "GROUP", "VERSION"]
    rows = [line.split() for line in beta.out.splitlines()[2:]]
    assert rows == [["beta-0002", "beta", "41"], ["beta-0012", "beta", "41"]]
    # * matches the whole name, plain text any part of it, and regex characters are literal.
    assert len(cli("devices", "list", "canary-*", token=dave).out.splitlines()) == 2 + 5
    assert len(cli("devices", "list", "nary-000", token=dave).out.splitlines()) == 2 + 5
    assert len(cli("devices", "list", "canary.*", token=dave).out.splitlines()) == 2
    last = json.loads(cli("devices", "list", "--by-group", "beta", "--sort=-name", "--json", token=dave).out)
    assert [d["name"] for d in last["items"]][:2] == ["beta-0020", "beta-0019"]
    assert "Cannot sort by 'colour'" in one_sentence_error(cli("devices", "list", "--sort", "colour", token=dave))
    assert "Unknown column colour" in one_sentence_error(cli("devices", "list", "--columns", "name,colour", token=dave), code=2)


def test_set_group_in_batches_with_progress_and_unknown_uuids(cli, tokens, factory, env, monkeypatch):
    fleet_load_for_benchmark(factory=factory, tag=TAG, ungrouped=2300, version=41)
    cli("config", "device-group", "create", "us-east", "East coast", token=tokens["bob"])
    uuids = [str(u) for u in Device.objects.filter(factory=factory).values_list("uuid", flat=True)]
    unknown = "00000000-0000-4000-8000-000000000001"
    listing = env.tmp / "east.lst"
    listing.write_text("\n".join(uuids + [unknown]))
    result = cli("devices", "set-group", "us-east", "--uuids", f"@{listing}", token=tokens["bob"])
    assert result.code == 0, result.err
    assert "2,300 devices are now in group us-east" in result.out
    assert "1,000 of 2,301 devices done" in result.err and "2,301 of 2,301 devices done" in result.err
    assert unknown in result.err
    assert Device.objects.filter(group__name="us-east").count() == 2300
    bad = cli("devices", "set-group", "us-east", uuids[0], "not-a-uuid", token=tokens["bob"])
    assert "not-a-uuid" in one_sentence_error(bad)
    moved = cli("devices", "unset-group", uuids[0], uuids[1], token=tokens["bob"])
    assert moved.code == 0 and Device.objects.filter(group__isnull=True).count() == 2


def test_device_group_commands(cli, tokens, fleet):
    bob = tokens["bob"]
    assert cli("config", "device-group", "create", "apac", token=bob).code == 0
    listing = cli("config", "device-group", "list", token=tokens["dave"])
    assert [line.split()[0] for line in listing.out.splitlines()[2:]] == ["apac", "beta", "canary"]
    assert cli("config", "device-group", "rename", "apac", "apac-1", token=bob).code == 0
    assert "already exists" in one_sentence_error(cli("config", "device-group", "create", "canary", token=bob))
    assert cli("config", "device-group", "delete", "apac-1", token=bob).code == 0
    assert sorted(DeviceGroup.objects.values_list("name", flat=True)) == ["beta", "canary"]
    assert "may not do this" in one_sentence_error(cli("config", "device-group", "delete", "beta", token=tokens["carol"]))


# --- targets, keys, registration tokens, audit --------------------------------------------------


def test_targets_publish_and_list(cli, tokens, factory):
    sha = "cd" * 32
    published = cli("targets", "publish", "7", "-H", "intel-corei7-64,raspberrypi4-64", "-T", TAG, "--target", f"raspberrypi4-64={sha}:99", token=tokens["bob"])
    assert published.code == 0 and "raspberrypi4-64-lmp-7" in published.out
    assert CiTarget.objects.get(name="raspberrypi4-64-lmp-7").sha256 == sha
    listing = cli("targets", "list", "--by-tag", TAG, token=tokens["dave"])
    assert listing.out.splitlines()[2].split()[:2] == ["7", TAG]
    assert cli("targets", "publish", "8", "-H", "hw", "-T", TAG, "--target", "hw=nothex:1").code == 2
    assert "already has a target" in one_sentence_error(cli("targets", "publish", "7", "-H", "intel-corei7-64", "-T", TAG, token=tokens["bob"]))
    empty = cli("targets", "list", "--production", "--by-tag", TAG, token=tokens["dave"])
    assert "no production targets yet" in empty.out


def test_keys_rotate_offline_key_keeps_the_private_key_local(cli, tokens, factory, env):
    out_file = env.tmp / "my-targets.tgz"
    result = cli("keys", "rotate-offline-key", "--role", "targets", "-k", out_file, token=tokens["bob"])
    assert result.code == 0, result.err
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    ((role, signer),) = key_archive_read(out_file.read_bytes())
    key = TufKey.objects.get(factory=factory, keyid=signer.public_key.keyid)
    assert role == "targets" and not key.online and key.private_encrypted is None
    assert "applied" in result.out
    root = json.loads(cli("keys", "show-root", "--prod", token=tokens["dave"]).out)
    assert signer.public_key.keyid in root["signed"]["roles"]["targets"]["keyids"]
    assert root["signed"]["roles"]["targets"]["threshold"] == 2
    listing = cli("keys", "list", token=tokens["dave"])
    assert signer.public_key.keyid in listing.out and "offline" in listing.out
    again = one_sentence_error(cli("keys", "rotate-offline-key", "-k", out_file, token=tokens["bob"]))
    assert "already exists" in again
    denied = one_sentence_error(cli("keys", "rotate-offline-key", "-k", env.tmp / "qa.tgz", token=tokens["carol"]))
    assert "may not do this" in denied and "can be deleted" in denied


def test_retire_offline_key_has_the_remaining_key_re_sign_production_targets(cli, tokens, factory, fleet, keys_file, env):
    bob = tokens["bob"]
    ((_, leaving),) = key_archive_read(keys_file.read_bytes())
    leaving_id = leaving.public_key.keyid
    assert "only offline targets key" in one_sentence_error(cli("keys", "retire-offline-key", leaving_id, token=bob))
    staying_file = env.tmp / "staying.tgz"
    assert cli("keys", "rotate-offline-key", "-k", staying_file, token=bob).code == 0
    # Production targets signed by the leaving key alone: a completed wave.
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=bob).code == 0
    assert cli("waves", "complete", "v2", token=bob).code == 0

    assert "may not do this" in one_sentence_error(cli("keys", "retire-offline-key", leaving_id, token=tokens["carol"]))
    assert "not a key id" in one_sentence_error(cli("keys", "retire-offline-key", "not-a-key!", token=bob))
    assert "not an offline key of this factory" in one_sentence_error(cli("keys", "retire-offline-key", "0" * 64, token=bob))
    assert not TufKey.objects.filter(keyid=leaving_id, retired_at__isnull=False).exists()

    # Without the remaining key's archive the change waits, naming what it needs...
    pending = cli("keys", "retire-offline-key", leaving_id[:8], token=bob)
    assert pending.code == 0 and "waiting for offline signatures" in pending.out, pending.err
    assert f"production-targets:{TAG}" in pending.out and "targets key signature" in pending.out
    assert cli("keys", "abandon-change", token=bob).code == 0
    # ...and with it, it is applied at once.
    retired = cli("keys", "retire-offline-key", leaving_id[:12], "-K", staying_file, token=bob)
    assert retired.code == 0 and f"Offline key {leaving_id} is retired" in retired.out and "applied" in retired.out, retired.err
    listing = {k["keyid"]: k for k in json.loads(cli("keys", "list", "--json", token=tokens["dave"]).out)["keys"]}
    assert listing[leaving_id]["retired_at"] and not listing[[k for k in listing if k != leaving_id and not listing[k]["online"] and listing[k]["role"] == "targets"][0]]["retired_at"]
    root = json.loads(cli("keys", "show-root", "--prod", token=tokens["dave"]).out)["signed"]
    assert leaving_id not in root["roles"]["targets"]["keyids"]
    # The retired key signs no more waves; the remaining one does.
    ci_build_publish(factory=factory, version=43, hardware_ids=["intel-corei7-64"], tags=[TAG])
    refused = one_sentence_error(cli("waves", "init", "-k", keys_file, "v3", 43, TAG, token=bob))
    assert "not trusted by the production root" in refused and not Wave.objects.filter(name="v3").exists()
    assert cli("waves", "init", "-k", staying_file, "v3", 43, TAG, token=bob).code == 0


def test_registration_tokens(cli, tokens, fleet):
    created = cli("registration-tokens", "create", "--tag", TAG, "--group", "canary", "--production", "--max-uses", "10", token=tokens["alice"])
    assert created.code == 0, created.err
    token = RegistrationToken.objects.get()
    assert len(created.out.split()) == 1 and token.prefix in created.out and "shown only once" in created.err
    assert token.allow_production and token.group.name == "canary" and token.max_uses == 10
    listing = cli("registration-tokens", "list", token=tokens["alice"])
    assert token.prefix in listing.out
    assert cli("registration-tokens", "revoke", token.prefix, token=tokens["alice"]).code == 0
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert "may not do this" in one_sentence_error(cli("registration-tokens", "create", "--tag", TAG, token=tokens["bob"]))


def test_audit_shows_who_did_what(cli, tokens, fleet):
    cli("config", "device-group", "create", "apac", token=tokens["bob"])
    audit = cli("audit", "--action", "group.", token=tokens["dave"])
    assert audit.out.splitlines()[2].split()[3:6] == ["bob", "group.create", "apac"]


def test_the_installed_console_script(env, tokens, live_server):
    script = Path(sys.executable).with_name("breakwater")
    if not script.exists():
        pytest.skip("the breakwater console script is not installed in this environment")
    environ = {**os.environ, "BREAKWATER_URL": live_server.url, "BREAKWATER_TOKEN": tokens["dave"], "BREAKWATER_CONFIG": str(env.config)}
    done = subprocess.run([str(script), "whoami"], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "dave" in done.stdout and "support" in done.stdout
    failed = subprocess.run([str(script), "waves", "show", "nope"], env=environ, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and failed.stderr.startswith("Error: ") and "Traceback" not in failed.stderr


def test_dry_run_print_uuids_edit_and_roll_out_exactly_that_list(cli, tokens, factory, keys_file, env):
    """breakwater waves rollout W --limit 1000 --dry-run --print-uuids > pre.lst; edit; --uuids @pre.lst"""
    ci_build_publish(factory=factory, version=42, hardware_ids=["intel-corei7-64"], tags=[TAG])
    fleet_load_for_benchmark(factory=factory, tag=TAG, groups={"eu": 600}, ungrouped=600, version=41)
    bob = tokens["bob"]
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=bob).code == 0
    preview = cli("waves", "rollout", "v2", "--limit", "1000", "--dry-run", "--print-uuids", token=bob)
    assert preview.code == 0 and preview.err.strip() == "A Wave would be rolled out to 1000 devices"
    listed = preview.out.split()
    assert len(listed) == len(set(listed)) == 1000 and not WaveDevice.objects.exists()
    others = [str(u) for u in Device.objects.filter(factory=factory).exclude(uuid__in=listed).values_list("uuid", flat=True)[:20]]
    edited = listed[100:] + others
    (env.tmp / "pre.lst").write_text("\n".join(edited) + "\n")
    result = cli("waves", "rollout", "v2", "--uuids", f"@{env.tmp / 'pre.lst'}", token=bob)
    assert result.code == 0 and result.out.strip() == "A Wave is being rolled out to 920 devices" and result.err == ""
    assert {str(u) for u in WaveDevice.objects.values_list("device__uuid", flat=True)} == set(edited)


def test_root_key_goes_offline_and_root_changes_are_signed_locally(cli, tokens, factory, env):
    bob = tokens["bob"]
    root_file = env.tmp / "root.tgz"
    rotated = cli("keys", "rotate-offline-key", "--role", "root", "-k", root_file, token=bob)
    assert rotated.code == 0 and "applied" in rotated.out, rotated.err
    listing = json.loads(cli("keys", "list", "--json", token=bob).out)
    assert listing["root_online"] is False and listing["root_version"] == 2
    # With the root key offline, a renewal waits for its signature...
    pending = cli("keys", "renew-root", token=bob)
    assert pending.code == 0 and "waiting for offline signatures" in pending.out and "ci-root" in pending.out
    assert "waiting for offline signatures" in cli("keys", "list", token=tokens["dave"]).out
    stranger = env.tmp / "stranger.tgz"
    stranger.write_bytes(key_archive_write([("root", key_generate())]))
    assert "None of the keys" in one_sentence_error(cli("keys", "sign-change", "-k", stranger, token=bob))
    signed = cli("keys", "sign-change", "-k", root_file, token=bob)
    assert signed.code == 0 and "applied" in signed.out
    assert json.loads(cli("keys", "show-root", "--prod", token=bob).out)["signed"]["version"] == 3
    # ...or is abandoned.
    assert cli("keys", "renew-root", token=bob).code == 0
    assert cli("keys", "abandon-change", token=bob).code == 0
    assert "No key change is waiting" in one_sentence_error(cli("keys", "sign-change", "-k", root_file, token=bob))
    renewed = cli("keys", "renew-root", "-k", root_file, token=bob)
    assert renewed.code == 0 and "applied" in renewed.out
