"""Large dashboard rollouts run as a task; the job page shows the progress until it ends."""
import pytest
from django.urls import reverse

from factory.project.celery import app as celery_app
from factory.errors import Forbidden
from tests.factory.test_views import hx, login
from waves import rollout_jobs
from waves.models import Rollout, WaveDevice
from waves.services import wave_cancel

from .test_views_rollout import confirmation, preview


@pytest.fixture
def eager():
    """Run tasks in-process, as a worker would."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture
def small_threshold(settings):
    settings.BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD = 3


def test_a_large_rollout_runs_as_a_task_and_the_job_page_shows_it_done(
    client, bob, fleet100, wave, eager, small_threshold, django_capture_on_commit_callbacks
):
    login(client, bob)
    _, token = preview(client, wave, {"limit": "30"})
    with django_capture_on_commit_callbacks(execute=True):
        go = client.post(reverse("rollout-perform", args=[wave.name, token]), confirmation(client, wave, token), **hx("rollout-panel"))
    job_url = go["HX-Redirect"]
    assert "/rollout-jobs/" in job_url
    assert WaveDevice.objects.filter(wave=wave).count() == 30 and Rollout.objects.get(wave=wave).created_by == bob
    page = client.get(job_url)
    assert page.status_code == 200 and b"A Wave is being rolled out to 30 devices." in page.content
    assert b'hx-trigger="every 1s"' not in page.content  # a finished job stops polling
    fragment = client.get(job_url, **hx("rollout-job"))
    assert b"<html" not in fragment.content and b'id="rollout-job"' in fragment.content


def test_a_queued_job_polls_and_shows_its_progress(client, bob, dave, fleet100, wave, small_threshold):
    token = rollout_jobs.rollout_job_start(wave=wave, actor=bob, uuids=[], expected=30)  # on_commit never runs here
    login(client, dave)  # support may watch
    page = client.get(reverse("rollout-job", args=[wave.name, token]))
    assert b'hx-trigger="every 1s"' in page.content and b"Waiting for a worker" in page.content and b"<progress" in page.content


def test_progress_is_reported_as_rows_are_staged_and_a_second_delivery_does_nothing(factory, bob, fleet100, wave, monkeypatch):
    monkeypatch.setattr("waves.services.STAGE_CHUNK", 10)
    uuids = [str(u) for u in fleet100.filter(is_production=True).values_list("uuid", flat=True)[:25]]
    token = rollout_jobs.rollout_job_start(wave=wave, actor=bob, uuids=uuids, expected=25)
    seen = []
    original = rollout_jobs.cache.set

    def spy(key, value, *args, **kwargs):
        if key.endswith(token):
            seen.append((value["status"], value["done"]))
        return original(key, value, *args, **kwargs)

    monkeypatch.setattr(rollout_jobs.cache, "set", spy)
    rollout_jobs.rollout_job_run(token=token, wave_id=wave.id, actor_id=bob.id, params={"group": None, "uuids": uuids})
    assert ("running", 10) in seen and ("running", 20) in seen and seen[-1] == ("done", 25)
    rollout_jobs.rollout_job_run(token=token, wave_id=wave.id, actor_id=bob.id, params={"group": None, "uuids": uuids})
    assert WaveDevice.objects.filter(wave=wave).count() == 25 and Rollout.objects.filter(wave=wave).count() == 1


def test_a_job_whose_wave_was_canceled_fails_with_the_reason_and_stages_nothing(factory, bob, fleet100, wave):
    uuids = [str(u) for u in fleet100.filter(is_production=True).values_list("uuid", flat=True)[:5]]
    token = rollout_jobs.rollout_job_start(wave=wave, actor=bob, uuids=uuids, expected=5)
    wave_cancel(wave=wave, actor=bob)
    rollout_jobs.rollout_job_run(token=token, wave_id=wave.id, actor_id=bob.id, params={"group": None, "uuids": uuids})
    job = rollout_jobs.rollout_job_get(token=token, factory=factory)
    assert job["status"] == "failed" and "only an active wave can be rolled out" in job["message"]
    assert not WaveDevice.objects.exists()


def test_only_release_managers_start_jobs_and_other_factories_cannot_see_them(client, bob, carol, eve, fleet100, wave):
    with pytest.raises(Forbidden):
        rollout_jobs.rollout_job_start(wave=wave, actor=carol, uuids=[], expected=1)
    token = rollout_jobs.rollout_job_start(wave=wave, actor=bob, uuids=[], expected=1)
    login(client, eve)
    assert client.get(reverse("rollout-job", args=[wave.name, token])).status_code in (403, 404)
    login(client, carol)
    assert client.get(reverse("rollout-job", args=[wave.name, "nope"])).status_code == 404
