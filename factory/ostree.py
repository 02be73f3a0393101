"""A factory's OSTree archive repository (Debian's `ostree` CLI): import of CI commits, the index of
the objects each commit reaches, static deltas, and the strict mapping of treehub paths to files.

Every call runs `ostree` without a shell, with a fixed argument list and a timeout. The gateway
never runs `ostree`: it reads the per-commit index written at import (`commit_files`).
"""
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings

from factory.errors import ApplicationError, NotFound

COMMIT = re.compile(r"\A[0-9a-f]{64}\Z")
# objects/<2 hex>/<62 hex>.<kind>: the only object files an archive repository serves.
OBJECT_PATH = re.compile(r"\Aobjects/[0-9a-f]{2}/[0-9a-f]{62}\.(?:commit|commitmeta|dirtree|dirmeta|filez)\Z")
# deltas/<2>/<41>[-<43>]/{superblock,<part>}: checksums in OSTree's modified base64 ('/' is '_').
DELTA_PATH = re.compile(r"\Adeltas/[A-Za-z0-9+_]{2}/[A-Za-z0-9+_]{41}(?:-[A-Za-z0-9+_]{43})?/(?:superblock|[0-9]{1,6})\Z")
# delta-indexes/<2>/<41>.index: the deltas to one commit (the config says indexed-deltas=true, so
# libostree looks here instead of in a summary).
DELTA_INDEX_PATH = re.compile(r"\Adelta-indexes/[A-Za-z0-9+_]{2}/[A-Za-z0-9+_]{41}\.index\Z")
UPLOAD_MAX_BYTES = 2 * 1024**3
TIMEOUT_SECONDS = 600
LS_LINE = re.compile(r"\A([dl-])\S+ \d+ \d+\s+\d+ ([0-9a-f]{64})(?: ([0-9a-f]{64}))? ")


def available():
    """Whether the `ostree` CLI is installed (without it, builds are blob targets)."""
    return shutil.which("ostree") is not None


def _run(*args, timeout=TIMEOUT_SECONDS):
    try:
        done = subprocess.run(["ostree", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ApplicationError("This server has no ostree; OSTree builds cannot be stored") from None
    except subprocess.TimeoutExpired:
        raise ApplicationError(f"Running ostree {args[0]} took longer than {timeout} seconds") from None
    if done.returncode != 0:
        raise ApplicationError(f"Running ostree {args[0]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def repo_path(factory_name):
    root = Path(getattr(settings, "OSTREE_DIR", settings.VAR_DIR / "ostree"))
    return root / factory_name


def repo_ensure(factory_name):
    """The factory's archive repository, created on first use."""
    path = repo_path(factory_name)
    if not (path / "config").exists():
        path.mkdir(parents=True, exist_ok=True)
        _run(f"--repo={path}", "init", "--mode=archive")
        (path / "index").mkdir(exist_ok=True)
    return path


def _closure(repo, commit):
    """Every object file (relative path) that `commit` reaches."""
    names = {f"{commit}.commit"}
    if (repo / "objects" / commit[:2] / f"{commit[2:]}.commitmeta").exists():
        names.add(f"{commit}.commitmeta")
    for line in _run(f"--repo={repo}", "ls", "-R", "-C", commit, "/").splitlines():
        match = LS_LINE.match(line)
        if not match:
            continue
        kind, first, second = match.groups()
        if kind == "d":
            names.update({f"{first}.dirtree", f"{second}.dirmeta"})
        else:
            names.add(f"{first}.filez")
    return sorted(f"objects/{n[:2]}/{n[2:]}" for n in names)


def _index_path(repo, commit):
    return repo / "index" / f"{commit}.json"


def _index_write(repo, commit, index):
    path = _index_path(repo, commit)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, path)


def commit_import(*, factory_name, commit, upload):
    """Import `commit` from `upload` (a file from `ostree static-delta generate --empty
    --to=COMMIT --filename=F`), after checking that the file holds exactly that commit."""
    if not COMMIT.match(commit or ""):
        raise ApplicationError("Commit must be 64 lowercase hexadecimal digits (an OSTree commit checksum)")
    if os.path.getsize(upload) > UPLOAD_MAX_BYTES:
        raise ApplicationError(f"The upload is larger than {UPLOAD_MAX_BYTES // 1024**3} GiB")
    repo = repo_ensure(factory_name)
    with tempfile.TemporaryDirectory(dir=repo.parent, prefix=f".{factory_name}-import-") as staging:
        _run(f"--repo={staging}", "init", "--mode=archive")
        _run(f"--repo={staging}", "static-delta", "apply-offline", str(upload))
        if not (Path(staging) / "objects" / commit[:2] / f"{commit[2:]}.commit").exists():
            raise ApplicationError(f"The upload does not hold commit {commit}")
        # --untrusted: every object's checksum is verified as it enters the factory's repository.
        _run(f"--repo={repo}", "pull-local", "--untrusted", staging, commit)
    index = {"objects": _closure(repo, commit), "deltas": []}
    if _index_path(repo, commit).exists():
        index["deltas"] = commit_files(factory_name=factory_name, commit=commit)["deltas"]
    _index_write(repo, commit, index)
    return index


def commit_files(*, factory_name, commit):
    """{"objects": [...], "deltas": [...]}: the treehub paths a device allowed `commit` may fetch."""
    if not COMMIT.match(commit or ""):
        raise NotFound("Not an OSTree commit")
    try:
        return json.loads(_index_path(repo_path(factory_name), commit).read_text())
    except (FileNotFoundError, ValueError):
        raise NotFound(f"Commit {commit} is not stored") from None


def is_stored(*, factory_name, commit):
    return bool(COMMIT.match(commit or "")) and _index_path(repo_path(factory_name), commit).exists()


def delta_generate(*, factory_name, from_commit, to_commit):
    """Generate the static delta from `from_commit` to `to_commit` and list its files in the
    index of `to_commit` (devices that may fetch `to_commit` may fetch it). Idempotent."""
    for c in (from_commit, to_commit):
        if not is_stored(factory_name=factory_name, commit=c):
            raise NotFound(f"Commit {c} is not stored")
    repo = repo_path(factory_name)
    _run(f"--repo={repo}", "static-delta", "generate", f"--from={from_commit}", f"--to={to_commit}")
    _run(f"--repo={repo}", "static-delta", "reindex", f"--to={to_commit}")
    folder = delta_folder(from_commit, to_commit)
    files = sorted(p.relative_to(repo).as_posix() for p in (repo / folder).iterdir() if p.is_file())
    files = [f for f in files if DELTA_PATH.match(f)]
    target = _b64(to_commit)
    delta_index = f"delta-indexes/{target[:2]}/{target[2:]}.index"
    if (repo / delta_index).is_file():
        files.append(delta_index)
    index = commit_files(factory_name=factory_name, commit=to_commit)
    index["deltas"] = sorted(set(index["deltas"]) | set(files))
    _index_write(repo, to_commit, index)
    return files


def _b64(commit):
    return base64.b64encode(bytes.fromhex(commit)).decode().rstrip("=").replace("/", "_")


def delta_folder(from_commit, to_commit):
    """OSTree's path of a static delta: deltas/<from[:2]>/<from[2:]>-<to>, in modified base64."""
    source = _b64(from_commit)
    return f"deltas/{source[:2]}/{source[2:]}-{_b64(to_commit)}"


def served_file(*, factory_name, path):
    """The file under the repository for treehub `path` (config, objects/..., deltas/...), or None
    when the path is not one a repository serves (traversal, odd names)."""
    if path == "config" or OBJECT_PATH.match(path) or DELTA_PATH.match(path) or DELTA_INDEX_PATH.match(path):
        return repo_path(factory_name) / path
    return None
