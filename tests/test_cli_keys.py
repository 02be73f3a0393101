"""`breakwater keys download-roots` and `keys rotate-online-key` against a live server: the files a
user gets, and the refusals that write or change nothing."""
import tarfile

from factory.tuf.models import TufKey, TufRoot
from factory.tuf.services import root_changes
from tests.test_cli import cli, env, fast_passwords, one_sentence_error, tokens  # noqa: F401  (fixtures)


def served(factory, channel):
    return {f"{r.version}.root.json": bytes(r.data) for r in TufRoot.objects.filter(factory=factory, channel=channel)}


def test_download_roots_to_a_directory_writes_every_version_as_served(cli, tokens, factory, bob, env):
    root_changes.root_renew(factory=factory, actor=bob)
    result = cli("keys", "download-roots", env.tmp / "roots", token=tokens["dave"])
    assert result.code == 0, result.err
    assert "Saved 2 CI root versions (1.root.json to 2.root.json)" in result.out
    assert {p.name: p.read_bytes() for p in (env.tmp / "roots").iterdir()} == served(factory, "ci")
    # Again into the same directory: nothing changes, nothing fails.
    assert cli("keys", "download-roots", env.tmp / "roots", token=tokens["dave"]).code == 0
    # A copy that differs from the server's is never replaced.
    (env.tmp / "roots" / "1.root.json").write_bytes(b"{}")
    assert "differs from the server's 1.root.json" in one_sentence_error(cli("keys", "download-roots", env.tmp / "roots", token=tokens["dave"]))
    assert (env.tmp / "roots" / "1.root.json").read_bytes() == b"{}"


def test_download_roots_to_an_archive(cli, tokens, factory, env):
    archive = env.tmp / "prod-roots.tgz"
    result = cli("keys", "download-roots", "--prod", archive, token=tokens["carol"])
    assert result.code == 0, result.err
    with tarfile.open(archive) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == served(factory, "production")
    assert "already exists" in one_sentence_error(cli("keys", "download-roots", "--prod", archive, token=tokens["carol"]))


def test_download_roots_refusals(cli, tokens, factory, other_factory, env):
    a_file = env.tmp / "file.txt"
    a_file.write_text("x")
    assert "is a file" in one_sentence_error(cli("keys", "download-roots", a_file, token=tokens["dave"]), code=2)
    assert "Cannot create the directory" in one_sentence_error(cli("keys", "download-roots", a_file / "under", token=tokens["dave"]))
    # A token reads its own factory's roots only.
    assert cli("keys", "download-roots", env.tmp / "eve", token=tokens["eve"]).code == 0
    assert {p.name: p.read_bytes() for p in (env.tmp / "eve").iterdir()} == served(other_factory, "ci") != served(factory, "ci")


def test_rotate_online_key_from_the_cli(cli, tokens, factory, env):
    def online(role):
        return TufKey.objects.get(factory=factory, role=role, online=True, retired_at__isnull=True).keyid

    old = online("timestamp")
    assert "may not do this" in one_sentence_error(cli("keys", "rotate-online-key", "--role", "timestamp", token=tokens["carol"]))
    assert cli("keys", "rotate-online-key", "--role", "root", token=tokens["bob"]).code == 2
    assert online("timestamp") == old and TufRoot.objects.filter(factory=factory).count() == 2
    result = cli("keys", "rotate-online-key", "--role", "timestamp", token=tokens["bob"])
    assert result.code == 0, result.err
    new = online("timestamp")
    assert new != old and f"The online timestamp key is now {new}" in result.out and "applied" in result.out
    assert cli("keys", "download-roots", env.tmp / "r", token=tokens["dave"]).code == 0
    assert sorted(p.name for p in (env.tmp / "r").iterdir()) == ["1.root.json", "2.root.json"]


def test_rotate_online_key_with_the_root_key_offline_signs_with_the_archive(cli, tokens, factory, env):
    root_file = env.tmp / "root.tgz"
    assert cli("keys", "rotate-offline-key", "--role", "root", "-k", root_file, token=tokens["bob"]).code == 0
    pending = cli("keys", "rotate-online-key", "--role", "snapshot", token=tokens["bob"])
    assert pending.code == 0 and "waiting for offline signatures" in pending.out and "root keys" in pending.out
    assert cli("keys", "abandon-change", token=tokens["bob"]).code == 0
    applied = cli("keys", "rotate-online-key", "--role", "snapshot", "-k", root_file, token=tokens["bob"])
    assert applied.code == 0 and "applied" in applied.out, (applied.out, applied.err)
