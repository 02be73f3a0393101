"""Hostile input at every door: CSRF on every dashboard POST, upload size limits, production-mode
cookie and HSTS settings, and an audit log that no API endpoint, page or command can change."""
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from factory.models import AuditEntry
from factory.project.api import api
from factory.services import api_token_create
from tests.waves.conftest import TAG, builds, offline_key, seed  # noqa: F401  (fixtures)
from waves.models import Rollout, Wave
from waves.services import wave_init

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"int": "1", "str": "x", "slug": "x", "uuid": str(uuid.UUID(int=1)), "path": "x"}
# Doors that authenticate without a session cookie, so a forged cross-site request carries nothing.
CSRF_EXEMPT = {
    "api/v1/": "the REST API authenticates with a token in the Authorization header",
    "devices/register/": "devices authenticate with the registration token in the body",
    "ota/devices/": "lmp-device-register authenticates with the registration token in its OSF-TOKEN header",
}


def _routes(patterns=None, prefix=""):
    """(concrete path, view) for every URL pattern, path converters filled with sample values."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        route = str(entry.pattern)
        route = re.sub(r"\(\?P<\w+>[^)]*\)", "x", route).lstrip("^").rstrip("$")
        route = re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLES[m.group(1) or "str"], route)
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + route)
        elif isinstance(entry, URLPattern):
            assert "(" not in route and "\\" not in route, f"regex route {route} needs a sample"
            yield "/" + prefix + route, entry.callback


@pytest.fixture
def bob_browser(bob):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(bob)
    return browser


# --- CSRF ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_dashboard_post_without_the_csrf_token_is_refused(bob_browser):
    routes = list(_routes())
    dashboard = [(url, view) for url, view in routes if not url.startswith("/api/v1/")]
    assert len(dashboard) > 40, "the URL configuration was not enumerated"
    exempt = {url for url, view in routes if getattr(view, "csrf_exempt", False)}
    assert {url for url in exempt if not any(url.startswith("/" + door) for door in CSRF_EXEMPT)} == set()
    audit_before = AuditEntry.objects.count()
    checked = []
    for url, view in dashboard:
        if url in exempt:
            continue
        response = bob_browser.post(url, {"name": "x", "version": "1", "tag": TAG, "uuids": str(uuid.uuid4())})
        assert response.status_code == 403 and b"CSRF" in response.content, (url, response.status_code)
        checked.append(url)
    assert "/login/" in checked and "/waves/x/rollout/x/go/" in checked and "/devices/groups/assign/" in checked
    assert AuditEntry.objects.count() == audit_before


@pytest.mark.django_db
def test_the_same_post_with_the_token_is_let_through(bob_browser, factory):
    # Proves the refusals above are CSRF's and not something every POST gets.
    bob_browser.get(reverse("group-list"))
    token = bob_browser.cookies[settings.CSRF_COOKIE_NAME].value
    response = bob_browser.post(reverse("group-create"), {"name": "canary", "csrfmiddlewaretoken": token})
    assert response.status_code in (200, 302), response.status_code
    assert factory.device_groups.filter(name="canary").exists()


@pytest.mark.django_db
def test_htmx_posts_without_the_header_token_are_refused(bob_browser):
    response = bob_browser.post(reverse("group-create"), {"name": "canary"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 403


# --- upload size limits ------------------------------------------------------------------------------


def _browser_with_token(user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    token = uuid.uuid4().hex  # an unmasked secret, as the cookie holds it
    browser.cookies[settings.CSRF_COOKIE_NAME] = token
    return browser, token


@pytest.fixture
def unsigned_wave(factory, bob, builds):  # noqa: F811
    return wave_init(factory=factory, actor=bob, name="v2.0-update", version=42, tag=TAG)


def _too_big(limit):
    return b"\x1f\x8b" + b"\0" * (limit + 1)


@pytest.mark.django_db
def test_a_key_archive_over_the_upload_limit_is_refused_and_the_wave_stays_unsigned(bob, unsigned_wave):
    browser, token = _browser_with_token(bob)
    audit_before = AuditEntry.objects.count()
    from django.core.files.uploadedfile import SimpleUploadedFile

    archive = SimpleUploadedFile("keys.tgz", _too_big(settings.FILE_UPLOAD_MAX_MEMORY_SIZE), content_type="application/gzip")
    response = browser.post(reverse("wave-sign", args=[unsigned_wave.name]), {"key_archive": archive, "csrfmiddlewaretoken": token})
    assert response.status_code in (400, 413), response.status_code
    assert b"too large" in response.content.lower() or b"larger than" in response.content.lower(), response.content[:2000]
    unsigned_wave.refresh_from_db()
    assert unsigned_wave.status == Wave.Status.UNSIGNED
    assert AuditEntry.objects.count() == audit_before


@pytest.mark.django_db
def test_a_wave_created_with_an_oversized_key_archive_is_not_created(bob, factory, builds):  # noqa: F811
    browser, token = _browser_with_token(bob)
    from django.core.files.uploadedfile import SimpleUploadedFile

    archive = SimpleUploadedFile("keys.tgz", _too_big(settings.FILE_UPLOAD_MAX_MEMORY_SIZE))
    form = {"name": "big-one", "version": "42", "tag": TAG, "key_archive": archive, "csrfmiddlewaretoken": token}
    response = browser.post(reverse("wave-create"), form)
    assert response.status_code in (400, 413), response.status_code
    assert not Wave.objects.filter(name="big-one").exists()


@pytest.mark.django_db
def test_a_uuid_list_over_the_body_limit_is_refused_and_nothing_is_staged(bob, factory, builds, offline_key):  # noqa: F811
    from tests.waves.conftest import make_wave

    seed(factory, groups={"canary": 5}, ungrouped=5)
    wave = make_wave(factory, bob, offline_key)
    browser, token = _browser_with_token(bob)
    line = f"{uuid.uuid4()}\n"
    uuids = line * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // len(line) + 1)
    response = browser.post(reverse("rollout-preview", args=[wave.name]), {"uuids": uuids, "csrfmiddlewaretoken": token})
    assert response.status_code in (400, 413), response.status_code
    assert b"too large" in response.content.lower() or b"larger than" in response.content.lower(), response.content[:2000]
    assert not Rollout.objects.filter(wave=wave).exists()


@pytest.mark.django_db
def test_api_bodies_over_the_limit_are_refused_with_a_json_error(client, factory, bob, unsigned_wave):
    token = api_token_create(user=bob, factory=factory)[1]
    body = json.dumps({"key_archive": "A" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    response = client.post(
        f"/api/v1/factories/acme/waves/{unsigned_wave.name}/sign", body, content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}"
    )
    assert response.status_code == 400 and response.json()["code"] == "too_large"
    unsigned_wave.refresh_from_db()
    assert unsigned_wave.status == Wave.Status.UNSIGNED


# --- production settings -----------------------------------------------------------------------------


def _settings_in_a_fresh_process(tmp_path, **env):
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        "names = ['SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SECURE_HSTS_SECONDS', 'SECURE_SSL_REDIRECT', "
        "'SESSION_COOKIE_HTTPONLY', 'SECURE_CONTENT_TYPE_NOSNIFF', 'X_FRAME_OPTIONS', 'DEBUG']; "
        "print(json.dumps({n: getattr(settings, n) for n in names}))"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("BREAKWATER_HTTPS", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    environ.update(DJANGO_SETTINGS_MODULE="factory.project.settings", BREAKWATER_VAR_DIR=str(tmp_path), SECRET_KEY="s" * 60, **env)
    done = subprocess.run([sys.executable, "-c", code], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_production_mode_sends_cookies_over_https_only_with_hsts(tmp_path):
    production = _settings_in_a_fresh_process(tmp_path, BREAKWATER_HTTPS="1")
    assert production["SESSION_COOKIE_SECURE"] is True and production["CSRF_COOKIE_SECURE"] is True
    assert production["SECURE_HSTS_SECONDS"] >= 180 * 24 * 3600
    assert production["SECURE_SSL_REDIRECT"] is True and production["DEBUG"] is False
    assert production["SESSION_COOKIE_HTTPONLY"] and production["SECURE_CONTENT_TYPE_NOSNIFF"] and production["X_FRAME_OPTIONS"] == "DENY"
    embedded = _settings_in_a_fresh_process(tmp_path)
    assert embedded["SESSION_COOKIE_SECURE"] is False and embedded["SECURE_HSTS_SECONDS"] == 0


def test_production_mode_passes_djangos_deployment_checks(tmp_path):
    # Playwright's tests set DJANGO_ALLOW_ASYNC_UNSAFE in this process; a deployment never does.
    environ = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    environ.update(BREAKWATER_HTTPS="1", BREAKWATER_VAR_DIR=str(tmp_path), SECRET_KEY="k" + uuid.uuid4().hex * 3, ALLOWED_HOSTS="updates.example.com")
    # With PostgreSQL (as in CI) the shared services and secrets are checked too: a production
    # deployment sets them all (nothing here connects to them).
    environ.update(
        REDIS_URL="redis://127.0.0.1:6379/1",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        BREAKWATER_KEY_ENCRYPTION_KEY=Fernet.generate_key().decode(),
    )
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # HSTS preloading is a one-way commitment for the whole domain: left to the operator.
    assert set(re.findall(r"\((\w+\.[WE]\d+)\)", done.stdout + done.stderr)) <= {"security.W021"}, done.stdout + done.stderr


# --- the audit log -----------------------------------------------------------------------------------


@pytest.fixture
def audited(factory, alice, bob, builds):  # noqa: F811
    assert AuditEntry.objects.filter(factory=factory).exists()
    return list(AuditEntry.objects.filter(factory=factory).order_by("id").values())


def test_the_openapi_schema_has_no_way_to_change_the_audit_log():
    schema = api.get_openapi_schema()
    audit_paths = {path: ops for path, ops in schema["paths"].items() if "audit" in path}
    assert audit_paths, "the audit log is in the API"
    assert {method for ops in audit_paths.values() for method in ops} == {"get"}


@pytest.mark.django_db
def test_no_api_method_changes_the_audit_log(client, factory, alice, audited):
    token = api_token_create(user=alice, factory=factory)[1]
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"}
    entry_id = audited[0]["id"]
    for url in ("/api/v1/factories/acme/audit/", f"/api/v1/factories/acme/audit/{entry_id}", f"/api/v1/factories/acme/audit/{entry_id}/"):
        for method in ("post", "put", "patch", "delete"):
            response = getattr(client, method)(url, json.dumps({"action": "forged"}), content_type="application/json", **headers)
            assert response.status_code in (404, 405), (method, url, response.status_code)
    after = list(AuditEntry.objects.filter(factory=factory).order_by("id").values())
    assert after[: len(audited)] == audited


@pytest.mark.django_db
def test_the_audit_page_refuses_posts(alice, audited, factory):
    browser, token = _browser_with_token(alice)
    response = browser.post(reverse("audit-log"), {"csrfmiddlewaretoken": token, "action": "forged"})
    assert response.status_code == 405
    assert list(AuditEntry.objects.filter(factory=factory).order_by("id").values())[: len(audited)] == audited


@pytest.mark.django_db
def test_an_audit_entry_cannot_be_saved_again_or_deleted(audited):
    entry = AuditEntry.objects.get(pk=audited[0]["id"])
    entry.action = "forged"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()
    assert AuditEntry.objects.get(pk=entry.pk).action == audited[0]["action"]


def test_no_management_or_cli_command_writes_audit_entries_directly():
    # Commands go through the services (which only append) or the API; none touches the model.
    sources = [*ROOT.glob("*/management/commands/*.py"), *ROOT.glob("factory/cli/*.py")]
    assert sources
    offenders = [str(p.relative_to(ROOT)) for p in sources if re.search(r"AuditEntry\b.*\.(update|delete|save)\(|audit_entries\.\w*\.?(update|delete)\(", p.read_text())]
    assert offenders == []
