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


class VersionOptionMixin:
    """Lets a command take `--version N` (a target version) instead of Django's own --version."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)
