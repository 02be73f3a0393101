"""A Celery worker killed -9 in the middle of a background rollout: nothing is staged twice or
lost, the job page says the rollout failed instead of spinning, and rolling out again stages
exactly the devices that are missing.

The same fault during the status aggregation (a task that acknowledges late and is redelivered)
is tests/waves/test_status_aggregation.py::test_a_worker_killed_mid_aggregation_loses_nothing_and_counts_nothing_twice.
"""
import time
import uuid

import pytest
from django.db.models import Count
from django.urls import reverse

from devices.models import Device
from factory.project.celery import app as celery_app
from factory.tuf.services.repository import ci_build_publish
from tests.factory.test_views import hx, login
from tests.tuf_helpers import offline_targets_key
from tests.waves.conftest import HWIDS, TAG, make_wave, seed
from tests.waves.test_views_rollout import confirmation, preview
from waves import rollout_jobs
from waves.models import Rollout, WaveDevice
from waves.services import wave_rollout

from .conftest import child_env, python, wait_until

THRESHOLD = 50
PAUSE_AT = 60


@pytest.fixture
def queue():
    """A queue of this test's own, so no other worker on the machine takes its rollout."""
    name = f"faults-rollout-{uuid.uuid4().hex[:10]}"
    before = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = name
    yield name
    celery_app.conf.task_default_queue = before
    if celery_app.conf.broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(celery_app.conf.broker_url).delete(name)


def start_worker(processes, tmp_path, queue, name, **env):
    worker = processes.start(
        python(
            "-m", "tests.faults.rollout_worker", "-l", "info", "--pool", "prefork", "--concurrency", "1",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{name}-{queue}@%h", "-Q", queue,
        ),
        env=child_env(BREAKWATER_ROLLOUT_JOB_HEARTBEAT_SECONDS=0.5, **env),
        log=tmp_path / f"{name}.log",
        graceful=False,  # nothing is left to finish at the end of the test
    )
    worker.wait_for_log("ready.")
    return worker


def roll_out_in_the_background(client, wave, uuids):
    """Preview the list, confirm it and roll it out from the dashboard; returns the job page URL."""
    response, token = preview(client, wave, {"uuids": "\n".join(uuids)})
    assert response.status_code == 200, response.content[-2000:]
    go = client.post(reverse("rollout-perform", args=[wave.name, token]), confirmation(client, wave, token), **hx("rollout-panel"))
    assert "/rollout-jobs/" in go["HX-Redirect"]
    return go["HX-Redirect"]


def job_page(client, url):
    page = client.get(url, **hx("rollout-job"))
    assert page.status_code == 200
    return page.content.decode()


def job_page_saying(client, url, text):
    html = job_page(client, url)
    return html if text in html else None


def staged(wave):
    return {str(u) for u in WaveDevice.objects.filter(wave=wave).values_list("device__uuid", flat=True)}


def test_a_worker_killed_mid_rollout_stages_nothing_and_rolling_out_again_stages_exactly_the_missing_devices(
    transactional_db, client, factory, bob, settings, processes, tmp_path, queue
):
    settings.BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD = THRESHOLD
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    seed(factory, ungrouped=200)
    wave = make_wave(factory, bob, archive)
    listed = [str(u) for u in Device.objects.filter(factory=factory, is_production=True).order_by("name").values_list("uuid", flat=True)]
    earlier = listed[:20]
    wave_rollout(wave=wave, actor=bob, uuids=earlier)  # a phase rolled out before: the list skips these

    # 1. The worker writes 60 of the 180 rows in its open transaction, then is killed -9.
    worker = start_worker(processes, tmp_path, queue, "killed", FAULTS_PAUSE_AT=PAUSE_AT, FAULTS_STAGE_CHUNK=20)
    login(client, bob)
    job = roll_out_in_the_background(client, wave, listed)
    wait_until(lambda: job_page_saying(client, job, f"Staging devices: {PAUSE_AT} of 180."), timeout=30)
    worker.kill()

    # 2. The job page stops spinning and says the rollout failed (the worker's heartbeat expires
    #    3 s after the kill here; 30 s with the default settings).
    killed = time.monotonic()
    page = wait_until(lambda: job_page_saying(client, job, "did not happen"), timeout=20)
    shown_after = time.monotonic() - killed
    assert "The worker running it stopped (killed or restarted) at 60 of 180 devices, before the rollout was saved" in page
    assert "Nothing was staged." in page and "every 1s" not in page
    assert shown_after < 10

    # 3. None of its rows were kept: only the earlier phase is staged, in one recorded rollout.
    assert staged(wave) == set(earlier)
    assert Rollout.objects.filter(wave=wave).count() == 1

    # 4. Rolling the same list out again (a new worker) stages exactly the 180 missing devices,
    #    each once; the killed transaction left no lock behind that would stop it.
    start_worker(processes, tmp_path, queue, "restarted")
    again = roll_out_in_the_background(client, wave, listed)
    done = wait_until(lambda: job_page_saying(client, again, "Back to the wave"), timeout=30)
    assert "did not happen" not in done and "180 devices" in done
    assert staged(wave) == set(listed)
    assert not WaveDevice.objects.filter(wave=wave).values("device").annotate(n=Count("id")).filter(n__gt=1).exists()
    assert WaveDevice.objects.filter(wave=wave).count() == len(listed) == 200
    assert list(Rollout.objects.filter(wave=wave).order_by("id").values_list("device_count", flat=True)) == [20, 180]
    # The killed job stays failed: its message was taken by the dead worker and its claim stops
    # any copy from running it now.
    assert "did not happen" in job_page(client, job)
    assert rollout_jobs.rollout_job_get(token=job.rstrip("/").rsplit("/", 1)[-1], factory=factory)["status"] == "failed"


# --- the heartbeat's verdicts, without a real worker ------------------------------------------------


@pytest.fixture
def small_fleet(factory, bob):
    archive = offline_targets_key(factory=factory, actor=bob)
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=[TAG])
    seed(factory, ungrouped=10)
    wave = make_wave(factory, bob, archive)
    uuids = [str(u) for u in Device.objects.filter(factory=factory).values_list("uuid", flat=True)]
    return wave, uuids


def running_job(wave, bob, uuids, done):
    """A job a worker took and reported `done` rows of; its heartbeat has lapsed unless renewed."""
    token = rollout_jobs.rollout_job_start(wave=wave, actor=bob, uuids=uuids, expected=len(uuids))  # on_commit never runs here
    assert rollout_jobs._claim(token)
    state = rollout_jobs.cache.get(rollout_jobs._key(token))
    rollout_jobs._save(token, state, status="running", started_at=time.time() - 5, done=done, total=len(uuids))
    return token


def test_a_job_whose_worker_still_beats_keeps_running(factory, bob, small_fleet):
    wave, uuids = small_fleet
    token = running_job(wave, bob, uuids, done=4)
    rollout_jobs.cache.set(rollout_jobs._alive_key(token), time.time(), 30)
    assert rollout_jobs.rollout_job_get(token=token, factory=factory)["status"] == "running"


def test_a_worker_lost_after_its_rollout_was_saved_shows_it_done(factory, bob, small_fleet):
    """All rows written, then the worker died: between the commit and its report, or before the
    commit. The rollout record tells which."""
    wave, uuids = small_fleet
    lost_before_commit = running_job(wave, bob, uuids, done=len(uuids))
    assert rollout_jobs.rollout_job_get(token=lost_before_commit, factory=factory)["status"] == "failed"
    lost_after_commit = running_job(wave, bob, uuids, done=len(uuids))
    wave_rollout(wave=wave, actor=bob, uuids=uuids)
    job = rollout_jobs.rollout_job_get(token=lost_after_commit, factory=factory)
    assert job["status"] == "done" and job["message"] == "Rolled out to 10 devices (the worker stopped before it could report it)."
