"""WSGI entry point for the dashboard and the REST API."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")
application = get_wsgi_application()
