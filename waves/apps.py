from django.apps import AppConfig


class WavesConfig(AppConfig):
    name = "waves"

    def ready(self):
        from . import key_rotation  # noqa: PLC0415  (models are loaded only now)

        key_rotation.connect()
