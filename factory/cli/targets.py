"""`breakwater targets ...` (CI builds, production targets) and `breakwater audit`."""
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from .client import UsageError
from .output import bad_build, dump_json, out, pages, table, when


def register(sub, common):
    targets = sub.add_parser("targets", help="CI builds and production targets", parents=[common])
    commands = targets.add_subparsers(dest="targets_command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", parents=[common], help="CI builds, newest first (or a tag's production targets)")
    p.add_argument("--production", action="store_true", help="list the production targets of --by-tag instead")
    p.add_argument("--by-tag", metavar="TAG", help="only builds for TAG")
    p.add_argument("--version", type=int, metavar="VERSION", help="only this build")
    p.add_argument("--hardware-id", metavar="HWID", help="only targets for this hardware ID")
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="builds per page (default 20)")
    p.add_argument("-p", "--page", type=int, default=1, metavar="PAGE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=targets_list)

    p = commands.add_parser(
        "publish",
        parents=[common],
        help="publish a CI build (for CI systems)",
        description="Publish CI build VERSION: one target per hardware ID, named <hwid>-lmp-<VERSION>, "
        "seen by test devices on the given tags.",
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("-H", "--hardware-id", action="append", required=True, metavar="HWID[,HWID]", help="hardware IDs (repeat or comma-separate)")
    p.add_argument("-T", "--tag", action="append", required=True, metavar="TAG[,TAG]", help="tags (repeat or comma-separate)")
    p.add_argument("--target", action="append", default=[], metavar="HWID=SHA256:LENGTH", help="the real artifact of a hardware ID")
    p.add_argument("--custom", metavar="JSON", help="extra fields for each target's custom metadata, as a JSON object")
    p.set_defaults(handler=targets_publish)

    p = commands.add_parser(
        "publish-ostree",
        parents=[common],
        help="publish an OSTree CI build from a local ostree repository (for CI systems)",
        description="Upload COMMIT (or the commit REF names) of the local ostree repository REPO and publish it as CI "
        "build VERSION: one target per hardware ID whose sha256 is the commit (targetFormat OSTREE). Needs the ostree CLI.",
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--repo", required=True, metavar="REPO", help="the local ostree repository (any mode)")
    p.add_argument("--commit", required=True, metavar="COMMIT|REF", help="the commit checksum, or a ref of REPO")
    p.add_argument("-H", "--hardware-id", action="append", required=True, metavar="HWID[,HWID]", help="hardware IDs (repeat or comma-separate)")
    p.add_argument("-T", "--tag", action="append", required=True, metavar="TAG[,TAG]", help="tags (repeat or comma-separate)")
    p.set_defaults(handler=targets_publish_ostree)

    p = commands.add_parser(
        "mark-bad",
        parents=[common],
        help="mark CI build VERSION bad: no new wave, re-release or rollout of it on any tag until unmarked",
        description="Mark CI build VERSION bad. It goes into no new wave, re-release or rollout on any tag, and no "
        "wave of it can be completed, until it is unmarked. Devices already staged keep it: cancel its waves or revert.",
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("-r", "--reason", required=True, metavar="TEXT", help="why (recorded with the build and in the audit log)")
    p.set_defaults(handler=targets_mark_bad)

    p = commands.add_parser("unmark-bad", parents=[common], help="take the bad mark off CI build VERSION")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("-r", "--reason", required=True, metavar="TEXT", help="why (recorded in the audit log)")
    p.set_defaults(handler=targets_unmark_bad)

    p = commands.add_parser(
        "tag",
        parents=[common],
        help="set the tags of CI targets (test devices on a tag see its targets)",
        description="Set the tags of each TARGET (a target name, or a build version for all of its targets) to --tags, "
        "or add them with --append, and re-sign the CI targets. Production targets change only through waves.",
    )
    p.add_argument("targets", nargs="+", metavar="TARGET_OR_VERSION")
    p.add_argument("-T", "--tags", action="append", required=True, metavar="TAG[,TAG]", help="the tags (repeat or comma-separate)")
    p.add_argument("--append", action="store_true", help="add the tags to each target's tags instead of replacing them")
    p.add_argument("--by-version", action="store_true", help="(fioctl's spelling) every TARGET is a build version")
    p.set_defaults(handler=targets_tag)

    p = commands.add_parser(
        "prune",
        parents=[common],
        help="take CI targets out of the CI targets (never what production or an open wave needs)",
        description="Prune the named targets (names or build versions), or with --by-tag those tagged exactly TAG, "
        "keeping the newest --keep-last builds. Builds in a tag's production targets or in an open wave are kept, "
        "and said why. A pruned number is never published again.",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET_OR_VERSION")
    p.add_argument("--by-tag", action="append", metavar="TAG[,TAG]", help="prune the targets whose tags are exactly these")
    p.add_argument("--keep-last", type=int, metavar="N", help="with --by-tag: keep the newest N builds")
    p.add_argument("--dryrun", "--dry-run", dest="dry_run", action="store_true", help="only show what would be pruned; change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=targets_prune)

    p = sub.add_parser("audit", parents=[common], help="the factory's audit log, newest first")
    p.add_argument("--action", metavar="PREFIX", help="only actions starting with PREFIX, e.g. wave.")
    p.add_argument("--actor", metavar="USER")
    p.add_argument("--target", metavar="NAME")
    p.add_argument("-n", "--limit", type=int, default=50, metavar="N")
    p.add_argument("-p", "--page", type=int, default=1, metavar="PAGE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=audit_list)


def _split(values):
    return [item for value in values for item in re.split(r"[,\s]+", value) if item]


def targets_list(args, ctx):
    if args.page < 1 or not 1 <= args.limit <= 1000:
        raise UsageError("--page must be at least 1 and --limit between 1 and 1000")
    if args.production:
        if not args.by_tag:
            raise UsageError("--production needs --by-tag TAG")
        data = ctx.client.get(ctx.path(f"targets/production/{quote(args.by_tag, safe='')}"))
        if args.json:
            dump_json(data)
            return 0
        if data["version"] is None:
            out(f"Tag {args.by_tag} has no production targets yet: complete a wave to create them.")
            return 0
        out(f"Production targets of tag {data['tag']}: version {data['version']}")
        rows = sorted(data["targets"], key=lambda t: (-(t["version"] or 0), t["name"]))
        table(["VERSION", "TARGET", "HARDWARE IDS", "LENGTH"], [[t["version"], t["name"], ",".join(t["hardware_ids"]), t["length"]] for t in rows])
        return 0
    params = {"tag": args.by_tag, "version": args.version, "hardware_id": args.hardware_id, "page": args.page, "per_page": args.limit}
    data = ctx.client.get(ctx.path("targets/"), params)
    if args.json:
        dump_json(data)
        return 0
    table(
        ["VERSION", "TAGS", "HARDWARE IDS", "CREATED AT", "BAD"],
        [[b["version"], ",".join(b["tags"]), ",".join(b["hardware_ids"]), when(b["created_at"]), _bad_cell(b.get("bad"))] for b in data["items"]],
    )
    pages(args.page, data["next"], data["total"])
    return 0


def _bad_cell(bad):
    if not bad:
        return ""
    text = f"BAD: {bad['reason']} (by {bad['by']} on {str(bad['at'])[:10]})"
    return text if len(text) <= 70 else text[:69] + "…"


def _build_version(value):
    if not value.isdigit():
        raise UsageError(f"VERSION must be a build number, not {value!r}")
    return int(value)


def targets_mark_bad(args, ctx):
    version = _build_version(args.version)
    build = ctx.client.post(ctx.path(f"targets/{version}/bad"), {"reason": args.reason})
    out(f"Marked: {bad_build(build['bad'])}.")
    out(f"It goes into no new wave, re-release or rollout on any tag until `breakwater targets unmark-bad {version} --reason TEXT`.")
    return 0


def targets_unmark_bad(args, ctx):
    version = _build_version(args.version)
    ctx.client.delete(ctx.path(f"targets/{version}/bad"), {"reason": args.reason})
    out(f"Build {version} is no longer marked bad: it can go into waves and rollouts again.")
    return 0


def _refs(values, *, versions_only=False):
    refs = _split(values)
    if versions_only:
        wrong = [r for r in refs if not r.isdigit()]
        if wrong:
            raise UsageError(f"--by-version takes build numbers, not {', '.join(map(repr, wrong[:5]))}")
    return refs


def targets_tag(args, ctx):
    payload = {"targets": _refs(args.targets, versions_only=args.by_version), "tags": _split(args.tags), "append": args.append}
    if not payload["tags"]:
        raise UsageError("--tags needs at least one tag")
    data = ctx.client.post(ctx.path("targets/tags"), payload)
    for change in data["changed"]:
        out(f"Changed tags of {change['name']} from {','.join(change['before']) or '-'} to {','.join(change['after'])}")
    for change in data["unchanged"]:
        out(f"{change['name']} already has tags {','.join(change['after'])}")
    if data["changed"]:
        out("The CI targets were re-signed: test devices see the change at their next poll.")
    return 0


def targets_prune(args, ctx):
    refs = _refs(args.targets)
    by_tag = _split(args.by_tag or [])
    if bool(refs) == bool(by_tag):
        raise UsageError("Name the targets or versions to prune, or give --by-tag TAG, not both")
    if args.keep_last is not None and not by_tag:
        raise UsageError("--keep-last works with --by-tag")
    payload = {"targets": refs, "by_tag": by_tag or None, "keep_last": args.keep_last, "dry_run": args.dry_run}
    data = ctx.client.post(ctx.path("targets/prune"), payload)
    if args.json:
        dump_json(data)
        return 0
    if data["pruned"]:
        out("Would prune:" if data["dry_run"] else "Pruned:")
        for target in data["pruned"]:
            out(f"  {target['name']}")
    else:
        out("Nothing to prune.")
    if data["kept"]:
        out("Kept:")
        for target in data["kept"]:
            out(f"  {target['name']}: {target['reason']}")
    if data["dry_run"]:
        out("Dry run: nothing was changed.")
    elif data["pruned"]:
        out("The CI targets were re-signed: test devices no longer see the pruned targets.")
    return 0


def _artifacts(values):
    artifacts = {}
    for value in values:
        match = re.fullmatch(r"([^=\s]+)=([0-9a-fA-F]{64}):(\d+)", value.strip())
        if not match:
            raise UsageError(f"--target takes HWID=SHA256:LENGTH (64 hex digits, a byte count), not {value!r}")
        artifacts[match.group(1)] = {"sha256": match.group(2).lower(), "length": int(match.group(3))}
    return artifacts


def targets_publish(args, ctx):
    if not args.version.isdigit():
        raise UsageError(f"VERSION must be a build number, not {args.version!r}")
    payload = {"version": int(args.version), "hardware_ids": _split(args.hardware_id), "tags": _split(args.tag)}
    artifacts = _artifacts(args.target)
    if artifacts:
        payload["targets"] = artifacts
    if args.custom:
        try:
            custom = json.loads(args.custom)
        except ValueError:
            raise UsageError("--custom must be a JSON object") from None
        if not isinstance(custom, dict):
            raise UsageError("--custom must be a JSON object")
        payload["custom"] = custom
    build = ctx.client.post(ctx.path("targets/"), payload)
    out(f"Published CI build {build['version']} for tags {', '.join(build['tags'])}:")
    for target in build["targets"]:
        out(f"  {target['name']}  sha256 {target['sha256']}  {target['length']} bytes")
    return 0


def _ostree(*args):
    if shutil.which("ostree") is None:
        raise UsageError("The publish-ostree command needs the ostree CLI (apt-get install ostree)")
    done = subprocess.run(["ostree", *args], capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise UsageError(f"Running ostree {args[1]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def targets_publish_ostree(args, ctx):
    if not args.version.isdigit():
        raise UsageError(f"VERSION must be a build number, not {args.version!r}")
    repo = f"--repo={args.repo}"
    commit = _ostree(repo, "rev-parse", args.commit)
    with tempfile.TemporaryDirectory(prefix="breakwater-ostree-") as folder:
        upload = Path(folder) / "commit.delta"
        _ostree(repo, "static-delta", "generate", "--empty", "--inline", f"--to={commit}", f"--filename={upload}")
        params = {"commit": commit, "version": int(args.version), "hardware_id": _split(args.hardware_id), "tag": _split(args.tag)}
        build = ctx.client.upload(ctx.path("targets/ostree"), upload, params)
    out(f"Published OSTree CI build {build['version']} (commit {commit}) for tags {', '.join(build['tags'])}:")
    for target in build["targets"]:
        out(f"  {target['name']}  commit {target['sha256']}")
    return 0


def audit_list(args, ctx):
    if args.page < 1 or not 1 <= args.limit <= 1000:
        raise UsageError("--page must be at least 1 and --limit between 1 and 1000")
    params = {"action": args.action, "actor": args.actor, "target": args.target, "page": args.page, "per_page": args.limit}
    data = ctx.client.get(ctx.path("audit/"), params)
    if args.json:
        dump_json(data)
        return 0
    table(
        ["AT", "ACTOR", "ACTION", "TARGET", "DETAILS"],
        [[when(e["created_at"]), e["actor"], e["action"], e["target"], _details(e["details"])] for e in data["items"]],
    )
    pages(args.page, data["next"], data["total"])
    return 0


def _details(details):
    text = ", ".join(f"{k}={v}" for k, v in details.items())
    return text if len(text) <= 70 else text[:69] + "…"
