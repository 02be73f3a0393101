"""What a device's headers say about its client (User-Agent, OSTree commit, apps) travels with its
check-in and is written at the flush where it changed: never a database write per request."""
import copy
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import checkins
from devices.checkins import Checkin, MemoryBuffer, flush
from devices.models import DeadLetter, Device, DeviceReport
from factory.project.gateway.handler import Gateway, gateway_devices
from tests.fuzz.harness import buffer_empty, der_of, environ_for

from .test_checkins import T0, redis_buffer

HEADERS = {"User-Agent": "Aktualizr-lite/2024.12", "x-ats-ostreehash": "ab" * 32, "x-ats-dockerapps": "shellhttpd"}
OLD_LRU_SIZE = 50_000  # the per-process memory of written facts this replaced


@pytest.fixture
def device(db, factory, register):
    buffer_empty()
    files = register(factory, production=False, tag="main")
    # As the gateway caches it (with its factory and group): the copies below read nothing.
    device = gateway_devices().get(uuid=files.uuid)
    gateway = Gateway()
    der = der_of(files.response["certificate"])

    def send(headers, path="/device"):
        # The gateway's own door, without the harness's savepoint around it: what is measured is
        # what a request costs.
        status, _, _ = gateway.respond(environ_for(der, method="GET", path=path, headers=headers))
        return status

    device.send, device.gateway = send, gateway
    send(HEADERS)  # warm-up: the device, its CA and its certificate are cached
    yield device
    buffer_empty()


def client_writes(queries):
    table = DeviceReport._meta.db_table
    return [q["sql"] for q in queries.captured_queries if table in q["sql"] and not q["sql"].lstrip().upper().startswith("SELECT")]


def stored_facts(device):
    row = DeviceReport.objects.filter(device=device, kind=DeviceReport.Kind.CLIENT).first()
    return json.loads(row.content) if row else None


def test_a_hundred_polls_with_the_same_headers_write_nothing_until_the_flush_and_once_then(device):
    with CaptureQueriesContext(connection) as queries:
        for _ in range(100):
            assert device.send(HEADERS)== 200
    assert queries.captured_queries == []
    assert stored_facts(device) is None
    with CaptureQueriesContext(connection) as queries:
        flush()
    assert len(client_writes(queries)) == 1
    assert stored_facts(device) == {"user_agent": HEADERS["User-Agent"], "ostree_hash": "ab" * 32, "docker_apps": "shellhttpd"}
    for _ in range(100):
        device.send(HEADERS)
    with CaptureQueriesContext(connection) as queries:
        flush()
    assert client_writes(queries) == []  # nothing changed: the flush only read


def test_a_changed_user_agent_is_written_at_the_next_flush_and_absent_headers_keep_the_others(device):
    flush()
    device.send({**HEADERS, "User-Agent": "Aktualizr-lite/2025.1"})
    device.send({})  # a request without the headers changes no fact
    assert stored_facts(device)["user_agent"] == HEADERS["User-Agent"]
    flush()
    assert stored_facts(device) == {"user_agent": "Aktualizr-lite/2025.1", "ostree_hash": "ab" * 32, "docker_apps": "shellhttpd"}


def test_polls_of_more_devices_than_the_old_memory_held_cost_no_query(device, monkeypatch):
    """The old per-process memory of written facts (50,000 devices) thrashed past its size and
    every poll wrote; now a poll costs no query whatever the fleet. The devices are copies of one
    with their own ids, served from the gateway's device cache as a warm gateway serves them."""
    fleet = []
    for pk in range(10**9, 10**9 + OLD_LRU_SIZE + 1):
        twin = copy.copy(device)
        twin.pk = twin.id = pk
        fleet.append(twin)
    turn = iter([])

    monkeypatch.setattr(device.gateway, "device", lambda peer: next(turn))
    for round_ in ("warm-up", "measured"):
        turn = iter(fleet)
        headers = {**HEADERS, "User-Agent": f"Aktualizr-lite/{round_}"}  # changed facts, each round
        with CaptureQueriesContext(connection) as queries:
            for _ in fleet:
                assert device.send(headers)== 200
        assert len(queries.captured_queries) == 0, round_
    pending = checkins.buffer().drain_checkins()
    assert len(pending) == OLD_LRU_SIZE + 2
    assert pending[fleet[-1].pk].client["user_agent"] == "Aktualizr-lite/measured"


def test_an_older_check_in_only_fills_in_facts_the_newer_did_not_send(device):
    buf = MemoryBuffer()
    buf.checkin(device.pk, Checkin(seen=T0 + 10, client={"user_agent": "new"}))
    buf.checkin(device.pk, Checkin(seen=T0, client={"user_agent": "old", "ostree_hash": "cd" * 32}))
    flush(buf)
    assert stored_facts(device) == {"user_agent": "new", "ostree_hash": "cd" * 32}
    # A late flush of an older check-in (another gateway) does not move the stored facts back.
    buf.checkin(device.pk, Checkin(seen=T0 + 5, client={"user_agent": "older", "docker_apps": "app"}))
    flush(buf)
    assert stored_facts(device) == {"user_agent": "new", "ostree_hash": "cd" * 32, "docker_apps": "app"}


def test_client_facts_that_are_not_text_become_a_dead_letter_and_the_rest_are_written(device, factory, register):
    other = Device.objects.get(uuid=register(factory, production=False, tag="main").uuid)
    buf = MemoryBuffer()
    buf.checkin(device.pk, Checkin(seen=T0, client={"user_agent": ["not", "text"]}))
    buf.checkin(other.pk, Checkin(seen=T0, client={"user_agent": "fine"}))
    assert flush(buf) == (2, 0)
    assert stored_facts(other) == {"user_agent": "fine"}
    assert stored_facts(device) is None
    letter = DeadLetter.objects.get()
    assert (letter.kind, letter.device_id, letter.factory_id) == ("check-in", device.pk, device.factory_id)
    assert flush(buf) == (0, 0)


def test_the_redis_buffer_carries_the_client_facts(device):
    buf = redis_buffer()
    buf.checkin(device.pk, Checkin(seen=T0, client={"user_agent": "Aktualizr-lite/1", "docker_apps": "shellhttpd"}))
    buf.push()
    # Another gateway's newer check-in with one fact, and an older one pushed after it.
    buf.checkin(device.pk, Checkin(seen=T0 + 10, client={"user_agent": "Aktualizr-lite/2 ü"}))
    buf.push()
    buf.checkin(device.pk, Checkin(seen=T0 + 5, client={"user_agent": "Aktualizr-lite/1.5", "ostree_hash": "ef" * 32}))
    pending = buf.drain_checkins()
    assert pending[device.pk].client == {"user_agent": "Aktualizr-lite/2 ü", "docker_apps": "shellhttpd", "ostree_hash": "ef" * 32}
    assert pending[device.pk].seen == T0 + 10
    buf.restore_checkins(pending)
    assert flush(buf) == (1, 0)
    assert stored_facts(device) == {"user_agent": "Aktualizr-lite/2 ü", "docker_apps": "shellhttpd", "ostree_hash": "ef" * 32}
