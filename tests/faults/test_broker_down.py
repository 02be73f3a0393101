"""The Celery broker down: the dashboard still serves every read, and the one action that needs
the broker (a dashboard rollout over BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD, the only place a
web request sends a task) fails within seconds with a message that says why, never hangs or
answers 500, and never leaves a job "queued" forever. The API and smaller rollouts need no broker.

The broker's settings are computed by factory/project/settings.py itself for the broken URL, so the socket
timeouts and the publish retry policy under test are the ones production runs with.
"""
import runpy
import signal
import socket
import time
from contextlib import contextmanager

import pytest
from django.urls import reverse

from factory.project.celery import app as celery_app
from factory.tuf.services.repository import ci_build_publish
from tests.factory.test_api import as_user, tokens  # noqa: F401  (fixtures)
from tests.factory.test_views import hx, login
from tests.processes import free_port
from tests.tuf_helpers import offline_targets_key
from tests.waves.conftest import HWIDS, TAG, make_wave, seed
from tests.waves.test_views_rollout import confirmation, preview
from waves import rollout_jobs
from waves.models import WaveDevice

from .conftest import ROOT

THRESHOLD = 30
MESSAGE = "The rollout did not happen. The task queue that runs large rollouts cannot be reached"


def _reset_connections():
    celery_app._pool = None
    if "amqp" in celery_app.__dict__:
        celery_app.amqp._producer_pool = None


@pytest.fixture
def broker_at(monkeypatch):
    """Point the Celery app of this process at `url`, configured as factory/project/settings.py configures it."""
    saved = {}

    def point(url):
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        computed = runpy.run_path(str(ROOT / "factory" / "project" / "settings.py"))
        for name, value in computed.items():
            if name.startswith(("CELERY_BROKER_", "CELERY_TASK_PUBLISH_")):
                key = name[len("CELERY_") :].lower()
                saved.setdefault(key, celery_app.conf.get(key))
                celery_app.conf[key] = value
        if "CELERY_BROKER_TRANSPORT_OPTIONS" not in computed:
            saved.setdefault("broker_transport_options", celery_app.conf.broker_transport_options)
            celery_app.conf.broker_transport_options = {}
        _reset_connections()

    yield point
    for key, value in saved.items():
        celery_app.conf[key] = value
    _reset_connections()


@pytest.fixture
def unanswering_port():
    """A port that accepts connections (the kernel's backlog) and never says a word: a hung broker."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.fixture
def fleet(factory, bob, settings):
    settings.BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD = THRESHOLD
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    seed(factory, groups={"canary": 5}, ungrouped=95, test_devices=5)
    return make_wave(factory, bob, archive)


@contextmanager
def at_most(seconds):
    """Interrupt a hang (it would block the whole test run) with a failure instead."""

    def hung(signum, frame):
        raise AssertionError(f"still waiting after {seconds} s: the request hangs on the broker")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def roll_out(client, wave, data, django_capture_on_commit_callbacks):
    """Preview, confirm and roll out from the dashboard; the task is sent after the commit."""
    response, token = preview(client, wave, data)
    assert response.status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        started = time.monotonic()
        go = client.post(reverse("rollout-perform", args=[wave.name, token]), confirmation(client, wave, token), **hx("rollout-panel"))
    return go, time.monotonic() - started


def reads_are_served(client, wave, device):
    pages = [
        reverse("wave-list"),
        reverse("wave-detail", args=[wave.name]),
        reverse("wave-live-status", args=[wave.name]),
        reverse("wave-status-csv", args=[wave.name]),
        reverse("factory-status"),
        reverse("device-list"),
        reverse("device-detail", args=[device.uuid]),
        reverse("group-list"),
        reverse("audit-log"),
    ]
    for url in pages:
        started = time.monotonic()
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        assert time.monotonic() - started < 2, url


def test_with_the_broker_refusing_connections_reads_work_and_a_background_rollout_fails_at_once_with_the_reason(
    client, bob, fleet, broker_at, as_user, django_capture_on_commit_callbacks
):
    wave = fleet
    broker_at(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    login(client, bob)
    reads_are_served(client, wave, wave.factory.devices.filter(is_production=True).first())

    go, took = roll_out(client, wave, {"limit": "40"}, django_capture_on_commit_callbacks)
    assert go.status_code == 200 and took < 3
    page = client.get(go["HX-Redirect"])
    assert page.status_code == 200
    html = page.content.decode()
    assert MESSAGE in html and f"roll out at most {THRESHOLD:,} devices at a time, which needs no task queue. Nothing was staged." in html
    assert 'hx-trigger="every 1s"' not in html  # the page does not poll a job that will never run
    assert not WaveDevice.objects.filter(wave=wave).exists()

    # What the message advises works without the broker, and so does the API, which has no
    # background rollouts.
    go, _ = roll_out(client, wave, {"limit": "20"}, django_capture_on_commit_callbacks)
    assert "/rollout-jobs/" not in go["HX-Redirect"] and WaveDevice.objects.filter(wave=wave).count() == 20
    response = as_user("bob").post(f"waves/{wave.name}/rollout", {"limit": 50})
    assert response.status_code == 200 and response.json()["count"] == 50
    assert WaveDevice.objects.filter(wave=wave).count() == 70


def test_with_a_hung_broker_a_background_rollout_fails_within_seconds(
    client, bob, fleet, broker_at, unanswering_port, django_capture_on_commit_callbacks
):
    """A broker that accepts the connection and never answers would hold the request forever
    without the socket timeouts of factory/project/settings.py."""
    wave = fleet
    broker_at(f"redis://127.0.0.1:{unanswering_port}/0")
    login(client, bob)
    with at_most(30):
        go, took = roll_out(client, wave, {"limit": "40"}, django_capture_on_commit_callbacks)
    assert go.status_code == 200 and took < 10, took
    assert MESSAGE in client.get(go["HX-Redirect"]).content.decode()
    assert not WaveDevice.objects.filter(wave=wave).exists()


def test_a_job_sent_when_no_worker_ever_takes_it_is_called_off_after_the_patience(client, bob, dave, fleet, settings):
    """The broker took the message but no worker runs it (workers down, or one died between
    taking the message and starting): the page does not say "Waiting for a worker" forever."""
    wave = fleet
    token = rollout_jobs.rollout_job_start(wave=wave, actor=bob, uuids=[], expected=40)  # on_commit never runs here
    login(client, dave)
    url = reverse("rollout-job", args=[wave.name, token])
    assert "Waiting for a worker" in client.get(url).content.decode()
    settings.BREAKWATER_ROLLOUT_JOB_QUEUE_PATIENCE_SECONDS = 0
    html = client.get(url).content.decode()
    assert "The rollout did not happen. No worker started it within 0 seconds (are the Celery workers running?)" in html
    assert 'hx-trigger="every 1s"' not in html
    # A worker that gets the message late finds the job called off and stages nothing.
    rollout_jobs.rollout_job_run(token=token, wave_id=wave.id, actor_id=bob.id, params={"group": None, "uuids": None})
    assert not WaveDevice.objects.filter(wave=wave).exists()
    assert rollout_jobs.rollout_job_get(token=token, factory=wave.factory)["status"] == "failed"

