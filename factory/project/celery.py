"""The Celery application: tasks are thin interfaces over the services."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

app = Celery("breakwater")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
