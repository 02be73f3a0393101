"""`breakwater keys ...`: offline TUF keys and roots.

New offline keys are generated on this machine and written to an archive here first; only the
public key and signatures are sent to the server.
"""
import base64
import hashlib
import io
import os
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

from factory.errors import ApplicationError
from factory.plurals import counted
from factory.tuf.keys import key_archive_read, key_archive_write, key_generate, payload_sign

from .client import CliError, UsageError
from .common import read_binary
from .output import dump_json, err, fields, out, table, when


def register(sub, common):
    keys = sub.add_parser("keys", help="offline TUF keys and the CI and production roots", parents=[common])
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", parents=[common], help="the factory's TUF keys, root facts and any key change waiting for signatures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=keys_list)

    p = commands.add_parser("show-root", parents=[common], help="print the CI root (test devices) or, with --prod, the production root")
    p.add_argument("--prod", action="store_true", help="the production root")
    p.add_argument("--version", type=int, metavar="N", help="this root version (default: the newest)")
    p.set_defaults(handler=keys_show_root)

    p = commands.add_parser(
        "download-roots",
        parents=[common],
        help="save every root version (1.root.json, 2.root.json, ...) to a directory or a tar archive",
        description="Save the factory's root metadata versions, the exact bytes the TUF repository serves "
        "devices, as N.root.json. DEST ending in .tar, .tar.gz or .tgz is written as an archive (it must not "
        "exist); any other DEST is a directory, created if missing, where a different N.root.json is never "
        "overwritten.",
    )
    p.add_argument("dest", metavar="DEST", help="a directory, or an archive path ending in .tar, .tar.gz or .tgz")
    p.add_argument("--prod", action="store_true", help="the production root (default: the CI root of test devices)")
    p.set_defaults(handler=keys_download_roots)

    p = commands.add_parser(
        "rotate-offline-key",
        parents=[common],
        help="generate an offline key on this machine and add it to the factory's roots",
        description="Generate a new offline key here, save it to KEYS.tgz (readable by you only), and add its "
        "public half to the factory's CI and production roots. A targets key signs production waves; a root "
        "key replaces the root key(s). The private key never leaves this machine.",
    )
    p.add_argument("--role", choices=("targets", "root"), default="targets")
    p.add_argument("-k", "--keys", required=True, metavar="OUT.tgz", help="where to save the new key archive (must not exist)")
    p.add_argument("--threshold", type=int, metavar="N", help="production targets threshold after adding a targets key (default: at least 2)")
    p.add_argument("-K", "--sign-with", action="append", default=[], metavar="KEYS.tgz", help="other key archives whose signatures the change needs")
    p.set_defaults(handler=keys_rotate)

    p = commands.add_parser(
        "retire-offline-key",
        parents=[common],
        help="remove an offline targets key from the factory's roots",
        description="Remove an offline targets key (its holder left, it was lost or replaced) from the CI and "
        "production roots. Production targets it signed must be re-signed by the remaining offline keys: "
        "give their archives with -K, or sign later with `breakwater keys sign-change`.",
    )
    p.add_argument("keyid", metavar="KEYID", help="the key's id as `breakwater keys list` shows it, or its first 8 characters or more")
    p.add_argument("-K", "--sign-with", action="append", default=[], metavar="KEYS.tgz", help="remaining offline keys to sign what the change needs")
    p.set_defaults(handler=keys_retire)

    p = commands.add_parser(
        "rotate-online-key",
        parents=[common],
        help="replace the server's online targets, snapshot or timestamp key with a new one",
        description="The server generates a new online key and publishes a new root version that trusts it "
        "instead of the old one; every view is re-signed with it and devices follow at their next poll. When "
        "the root key is offline, give its archive with -k (or sign later with `breakwater keys sign-change`).",
    )
    p.add_argument("--role", required=True, choices=("targets", "snapshot", "timestamp"))
    p.add_argument("-k", "--keys", action="append", default=[], metavar="ROOT.tgz", help="the offline root key, when the root is offline")
    p.set_defaults(handler=keys_rotate_online)

    p = commands.add_parser("sign-change", parents=[common], help="sign the pending key change with the keys in an archive")
    p.add_argument("-k", "--keys", action="append", required=True, metavar="KEYS.tgz")
    p.set_defaults(handler=keys_sign_change)

    p = commands.add_parser("renew-root", parents=[common], help="renew the root for another year (same keys)")
    p.add_argument("-k", "--keys", action="append", default=[], metavar="ROOT.tgz", help="the offline root key, when the root is offline")
    p.set_defaults(handler=keys_renew_root)

    p = commands.add_parser("abandon-change", parents=[common], help="abandon the key change waiting for signatures")
    p.set_defaults(handler=keys_abandon)


def keys_list(args, ctx):
    data = ctx.client.get(ctx.path("keys/"))
    if args.json:
        dump_json(data)
        return 0
    fields(
        [
            ("Root Version", data["root_version"]),
            ("Root Expires", when(data["root_expires_at"])),
            ("Root Key", "online (on the server)" if data["root_online"] else "offline"),
            ("Production Targets Threshold", data["production_targets_threshold"]),
            ("Offline Targets Keys", data["offline_targets_keys"]),
        ]
    )
    out()
    table(
        ["ROLE", "KEY ID", "WHERE", "CREATED AT", "BY", "RETIRED AT"],
        [
            [k["role"], k["keyid"], "online" if k["online"] else "offline", when(k["created_at"]), k["created_by"] or "-", when(k["retired_at"]) if k["retired_at"] else ""]
            for k in data["keys"]
        ],
    )
    if data["pending_change"]:
        out()
        _print_change(data["pending_change"])
    return 0


def keys_show_root(args, ctx):
    dump_json(ctx.client.get(ctx.path("keys/root"), {"production": args.prod, "version": args.version}))
    return 0


ARCHIVE_SUFFIXES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz"}


def _archive_mode(dest):
    name = str(dest).lower()
    return next((mode for suffix, mode in ARCHIVE_SUFFIXES.items() if name.endswith(suffix)), None)


def _roots_fetch(ctx, production):
    roots = []
    for entry in ctx.client.get(ctx.path("keys/roots"), {"production": production}):
        data = ctx.client.get_bytes(ctx.path(f"keys/roots/{int(entry['version'])}"), {"production": production})
        # The listing and the download are two requests: a root applied between them, or a proxy
        # that rewrote the body, must not end up in the user's copy of the trust chain.
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CliError(f"{entry['filename']} did not arrive as the server lists it (sha256 differs); try again")
        roots.append((f"{int(entry['version'])}.root.json", data))
    return roots


def _roots_write_archive(dest, mode, roots):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in roots:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise CliError(f"{dest} already exists; choose a new file") from None
    except OSError as exc:
        raise CliError(f"Cannot create {dest}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(buffer.getvalue())


def _roots_write_directory(dest, roots):
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"Cannot create the directory {dest}: {exc.strerror}") from None
    # Check every file before writing any: a root is a trust anchor, and a copy that differs from
    # the server's is a question for a person, never something to replace silently.
    for name, data in roots:
        existing = dest / name
        if existing.exists() and existing.read_bytes() != data:
            raise CliError(f"{existing} exists and differs from the server's {name}; nothing was written")
    for name, data in roots:
        path = dest / name
        if path.exists():
            continue
        temporary = dest / f".{name}.part"
        temporary.write_bytes(data)
        temporary.replace(path)


def keys_download_roots(args, ctx):
    dest = Path(args.dest).expanduser()
    mode = _archive_mode(dest)
    if mode is None and dest.exists() and not dest.is_dir():
        raise UsageError(f"{args.dest} is a file: give a directory, or an archive path ending in .tar, .tar.gz or .tgz")
    roots = _roots_fetch(ctx, args.prod)
    if mode is None:
        _roots_write_directory(dest, roots)
    else:
        _roots_write_archive(dest, mode, roots)
    channel = "production" if args.prod else "CI"
    out(f"Saved {len(roots)} {channel} root versions ({roots[0][0]} to {roots[-1][0]}) to {args.dest}")
    return 0


def _signers(paths):
    signers = []
    for path in paths:
        try:
            signers += [signer for _, signer in key_archive_read(read_binary(path, what="keys archive"))]
        except ApplicationError as exc:
            raise CliError(f"Cannot use the keys archive {path}: {exc.message}") from None
    return signers


def _signatures(change, signers):
    """Signatures the pending change still needs that these keys can make."""
    signatures = []
    for document in change["documents"]:
        if not document["missing"]:
            continue
        payload = base64.b64decode(document["payload"])
        for signer in signers:
            keyid = signer.public_key.keyid
            if keyid in document["keyids"] and keyid not in document["signed_by"]:
                signatures.append({"document": document["document"], **payload_sign(signer, payload)})
    return signatures


def _sign_pending(ctx, change, signers):
    signatures = _signatures(change, signers) if change["status"] == "pending" else []
    if signatures:
        change = ctx.client.post(ctx.path("keys/change/sign"), {"signatures": signatures})
    return change


def _print_change(change):
    if change["status"] == "applied":
        out(f"The key change ({change['action']}) is applied: a new root version is published.")
        return
    out(f"A key change ({change['action']}) is waiting for offline signatures:")
    table(["DOCUMENT", "STILL NEEDS"], [[d["document"], d["missing"] or "complete"] for d in change["documents"]], indent=2)
    out("Sign it with `breakwater keys sign-change -k KEYS.tgz`, or abandon it with `breakwater keys abandon-change`.")


def _write_new_archive(path, data):
    target = Path(path).expanduser()
    try:
        # O_EXCL: never overwrite an existing archive, which may hold the only copy of a key.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} already exists; choose a new file so that no key is lost") from None
    except OSError as exc:
        raise CliError(f"Cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def keys_rotate(args, ctx):
    if args.threshold is not None and args.role != "targets":
        raise UsageError("--threshold applies to targets keys only")
    others = _signers(args.sign_with)
    signer = key_generate()
    # Save the key before the server knows it: a key the roots trust must never be lost.
    _write_new_archive(args.keys, key_archive_write([(args.role, signer)]))
    public = {k: v for k, v in signer.public_key.to_dict().items() if k in ("keytype", "scheme", "keyval")}
    payload = {"role": args.role, "public_key": public}
    if args.threshold is not None:
        payload["threshold"] = args.threshold
    try:
        change = ctx.client.post(ctx.path("keys/offline"), payload)
    except CliError as exc:
        raise CliError(f"The server did not add the new key ({exc.message}); {args.keys} holds an unused key and can be deleted") from None
    change = _sign_pending(ctx, change, [signer, *others])
    out(f"New offline {args.role} key {signer.public_key.keyid} saved to {args.keys}; keep it offline and backed up.")
    _print_change(change)
    return 0


def keys_retire(args, ctx):
    signers = _signers(args.sign_with)
    change = ctx.client.post(ctx.path(f"keys/offline/{quote(args.keyid.strip(), safe='')}/retire"))
    change = _sign_pending(ctx, change, signers)
    if change["status"] == "applied":
        out(f"Offline key {change['details']['keyid']} is retired: it no longer signs for this factory.")
    _print_change(change)
    return 0


def keys_sign_change(args, ctx):
    change = ctx.client.get(ctx.path("keys/change"))
    signers = _signers(args.keys)
    signatures = _signatures(change, signers)
    if not signatures:
        raise CliError("None of the keys in the archive can add a signature the pending change still needs")
    change = ctx.client.post(ctx.path("keys/change/sign"), {"signatures": signatures})
    err(f"Added {counted(len(signatures), 'signature')}")
    _print_change(change)
    return 0


def keys_rotate_online(args, ctx):
    signers = _signers(args.keys)
    change = ctx.client.post(ctx.path("keys/online/rotate"), {"role": args.role})
    change = _sign_pending(ctx, change, signers)
    if change["status"] == "applied":
        out(f"The online {args.role} key is now {change['details']['keyid']}; the old one is retired.")
    _print_change(change)
    return 0


def keys_renew_root(args, ctx):
    signers = _signers(args.keys)
    change = ctx.client.post(ctx.path("keys/root/renew"))
    _print_change(_sign_pending(ctx, change, signers))
    return 0


def keys_abandon(args, ctx):
    ctx.client.delete(ctx.path("keys/change"))
    out("The pending key change is abandoned")
    return 0

