"""Every API endpoint, for every role and for a token of another factory.

The endpoints come from the URL configuration and the OpenAPI schema (which must agree); each
needs an entry in CASES saying which action it takes, so a new endpoint fails here until its
authorization is stated. For each principal the request is made against real objects and then
rolled back: roles allowed the action (factory.auth.PERMISSIONS) must succeed, every other role
must get 403, eve (another factory) 403, and no token 401.
"""
import base64
import functools
import json
import re
from factory import ostree
from django.conf import settings
from pathlib import Path
import tempfile
import subprocess
from urllib.parse import urlencode

import pytest
from django.db import transaction
from django.test import Client, override_settings
from django.utils import timezone
from django.urls import URLPattern, URLResolver, get_resolver

from devices.fleet import fleet_load_for_benchmark
from devices.checkins import events_write
from devices.models import Device
from devices.services import registration_token_create
from factory.project.api import api
from factory.auth import PERMISSIONS
from factory.builds import build_bad, build_mark_bad
from factory.models import Role
from factory.services import api_token_create, user_create
from factory.tuf import selectors as tuf_selectors
from factory.tuf.keys import key_generate, payload_sign
from factory.tuf.services import root_changes
from factory.tuf.services.repository import ci_build_publish, factory_create
from tests.tuf_helpers import offline_targets_key
from waves import devicelists
from waves.plans import selectors as plan_selectors
from waves.plans import services as plan_services
from waves.plans import templates
from waves.services import wave_complete, wave_init, wave_rollout, wave_sign

API = "/api/v1"
ANY_TOKEN = "any valid token"
PUBLIC = {"", "openapi.json", "docs"}
ROLES = {"alice": Role.ADMIN, "bob": Role.RELEASE_MANAGER, "carol": Role.QA, "dave": Role.SUPPORT}


def new_public_key():
    return {k: v for k, v in key_generate().public_key.to_dict().items() if k in ("keytype", "scheme", "keyval")}


def pending_root_change(world):
    """A new root key waiting for its own signature (the server cannot sign for it)."""
    signer = key_generate()
    public = {k: v for k, v in signer.public_key.to_dict().items() if k in ("keytype", "scheme", "keyval")}
    change = root_changes.offline_key_add(factory=world["factory"], actor=world["bob"], role="root", public_key=public)
    world["change_signatures"] = [
        {"document": p["document"], **payload_sign(signer, base64.b64decode(p["payload"]))}
        for p in tuf_selectors.root_change_payloads(change=change)
        if signer.public_key.keyid in p["keyids"]
    ]


def second_offline_key(world):
    """A second offline targets key, which can be retired at once (nothing relies on it alone)."""
    change = root_changes.offline_key_add(factory=world["factory"], actor=world["bob"], role="targets", public_key=new_public_key())
    world["retire_keyid"] = change.details["keyid"]


PHASES = [{"limit": 2, "advance": "approval", "approver_must_differ": False, "wait_minutes": 0, "min_reporting": 0, "min_success_ratio": 0}, {"group": "canary"}]


def draft_plan(world):
    plan_services.plan_set(wave=world["wave"], actor=world["bob"], phases=PHASES)


def running_plan(world):
    draft_plan(world)
    plan_services.plan_start(wave=world["wave"], actor=world["bob"])


def paused_plan(world):
    running_plan(world)
    plan_services.plan_pause(wave=world["wave"], actor=world["bob"])


def waiting_plan(world):
    plan_services.plan_set(wave=world["wave"], actor=world["bob"], phases=[{"limit": 2, "wait_minutes": 60}, {"group": "canary"}])
    plan_services.plan_start(wave=world["wave"], actor=world["bob"])


def failed_device(world):
    """The device staged in beta reported that the wave's build failed to boot."""
    wave = world["wave"]
    device = Device.objects.get(wave_stagings__wave=wave)
    events_write(
        [
            {
                "factory_id": wave.factory_id, "device_id": device.pk, "event_type": "install-completed", "target_name": "hw-lmp-42",
                "target_version": 42, "success": False, "detail": "boot loop", "reported_at": timezone.now().isoformat(),
            }
        ]
    )  # fmt: skip


def plan_awaiting_approval(world):
    running_plan(world)
    plan_services.plan_evaluate(plan=plan_selectors.plan_get(wave=world["wave"]))
    phase = plan_selectors.current_phase(plan_selectors.plan_phases(plan_selectors.plan_get(wave=world["wave"])))
    assert phase.status == "awaiting-approval", phase.status


def template(world):
    templates.plan_template_save(factory=world["factory"], actor=world["bob"], name="t1", phases=PHASES)


def bad_build(world):
    if build_bad(factory=world["factory"], version=41) is None:
        build_mark_bad(factory=world["factory"], actor=world["bob"], version=41, reason="boot loop")


def staging_plan(world):
    """A draft plan on wave s43 (tag staging), whose production build is 41: a rollback can be prepared."""
    archive = base64.b64decode(world["archive_b64"])
    bob, factory = world["bob"], world["factory"]
    first = wave_init(factory=factory, actor=bob, name="s41", version=41, tag="staging", source_tag="production")
    wave_complete(wave=wave_sign(wave=first, actor=bob, key_archive=archive), actor=bob)
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="s43", version=43, tag="staging"), actor=bob, key_archive=archive)
    plan_services.plan_set(wave=wave, actor=bob, phases=PHASES)


def unsigned_wave(world):
    wave_init(factory=world["factory"], actor=world["bob"], name="w-unsigned", version=43, tag="staging")


# operationId -> list of (action, request); action None: any valid token of any factory.
# A request is {"path": {param: value or world key}, "query": {...}, "body": {...}, "setup": fn}.
def ostree_upload(world):
    """(query, body) publishing a one-file OSTree commit; the factory's repository in a temp dir."""
    if not ostree.available():
        pytest.skip("the ostree CLI is not installed")
    if "ostree" not in world:
        folder = Path(tempfile.mkdtemp(prefix="bw-authz-ostree-"))
        settings.OSTREE_DIR = folder / "served"
        (folder / "repo").mkdir()
        (folder / "tree").mkdir()
        (folder / "tree" / "file").write_text("x")
        run = lambda *a: subprocess.run(["ostree", f"--repo={folder / 'repo'}", *a], check=True, capture_output=True, text=True).stdout.strip()  # noqa: E731
        run("init", "--mode=archive")
        commit = run("commit", "--branch=b", f"--tree=dir={folder / 'tree'}", "-s", "s")
        run("static-delta", "generate", "--empty", "--inline", f"--to={commit}", f"--filename={folder / 'upload'}")
        world["ostree"] = ({"commit": commit, "version": 51, "hardware_id": "hw", "tag": "production"}, (folder / "upload").read_bytes())
    return world["ostree"]


CASES = {
    "whoami": [(None, {})],
    "factory_show": [("view", {})],
    "targets_list": [("view", {"query": {"tag": "production"}})],
    "targets_publish_ostree": [("targets.publish", {"query": lambda world: ostree_upload(world)[0], "raw": lambda world: ostree_upload(world)[1]})],
    "targets_publish": [("targets.publish", {"body": {"version": 50, "hardware_ids": ["hw"], "tags": ["production"]}})],
    "targets_mark_bad": [("wave.manage", {"path": {"version": 41}, "body": {"reason": "boot loop"}})],
    "targets_unmark_bad": [("wave.manage", {"setup": bad_build, "path": {"version": 41}, "body": {"reason": "false alarm"}})],
    "targets_tag": [("targets.publish", {"body": {"targets": ["43"], "tags": ["qa"], "append": True}})],
    "targets_prune": [
        ("targets.publish", {"body": {"targets": ["43"]}}),
        ("view", {"body": {"by_tag": ["production"], "keep_last": 1, "dry_run": True}}),
    ],
    "audit_list": [("view", {})],
    "targets_production_tags": [("view", {})],
    "targets_production": [("view", {"path": {"tag": "production"}})],
    "keys_list": [("view", {})],
    "keys_root": [("view", {"query": {"production": "true"}})],
    "keys_roots": [("view", {"query": {"production": "true"}})],
    "keys_root_download": [("view", {"path": {"version": 1}, "query": {"production": "true"}})],
    "keys_offline_add": [("keys.manage", {"body": lambda w: {"role": "targets", "public_key": new_public_key()}})],
    "keys_root_renew": [("keys.manage", {})],
    "keys_online_rotate": [("keys.manage", {"body": {"role": "snapshot"}})],
    "keys_offline_retire": [("keys.manage", {"setup": second_offline_key, "path": {"keyid": "retire_keyid"}})],
    "keys_change": [("view", {"setup": pending_root_change})],
    "keys_change_abandon": [("keys.manage", {"setup": pending_root_change})],
    "keys_change_sign": [("keys.manage", {"setup": pending_root_change, "body": lambda w: {"signatures": w["change_signatures"]}})],
    "devices_list": [("view", {"query": {"group": "canary"}})],
    "devices_set_group": [("fleet.manage", {"body": lambda w: {"group": "beta", "uuids": [w["device"]]}})],
    "devices_show": [("view", {"path": {"device": "device"}})],
    "devices_delete": [("fleet.manage", {"path": {"device": "device"}})],
    "devices_config_updates": [("fleet.manage", {"path": {"device": "device"}, "body": {"tag": "staging"}})],
    "devices_events": [("view", {"path": {"device": "device"}})],
    "groups_list": [("view", {})],
    "groups_create": [("fleet.manage", {"body": {"name": "apac"}})],
    "groups_show": [("view", {"path": {"group": "canary"}})],
    "groups_rename": [("fleet.manage", {"path": {"group": "canary"}, "body": {"name": "canary-1"}})],
    "groups_delete": [("fleet.manage", {"path": {"group": "canary"}})],
    "registration_tokens_list": [("factory.admin", {})],
    "registration_tokens_create": [("factory.admin", {"body": {"tag": "production", "production": True}})],
    "registration_tokens_revoke": [("factory.admin", {"path": {"prefix": "token_prefix"}})],
    "waves_list": [("view", {})],
    "waves_init": [("wave.manage", {"body": {"name": "w2", "version": 43, "tag": "staging"}})],
    "waves_revert": [("wave.manage", {"body": {"name": "back-to-43", "tag": "staging", "to_version": 43, "prune": []}})],
    "waves_show": [("view", {"path": {"wave": "v2.0-update"}, "query": {"targets": "true"}})],
    "waves_sign": [("wave.manage", {"setup": unsigned_wave, "path": {"wave": "w-unsigned"}, "body": lambda w: {"key_archive": w["archive_b64"]}})],
    "waves_rollout": [
        ("wave.manage", {"path": {"wave": "v2.0-update"}, "body": {"limit": 2}}),
        ("rollout.preview", {"path": {"wave": "v2.0-update"}, "body": {"limit": 2, "dry_run": True}}),
        ("wave.manage", {"path": {"wave": "v2.0-update"}, "body": {"group": "canary"}}),
    ],
    "waves_retry": [
        ("wave.manage", {"setup": failed_device, "path": {"wave": "v2.0-update"}, "body": {}}),
        ("rollout.preview", {"setup": failed_device, "path": {"wave": "v2.0-update"}, "body": {"dry_run": True}}),
    ],
    "waves_rollouts": [("view", {"path": {"wave": "v2.0-update"}})],
    "waves_rollout_devices": [("view", {"path": {"wave": "v2.0-update", "rollout": "rollout"}})],
    "waves_rollout_device_page": [("view", {"path": {"wave": "v2.0-update", "rollout": "rollout"}, "query": {"per_page": 2}})],
    "waves_complete": [("wave.manage", {"path": {"wave": "v2.0-update"}})],
    "waves_cancel": [("wave.manage", {"path": {"wave": "v2.0-update"}})],
    "waves_status": [("view", {"path": {"wave": "v2.0-update"}})],
    "factory_status": [("view", {})],
    "device_lists_list": [("view", {})],
    "device_lists_create": [("devicelist.edit", {"body": lambda w: {"name": "more", "uuids": [w["device"]]}})],
    "device_lists_show": [("view", {"path": {"name": "picks"}})],
    "device_lists_update": [("devicelist.edit", {"path": {"name": "picks"}, "body": {"name": "picks-2"}})],
    "device_lists_delete": [("devicelist.edit", {"path": {"name": "picks"}})],
    "waves_status_csv": [("view", {"path": {"wave": "v2.0-update"}})],
    "waves_status_history_csv": [("view", {"path": {"wave": "v2.0-update"}})],
    "waves_status_live": [("view", {"path": {"wave": "v2.0-update"}})],
    "factory_status_csv": [("view", {})],
    "plan_show": [("view", {"setup": draft_plan, "path": {"wave": "v2.0-update"}})],
    "plan_set": [("wave.manage", {"path": {"wave": "v2.0-update"}, "body": {"phases": PHASES}})],
    "plan_start": [("wave.manage", {"setup": draft_plan, "path": {"wave": "v2.0-update"}})],
    "plan_rollback_prepare": [("wave.manage", {"setup": staging_plan, "path": {"wave": "s43"}, "body": {"scope": "staged"}})],
    "plan_approve": [("plan.approve", {"setup": plan_awaiting_approval, "path": {"wave": "v2.0-update"}, "body": {"reason": "canary looks good"}})],
    "plan_force": [("wave.manage", {"setup": waiting_plan, "path": {"wave": "v2.0-update"}, "body": {"reason": "looks fine"}})],
    "plan_skip": [("wave.manage", {"setup": waiting_plan, "path": {"wave": "v2.0-update"}, "body": {"reason": "not needed", "phase": 2}})],
    "plan_pause": [("wave.manage", {"setup": running_plan, "path": {"wave": "v2.0-update"}, "body": {"reason": "weekend"}})],
    "plan_resume": [("wave.manage", {"setup": paused_plan, "path": {"wave": "v2.0-update"}, "body": {"reason": "monday"}})],
    "plan_cancel": [("wave.manage", {"setup": running_plan, "path": {"wave": "v2.0-update"}, "body": {"reason": "bad build"}})],
    "plan_templates_list": [("view", {})],
    "plan_templates_save": [("wave.manage", {"body": {"name": "t2", "phases": PHASES}})],
    "plan_templates_show": [("view", {"setup": template, "path": {"name": "t1"}})],
    "plan_templates_delete": [("wave.manage", {"setup": template, "path": {"name": "t1"}})],
}


@functools.cache
def schema_operations():
    schema = api.get_openapi_schema()
    return {op["operationId"]: (method.upper(), path) for path, methods in schema["paths"].items() for method, op in methods.items()}


def url_routes(resolver=None, prefix=""):
    """Every route of the URL configuration, as text with {param} placeholders."""
    routes = []
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            routes += url_routes(entry, route)
        elif isinstance(entry, URLPattern):
            routes.append(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return routes


def test_url_configuration_and_openapi_schema_list_the_same_endpoints():
    api_routes = {r for r in url_routes() if r.startswith("api/v1/") and not r.startswith("api/v1/^")}
    schema_paths = {path for _, path in schema_operations().values()}
    assert {f"/{r}" for r in api_routes} - {f"{API}/{p}" for p in PUBLIC} == schema_paths


def test_every_endpoint_states_its_authorization():
    operations = set(schema_operations())
    assert operations - set(CASES) == set(), "new endpoints need an entry in CASES"
    assert set(CASES) - operations == set(), "CASES names endpoints that no longer exist"
    for cases in CASES.values():
        for action, _ in cases:
            assert action is None or action in PERMISSIONS


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    """One factory with every kind of object, built once; each request is rolled back."""
    fast = override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])
    with django_db_blocker.unblock(), fast, transaction.atomic():
        factory, other_factory = factory_create(name="acme"), factory_create(name="globex")
        users = {name: user_create(username=name, factory=factory, role=role) for name, role in ROLES.items()}
        users["eve"] = user_create(username="eve", factory=other_factory, role=Role.ADMIN)
        bob = users["bob"]
        ci_build_publish(factory=factory, version=41, hardware_ids=["hw"], tags=["production"])
        ci_build_publish(factory=factory, version=42, hardware_ids=["hw"], tags=["production"])
        ci_build_publish(factory=factory, version=43, hardware_ids=["hw"], tags=["production", "staging"])
        archive = offline_targets_key(factory=factory, actor=bob)
        fleet_load_for_benchmark(factory=factory, tag="production", groups={"canary": 3, "beta": 3}, ungrouped=4, test_devices=2, version=41)
        fleet_load_for_benchmark(factory=other_factory, tag="production", groups={"canary": 2}, version=41)
        wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag="production"), actor=bob, key_archive=archive)
        rollout = wave_rollout(wave=wave, actor=bob, group="beta", limit="1").rollout
        device = Device.objects.filter(factory=factory, is_production=True, group__isnull=True).first()
        devicelists.device_list_create(factory=factory, actor=users["carol"], name="picks", uuids=[str(device.uuid)])
        token, _ = registration_token_create(factory=factory, actor=users["alice"], tag="production")
        yield {
            "factory": factory,
            "wave": wave,
            "bob": bob,
            "tokens": {name: api_token_create(user=user, factory=user.memberships.first().factory)[1] for name, user in users.items()},
            "device": str(device.uuid),
            "rollout": str(rollout.pk),
            "token_prefix": token.prefix,
            "archive_b64": base64.b64encode(archive).decode(),
        }
        transaction.set_rollback(True)


def _request(client, world, method, path, spec, token):
    params = {"factory": "acme", **spec.get("path", {})}
    url = re.sub(r"{(\w+)}", lambda m: str(world.get(params[m.group(1)], params[m.group(1)])), path)
    body = spec.get("body")
    if callable(body):
        body = body(world)
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if token else {}
    if method == "GET":
        return client.get(url, spec.get("query", {}), **headers)
    call = getattr(client, method.lower())
    if spec.get("raw"):
        url += "?" + urlencode(spec["query"](world), doseq=True)
        return call(url, spec["raw"](world), content_type="application/octet-stream", **headers)
    if body is None:
        return call(url, **headers) if method == "DELETE" else call(url, "{}", content_type="application/json", **headers)
    return call(url, json.dumps(body), content_type="application/json", **headers)


def _attempt(world, method, path, spec, token):
    """One request inside a transaction that is rolled back, so every principal sees the same state."""
    with transaction.atomic():
        response = _request(Client(), world, method, path, spec, token)
        transaction.set_rollback(True)
    return response


@pytest.mark.parametrize(
    "operation,case",
    [(op, i) for op, cases in sorted(CASES.items()) for i in range(len(cases))],
    ids=lambda value: str(value),
)
def test_endpoint_for_every_role_and_other_factories(db, world, operation, case):
    action, spec = CASES[operation][case]
    method, path = schema_operations()[operation]
    if spec.get("setup"):
        spec["setup"](world)
    outcomes = {}
    for username, role in ROLES.items():
        response = _attempt(world, method, path, spec, world["tokens"][username])
        allowed = action is None or role in PERMISSIONS[action]
        outcomes[username] = response.status_code
        if allowed:
            assert 200 <= response.status_code < 300, (username, response.status_code, response.content[:300])
        else:
            assert response.status_code == 403, (username, response.status_code, response.content[:300])
            assert response.json()["code"] == "forbidden"
    eve = _attempt(world, method, path, spec, world["tokens"]["eve"])
    if action is None:
        assert eve.status_code == 200
    else:
        assert eve.status_code == 403 and "globex" in eve.json()["detail"], eve.content[:300]
    anonymous = _attempt(world, method, path, spec, None)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthenticated"
