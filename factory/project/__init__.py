"""The project package: settings, URLs, the API root, the Celery app and the processes.

The Celery app is loaded here, as Django's Celery guide does, so every process that runs Django
has it before a task is sent; the `factory` package stays free of it, so the CLI imports neither.
"""
from .celery import app as celery_app

__all__ = ["celery_app"]
