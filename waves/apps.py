from django.apps import AppConfig


class WavesConfig(AppConfig):
    name = "waves"

    def ready(self):
        from . import key_rotation  # noqa: PLC0415  (Django: receivers connect in ready(), once models load)

        key_rotation.connect()
