"""`breakwater waves ...` and `breakwater status`: the seed's production release commands."""
import json
import re
from urllib.parse import quote

from factory.plurals import counted, plural

from . import plan
from .client import ApiError, CliError, UsageError
from .common import read_binary, uuids_arg
from .output import bad_build, dump_json, err, fields, out, pages, progress, table, when
from .signing import OfflineSigner

STATUSES = ("unsigned", "active", "armed", "complete", "canceled")


def register(sub, common):
    waves = sub.add_parser("waves", aliases=["wave"], help="production releases: init, rollout, status, complete, cancel", parents=[common])
    commands = waves.add_subparsers(dest="waves_command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "init",
        parents=[common],
        help="create a wave from CI build VERSION for production devices on TAG",
        description="Create a wave of CI build VERSION for production devices on TAG. With -k, the wave's "
        "targets are signed on this machine with your offline targets key: the key never leaves it.",
    )
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("tag", metavar="TAG")
    p.add_argument("-k", "--keys", metavar="KEYS.tgz", help="offline keys archive to sign the wave's targets with (locally)")
    p.add_argument("-e", "--expires-days", type=int, metavar="DAYS", help="targets expire after DAYS days (default 365)")
    p.add_argument("-E", "--expires-at", metavar="RFC3339", help="targets expire at this time, e.g. 2027-06-01T00:00:00Z")
    p.add_argument("--prune", action="append", default=[], metavar="V1,V2", help="drop these versions from the production targets")
    p.add_argument("--source-tag", metavar="TAG", help="match this tag when looking for the build's targets")
    p.add_argument("-d", "--dry-run", action="store_true", help="print the wave's targets without creating it")
    p.set_defaults(handler=waves_init)

    p = commands.add_parser(
        "revert",
        parents=[common],
        help="take TAG back to an earlier build: a re-release of it at a new, higher version",
        description="Create a wave that takes production devices on TAG back to build VERSION. Devices only ever "
        "move up, so the build's content (the same hashes, the same OSTree commit) is re-released under new "
        "target names at the next number of the factory's one sequence of builds and re-releases. Sign it and "
        "roll it out like any wave; with -k it is signed on this machine with your offline targets key.",
    )
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("tag", metavar="TAG")
    p.add_argument("--to", dest="to_version", required=True, metavar="VERSION", help="the earlier build to go back to")
    p.add_argument("-k", "--keys", metavar="KEYS.tgz", help="offline keys archive to sign the wave's targets with (locally)")
    p.add_argument("-e", "--expires-days", type=int, metavar="DAYS", help="targets expire after DAYS days (default 365)")
    p.add_argument("-E", "--expires-at", metavar="RFC3339", help="targets expire at this time, e.g. 2027-06-01T00:00:00Z")
    p.add_argument("--prune", action="append", default=[], metavar="V1,V2", help="drop these versions (the bad build) from the production targets")
    p.add_argument("--source-tag", metavar="TAG", help="match this tag when looking for the build's CI targets")
    p.add_argument("-d", "--dry-run", action="store_true", help="print the re-release's targets without creating it")
    p.set_defaults(handler=waves_revert)

    p = commands.add_parser("sign", parents=[common], help="add your offline signature to an unsigned wave")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-k", "--keys", metavar="KEYS.tgz", required=True, help="offline keys archive (used on this machine only)")
    p.set_defaults(handler=waves_sign)

    p = commands.add_parser(
        "rollout",
        parents=[common],
        help="roll a wave out to a group, a sample, or exact devices",
        description="Roll out a wave to a subset of the production devices on its tag. Give at least one of "
        "GROUP (or --group), --limit and --uuids. A group alone is a full-group rollout: devices that join "
        "the group later get the wave too.",
        epilog="--uuids takes UUIDs separated by , ; | or white space, or @FILE to read them from a file on "
        "this machine (@- reads standard input). With --print-uuids/--print-names the devices go to standard "
        "output, one per line, and the summary to standard error, so a dry run's list can be edited and "
        "passed back with --uuids @FILE.",
    )
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("group", nargs="?", metavar="GROUP", help="device group to roll out to")
    p.add_argument("-g", "--group", dest="group_option", metavar="GROUP", help="device group to roll out to")
    p.add_argument("-l", "--limit", metavar="N|N%", help="a pseudo-random sample of N devices, or N%% of the devices in scope")
    p.add_argument("--uuids", metavar="LIST|@FILE", help="exact device UUIDs, or @FILE (@- reads standard input)")
    p.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    p.add_argument("--print-uuids", action="store_true", help="print the UUIDs of the devices rolled out to (or that would be)")
    p.add_argument("--print-names", action="store_true", help="print the names of the devices rolled out to (or that would be)")
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    p.set_defaults(handler=waves_rollout)

    p = commands.add_parser(
        "retry",
        parents=[common],
        help="offer a wave again to the devices that reported a failure",
        description="Offer an active wave again to its devices that reported a failure: every one, or those of "
        "--uuids (each must have failed). Their failure is set aside, they count as installing again, and they "
        "see new metadata at their next poll.",
        epilog="--uuids takes UUIDs separated by , ; | or white space, or @FILE (@- reads standard input).",
    )
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("--uuids", metavar="LIST|@FILE", help="only these failed devices, or @FILE (@- reads standard input)")
    p.add_argument("--dry-run", action="store_true", help="list the devices that would be offered the wave again; change nothing")
    p.add_argument("--print-uuids", action="store_true", help="print the devices' UUIDs, one per line (the summary goes to standard error)")
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    p.set_defaults(handler=waves_retry)

    p = commands.add_parser("status", parents=[common], help="a wave's progress per device group (no WAVE: every active wave)")
    p.add_argument("wave", nargs="?", metavar="WAVE")
    p.add_argument("--offline-threshold", type=float, metavar="HOURS", help="hours without a check-in before a device is offline (default 4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=waves_status)

    p = commands.add_parser("complete", parents=[common], help="make the wave the tag's production targets (no WAVE: the one active wave)")
    p.add_argument("wave", nargs="?", metavar="WAVE")
    p.set_defaults(handler=waves_complete)

    p = commands.add_parser("cancel", parents=[common], help="stop serving a wave; devices already on it stay")
    p.add_argument("wave", metavar="WAVE")
    p.set_defaults(handler=waves_cancel)

    p = commands.add_parser("list", parents=[common], help="waves, open ones first, newest first")
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="waves per page (default 20)")
    p.add_argument("-p", "--page", type=int, default=1, metavar="PAGE")
    p.add_argument("-S", "--status", choices=STATUSES)
    p.add_argument("-T", "--tag", metavar="TAG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=waves_list)

    p = commands.add_parser("show", parents=[common], help="a wave and its rollout history")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-s", "--show-targets", action="store_true", help="also print the wave's signed targets")
    p.add_argument("--devices", action="store_true", help="also print the exact devices of each rollout (uuid, name, group), paged")
    p.add_argument("--rollout", type=int, metavar="ID", help="with --devices: only this rollout")
    p.add_argument("-n", "--limit", type=int, default=500, metavar="N", help="with --devices: devices per rollout and page (default 500, as fioctl; at most 1000)")
    p.add_argument("-p", "--page", type=int, default=1, metavar="PAGE", help="with --devices: the page of each rollout's devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=waves_show)
    plan.register(commands, common)

    p = sub.add_parser("status", parents=[common], help="factory status: devices per tag, production and test apart, and active waves")
    p.add_argument("--offline-threshold", type=float, metavar="HOURS", help="hours without a check-in before a device is offline (default 4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=factory_status)


def wave_path(ctx, name, rest=""):
    return ctx.path(f"waves/{quote(name, safe='')}{rest}")


# --- init and sign ---------------------------------------------------------------------------


def _versions(values):
    out_values = []
    for value in values:
        for item in re.split(r"[,\s]+", value):
            if not item:
                continue
            if not item.isdigit():
                raise UsageError(f"--prune takes version numbers, not {item!r}")
            out_values.append(int(item))
    return out_values


def rerelease(wave):
    """" (re-release of build 41)" for a revert's wave, "" for a build's."""
    return f" (re-release of build {wave['rerelease_of']})" if wave.get("rerelease_of") else ""


def _wave_payload(args, **fields_):
    if args.expires_days is not None and args.expires_at:
        raise UsageError("Give --expires-days or --expires-at, not both")
    payload = {
        "name": args.wave,
        **fields_,
        "tag": args.tag,
        "prune": _versions(args.prune),
        "expires_days": args.expires_days,
        "expires_at": args.expires_at,
        "source_tag": args.source_tag,
    }
    return {k: v for k, v in payload.items() if v is not None}


def _wave_create(args, ctx, path, payload):
    """POST a new wave (init or revert): a dry run prints it; with -k it is signed here."""
    if args.dry_run:
        dump_json(ctx.client.post(path, {**payload, "dry_run": True}))
        return None
    if not args.keys:
        return ctx.client.post(path, payload)
    # Check the archive holds a key the production root trusts before creating anything.
    signer = OfflineSigner.for_factory(ctx, read_binary(args.keys, what="keys archive"), args.keys)
    # The wave is created and signed in one request, so a signature the server refuses leaves
    # no unsigned wave blocking the tag: sign what a dry run with the same inputs returns, with
    # its expiry pinned so the server builds the very same targets.
    preview = ctx.client.post(path, {**payload, "dry_run": True})
    payload.pop("expires_days", None)
    payload["expires_at"] = preview["expires_at"]
    return ctx.client.post(path, {**payload, **signer.sign_wave(preview)})


def _print_created(wave, signed_here):
    out(f"Wave {wave['name']} created for version {wave['version']}{rerelease(wave)} on tag {wave['tag']}")
    if signed_here:
        _print_signed(wave)
    else:
        out(f"It is unsigned: sign it with `breakwater waves sign {wave['name']} -k KEYS.tgz` before rolling it out.")


def waves_init(args, ctx):
    if not args.version.isdigit():
        raise UsageError(f"VERSION must be a CI build number, not {args.version!r}")
    wave = _wave_create(args, ctx, ctx.path("waves/"), _wave_payload(args, version=int(args.version)))
    if wave is not None:
        _print_created(wave, bool(args.keys))
    return 0


def waves_revert(args, ctx):
    if not args.to_version.isdigit():
        raise UsageError(f"--to must be the number of the build to go back to, not {args.to_version!r}")
    wave = _wave_create(args, ctx, ctx.path("waves/revert/"), _wave_payload(args, to_version=int(args.to_version)))
    if wave is not None:
        _print_created(wave, bool(args.keys))
        out(f"Devices on tag {wave['tag']} that install it run build {wave['rerelease_of']}'s content again, as version {wave['version']}.")
    return 0


def _sign(ctx, wave, signer):
    if not wave.get("signing_payload"):
        raise CliError(f"Wave {wave['name']} is {wave['status']}; only an unsigned wave takes signatures")
    return ctx.client.post(wave_path(ctx, wave["name"], "/sign"), signer.sign_wave(wave))


def _print_signed(wave):
    if wave["status"] == "active":
        out(f"Wave {wave['name']} is signed and active: roll it out with `breakwater waves rollout {wave['name']} ...`")
    else:
        out(f"Wave {wave['name']} has {counted(len(wave['signed_keyids']), 'signature')}; it needs more offline signatures before it can be rolled out")


def waves_sign(args, ctx):
    signer = OfflineSigner.for_factory(ctx, read_binary(args.keys, what="keys archive"), args.keys)
    wave = ctx.client.get(wave_path(ctx, args.wave))
    _print_signed(_sign(ctx, wave, signer))
    return 0


# --- rollout ---------------------------------------------------------------------------------


def waves_rollout(args, ctx):
    if args.group and args.group_option:
        raise UsageError("Give the group either as an argument or with --group, not both")
    # What to roll out to is the server's rule: an empty scope comes back as its refusal.
    group = args.group or args.group_option
    payload = {"group": group, "limit": args.limit, "uuids": uuids_arg(args.uuids), "dry_run": args.dry_run}
    payload = {k: v for k, v in payload.items() if v is not None}
    try:
        with progress("Rolling out" if not args.dry_run else "Selecting devices"):
            result = ctx.client.post(wave_path(ctx, args.wave, "/rollout"), payload)
    except ApiError as exc:
        # An empty rollout says why each listed device was left out: show that before the error.
        _print_skipped(exc.body.get("skipped") or [])
        raise
    if args.json:
        dump_json(result)
        return 0
    printing = args.print_uuids or args.print_names
    report = err if printing else out
    if printing:
        devices = result["devices"]
        if result["full_group"] and result["count"] is None and result["rollout"]:
            devices = _rollout_devices_all(ctx, args.wave, result["rollout"])
        for device in devices:
            columns = []
            if args.print_uuids:
                columns.append(device["uuid"])
            if args.print_names:
                columns.append(device["name"])
            out("\t".join(columns))
    report(result["message"])
    _print_skipped(result["skipped"])
    return 0


def _rollout_devices_all(ctx, wave, rollout_id):
    """Every device of a rollout, page by page (a large full-group rollout lists none itself)."""
    page = 1
    while True:
        result = ctx.client.get(wave_path(ctx, wave, f"/rollouts/{rollout_id}/devices"), {"page": page, "per_page": 1000})
        yield from result["items"]
        if page * 1000 >= result["total"] or not result["items"]:
            return
        page += 1


def waves_retry(args, ctx):
    payload = {"uuids": uuids_arg(args.uuids), "dry_run": args.dry_run}
    result = ctx.client.post(wave_path(ctx, args.wave, "/retry"), {k: v for k, v in payload.items() if v is not None})
    if args.json:
        dump_json(result)
        return 0
    if args.print_uuids:
        for device in result["devices"]:
            out(device["uuid"])
        err(result["message"] + ".")
        return 0
    out(result["message"] + ".")
    if result["devices"]:
        table(["UUID", "NAME", "RETRIED BEFORE"], [[d["uuid"], d["name"], d["retries"]] for d in result["devices"][:50]])
        if len(result["devices"]) > 50:
            err(f"… and {len(result['devices']) - 50} more (--print-uuids or --json lists them all)")
    return 0


def _print_skipped(skipped):
    if not skipped:
        return
    err(f"{counted(len(skipped), 'listed device')} {plural(len(skipped), 'was', 'were')} not rolled out:")
    for item in skipped[:50]:
        err(f"  {item['uuid']}  {item['reason']}")
    if len(skipped) > 50:
        err(f"  … and {len(skipped) - 50} more (use --json to see all)")


# --- status, list, show, complete, cancel ---------------------------------------------------


def waves_status(args, ctx):
    params = {"offline_threshold": args.offline_threshold}
    if args.wave:
        status = ctx.client.get(wave_path(ctx, args.wave, "/status"), params)
        if args.json:
            dump_json(status)
        else:
            print_wave_status(status)
        return 0
    active = ctx.client.get(ctx.path("waves/"), {"status": "active", "per_page": 200})["items"]
    statuses = [ctx.client.get(wave_path(ctx, w["name"], "/status"), params) for w in active]
    if args.json:
        dump_json(statuses)
    elif not statuses:
        out("There is no active wave.")
    else:
        for i, status in enumerate(statuses):
            if i:
                out("\n" + "=" * 72 + "\n")
            print_wave_status(status)
    return 0


def expiry_warnings(warnings):
    """What the dashboard shows in its expiry banner: offline-signed metadata about to expire."""
    for warning in warnings or ():
        out(f"{'EXPIRED' if warning['expired'] else 'WARNING'}: {warning['message']}")


def print_wave_status(status):
    totals = status["totals"]
    tag = status["tag"]
    labels = status.get("version_labels") or {}
    revert = status.get("rerelease_of") is not None
    out(f"Wave '{status['name']}' for tag '{tag}' version {status['version']}{rerelease(status)} is {status['status']}")
    if status.get("bad"):
        out(f"Its {bad_build(status['bad'])}: no further rollout, and it cannot be completed.")
    expiry_warnings(status.get("warnings"))
    out()
    if status["status"] not in ("active", "unsigned"):
        out("Device numbers are for the current time, not for when the wave finished.")
        out()
    pairs = [("Created At", when(status["created_at"]))]
    if status.get("finished_at"):
        pairs.append(("Finished At", when(status["finished_at"])))
    rollout_groups = [g for g in status["groups"] if g["rollout_time"]]
    pairs += [
        (f"Device Groups on Tag '{tag}'", len(status["groups"])),
        ("Device Groups Rollout", len(rollout_groups)),
        (f"Devices on Tag '{tag}'", totals["total"]),
        ("Devices Online", totals["online"]),
        # Each device in exactly one of the lines below (waves/states.py), as the live status shows them.
        ("Devices Updated", totals["on_wave"] + totals["newer"]),
        ("Devices Scheduled for Update", totals["scheduled"]),
        ("Devices Downloading", totals["downloading"]),
        ("Devices Installing", totals["installing"]),
        ("Devices Failed to Install", totals["failed"]),
        ("Devices Offline", totals["offline"]),
        ("Devices Not Scheduled", totals["not_scheduled"]),
    ]
    if revert:
        pairs.append(("Devices on the Bad Build (not scheduled or scheduled)", totals.get("on_bad_build", 0)))
    if status["status"] == "canceled":
        pairs.insert(-1 - revert, ("Devices Held (fetched the canceled wave)", totals["held"]))
    fields(pairs)
    if not status["groups"]:
        return
    out()
    pending = {"canceled": "Never (Wave Canceled)", "complete": "At Wave Completion (Done)"}.get(status["status"], "At Wave Completion")
    header = ["GROUP", "TOTAL", "ONLINE", "UPDATED", "NEED UPDATE", "SCHEDULED", "UPDATING", "FAILED", "OFFLINE", "ROLLOUT AT"]
    rows = [
        [
            g["group"], g["total"], g["online"], g["on_wave"] + g["newer"], g["older"], g["scheduled"], g["downloading"] + g["installing"],
            g["failed"], g["offline"], when(g["rollout_time"]) if g["rollout_time"] else pending,
        ]
        for g in status["groups"]
    ]
    if revert:
        header.insert(5, "ON BAD BUILD")
        for row, g in zip(rows, status["groups"]):
            row.insert(5, g.get("on_bad_build", 0))
    table(header, rows)
    if status["status"] != "active":
        return
    out()
    out("The wave's target version is marked with an arrow (<-)")
    for group in status["groups"]:
        if not group["versions"]:
            continue
        out(f"\n## Device Group: {group['group']}")
        rows = []
        for version, count in group["versions"].items():
            mark = "<-" if version == str(status["version"]) else ""
            text = labels.get(version, version)
            rows.append([f"{text:<6}{mark:>2}" if len(text) < 6 else f"{text} {mark}".rstrip(), count])
        table(["TARGET", "DEVICES"], rows, indent=1)


def waves_list(args, ctx):
    if args.limit < 1 or args.page < 1:
        raise UsageError("--limit and --page must be at least 1")
    params = {"status": args.status, "tag": args.tag, "page": args.page, "per_page": args.limit}
    data = ctx.client.get(ctx.path("waves/"), params)
    if args.json:
        dump_json(data)
        return 0
    table(
        ["NAME", "VERSION", "TAG", "STATUS", "CREATED AT", "FINISHED AT"],
        [[w["name"], f"{w['version']}{rerelease(w)}", w["tag"], w["status"] + (" (bad build)" if w.get("bad") else ""), when(w["created_at"]), when(w["finished_at"]) if w["finished_at"] else ""] for w in data["items"]],
    )
    bad = [w for w in data["items"] if w.get("bad")]
    if bad:
        out()
        for w in bad:
            out(f"{w['name']}: {bad_build(w['bad'])}")
    pages(args.page, data["next"], data["total"])
    return 0


def _rollout_devices(args, ctx, wave):
    """{rollout id: page of its devices} for --devices (one rollout with --rollout)."""
    rollouts = [r for r in wave["rollouts"] if args.rollout is None or r["id"] == args.rollout]
    if args.rollout is not None and not rollouts:
        raise UsageError(f"Wave {wave['name']} has no rollout {args.rollout}; `breakwater waves show {wave['name']}` lists them")
    params = {"page": args.page, "per_page": args.limit}
    return {r["id"]: ctx.client.get(wave_path(ctx, wave["name"], f"/rollouts/{r['id']}/devices"), params) for r in rollouts}


def waves_show(args, ctx):
    if not args.devices and (args.rollout is not None or args.page != 1 or args.limit != 500):
        raise UsageError("--rollout, --page and --limit go with --devices")
    if args.page < 1 or not 1 <= args.limit <= 1000:
        raise UsageError("--page must be at least 1 and --limit between 1 and 1000")
    wave = ctx.client.get(wave_path(ctx, args.wave), {"targets": args.show_targets})
    devices = _rollout_devices(args, ctx, wave) if args.devices else None
    if args.json:
        dump_json(wave if devices is None else {**wave, "rollout_devices": {str(k): v for k, v in devices.items()}})
        return 0
    pairs = [
        ("Name", wave["name"]),
        ("Version", f"{wave['version']}{rerelease(wave)}"),
        ("Tag", wave["tag"]),
        ("Status", wave["status"]),
        ("Created At", when(wave["created_at"])),
        ("Created By", wave["created_by"] or "-"),
        ("Expires At", when(wave["expires_at"])),
    ]
    if wave["pruned_versions"]:
        pairs.append(("Pruned Versions", ", ".join(map(str, wave["pruned_versions"]))))
    if wave["finished_at"]:
        pairs += [("Finished At", when(wave["finished_at"])), ("Finished By", wave["finished_by"] or "-")]
    if wave.get("bad"):
        pairs.append(("Bad Build", f"{bad_build(wave['bad'])}: no further rollout, and it cannot be completed"))
    fields(pairs)
    if wave["rollouts"]:
        out()
        rows = []
        for r in wave["rollouts"]:
            scope = []
            if r["group"]:
                scope.append(f"group {r['group']}" + (" (whole group)" if r["full_group"] else ""))
            if r["limit"]:
                scope.append(f"limit {r['limit']}")
            if r["uuids"]:
                scope.append(counted(r["uuids"], "listed UUID"))
            rows.append([r["id"], when(r["created_at"]), r["created_by"] or "-", ", ".join(scope) or "-", "counting" if r["device_count"] is None else r["device_count"]])
        table(["ROLLOUT", "AT", "BY", "SCOPE", "DEVICES"], rows)
    for rollout_id, page in (devices or {}).items():
        out(f"\nRollout {rollout_id}: {counted(page['total'], 'device')}")
        table(["UUID", "NAME", "GROUP"], [[d["uuid"], d["name"], d["group"] or "-"] for d in page["items"]], indent=2)
        if page["next"]:
            out(f"  Page {page['page']} of {-(-page['total'] // page['per_page'])}; next page: --page {page['next']}")
    if args.show_targets:
        out("\nTargets:")
        out("  " + json.dumps(wave["targets"], indent=2).replace("\n", "\n  "))
    return 0


def _the_active_wave(ctx):
    """The one open wave of the factory, for `waves complete` without a name (as in the seed)."""
    candidates = ctx.client.get(ctx.path("waves/"), {"status": "active", "per_page": 200})["items"]
    if not candidates:
        raise CliError("There is no active wave to complete")
    if len(candidates) > 1:
        names = ", ".join(w["name"] for w in candidates)
        raise UsageError(f"Several waves are active ({names}); name the one to complete")
    return candidates[0]["name"]


def waves_complete(args, ctx):
    name = args.wave or _the_active_wave(ctx)
    wave = ctx.client.post(wave_path(ctx, name, "/complete"))
    out(f"Wave {wave['name']} is complete: version {wave['version']} is now the production targets of tag {wave['tag']}")
    return 0


def waves_cancel(args, ctx):
    wave = ctx.client.post(wave_path(ctx, args.wave, "/cancel"))
    out(f"Wave {wave['name']} is canceled: devices already on version {wave['version']} stay, no other device gets it")
    return 0


# --- factory status --------------------------------------------------------------------------


def factory_status(args, ctx):
    params = {"offline_threshold": args.offline_threshold}
    status = ctx.client.get(ctx.path("status"), params)
    waves = [ctx.client.get(wave_path(ctx, w["name"], "/status"), params) for w in status["active_waves"]]
    if args.json:
        dump_json({**status, "active_wave_status": waves})
        return 0
    hours = status["offline_threshold_hours"]
    out(f"Factory {status['factory']} (a device is offline after {hours:g} {plural(hours, 'hour')} without a check-in)")
    expiry_warnings(status.get("warnings"))
    for production, title in ((True, "Production devices"), (False, "Test devices")):
        rows = [t for t in status["tags"] if t["production"] is production]
        out(f"\n{title}:")
        if not rows:
            out("  none")
            continue
        total = sum(t["total"] for t in rows)
        out(f"  Total: {total}")
        table(
            ["TAG", "LATEST TARGET", "DEVICES", "ON LATEST", "ONLINE", "ON ORPHAN TARGETS"],
            [[t["tag"], t["latest_version"] if t["latest_version"] is not None else "-", t["total"], t["on_latest"], t["online"], t["orphan"]] for t in rows],
            indent=2,
        )
    out("\nActive waves:")
    if not waves:
        out("  none")
        return 0
    table(
        ["WAVE", "TAG", "VERSION", "DEVICES", "UPDATED", "SCHEDULED", "FAILED", "ONLINE"],
        [
            [w["name"], w["tag"], w["version"], w["totals"]["total"], w["totals"]["on_wave"] + w["totals"]["newer"], w["totals"]["scheduled"], w["totals"]["failed"], w["totals"]["online"]]
            for w in waves
        ],
        indent=2,
    )
    return 0

