"""Rollouts that run in the background, with progress any web process can show.

A job's state lives in the shared cache (Redis in production, the file cache when embedded):
queued -> running (done/total as rows are staged) -> done or failed. The rollout itself is the
same `wave_rollout` service in one transaction, so a job that dies stages nothing.

A job never stays queued or running forever: a broker that cannot be reached fails it at once,
a running job keeps a heartbeat and is failed when its worker stops beating (killed, restarted),
and a job no worker starts within BREAKWATER_ROLLOUT_JOB_QUEUE_PATIENCE_SECONDS is called off.

The Celery task that runs a job is defined here, with the job: starting a job sends it and the
task runs the job, so in a module of its own it and this one would import each other.
waves/tasks.py imports it, so the worker registers it.
"""
import logging
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone as dt_timezone

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction

from factory.auth import authorize
from factory.errors import ApplicationError, NotFound
from factory.plurals import counted

from .models import Rollout, Wave
from .services import wave_rollout

logger = logging.getLogger(__name__)

JOB_TTL_SECONDS = 6 * 3600
# A worker missing this many heartbeats in a row is taken for gone.
MISSED_HEARTBEATS = 6


def background_threshold():
    """Rollouts of more devices than this run as a task (the dashboard shows a progress bar)."""
    return int(getattr(settings, "BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD", 2000))


def heartbeat_seconds():
    return float(getattr(settings, "BREAKWATER_ROLLOUT_JOB_HEARTBEAT_SECONDS", 5))


def queue_patience_seconds():
    return float(getattr(settings, "BREAKWATER_ROLLOUT_JOB_QUEUE_PATIENCE_SECONDS", 900))


def _key(token):
    return f"breakwater:rollout-job:{token}"


def _claim(token):
    """Take the job for whoever runs it or calls it off: the first one wins, once."""
    return cache.add(f"{_key(token)}:claim", 1, JOB_TTL_SECONDS)


def _alive_key(token):
    return f"{_key(token)}:alive"


def _save(token, state, **changes):
    state.update(changes)
    cache.set(_key(token), state, JOB_TTL_SECONDS)
    return state


def rollout_job_start(*, wave, actor, group=None, uuids=None, expected=0):
    """Queue a rollout of `wave` (same arguments as wave_rollout); return the job's token.

    If the task cannot be sent (the broker is down), the job fails with a message saying so; the
    caller shows the job either way."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    token = secrets.token_urlsafe(16)
    state = {
        "status": "queued",
        "done": 0,
        "total": expected,
        "wave": wave.name,
        "wave_id": wave.id,
        "factory_id": wave.factory_id,
        "message": "",
        "queued_at": time.time(),
    }
    cache.set(_key(token), state, JOB_TTL_SECONDS)
    params = {"group": group, "uuids": [str(u) for u in uuids] if uuids is not None else None}
    args = (token, wave.id, actor.pk if actor else None, params)

    def send():
        try:
            wave_rollout_job.delay(*args)
        except Exception:
            # Sent after the commit, so the request may be over: the job page tells the user.
            # Claiming it keeps a message that got through after all from running later.
            logger.exception("could not queue the rollout job of wave %s", wave.name)
            if _claim(token):
                _save(
                    token,
                    state,
                    status="failed",
                    message=(
                        "The task queue that runs large rollouts cannot be reached; try again when it is back, "
                        f"or roll out at most {counted(background_threshold(), 'device')} at a time, which needs no task queue"
                    ),
                )

    transaction.on_commit(send)
    return token


def rollout_job_get(*, token, factory):
    state = cache.get(_key(token))
    if state is None or state["factory_id"] != factory.id:
        raise NotFound("This rollout job is unknown or expired")
    if state["status"] == "running" and cache.get(_alive_key(token)) is None:
        return _worker_lost(token, state)
    if state["status"] == "queued" and time.time() - state.get("queued_at", time.time()) > queue_patience_seconds():
        return _never_started(token, state)
    return state


def _worker_lost(token, state):
    """The worker stopped beating. The rollout commits after its last progress report (all rows
    written), so a job short of that was rolled back; one that got there may have committed."""
    done, total = state["done"], state["total"]
    if done >= total and total:
        started = datetime.fromtimestamp(state.get("started_at", 0), tz=dt_timezone.utc) - timedelta(seconds=1)
        saved = Rollout.objects.filter(wave_id=state.get("wave_id"), created_at__gte=started, device_count=total).exists()
        if saved:
            message = f"Rolled out to {counted(total, 'device')} (the worker stopped before it could report it)."
            return _save(token, state, status="done", count=total, message=message)
    return _save(
        token,
        state,
        status="failed",
        message=f"The worker running it stopped (killed or restarted) at {done:,} of {counted(total, 'device')}, before the rollout was saved; roll out again",
    )


def _never_started(token, state):
    if not _claim(token):
        return cache.get(_key(token)) or state  # a worker took it meanwhile
    patience = queue_patience_seconds()
    waited = counted(round(patience / 60), "minute") if patience >= 120 else counted(round(patience), "second")
    return _save(
        token,
        state,
        status="failed",
        message=f"No worker started it within {waited} (are the Celery workers running?), so it was called off; roll out again",
    )


class _Heartbeat(threading.Thread):
    """Marks the job alive while its worker runs it; the mark expires soon after the worker dies."""

    def __init__(self, token):
        super().__init__(name=f"rollout-job-heartbeat-{token[:6]}", daemon=True)
        self.key = _alive_key(token)
        self.every = heartbeat_seconds()
        self.stopped = threading.Event()

    def beat(self):
        cache.set(self.key, time.time(), self.every * MISSED_HEARTBEATS)

    def run(self):
        while not self.stopped.wait(self.every):
            try:
                self.beat()
            except Exception:  # a cache hiccup: the next beat tries again
                logger.warning("rollout job heartbeat failed", exc_info=True)

    def __enter__(self):
        self.beat()
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join(timeout=self.every + 1)
        cache.delete(self.key)


def rollout_job_run(*, token, wave_id, actor_id, params):
    """Run a queued job once: a second delivery of the same message finds it claimed and stops."""
    if not _claim(token):
        return
    state = cache.get(_key(token)) or {"done": 0, "total": 0, "message": ""}
    lock = threading.Lock()

    def save(**changes):
        with lock:
            _save(token, state, **changes)

    with _Heartbeat(token):
        save(status="running", started_at=time.time())
        try:
            wave = Wave.objects.select_related("factory").get(pk=wave_id)
            actor = get_user_model().objects.get(pk=actor_id) if actor_id else None
            result = wave_rollout(
                wave=wave,
                actor=actor,
                group=params.get("group"),
                uuids=params.get("uuids"),
                progress=lambda done, total: save(done=done, total=total),
            )
        except ApplicationError as error:
            save(status="failed", message=error.message)
        except Exception:
            save(status="failed", message="The rollout stopped on an unexpected error; nothing was staged")
            raise
        else:
            save(status="done", done=result.count, total=result.count, message=f"{result.message}.", count=result.count)


@shared_task(name="waves.tasks.wave_rollout_job", ignore_result=True)
def wave_rollout_job(token, wave_id, actor_id, params):
    """A large dashboard rollout. Not acks_late: a redelivered rollout would find its devices
    staged; the job's claim makes a duplicate delivery a no-op instead."""
    rollout_job_run(token=token, wave_id=wave_id, actor_id=actor_id, params=params)
