from django.apps import AppConfig


class TufConfig(AppConfig):
    """The TUF repository: its own app above tenancy, so tenancy never needs to know about it."""

    name = "factory.tuf"
    label = "tuf"
    verbose_name = "TUF repository"
