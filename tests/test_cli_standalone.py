"""The `breakwater` CLI runs on a release manager's machine without the server's code: with
`django` and `celery` unimportable it prints its help, and signs and creates a wave against a
live server."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from factory.services import api_token_create
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves.models import Wave

ROOT = Path(__file__).resolve().parent.parent
TAG = "production"

# Runs in a fresh interpreter: a finder ahead of every other refuses the server's packages, so
# the CLI (or anything it imports) reaching for them fails the way it would on a laptop.
BLOCKED_CLI = textwrap.dedent(
    """
    import sys

    class Refuse:
        BLOCKED = ("django", "celery")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    from factory.cli.main import main

    code = main(sys.argv[1:])
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(Refuse.BLOCKED))
    assert not loaded, loaded
    sys.exit(code)
    """
)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def breakwater(live_server, tmp_path):
    """run(*argv, token=...) -> CompletedProcess: the CLI in its own interpreter, without Django."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BREAKWATER_") and k != "DJANGO_SETTINGS_MODULE"}
    environ.update(BREAKWATER_URL=live_server.url, BREAKWATER_CONFIG=str(tmp_path / "config.json"), PYTHONPATH=str(ROOT))

    def run(*argv, token=None):
        env = {**environ, "BREAKWATER_TOKEN": token} if token else environ
        return subprocess.run([sys.executable, "-c", BLOCKED_CLI, *map(str, argv)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    return run


def test_help_without_django_or_celery(breakwater):
    done = breakwater("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: breakwater") and "waves" in done.stdout


def test_the_blocker_keeps_django_out(live_server, tmp_path):
    # The blocker works: code that needs Django fails under it, so the CLI passing means something.
    probe = BLOCKED_CLI.replace("from factory.cli.main import main", "import django.conf")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "(blocked)" in done.stderr


def test_whoami_and_a_locally_signed_wave_without_django_or_celery(breakwater, factory, bob, tmp_path):
    ci_build_publish(factory=factory, version=42, hardware_ids=["intel-corei7-64"], tags=[TAG])
    keys = tmp_path / "targets.only.key.tgz"
    keys.write_bytes(offline_targets_key(factory=factory, actor=bob))
    token = api_token_create(user=bob, factory=factory)[1]

    whoami = breakwater("whoami", token=token)
    assert whoami.returncode == 0, whoami.stderr
    assert "bob" in whoami.stdout and "release-manager" in whoami.stdout

    init = breakwater("waves", "init", "-k", keys, "v2.0-update", 42, TAG, token=token)
    assert init.returncode == 0, init.stderr
    assert Wave.objects.get(factory=factory, name="v2.0-update").status == "active"
