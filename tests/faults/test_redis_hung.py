"""Redis accepting connections and never answering (hung, half-open after a failover): the cache
and the check-in buffer fail within seconds instead of holding a request forever."""
import socket
import threading

import pytest
import redis
from django.conf import settings
from django.core.cache.backends.redis import RedisCache

from devices.checkins import RedisBuffer


@pytest.fixture
def silent_redis():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # keep it open, say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _fails_within(call, seconds):
    """`call` raises a Redis error within `seconds` (run in a thread, so a hang fails the test)."""
    outcome = []

    def run():
        try:
            call()
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - the test looks at which one
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting for Redis after {seconds} s"
    assert isinstance(outcome[0], redis.exceptions.RedisError), outcome[0]


LIMIT = settings.REDIS_SOCKET_OPTIONS["socket_timeout"] + 2


def test_the_cache_gives_up_within_seconds(silent_redis):
    cache = RedisCache(silent_redis, {"OPTIONS": settings.REDIS_SOCKET_OPTIONS})
    _fails_within(lambda: cache.get("anything"), LIMIT)


def test_the_checkin_buffer_gives_up_within_seconds(silent_redis):
    buffer = RedisBuffer(silent_redis, "bw-test")
    _fails_within(lambda: buffer.add_events([{"device_id": 1}]), LIMIT)
