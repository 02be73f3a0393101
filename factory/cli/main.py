"""The `breakwater` command: fioctl's production-release commands over Breakwater's REST API.

Exit status: 0 on success, 1 when the command failed (the reason is one sentence on stderr),
2 for usage errors.
"""
import argparse
import sys

from . import account, fleet, keys, targets, waves
from .client import CliError
from .common import Context

DESCRIPTION = """Release production over-the-air updates with waves: the fioctl commands of the
production-targets workflow, against a Breakwater server. Configure it with `breakwater login`, or
with BREAKWATER_URL, BREAKWATER_TOKEN and BREAKWATER_FACTORY."""


def common_options():
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection options")
    # SUPPRESS: an option given before the subcommand is not reset by the subcommand's parser.
    group.add_argument("--url", default=argparse.SUPPRESS, help="server URL (default: BREAKWATER_URL or the saved login)")
    group.add_argument("-t", "--token", default=argparse.SUPPRESS, help="API token (default: BREAKWATER_TOKEN or the saved login)")
    group.add_argument("-f", "--factory", default=argparse.SUPPRESS, help="factory (default: BREAKWATER_FACTORY or the token's factory)")
    group.add_argument("-c", "--config", default=argparse.SUPPRESS, help="configuration file (default: ~/.config/breakwater/config.json)")
    return common


def build_parser():
    common = common_options()
    parser = argparse.ArgumentParser(prog="breakwater", description=DESCRIPTION, parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    account.register(sub, common)
    waves.register(sub, common)
    fleet.register(sub, common)
    targets.register(sub, common)
    keys.register(sub, common)
    return parser


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    ctx = None
    try:
        ctx = Context(args)
        return args.handler(args, ctx) or 0
    except CliError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if exc.exit_code == 2:
            print(f"Run `{' '.join(_command_words(args))} --help` for usage.", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error worth a traceback.
        sys.stderr.close()
        return 1
    finally:
        if ctx is not None:
            ctx.close()


def _command_words(args):
    words = ["breakwater", args.command]
    for attr in ("waves_command", "plan_command", "devices_command", "config_command", "group_command", "lists_command", "tokens_command", "targets_command", "keys_command"):
        value = getattr(args, attr, None)
        if value:
            words.append(value)
    return words


if __name__ == "__main__":
    sys.exit(main())
