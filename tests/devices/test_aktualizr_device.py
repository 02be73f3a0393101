"""The simulated aktualizr-lite device on the wire, against a fake connection: one POST per event in
aktualizr-lite's format, which answers drop an event and which keep it, and what an OSTREE install fetches."""
import json
from types import SimpleNamespace

from devices.aktualizr_device import USER_AGENT, AktualizrDevice


class Response:
    def __init__(self, status, data=b""):
        self.status, self.data = status, data

    def release_conn(self):
        pass


class Pool:
    def __init__(self, answers):
        self.answers = answers  # path -> list of statuses (the last one repeats)
        self.requests = []

    def request(self, method, path, **kwargs):
        self.requests.append((method, path, kwargs.get("headers", {}), kwargs.get("body")))
        statuses = self.answers.get(path, [404])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return Response(status, b"[core]\nmode=archive-z2\n" if path.endswith("/config") else b"")


class Sim:
    gateway_url = "https://127.0.0.1:8443"
    timeout = 5
    reboot_delay = 0.0

    def __init__(self):
        self.counts = {}

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n


def device(tmp_path):
    identity = SimpleNamespace(name="akl", tag="main", hardware_id="intel-corei7-64", target_name="", group=None)
    return AktualizrDevice(sim=Sim(), identity=identity, folder=tmp_path)


def event(dev, kind="EcuDownloadStarted"):
    return dev._event(kind, "intel-corei7-64-lmp-42", 42, "42-x", details="Updating")


def test_each_event_is_its_own_post_of_a_json_array_in_aktualizr_lite_format(tmp_path):
    dev = device(tmp_path)
    pool = Pool({"/events": [202]})
    dev._flush(pool, [event(dev), event(dev, "EcuDownloadCompleted")])
    posts = [r for r in pool.requests if r[1] == "/events"]
    assert len(posts) == 2 and not dev.outbox
    body = json.loads(posts[0][3])
    assert isinstance(body, list) and len(body) == 1
    first = body[0]
    assert first["eventType"] == {"id": "EcuDownloadStarted", "version": 0}
    assert first["event"]["correlationId"] == "42-x" and first["event"]["version"] == "42"
    assert len(first["deviceTime"]) == 20 and first["deviceTime"].endswith("Z")
    assert first["id"] != json.loads(posts[1][3])[0]["id"]
    assert posts[0][2]["User-Agent"] == USER_AGENT and posts[0][2]["x-ats-target"] == "Initial Target"


def test_a_server_error_keeps_the_event_for_the_next_flush_and_404_or_413_drop_it(tmp_path):
    dev = device(tmp_path)
    dev._flush(Pool({"/events": [503]}), [event(dev)])
    assert len(dev.outbox) == 1
    dev._flush(Pool({"/events": [200]}))
    assert not dev.outbox
    for status in (404, 413):
        dev._flush(Pool({"/events": [status]}), [event(dev)])
        assert not dev.outbox


def test_an_ostree_install_fetches_the_treehub_config_and_the_commit_object(tmp_path):
    dev = device(tmp_path)
    commit = "ab" * 32
    meta = {"hashes": {"sha256": commit}, "length": 0, "custom": {"targetFormat": "OSTREE"}}
    pool = Pool({"/treehub/config": [200], f"/treehub/objects/ab/{commit[2:]}.commit": [200]})
    assert dev._download(pool, "intel-corei7-64-lmp-42", meta) == ""
    assert [r[1] for r in pool.requests] == ["/treehub/config", f"/treehub/objects/ab/{commit[2:]}.commit"]
    assert pool.requests[0][2] == {"User-Agent": "libostree/2022.7", "X-Correlation-ID": "intel-corei7-64-lmp-42"}
    # No treehub on the server yet (the OSTree branch not merged): tolerated.
    assert dev._download(Pool({}), "intel-corei7-64-lmp-42", meta) == ""
