"""Deployment checks (`manage.py check --deploy`) for running Breakwater as several processes.

With PostgreSQL, web, gateway and worker processes may run on several machines and share nothing
but the database, Redis and the broker. Each check names a setting whose default keeps state in
one machine's BREAKWATER_VAR_DIR, where processes on another machine never see it.
"""
import os

from django.conf import settings
from django.core.checks import Warning, register

HINT = "Set it to the same value for every web, gateway and worker process (README: Deployment)."


def _multi_process_database():
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


@register("breakwater", deploy=True)
def shared_state_check(app_configs=None, **kwargs):
    """Per-machine defaults that only an embedded (SQLite, one machine) install should rely on."""
    if not _multi_process_database():
        return []
    found = []
    if not settings.REDIS_URL:
        found.append(
            Warning(
                "REDIS_URL is not set: the cache lives in files on this machine. Sign-in limits, rollout "
                "previews, background rollout progress and the status caches are then not shared with "
                "processes on other machines, and each gateway process buffers its own check-ins.",
                hint="Set REDIS_URL to one Redis for every web, gateway and worker process (README: Deployment).",
                id="breakwater.W001",
            )
        )
    if str(settings.CELERY_BROKER_URL).startswith("filesystem://"):
        found.append(
            Warning(
                "CELERY_BROKER_URL is not set: tasks (background rollouts, status aggregation, TUF "
                "re-signing) are queued in files on this machine, and workers on other machines never "
                "see them.",
                hint="Set CELERY_BROKER_URL to a Redis or RabbitMQ server every process reaches (README: Deployment).",
                id="breakwater.W002",
            )
        )
    if not os.environ.get("SECRET_KEY"):
        found.append(
            Warning(
                f"SECRET_KEY is not set: it was generated into {settings.VAR_DIR / 'secret_key'}. A process on "
                "another machine generates its own and refuses the sessions signed here.",
                hint=HINT,
                id="breakwater.W003",
            )
        )
    if not os.environ.get("BREAKWATER_KEY_ENCRYPTION_KEY"):
        found.append(
            Warning(
                "BREAKWATER_KEY_ENCRYPTION_KEY is not set: it was generated into "
                f"{settings.VAR_DIR / 'key_encryption_key'}. A process on another machine generates its own "
                "and cannot decrypt the online TUF keys and device CA keys stored with this one.",
                hint=HINT,
                id="breakwater.W004",
            )
        )
    return found
