"""OSTree builds: a commit made with the real `ostree` CLI is imported, published by CI, and served
under /treehub/ only to devices whose own view lists it. Skipped without `ostree`."""
import subprocess
import uuid

import pytest
from django.test import Client

from devices.services import device_create
from factory import ostree
from factory.errors import ApplicationError
from factory.models import AuditEntry, CiTarget
from factory.project.celery import app
from factory.project.gateway.treehub import treehub
from factory.tuf.services.repository import ci_build_publish, ostree_build_publish
from waves.services import wave_complete, wave_init, wave_rollout, wave_sign

from .test_api import ApiClient, token_of
from .tuf_client import offline_targets_key

pytestmark = pytest.mark.skipif(not ostree.available(), reason="the ostree CLI is not installed")

HWID = "intel-corei7-64"


@pytest.fixture(autouse=True)
def ostree_dir(settings, tmp_path):
    settings.OSTREE_DIR = tmp_path / "ostree"


def ost(*args):
    return subprocess.run(["ostree", *args], check=True, capture_output=True, text=True).stdout.strip()


class Build:
    """A developer-side archive repository with commits made from small trees."""

    def __init__(self, root):
        self.root = root
        self.repo = root / "src"
        self.repo.mkdir(parents=True)
        ost(f"--repo={self.repo}", "init", "--mode=archive")

    def commit(self, files):
        tree = self.root / f"tree-{uuid.uuid4().hex[:6]}"
        for name, text in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text(text)
        return ost(f"--repo={self.repo}", "commit", "--branch=lmp", f"--tree=dir={tree}", "-s", "build")

    def upload(self, commit):
        path = self.root / f"{commit}.delta"
        ost(f"--repo={self.repo}", "static-delta", "generate", "--empty", "--inline", f"--to={commit}", f"--filename={path}")
        return path


@pytest.fixture
def build(tmp_path):
    return Build(tmp_path / "build")


def objects_of(build, commit):
    """What the developer's repository says the commit reaches (checked independently of the index)."""
    found = subprocess.run(["find", str(build.repo / "objects"), "-type", "f"], capture_output=True, text=True).stdout.split()
    return {p.split(f"{build.repo}/", 1)[1] for p in found}


def make_device(factory, *, tag, production=False):
    return device_create(factory=factory, uuid=uuid.uuid4(), name=f"dev-{uuid.uuid4().hex[:6]}", tag=tag, is_production=production, hardware_id=HWID)


def publish(factory, bob, build, version, files, tag="main"):
    commit = build.commit(files)
    ostree_build_publish(factory=factory, commit=commit, upload=build.upload(commit), version=version, hardware_ids=[HWID], tags=[tag], actor=bob)
    return commit


# --- import ---------------------------------------------------------------------------------------


def test_an_imported_commit_indexes_exactly_the_objects_it_reaches(factory, build):
    commit = build.commit({"usr/bin/tool": "v1", "etc/os-release": "ID=lmp"})
    index = ostree.commit_import(factory_name=factory.name, commit=commit, upload=build.upload(commit))
    assert set(index["objects"]) == objects_of(build, commit)
    assert f"objects/{commit[:2]}/{commit[2:]}.commit" in index["objects"]
    for path in index["objects"]:
        assert (ostree.repo_path(factory.name) / path).is_file()


def test_an_upload_of_another_commit_is_refused(factory, build):
    one = build.commit({"a": "1"})
    other = build.commit({"a": "2"})
    with pytest.raises(ApplicationError, match="does not hold commit"):
        ostree.commit_import(factory_name=factory.name, commit=other, upload=build.upload(one))
    assert not ostree.is_stored(factory_name=factory.name, commit=other)


def test_garbage_and_bad_checksums_are_refused(factory, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a delta")
    with pytest.raises(ApplicationError, match="failed"):
        ostree.commit_import(factory_name=factory.name, commit="a" * 64, upload=junk)
    with pytest.raises(ApplicationError, match="64 lowercase"):
        ostree.commit_import(factory_name=factory.name, commit="../" + "a" * 61, upload=junk)


@pytest.mark.parametrize(
    "path",
    ["objects/../config", "objects/aa/" + "b" * 62 + ".file", "objects/aa/" + "B" * 62 + ".filez", "deltas/../../etc/passwd", "refs/heads/lmp", "/etc/passwd", "objects/aa/" + "b" * 62 + ".filez/"],
)
def test_odd_treehub_paths_map_to_no_file(path):
    assert ostree.served_file(factory_name="acme", path=path) is None


# --- CI publishes ---------------------------------------------------------------------------------


def test_ci_publishes_an_ostree_build_through_the_api(client, factory, bob, build):
    commit = build.commit({"usr/bin/tool": "v1"})
    api = ApiClient(client, token_of(bob, factory))
    url = api.url("targets/ostree") + f"?commit={commit}&version=7&hardware_id={HWID}&tag=main"
    response = client.post(url, build.upload(commit).read_bytes(), content_type="application/octet-stream", **api._headers())
    assert response.status_code == 201, response.content
    target = CiTarget.objects.get(factory=factory, version=7)
    assert (target.sha256, target.length, target.custom["targetFormat"], target.tags) == (commit, 0, "OSTREE", ["main"])
    assert AuditEntry.objects.filter(factory=factory, action="ostree.import", target=commit).exists()


def test_the_api_refuses_a_mismatched_commit_an_empty_body_and_readers(client, factory, bob, carol, build):
    one, other = build.commit({"a": "1"}), build.commit({"a": "2"})
    body = build.upload(one).read_bytes()
    for user, commit, data, status in [(bob, other, body, 400), (bob, one, b"", 400), (carol, one, body, 403), (bob, "x" * 64, body, 400)]:
        api = ApiClient(client, token_of(user, factory))
        url = api.url("targets/ostree") + f"?commit={commit}&version=8&hardware_id={HWID}&tag=main"
        assert client.post(url, data, content_type="application/octet-stream", **api._headers()).status_code == status
    assert not CiTarget.objects.filter(factory=factory, version=8).exists()


def test_an_ostree_target_of_a_commit_never_uploaded_is_refused(factory, bob):
    with pytest.raises(ApplicationError, match="not stored"):
        ci_build_publish(factory=factory, version=9, hardware_ids=[HWID], tags=["main"], actor=bob, targets={HWID: {"sha256": "c" * 64, "length": 0}}, custom={"targetFormat": "OSTREE"})


# --- the gateway's /treehub/ ----------------------------------------------------------------------


def test_a_device_fetches_the_objects_of_its_own_commits_and_nothing_else(factory, bob, build):
    mine = publish(factory, bob, build, 10, {"usr/bin/tool": "main"}, tag="main")
    theirs = publish(factory, bob, build, 11, {"usr/bin/tool": "other"}, tag="other")
    device = make_device(factory, tag="main")
    repo = ostree.repo_path(factory.name)
    for path in ostree.commit_files(factory_name=factory.name, commit=mine)["objects"]:
        status, _, body = treehub(device, "GET", path)
        assert status == 200 and body == (repo / path).read_bytes()
    own = set(ostree.commit_files(factory_name=factory.name, commit=mine)["objects"])
    for path in set(ostree.commit_files(factory_name=factory.name, commit=theirs)["objects"]) - own:
        assert treehub(device, "GET", path)[0] == 404
    assert treehub(device, "GET", "objects/../config")[0] == 404
    assert treehub(device, "GET", f"objects/{mine[:2]}/{mine[2:]}.commit/../../config")[0] == 404
    assert treehub(device, "POST", "download-urls")[0] == 404
    assert treehub(device, "GET", "config")[0] == 200
    assert treehub(device, "DELETE", f"objects/{mine[:2]}/{mine[2:]}.commit")[0] == 405


# --- waves: static deltas and visibility ----------------------------------------------------------


@pytest.fixture
def eager():
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.mark.django_db(transaction=True)
def test_wave_init_makes_the_delta_from_production_and_serves_it_only_to_staged_devices(factory, bob, build, eager):
    v1 = publish(factory, bob, build, 1, {"usr/bin/tool": "one", "etc/big": "x" * 5000}, tag="production")
    v2 = publish(factory, bob, build, 2, {"usr/bin/tool": "two", "etc/big": "x" * 5000}, tag="production")
    archive = offline_targets_key(factory=factory, actor=bob)
    first = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v1", version=1, tag="production"), actor=bob, key_archive=archive)
    wave_complete(wave=first, actor=bob)
    staged, held = make_device(factory, tag="production", production=True), make_device(factory, tag="production", production=True)
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v2", version=2, tag="production"), actor=bob, key_archive=archive)
    wave_rollout(wave=wave, actor=bob, uuids=str(staged.uuid))

    deltas = ostree.commit_files(factory_name=factory.name, commit=v2)["deltas"]
    index_file = [p for p in deltas if p.startswith("delta-indexes/")]
    assert len(index_file) == 1
    assert deltas and all(p.startswith(ostree.delta_folder(v1, v2) + "/") for p in set(deltas) - set(index_file))
    assert any(p.endswith("/superblock") for p in deltas)
    for path in deltas:
        assert treehub(staged, "GET", path)[0] == 200
        assert treehub(held, "GET", path)[0] == 404
    v2_only = set(ostree.commit_files(factory_name=factory.name, commit=v2)["objects"]) - set(ostree.commit_files(factory_name=factory.name, commit=v1)["objects"])
    assert v2_only
    for path in v2_only:
        assert treehub(staged, "GET", path)[0] == 200
        assert treehub(held, "GET", path)[0] == 404  # not staged: the wave's commit is not in its view
    commit_path = f"objects/{v1[:2]}/{v1[2:]}.commit"
    assert treehub(held, "GET", commit_path)[0] == 200  # production's commit is
