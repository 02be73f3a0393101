"""Rollouts that run in the background, with progress any web process can show.

A job's state lives in the shared cache (Redis in production, the file cache when embedded):
queued -> running (done/total as rows are staged) -> done or failed. The rollout itself is the
same `wave_rollout` service in one transaction, so a job that dies stages nothing.
"""
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction

from factory.auth import authorize
from factory.errors import ApplicationError, NotFound

from .models import Wave
from .services import wave_rollout

JOB_TTL_SECONDS = 6 * 3600


def background_threshold():
    """Rollouts of more devices than this run as a task (the dashboard shows a progress bar)."""
    return int(getattr(settings, "BREAKWATER_ROLLOUT_BACKGROUND_THRESHOLD", 2000))


def _key(token):
    return f"breakwater:rollout-job:{token}"


def rollout_job_start(*, wave, actor, group=None, uuids=None, expected=0):
    """Queue a rollout of `wave` (same arguments as wave_rollout); return the job's token."""
    from .tasks import wave_rollout_job

    authorize(user=actor, factory=wave.factory, action="wave.manage")
    token = secrets.token_urlsafe(16)
    state = {"status": "queued", "done": 0, "total": expected, "wave": wave.name, "factory_id": wave.factory_id, "message": ""}
    cache.set(_key(token), state, JOB_TTL_SECONDS)
    params = {"group": group, "uuids": [str(u) for u in uuids] if uuids is not None else None}
    transaction.on_commit(lambda: wave_rollout_job.delay(token, wave.id, actor.pk if actor else None, params))
    return token


def rollout_job_get(*, token, factory):
    state = cache.get(_key(token))
    if state is None or state["factory_id"] != factory.id:
        raise NotFound("this rollout job is unknown or expired")
    return state


def rollout_job_run(*, token, wave_id, actor_id, params):
    """Run a queued job once: a second delivery of the same message finds it claimed and stops."""
    if not cache.add(f"{_key(token)}:claim", 1, JOB_TTL_SECONDS):
        return
    state = cache.get(_key(token)) or {"done": 0, "total": 0, "message": ""}

    def save(**changes):
        state.update(changes)
        cache.set(_key(token), state, JOB_TTL_SECONDS)

    save(status="running")
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
        save(status="failed", message="the rollout stopped on an unexpected error; nothing was staged")
        raise
    else:
        save(status="done", done=result.count, total=result.count, message=f"{result.message}.", count=result.count)
