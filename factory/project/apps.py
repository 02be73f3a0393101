from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project package as an app, so it can hold the commands that run Breakwater's processes
    (demo, gateway); it has no models."""

    name = "factory.project"
    label = "project"
    verbose_name = "Breakwater"
