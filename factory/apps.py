from django.apps import AppConfig

from .logs import log_records_one_line


class FactoryConfig(AppConfig):
    name = "factory"
    verbose_name = "Factory"

    def ready(self):
        from . import checks  # noqa: F401 (registers the deployment checks)

        log_records_one_line()
