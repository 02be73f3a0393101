"""`breakwater waves plan set|show|start|approve|pause|resume` against a live server: the seed's
large-fleet example as one plan, gates on screen, approvals, roles and errors."""
import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from devices.fleet import fleet_load_for_benchmark
from factory.tuf.services.repository import ci_build_publish
from tests.factory.test_views import login
from tests.test_cli import cli, env, fast_passwords, tokens  # noqa: F401  (fixtures)
from tests.tuf_helpers import offline_targets_key
from tests.waves.plan_devices import Fleet
from waves.models import PlanDecision, PlanPhase, Rollout, RolloutPlan
from waves.plans.selectors import plan_get
from waves.plans.services import plan_evaluate
from waves.services import wave_init, wave_sign

TAG = "production"
LARGE_FLEET = [
    "name='us-east canary' group=us-east limit=5 wait=60 reporting=5 success=90% failure=10% stuck=30 unhealthy=0",
    "group=us-east limit=20 wait=60 reporting=15 success=90% failure=10% stuck=30 unhealthy=0",
    "group=us-east limit=100 wait=60 reporting=50 success=95% failure=5% stuck=30 unhealthy=0 approval four-eyes",
    "group=us-east wait=60 success=95% failure=5% stuck=30 unhealthy=0",
]


@pytest.fixture
def wave(factory, bob):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=["intel-corei7-64"], tags=[TAG])
    fleet_load_for_benchmark(factory=factory, tag=TAG, groups={"us-east": 140, "us-west": 20}, ungrouped=10, version=41)
    archive = offline_targets_key(factory=factory, actor=bob)
    wave = wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)
    return wave_sign(wave=wave, actor=bob, key_archive=archive)


def phase_args():
    args = []
    for spec in LARGE_FLEET:
        args += ["--phase", spec]
    return args


def test_the_large_fleet_example_as_one_plan_from_the_cli(cli, tokens, factory, wave, alice):
    bob = tokens["bob"]
    result = cli("waves", "plan", "set", wave.name, *phase_args(), token=bob)
    assert result.code == 0, result.err
    assert "4 phases, draft" in result.out and "breakwater waves plan start v2.0-update" in result.err
    assert "us-east canary" in result.out and "approval (not the author)" in result.out
    phases = list(PlanPhase.objects.filter(plan__wave=wave).order_by("position"))
    assert [(p.limit, p.min_success_ratio, p.advance, p.approver_must_differ) for p in phases] == [
        ("5", 0.9, "auto", False), ("20", 0.9, "auto", False), ("100", 0.95, "approval", True), ("", 0.95, "auto", False),
    ]  # fmt: skip

    started = cli("waves", "plan", "start", wave.name, token=bob)
    assert started.code == 0 and "started: it is running" in started.out
    fleet = Fleet(factory, wave)
    t0 = PlanPhase.objects.get(plan__wave=wave, position=1).started_at
    fleet.update(fleet.staged(1), t0 + timedelta(minutes=5))
    fleet.checkin_all(t0 + timedelta(minutes=20))
    plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=20))
    shown = cli("waves", "plan", "show", wave.name, token=tokens["dave"])
    assert shown.code == 0, shown.err
    assert "→1" in shown.out and "5/5" in shown.out and "~20" in shown.out
    assert "Phase 1 gates:" in shown.out and ".. wait 60 min" in shown.out and "ok success ≥ 90%: 100% (5 of 5 updated)" in shown.out
    assert "wait" in shown.out and "system" in shown.out

    as_json = json.loads(cli("waves", "plan", "show", wave.name, "--json", token=bob).out)
    assert as_json["current_phase"] == 1 and as_json["phases"][0]["evidence"]["updated"] == 5

    # run the plan to its approval gate
    for position in (1, 2):
        start = PlanPhase.objects.get(plan__wave=wave, position=position).started_at
        fleet.update(fleet.staged(position), start + timedelta(minutes=5))
        fleet.checkin_all(start + timedelta(minutes=60))
        plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=60))
    start = PlanPhase.objects.get(plan__wave=wave, position=3).started_at
    fleet.update(fleet.staged(3), start + timedelta(minutes=5))
    fleet.checkin_all(start + timedelta(minutes=60))
    assert plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=60)).outcome == "awaiting-approval"

    refused = cli("waves", "plan", "approve", wave.name, "--reason", "mine", token=bob)
    assert refused.code == 1 and "other than the plan's author bob" in refused.err
    no_reason = cli("waves", "plan", "approve", wave.name, token=tokens["alice"])
    assert no_reason.code == 2 and "required: -r/--reason" in no_reason.err
    approved = cli("waves", "plan", "approve", wave.name, "--reason", "100 devices healthy", token=tokens["alice"])
    assert approved.code == 0, approved.err
    assert "Approved. Phase 4 (every device of group us-east) is rolling out." in approved.out
    assert PlanDecision.objects.get(plan__wave=wave, kind="approve").actor == alice
    assert Rollout.objects.filter(wave=wave).last().full_group


def test_pause_resume_and_a_halt_on_screen(cli, tokens, factory, wave):
    bob = tokens["bob"]
    assert cli("waves", "plan", "set", wave.name, *phase_args()[:4], "--webhook", "https://hooks.example.com/x", token=bob).code == 0
    assert RolloutPlan.objects.get(wave=wave).webhook_url == "https://hooks.example.com/x"
    assert cli("waves", "plan", "start", wave.name, token=bob).code == 0
    paused = cli("waves", "plan", "pause", wave.name, "--reason", "freeze", token=bob)
    assert paused.code == 0 and "paused: it is paused" in paused.out
    assert cli("waves", "plan", "resume", wave.name, token=bob).code == 0
    fleet = Fleet(factory, wave)
    t0 = timezone.now()
    fleet.update(fleet.staged(1), t0, fail_rate=0.4)
    plan_evaluate(plan=plan_get(wave=wave), now=t0 + timedelta(minutes=1))
    shown = cli("waves", "plan", "show", wave.name, token=bob)
    assert shown.out.startswith("HALTED: Phase 1 (us-east canary) failed its gates: failures ≤ 10%: 40% (2 failed of 5)")
    assert "!! failures ≤ 10%" in shown.out
    need_reason = cli("waves", "plan", "resume", wave.name, token=bob)
    assert need_reason.code == 1 and "Say why" in need_reason.err
    assert cli("waves", "plan", "resume", wave.name, "-r", "known flaky units", token=bob).code == 0


def test_plan_files_templates_and_errors(cli, tokens, factory, wave, env):
    bob = tokens["bob"]
    path = env.tmp / "plan.json"
    path.write_text(json.dumps({"phases": [{"group": "us-east", "limit": "5%"}, {"group": "us-west"}], "webhook_url": "http://hooks.local/x"}))
    result = cli("waves", "plan", "set", wave.name, "--file", path, token=bob)
    assert result.code == 0, result.err
    assert RolloutPlan.objects.get(wave=wave).webhook_url == "http://hooks.local/x"

    from waves.plans.templates import plan_template_save

    plan_template_save(factory=factory, actor=None, name="per group", phases=[{"group": "{group}", "limit": 2}, {"group": "{group}"}])
    templated = cli("waves", "plan", "set", wave.name, "--template", "per group", "--groups", "us-east,us-west", token=bob)
    assert templated.code == 0 and "4 phases" in templated.out

    bad = cli("waves", "plan", "set", wave.name, "--phase", "group=us-east lmit=5", token=bob)
    assert bad.code == 2 and "unknown setting 'lmit'" in bad.err and "breakwater waves plan set --help" in bad.err
    server = cli("waves", "plan", "set", wave.name, "--phase", "group=nowhere", token=bob)
    assert server.code == 1 and "Phase 1: device group nowhere does not exist" in server.err
    assert cli("waves", "plan", "set", wave.name, token=bob).code == 2  # no phases given
    path.write_text("{not json")
    broken = cli("waves", "plan", "set", wave.name, "--file", path, token=bob)
    assert broken.code == 1 and "is not valid JSON" in broken.err
    for user in ("carol", "dave"):
        denied = cli("waves", "plan", "set", wave.name, "--phase", "group=us-east", token=tokens[user])
        assert denied.code == 1 and "may not do this" in denied.err
        assert cli("waves", "plan", "pause", wave.name, token=tokens[user]).code == 1
    missing = cli("waves", "plan", "show", "nope", token=bob)
    assert missing.code == 1 and "Wave nope does not exist" in missing.err
    assert [p.group_name for p in PlanPhase.objects.filter(plan__wave=wave).order_by("position")] == ["us-east", "us-east", "us-west", "us-west"]


def test_pace_and_maintenance_windows_from_the_cli(cli, tokens, factory, wave, env):
    bob = tokens["bob"]
    result = cli(
        "waves", "plan", "set", wave.name,
        "--phase", "group=us-east pace=10 wait=0",
        "--phase", "group=us-west pace-start=2 factor=2 ceiling=8",
        "--window", "mon-fri 00:00-00:00", "--window", "sat,sun 00:00-00:00",
        "--timezone", "Europe/Berlin", "--group-window", "us-west=sat 00:00-06:00",
        token=bob,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "pace 10 a minute" in result.out and "pace 2, x2 each minute, up to 8" in result.out
    plan = RolloutPlan.objects.get(wave=wave)
    assert plan.timezone == "Europe/Berlin" and len(plan.windows) == 2 and plan.group_windows["us-west"][0]["days"] == ["sat"]
    first, second = PlanPhase.objects.filter(plan=plan).order_by("position")
    assert first.pace_per_minute == 10 and (second.pace_start, second.pace_factor, second.pace_ceiling) == (2, 2.0, 8)

    assert cli("waves", "plan", "start", wave.name, token=bob).code == 0
    shown = cli("waves", "plan", "show", wave.name, token=bob)
    assert shown.code == 0, shown.err
    assert "mon-fri 00:00-00:00; sat,sun 00:00-00:00 (Europe/Berlin); group us-west: sat 00:00-06:00" in shown.out
    assert "Phase 1: staged 10 at 10 a minute" in shown.out and "every batch staged: staged 10 at 10 a minute" in shown.out

    # a phase file takes the same keys, and the plan's windows
    path = env.tmp / "paced.json"
    path.write_text(json.dumps({"phases": [{"group": "us-east", "pace_per_minute": 5}], "windows": ["sat 01:00-02:00"], "timezone": "UTC"}))
    cli("waves", "plan", "pause", wave.name, token=bob)
    bad = cli("waves", "plan", "set", wave.name, "--file", path, "--timezone", "Mars/Base", token=bob)
    assert bad.code == 1 and "Unknown time zone 'Mars/Base'" in bad.err
    both = cli("waves", "plan", "set", wave.name, "--phase", "group=us-east pace=5 factor=2 pace-start=1", token=bob)
    assert both.code == 1 and "not both" in both.err
    usage = cli("waves", "plan", "set", wave.name, "--phase", "group=us-east", "--group-window", "us-west", token=bob)
    assert usage.code == 2 and "GROUP=WINDOW" in usage.err
    assert RolloutPlan.objects.get(wave=wave).timezone == "Europe/Berlin"
    assert cli("waves", "plan", "set", wave.name, "--file", path, token=bob).code == 0
    plan.refresh_from_db()
    assert plan.windows == [{"days": ["sat"], "start": "01:00", "end": "02:00"}] and plan.timezone == "UTC"


def shut_window():
    """A one-hour window two days from now (UTC): shut for the next day and more."""
    day = timezone.now() + timedelta(days=2)
    return f"{day:%a}".lower() + " 01:00-02:00"


def test_a_phase_waiting_for_its_window_says_so_in_the_same_words_on_every_door(cli, tokens, factory, wave, client, bob):
    token = tokens["bob"]
    window = shut_window()
    assert cli("waves", "plan", "set", wave.name, "--phase", "group=us-east pace=10 wait=0", "--phase", "group=us-west", "--window", window, token=token).code == 0
    assert cli("waves", "plan", "start", wave.name, token=token).code == 0
    assert not Rollout.objects.filter(wave=wave).exists()
    day = window.split()[0].capitalize()
    words = f"waiting for the maintenance window: opens {day} 01:00 UTC"

    shown = cli("waves", "plan", "show", wave.name, token=token)
    assert shown.code == 0, shown.err
    assert f"Phase 1: {words}" in shown.out and "Phase 2:" not in shown.out

    # The API's answer, as `--json` prints it.
    body = json.loads(cli("waves", "plan", "show", wave.name, "--json", token=token).out)
    assert [p["window_wait"] for p in body["phases"]] == [words, None]
    assert [p["window_text"] for p in body["phases"]] == [window, window]

    login(client, bob)
    page = client.get(reverse("plan-detail", args=[wave.name])).content.decode()
    assert f"{words[0].upper()}{words[1:]}." in page and page.count(f"window: {window}") == 2
    assert "The current phase waits: the window opens" in page

    # Once its window is open (forced here), the phase rolls out and the words go.
    assert cli("waves", "plan", "force", wave.name, "-r", "change approved for today", token=token).code == 0
    body = json.loads(cli("waves", "plan", "show", wave.name, "--json", token=token).out)
    assert body["phases"][0]["window_wait"] is not None  # batches still pending outside the window
    assert Rollout.objects.filter(wave=wave).count() == 1
