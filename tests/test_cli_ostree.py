"""`breakwater targets publish-ostree`: CI uploads a commit of its local ostree repository and
publishes it. Skipped without the ostree CLI."""
import subprocess

import pytest

from factory import ostree
from factory.models import CiTarget
from tests.test_cli import cli, env, fast_passwords, tokens  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.skipif(not ostree.available(), reason="the ostree CLI is not installed"), pytest.mark.django_db(transaction=True)]


def test_ci_publishes_a_commit_of_its_local_repository_by_ref(cli, tokens, factory, tmp_path, settings):
    settings.OSTREE_DIR = tmp_path / "served"
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    repo.mkdir()
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_text("v5")
    subprocess.run(["ostree", f"--repo={repo}", "init", "--mode=bare-user"], check=True)
    commit = subprocess.run(["ostree", f"--repo={repo}", "commit", "--branch=lmp", f"--tree=dir={tree}", "-s", "5"], check=True, capture_output=True, text=True).stdout.strip()

    result = cli("targets", "publish-ostree", "5", "--repo", repo, "--commit", "lmp", "-H", "intel-corei7-64", "-T", "main", token=tokens["bob"])
    assert result.code == 0, result.err
    assert commit in result.out
    target = CiTarget.objects.get(factory=factory, version=5)
    assert (target.sha256, target.custom["targetFormat"]) == (commit, "OSTREE")
    assert ostree.is_stored(factory_name=factory.name, commit=commit)

    refused = cli("targets", "publish-ostree", "6", "--repo", repo, "--commit", "lmp", "-H", "intel-corei7-64", "-T", "main", token=tokens["carol"])
    assert refused.code != 0 and not CiTarget.objects.filter(factory=factory, version=6).exists()
    missing = cli("targets", "publish-ostree", "6", "--repo", repo, "--commit", "nosuchref", "-H", "intel-corei7-64", "-T", "main", token=tokens["bob"])
    assert missing.code != 0 and "rev-parse failed" in missing.err
