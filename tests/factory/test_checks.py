"""`manage.py check --deploy` names every setting whose default keeps state on one machine when
Breakwater runs with PostgreSQL, where processes may run on several machines."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory import checks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(settings, monkeypatch):
    """Every shared service and secret set, as a multi-machine deployment has them."""
    monkeypatch.setattr(checks, "_multi_process_database", lambda: True)
    settings.REDIS_URL = "redis://127.0.0.1:6379/1"
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("SECRET_KEY", "k" * 60)
    monkeypatch.setenv("BREAKWATER_KEY_ENCRYPTION_KEY", "from-a-secret-store")
    return settings


def ids(found):
    return sorted(message.id for message in found)


def test_a_deployment_that_shares_everything_passes(deployment):
    assert checks.shared_state_check() == []


@pytest.mark.parametrize(
    "missing, expected",
    [
        ("REDIS_URL", "breakwater.W001"),
        ("CELERY_BROKER_URL", "breakwater.W002"),
        ("SECRET_KEY", "breakwater.W003"),
        ("BREAKWATER_KEY_ENCRYPTION_KEY", "breakwater.W004"),
    ],
)
def test_each_per_machine_default_is_named(deployment, monkeypatch, missing, expected):
    if missing == "REDIS_URL":
        deployment.REDIS_URL = ""
    elif missing == "CELERY_BROKER_URL":
        deployment.CELERY_BROKER_URL = "filesystem://"
    else:
        monkeypatch.delenv(missing)
    [warning] = checks.shared_state_check()
    assert warning.id == expected and missing in warning.msg and "README: Deployment" in warning.hint


def test_the_embedded_install_on_sqlite_is_not_warned(deployment, monkeypatch):
    monkeypatch.setattr(checks, "_multi_process_database", lambda: False)
    deployment.REDIS_URL = ""
    monkeypatch.delenv("SECRET_KEY")
    assert checks.shared_state_check() == []


def test_check_deploy_warns_a_postgresql_install_without_redis_and_plain_check_does_not(tmp_path):
    # Playwright's tests set DJANGO_ALLOW_ASYNC_UNSAFE in this process; a deployment never does.
    unset = ("REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "BREAKWATER_KEY_ENCRYPTION_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    # Nothing connects to the database during these checks.
    environ.update(DATABASE_URL="postgres://breakwater@127.0.0.1:5432/breakwater", BREAKWATER_VAR_DIR=str(tmp_path))
    deploy = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    found = set(re.findall(r"\((breakwater\.W\d+)\)", deploy.stdout + deploy.stderr))
    assert found == {"breakwater.W001", "breakwater.W002", "breakwater.W003", "breakwater.W004"}, deploy.stderr
    plain = subprocess.run([sys.executable, "manage.py", "check"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "breakwater." not in plain.stdout + plain.stderr


def test_a_fresh_install_starts_without_the_static_files_warning(tmp_path):
    # Every web process, worker and test warned "No directory at …/staticfiles/" until collectstatic ran.
    code = "import django; django.setup(); from django.core.handlers.wsgi import WSGIHandler; WSGIHandler()"
    env = {**os.environ, "BREAKWATER_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "factory.project.settings"}
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
