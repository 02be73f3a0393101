"""`breakwater login`, `logout` and `whoami`: where the CLI connects and as whom."""
import getpass
import os
import sys

from .client import Client, CliError, check_url, config_load, config_save
from .output import fields, out


def register(sub, common):
    p = sub.add_parser(
        "login",
        parents=[common],
        help="check a server URL and API token and save them for later commands",
        description="Save the server URL and your API token (created in the dashboard) in the CLI's "
        "configuration file, readable only by you. The token is read from --token, BREAKWATER_TOKEN, "
        "a prompt, or standard input.",
    )
    p.set_defaults(handler=login)
    p = sub.add_parser("logout", parents=[common], help="forget the saved API token")
    p.set_defaults(handler=logout)
    p = sub.add_parser("whoami", parents=[common], help="the server, user, factory and role the CLI uses")
    p.set_defaults(handler=whoami)


def _read_token():
    if sys.stdin.isatty():
        return getpass.getpass("API token: ")
    return sys.stdin.readline()


def login(args, ctx):
    settings = ctx.settings
    url = getattr(args, "url", None) or os.environ.get("BREAKWATER_URL") or settings.url
    if not url:
        url = input("Breakwater URL: ") if sys.stdin.isatty() else None
    if not url:
        raise CliError("Give the server URL: `breakwater login --url https://breakwater.example.com`")
    url = check_url(url.strip())
    token = (getattr(args, "token", None) or os.environ.get("BREAKWATER_TOKEN") or _read_token() or "").strip()
    if not token:
        raise CliError("No API token was given; create one in the dashboard and pass it with --token or on standard input")
    with Client(url, token, ca_bundle=settings.ca_bundle) as client:
        me = client.get("/whoami")
    factory = getattr(args, "factory", None)
    if factory and factory != me["factory"]:
        raise CliError(f"This token belongs to factory {me['factory']}, not {factory}")
    stored = config_load(settings.path)
    stored.update({"url": url, "token": token, "factory": me["factory"]})
    config_save(settings.path, stored)
    out(f"Logged in to {url} as {me['user']} ({me['role']}) in factory {me['factory']}; saved to {settings.path}")
    return 0


def logout(args, ctx):
    stored = config_load(ctx.settings.path)
    if "token" not in stored:
        out(f"No token is saved in {ctx.settings.path}")
        return 0
    stored.pop("token")
    config_save(ctx.settings.path, stored)
    out(f"Removed the API token from {ctx.settings.path}")
    return 0


def whoami(args, ctx):
    me = ctx.client.get("/whoami")
    fields([("Server", ctx.client.url), ("User", me["user"]), ("Factory", me["factory"]), ("Role", me["role"]), ("Token", f"{me['token']}…")])
    return 0
