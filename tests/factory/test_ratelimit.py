"""Failed-attempt limits: the limiter on every cache backend Breakwater runs with, the dashboard
sign-in page (per client address and per username) and API token authentication (per address)."""
import os
import time

import pytest
from django.contrib.auth.signals import user_login_failed
from django.core.cache import caches
from django.test import override_settings
from django.urls import reverse

from factory.models import AuditEntry
from factory.ratelimit import FailureLimiter, client_ip
from factory.services import api_token_create

REDIS_URL = os.environ.get("BREAKWATER_TEST_REDIS_URL", "redis://127.0.0.1:6379/8")


def _redis_up():
    try:
        import redis

        return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except Exception:
        return False


@pytest.fixture(params=["file", "locmem", "redis"])
def cache_alias(request, tmp_path, settings):
    backends = {
        "file": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path / "cache")},
        "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"limits-{tmp_path.name}"},
        "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL},
    }
    if request.param == "redis" and not _redis_up():
        if os.environ.get("REDIS_URL"):
            # A deployment with Redis (CI sets REDIS_URL) must have this backend tested, not skipped.
            pytest.fail(f"REDIS_URL is set but there is no Redis at {REDIS_URL}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    settings.CACHES = {**settings.CACHES, "limits": backends[request.param]}
    yield "limits"
    caches["limits"].close()


def test_the_attempt_after_the_limit_is_refused_until_the_window_closes(cache_alias):
    limiter = FailureLimiter("t", attempts=3, window=2, cache_alias=cache_alias)
    assert [limiter.attempt(ip="10.0.0.1").blocked for _ in range(4)] == [False, False, False, True]
    refused = limiter.check(ip="10.0.0.1")
    assert refused.blocked and 1 <= refused.retry_after <= 2
    assert "try again in 1 minute" in refused.message
    assert not limiter.check(ip="10.0.0.2").blocked, "another address has its own count"
    time.sleep(2.2)
    assert not limiter.check(ip="10.0.0.1").blocked
    assert not limiter.attempt(ip="10.0.0.1").blocked


def test_refused_attempts_do_not_prolong_the_block(cache_alias):
    limiter = FailureLimiter("t", attempts=2, window=2, cache_alias=cache_alias)
    for _ in range(2):
        limiter.attempt(username="bob")
    time.sleep(1.2)
    assert limiter.attempt(username="bob").blocked
    time.sleep(1.0)
    assert not limiter.attempt(username="bob").blocked


def test_success_gives_back_its_count_and_resets_the_named_kinds(cache_alias):
    limiter = FailureLimiter("t", attempts=3, window=60, cache_alias=cache_alias)
    for _ in range(2):
        limiter.attempt(ip="10.0.0.1", username="bob")
    limiter.attempt(ip="10.0.0.1", username="bob")
    limiter.succeeded(reset=("username",), ip="10.0.0.1", username="bob")
    # The address has two failures left counted; bob's name starts over.
    assert not limiter.attempt(ip="10.0.0.1").blocked
    assert limiter.attempt(ip="10.0.0.1").blocked
    assert not limiter.check(username="bob").blocked


def test_any_string_is_a_valid_key_and_usernames_ignore_case(cache_alias):
    limiter = FailureLimiter("t", attempts=1, window=60, cache_alias=cache_alias)
    limiter.attempt(username=" Bob\x00 " + "x" * 5000)
    assert limiter.check(username="bob\x00 " + "X" * 5000).blocked
    assert not limiter.check(username="").blocked, "an empty key is not counted"


@override_settings(BREAKWATER_TRUSTED_PROXY_HOPS=1)
def test_behind_a_proxy_the_address_is_the_one_the_proxy_saw(rf):
    request = rf.get("/", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9", REMOTE_ADDR="10.0.0.1")
    assert client_ip(request) == "203.0.113.9", "the client can prepend any address; only the proxy's is trusted"


def test_without_a_proxy_forwarded_headers_are_ignored(rf):
    assert client_ip(rf.get("/", HTTP_X_FORWARDED_FOR="6.6.6.6", REMOTE_ADDR="10.0.0.1")) == "10.0.0.1"


# --- the sign-in page ---------------------------------------------------------------------------


def _login(client, username, password, ip="10.1.1.1"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


@pytest.fixture
def password_checks():
    checked = []

    def record(sender, credentials, **kwargs):
        checked.append(credentials.get("username"))

    user_login_failed.connect(record)
    yield checked
    user_login_failed.disconnect(record)


@pytest.mark.django_db
def test_ten_failed_logins_then_even_the_right_password_is_refused_unchecked(client, bob, password_checks):
    audit_before = AuditEntry.objects.count()
    for _ in range(10):
        assert _login(client, "bob", "wrong-password").status_code == 200
    assert len(password_checks) == 10

    refused = _login(client, "bob", "bob-pass-1")
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 14 * 60
    assert b'role="alert"' in refused.content and b"Too many failed attempts; try again in 15 minutes." in refused.content
    assert "_auth_user_id" not in client.session
    assert len(password_checks) == 10, "a refused attempt is not checked"
    assert AuditEntry.objects.count() == audit_before


@pytest.mark.django_db
@override_settings(BREAKWATER_LOGIN_FAILURES=3)
def test_the_username_limit_holds_across_addresses(client, bob, carol):
    for n in range(3):
        _login(client, "bob", "wrong-password", ip=f"10.2.0.{n}")
    assert _login(client, "BOB", "bob-pass-1", ip="10.2.0.99").status_code == 429
    # The new address has not failed, so another user signs in from it.
    assert _login(client, "carol", "carol-pass-1", ip="10.2.0.99").status_code == 302


@pytest.mark.django_db
@override_settings(BREAKWATER_LOGIN_FAILURES=3)
def test_the_address_limit_holds_across_usernames(client, bob):
    for name in ("alice", "carol", "mallory"):
        _login(client, name, "guess", ip="10.3.0.1")
    assert _login(client, "bob", "bob-pass-1", ip="10.3.0.1").status_code == 429
    assert _login(client, "bob", "bob-pass-1", ip="10.3.0.2").status_code == 302


@pytest.mark.django_db
@override_settings(BREAKWATER_LOGIN_FAILURES=3)
def test_a_successful_login_resets_the_username_count(client, bob):
    for n in range(2):
        _login(client, "bob", "wrong-password", ip=f"10.4.0.{n}")
    assert _login(client, "bob", "bob-pass-1", ip="10.4.1.1").status_code == 302
    client.logout()
    for n in range(2):
        assert _login(client, "bob", "wrong-password", ip=f"10.4.2.{n}").status_code == 200
    assert _login(client, "bob", "bob-pass-1", ip="10.4.3.1").status_code == 302


# --- API tokens -----------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(BREAKWATER_API_TOKEN_FAILURES=3)
def test_an_address_sending_bad_tokens_is_throttled(client, factory, bob):
    good = api_token_create(user=bob, factory=factory)[1]
    url = "/api/v1/factories/acme/devices/"
    for _ in range(3):
        assert client.get(url, HTTP_AUTHORIZATION="Token bw_nope", REMOTE_ADDR="10.5.0.1").status_code == 401
    throttled = client.get(url, HTTP_AUTHORIZATION=f"Token {good}", REMOTE_ADDR="10.5.0.1")
    assert throttled.status_code == 429 and throttled.json()["code"] == "throttled"
    assert "Too many failed attempts" in throttled.json()["detail"] and int(throttled["Retry-After"]) > 0
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {good}", REMOTE_ADDR="10.5.0.2").status_code == 200
    # Requests without a token are answered 401 and never counted.
    for _ in range(5):
        assert client.get(url, REMOTE_ADDR="10.5.0.3").status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {good}", REMOTE_ADDR="10.5.0.3").status_code == 200


def test_the_limits_come_from_the_environment():
    import subprocess
    import sys

    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DJANGO_SETTINGS_MODULE": "factory.project.settings",
        "BREAKWATER_LOGIN_FAILURES": "4",
        "BREAKWATER_API_TOKEN_FAILURES": "7",
        "BREAKWATER_LOGIN_FAILURE_WINDOW_SECONDS": "120",
    }
    code = (
        "import django; django.setup(); from factory.ratelimit import login_limiter, api_token_limiter; "
        "print([(l.attempts, l.window) for l in (login_limiter(), api_token_limiter())])"
    )
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[(4, 120), (7, 120)]"
