"""`breakwater devices ...`, `breakwater config device-group ...` and `breakwater device-lists ...`."""
import uuid as uuid_lib
from urllib.parse import quote

from factory.plurals import counted, plural

from .client import CliError, UsageError
from .common import uuid_tokens, uuids_arg
from .output import ago, dump_json, err, fields, out, pages, table, when

ASSIGN_BATCH = 1000


def register(sub, common):
    devices = sub.add_parser("devices", aliases=["device"], help="look devices up, read their events, put them in groups", parents=[common])
    commands = devices.add_subparsers(dest="devices_command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", parents=[common], help="devices, filtered and paged")
    p.add_argument("--by-tag", metavar="TAG", help="only devices following TAG")
    p.add_argument("-g", "--by-group", metavar="GROUP", help="only devices in GROUP ('-' for devices without a group)")
    prod = p.add_mutually_exclusive_group()
    prod.add_argument("--only-prod", action="store_true", help="only production devices")
    prod.add_argument("--only-non-prod", action="store_true", help="only test devices")
    online = p.add_mutually_exclusive_group()
    online.add_argument("--online", action="store_true", help="only devices seen within the offline threshold")
    online.add_argument("--offline", action="store_true", help="only devices not seen within the offline threshold")
    p.add_argument("--uuid", metavar="UUID", help="a UUID or the start of one")
    p.add_argument("pattern", nargs="?", metavar="NAME_PATTERN", help="devices whose name matches, e.g. 'gw-*' (* and ? are wildcards; plain text matches part of the name)")
    p.add_argument("--name", metavar="TEXT", help="devices whose name contains TEXT")
    p.add_argument("--target-version", type=int, metavar="VERSION", help="devices running this version")
    p.add_argument("--offline-threshold", type=float, metavar="HOURS")
    p.add_argument("-n", "--limit", type=int, default=500, metavar="N", help="devices per page (default 500, as fioctl; at most 1000)")
    p.add_argument("-p", "--page", type=int, default=1, metavar="PAGE")
    p.add_argument("--columns", metavar="COLS", help="columns to show, comma-separated: " + ",".join(DEVICE_COLUMNS))
    p.add_argument("--sort", metavar="FIELD", help="name (default), last-seen, registered, version, group or tag; --sort=-FIELD reverses")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=devices_list)

    p = commands.add_parser("show", parents=[common], help="one device, by UUID (or unique name)")
    p.add_argument("device", metavar="UUID")
    p.add_argument("--offline-threshold", type=float, metavar="HOURS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=devices_show)

    p = commands.add_parser("events", parents=[common], help="a device's reported download and install events, newest first")
    p.add_argument("device", metavar="UUID")
    p.add_argument("-n", "--limit", type=int, default=50, metavar="N")
    p.add_argument("-p", "--page", type=int, default=1, metavar="PAGE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=devices_events)

    p = commands.add_parser("set-group", parents=[common], help="put devices in a device group")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("uuid", nargs="*", metavar="UUID")
    p.add_argument("--uuids", metavar="LIST|@FILE", help="device UUIDs, or @FILE (@- reads standard input)")
    p.set_defaults(handler=devices_set_group)

    p = commands.add_parser("unset-group", parents=[common], help="take devices out of their device group")
    p.add_argument("uuid", nargs="*", metavar="UUID")
    p.add_argument("--uuids", metavar="LIST|@FILE", help="device UUIDs, or @FILE (@- reads standard input)")
    p.set_defaults(handler=devices_set_group, group=None)

    device_config = commands.add_parser("config", parents=[common], help="a device's configuration, set from the server")
    device_config_commands = device_config.add_subparsers(dest="device_config_command", metavar="COMMAND", required=True)
    p = device_config_commands.add_parser(
        "updates",
        parents=[common],
        help="move a device to another tag",
        description="Move the device to TAG from the server, as fioctl's `devices config updates --tag`: it is "
        "served TAG's metadata from now on, and the gateway hands it a config fragment naming TAG. TAG must be a "
        "tag CI builds target or a release was made for.",
    )
    p.add_argument("device", metavar="UUID", help="the device's UUID (or unique name)")
    p.add_argument("--tag", required=True, metavar="TAG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=devices_config_updates)

    config = sub.add_parser("config", help="factory configuration: device groups", parents=[common])
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    group = config_commands.add_parser("device-group", parents=[common], help="create, list, rename and delete device groups")
    group_commands = group.add_subparsers(dest="group_command", metavar="COMMAND", required=True)
    p = group_commands.add_parser("list", parents=[common], help="device groups and their device counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=groups_list)
    p = group_commands.add_parser("create", parents=[common], help="create a device group")
    p.add_argument("name", metavar="NAME")
    p.add_argument("description", nargs="?", default="", metavar="DESCRIPTION")
    p.set_defaults(handler=groups_create)
    p = group_commands.add_parser("rename", parents=[common], help="rename a device group")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_name", metavar="NEW_NAME")
    p.set_defaults(handler=groups_rename)
    p = group_commands.add_parser("delete", parents=[common], help="delete a device group (its devices stay, without a group)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=groups_delete)

    tokens = sub.add_parser("registration-tokens", help="tokens devices register with (admins)", parents=[common])
    token_commands = tokens.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)
    p = token_commands.add_parser("list", parents=[common], help="registration tokens, newest first")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=tokens_list)
    p = token_commands.add_parser("create", parents=[common], help="create a registration token and print it (shown once)")
    p.add_argument("--tag", required=True, help="tag the registered devices follow")
    p.add_argument("--group", metavar="GROUP", help="group the registered devices join")
    p.add_argument("--production", action="store_true", help="allow production certificates (businessCategory=production)")
    p.add_argument("--max-uses", type=int, metavar="N")
    p.add_argument("--expires-days", type=float, metavar="DAYS")
    p.add_argument("--name", default="")
    p.set_defaults(handler=tokens_create)
    p = token_commands.add_parser("revoke", parents=[common], help="revoke a registration token")
    p.add_argument("prefix", metavar="PREFIX", help="the token's prefix, as `list` shows it")
    p.set_defaults(handler=tokens_revoke)

    lists = sub.add_parser("device-lists", help="saved device UUID lists for rollouts", parents=[common])
    list_commands = lists.add_subparsers(dest="lists_command", metavar="COMMAND", required=True)
    p = list_commands.add_parser("list", parents=[common], help="saved device lists")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=device_lists_list)
    p = list_commands.add_parser("show", parents=[common], help="print a saved list's UUIDs, one per line (pipe into --uuids @-)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=device_lists_show)
    p = list_commands.add_parser("create", parents=[common], help="save a device list")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--uuids", required=True, metavar="LIST|@FILE")
    p.set_defaults(handler=device_lists_create)
    p = list_commands.add_parser("update", parents=[common], help="replace a saved list's UUIDs, or rename it")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--uuids", metavar="LIST|@FILE")
    p.add_argument("--rename", metavar="NEW_NAME")
    p.set_defaults(handler=device_lists_update)
    p = list_commands.add_parser("delete", parents=[common], help="delete a saved list")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=device_lists_delete)


def _paging(args):
    if args.page < 1 or not 1 <= args.limit <= 1000:
        raise UsageError("--page must be at least 1 and --limit between 1 and 1000")


# The columns of `devices list`, in their default order, and how each cell reads.
DEVICE_COLUMNS = {
    "name": lambda d: d["name"],
    "uuid": lambda d: d["uuid"],
    "group": lambda d: d["group"] or "-",
    "tag": lambda d: d["tag"],
    "production": lambda d: "yes" if d["production"] else "no",
    "target": lambda d: d["target_name"] or "-",
    "version": lambda d: "-" if d["target_version"] is None else d["target_version"],
    "online": lambda d: "yes" if d["online"] else "no",
    "last-seen": lambda d: ago(d["last_seen"]),
}
DEFAULT_DEVICE_COLUMNS = ("name", "uuid", "group", "tag", "production", "target", "online", "last-seen")


def _columns(text):
    if not text:
        return list(DEFAULT_DEVICE_COLUMNS)
    columns = [c.strip().lower() for c in text.split(",") if c.strip()]
    unknown = [c for c in columns if c not in DEVICE_COLUMNS]
    if unknown or not columns:
        raise UsageError(f"Unknown column {', '.join(unknown) or '(none)'}; columns: {','.join(DEVICE_COLUMNS)}")
    return columns


def devices_list(args, ctx):
    _paging(args)
    columns = _columns(args.columns)
    if args.pattern and args.name:
        raise UsageError("Give a name pattern or --name, not both")
    production = True if args.only_prod else False if args.only_non_prod else None
    online = True if args.online else False if args.offline else None
    params = {
        "tag": args.by_tag,
        "group": args.by_group,
        "production": production,
        "online": online,
        "uuid": args.uuid,
        "name": args.pattern or args.name,
        "sort": args.sort,
        "target_version": args.target_version,
        "offline_threshold": args.offline_threshold,
        "page": args.page,
        "per_page": args.limit,
    }
    data = ctx.client.get(ctx.path("devices/"), params)
    if args.json:
        dump_json(data)
        return 0
    table([c.replace("-", " ").upper() for c in columns], [[DEVICE_COLUMNS[c](d) for c in columns] for d in data["items"]])
    shown = len(data["items"])
    if data["next"]:
        # On stderr, so a pipe reads only the table; set apart so a person sees the list goes on.
        first = (args.page - 1) * args.limit + 1
        err(f"\n-- devices {first:,}-{first + shown - 1:,} of {data['total']:,}: more on the next page: --page {data['next']} (or --limit up to 1000) --")
    return 0


def _device_path(ctx, ident, rest=""):
    return ctx.path(f"devices/{quote(ident, safe='')}{rest}")


def devices_show(args, ctx):
    device = ctx.client.get(_device_path(ctx, args.device), {"offline_threshold": args.offline_threshold})
    if args.json:
        dump_json(device)
        return 0
    fields(
        [
            ("Name", device["name"]),
            ("UUID", device["uuid"]),
            ("Production", "yes" if device["production"] else "no (test device)"),
            ("Tag", device["tag"]),
            ("Group", device["group"] or "-"),
            ("Hardware ID", device["hardware_id"] or "-"),
            ("Target", device["target_name"] or "-"),
            ("Version", device["target_version"] if device["target_version"] is not None else "-"),
            ("Online", "yes" if device["online"] else "no"),
            ("Last Seen", f"{when(device['last_seen'])} ({ago(device['last_seen'])})" if device["last_seen"] else "never"),
            ("Registered", when(device["created_at"])),
        ]
    )
    return 0


def devices_events(args, ctx):
    _paging(args)
    data = ctx.client.get(_device_path(ctx, args.device, "/events"), {"page": args.page, "per_page": args.limit})
    if args.json:
        dump_json(data)
        return 0
    outcome = {True: "ok", False: "FAILED", None: ""}
    table(
        ["REPORTED AT", "EVENT", "TARGET", "RESULT", "DETAIL"],
        [[when(e["reported_at"]), e["event_type"], e["target_name"] or "-", outcome[e["success"]], e["detail"][:60]] for e in data["items"]],
    )
    pages(args.page, data["next"], data["total"])
    return 0


def _listed_uuids(args):
    tokens = list(args.uuid)
    if args.uuids:
        tokens += uuid_tokens(uuids_arg(args.uuids))
    if not tokens:
        raise UsageError("Give device UUIDs as arguments or with --uuids LIST|@FILE")
    # Check every UUID before the first batch is sent, so a typo changes nothing.
    unique, bad = {}, []
    for token in tokens:
        try:
            unique.setdefault(str(uuid_lib.UUID(token)), None)
        except ValueError:
            bad.append(token)
    if bad:
        shown = ", ".join(repr(b[:40]) for b in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CliError(f"Not a device UUID: {shown}{more}")
    return list(unique)


def devices_config_updates(args, ctx):
    result = ctx.client.post(_device_path(ctx, args.device, "/config/updates"), {"tag": args.tag})
    if args.json:
        dump_json(result)
        return 0
    if result["previous_tag"] == result["tag"]:
        out(f"Device {result['name']} follows tag {result['tag']} (set from the server)")
    else:
        out(f"Device {result['name']} moved from tag {result['previous_tag']} to {result['tag']}; it follows it at its next poll")
    return 0


def devices_set_group(args, ctx):
    uuids = _listed_uuids(args)
    moved, unknown = 0, []
    batches = [uuids[i : i + ASSIGN_BATCH] for i in range(0, len(uuids), ASSIGN_BATCH)]
    for number, batch in enumerate(batches, 1):
        result = ctx.client.patch(ctx.path("devices/"), {"group": args.group, "uuids": batch})
        moved += result["moved"]
        unknown += result["unknown"]
        if len(batches) > 1:
            err(f"{min(number * ASSIGN_BATCH, len(uuids)):,} of {counted(len(uuids), 'device')} done")
    where = f"group {args.group}" if args.group else "no group"
    out(f"{counted(moved, 'device')} {plural(moved, 'is', 'are')} now in {where}")
    if unknown:
        err(f"{counted(len(unknown), 'UUID')} {plural(len(unknown), 'is not a device', 'are not devices')} of this factory:")
        for item in unknown[:20]:
            err(f"  {item}")
        if len(unknown) > 20:
            err(f"  … and {len(unknown) - 20} more")
    return 0


def _group_path(ctx, name):
    return ctx.path(f"groups/{quote(name, safe='')}")


def groups_list(args, ctx):
    groups = ctx.client.get(ctx.path("groups/"))
    if args.json:
        dump_json(groups)
        return 0
    table(["NAME", "DEVICES", "DESCRIPTION", "CREATED AT"], [[g["name"], g["devices"], g["description"], when(g["created_at"])] for g in groups])
    return 0


def groups_create(args, ctx):
    group = ctx.client.post(ctx.path("groups/"), {"name": args.name, "description": args.description})
    out(f"Device group {group['name']} created")
    return 0


def groups_rename(args, ctx):
    group = ctx.client.patch(_group_path(ctx, args.name), {"name": args.new_name})
    out(f"Device group {args.name} is now {group['name']}")
    return 0


def groups_delete(args, ctx):
    ctx.client.delete(_group_path(ctx, args.name))
    out(f"Device group {args.name} deleted; its devices no longer have a group")
    return 0


def _list_path(ctx, name):
    return ctx.path(f"device-lists/{quote(name, safe='')}")


def device_lists_list(args, ctx):
    lists = ctx.client.get(ctx.path("device-lists/"))
    if args.json:
        dump_json(lists)
        return 0
    table(["NAME", "DEVICES", "CREATED BY", "UPDATED AT"], [[x["name"], x["count"], x["created_by"] or "-", when(x["updated_at"])] for x in lists])
    return 0


def device_lists_show(args, ctx):
    saved = ctx.client.get(_list_path(ctx, args.name))
    if args.json:
        dump_json(saved)
        return 0
    for item in saved["uuids"]:
        out(item)
    return 0


def device_lists_create(args, ctx):
    saved = ctx.client.post(ctx.path("device-lists/"), {"name": args.name, "uuids": uuids_arg(args.uuids)})
    out(f"Saved device list {saved['name']} with {counted(saved['count'], 'device')}")
    return 0


def device_lists_update(args, ctx):
    if args.uuids is None and args.rename is None:
        raise UsageError("Give --uuids to replace the list's devices and/or --rename to rename it")
    payload = {"uuids": uuids_arg(args.uuids), "name": args.rename}
    saved = ctx.client.patch(_list_path(ctx, args.name), {k: v for k, v in payload.items() if v is not None})
    out(f"Saved device list {saved['name']} has {counted(saved['count'], 'device')}")
    return 0


def device_lists_delete(args, ctx):
    ctx.client.delete(_list_path(ctx, args.name))
    out(f"Saved device list {args.name} deleted")
    return 0


def tokens_list(args, ctx):
    tokens = ctx.client.get(ctx.path("registration-tokens/"), {"revoked": args.all})
    if args.json:
        dump_json(tokens)
        return 0
    table(
        ["PREFIX", "NAME", "TAG", "GROUP", "PRODUCTION", "USES", "EXPIRES AT", "REVOKED AT"],
        [
            [
                t["prefix"],
                t["name"] or "-",
                t["tag"],
                t["group"] or "-",
                "yes" if t["production"] else "no",
                f"{t['uses']}/{t['max_uses']}" if t["max_uses"] else t["uses"],
                when(t["expires_at"]) if t["expires_at"] else "never",
                when(t["revoked_at"]) if t["revoked_at"] else "",
            ]
            for t in tokens
        ],
    )
    return 0


def tokens_create(args, ctx):
    payload = {
        "tag": args.tag,
        "name": args.name,
        "group": args.group,
        "production": args.production,
        "max_uses": args.max_uses,
        "expires_days": args.expires_days,
    }
    token = ctx.client.post(ctx.path("registration-tokens/"), {k: v for k, v in payload.items() if v is not None})
    # The secret alone on stdout, so scripts can capture it; the explanation on stderr.
    out(token["token"])
    err(f"Registration token {token['prefix']} created for tag {token['tag']}; it is shown only once.")
    return 0


def tokens_revoke(args, ctx):
    ctx.client.delete(ctx.path(f"registration-tokens/{quote(args.prefix, safe='')}"))
    out(f"Registration token {args.prefix} revoked")
    return 0
