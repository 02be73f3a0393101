"""What each gateway worker process runs (`--app factory.project.gateway.worker:service`): the gateway
handler, and the check-in flusher thread with its last flush when the worker stops."""
import os

# Every device on a tag shares its view rows: keep them a second in each worker instead of reading
# them on every poll (see factory.tuf.served.tag_views). Set before Django reads settings.
os.environ.setdefault("BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS", "1")

# The handler module sets Django up: it comes first.
from .handler import application  # noqa: E402, I001

from devices import checkins  # noqa: E402


class GatewayService:
    def __init__(self, gateway):
        self.respond = gateway.respond
        self._flusher = None

    def start(self):
        self._flusher = checkins.Flusher()
        self._flusher.start()

    def stop(self):
        if self._flusher is not None:
            self._flusher.stop()


service = GatewayService(application)
