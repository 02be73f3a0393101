"""Shared plumbing for Breakwater's management commands: errors become CommandError."""
from contextlib import contextmanager

from django.core.management.base import CommandError

from factory.auth import factory_get
from factory.errors import ApplicationError


@contextmanager
def application_errors():
    try:
        yield
    except ApplicationError as exc:
        raise CommandError(exc.message) from None


def get_factory(name):
    with application_errors():
        return factory_get(name)
