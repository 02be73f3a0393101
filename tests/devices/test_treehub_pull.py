"""The real `ostree pull` (libostree 2022.7, its own libcurl) through the gateway's mutual TLS, as
aktualizr-lite pulls an OS update: only a device whose view lists the commit gets it. Skipped
without the ostree CLI."""
import subprocess

import pytest

from factory import ostree
from factory.tuf.services.repository import ostree_build_publish

pytestmark = pytest.mark.skipif(not ostree.available(), reason="the ostree CLI is not installed")

HWID = "intel-corei7-64"


def ost(*args, check=True):
    return subprocess.run(["ostree", *args], check=check, capture_output=True, text=True, timeout=120)


def client_repo(path, gateway, device):
    path.mkdir()
    ost(f"--repo={path}", "init", "--mode=archive")
    ost(
        f"--repo={path}", "remote", "add", "gw", f"{gateway.url}/treehub", "--set=gpg-verify=false",
        f"--set=tls-client-cert-path={device.cert}", f"--set=tls-client-key-path={device.key}", f"--set=tls-ca-path={device.server_ca}",
    )  # fmt: skip
    return path


def test_ostree_pull_through_the_gateway_gets_the_devices_commit_and_nothing_else(gateway, factory, bob, register, tmp_path, settings):
    settings.OSTREE_DIR = gateway.folder / "var" / "ostree"  # the gateway process reads the same repository
    build = tmp_path / "build"
    build.mkdir()
    ost(f"--repo={build}", "init", "--mode=archive")
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_text("release 12\n" * 500)
    (tree / "usr/bin/link").symlink_to("tool")
    commit = ost(f"--repo={build}", "commit", "--branch=lmp", f"--tree=dir={tree}", "-s", "12").stdout.strip()
    upload = tmp_path / "upload"
    ost(f"--repo={build}", "static-delta", "generate", "--empty", "--inline", f"--to={commit}", f"--filename={upload}")
    ostree_build_publish(factory=factory, commit=commit, upload=upload, version=12, hardware_ids=[HWID], tags=["main"], actor=bob)

    mine = register(factory, production=False, tag="main")
    other = register(factory, production=False, tag="other")

    pulled = ost(f"--repo={client_repo(tmp_path / 'mine', gateway, mine)}", "pull", "gw", commit, check=False)
    assert pulled.returncode == 0, pulled.stderr + (gateway.folder / "gateway.log").read_text()[-3000:]
    assert ost(f"--repo={tmp_path / 'mine'}", "cat", commit, "/usr/bin/tool").stdout == "release 12\n" * 500
    assert ost(f"--repo={tmp_path / 'mine'}", "fsck").returncode == 0

    refused = ost(f"--repo={client_repo(tmp_path / 'other', gateway, other)}", "pull", "gw", commit, check=False)
    assert refused.returncode != 0
    assert ost(f"--repo={tmp_path / 'other'}", "show", commit, check=False).returncode != 0
