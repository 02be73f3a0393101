from django.apps import AppConfig


class FactoryConfig(AppConfig):
    name = "factory"
    verbose_name = "Factory"

    def ready(self):
        from . import checks  # noqa: F401 (registers the deployment checks)
