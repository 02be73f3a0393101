"""`breakwater waves plan ...`: a wave's rollout plan (phases that advance on evidence or approval).

Phases come from a JSON file (`--file`), from `--phase` specs on the command line, or from a
saved template (`--template`). A `--phase` spec is `key=value` pairs separated by spaces or
commas, with short names for the gates, e.g.:

    --phase "group=us-east limit=5 wait=60 reporting=5 success=90% failure=10% stuck=30 unhealthy=0"
    --phase "group=us-east wait=120 approval four-eyes"
    --phase "group=us-east pace=10"                        (10 devices a minute, in batches)
    --phase "group=us-east pace-start=5 factor=2 ceiling=200" (5, 10, 20, ... a minute, up to 200)
    --phase "group=us-east failure=5% retry=2"              (a failed device is offered the wave twice more)

Maintenance windows: phases release devices only inside them, e.g.
    --window "mon-fri 02:00-05:00" --timezone Europe/Berlin --group-window beta="sat 00:00-06:00"
"""
import argparse
import json
import re
from urllib.parse import quote

from factory.plurals import counted

from .client import CliError, UsageError
from .common import read_binary, read_file_text
from .output import dump_json, err, fields, out, table, when
from .signing import OfflineSigner

ALIASES = {
    "wait": "wait_minutes",
    "reporting": "min_reporting",
    "success": "min_success_ratio",
    "failure": "max_failure_ratio",
    "failures": "max_failure_ratio",
    "unhealthy": "max_unhealthy",
    "stuck": "stuck_after_minutes",
    "list": "saved_list",
    "pace": "pace_per_minute",
    "rate": "pace_per_minute",
    "factor": "pace_factor",
    "ceiling": "pace_ceiling",
    "retry": "retry_failed",
    "retries": "retry_failed",
}
FLAGS = {
    "approval": ("advance", "approval"),
    "auto": ("advance", "auto"),
    "four-eyes": ("approver_must_differ", True),
    "approver-must-differ": ("approver_must_differ", True),
}
KEYS = (
    "name", "group", "limit", "saved_list", "uuids", "wait_minutes", "min_reporting", "min_success_ratio",
    "max_failure_ratio", "max_unhealthy", "stuck_after_minutes", "advance", "approver_must_differ", "retry_failed",
    "pace_per_minute", "pace_start", "pace_factor", "pace_ceiling",
)  # fmt: skip
TOKEN = re.compile(r"""([\w-]+)=("[^"]*"|'[^']*'|[^\s,]*)|([\w-]+)""")


def register(commands, common):
    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="a wave's rollout plan: phases that advance on evidence or approval, and halt on trouble",
        description="A rollout plan rolls a wave out in phases. After each phase it waits and watches; it "
        "advances when the phase's gates are met (or a release manager approves), and halts on trouble.",
    )
    sub = plan.add_subparsers(dest="plan_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "set",
        parents=[common],
        help="create or replace a wave's plan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1].strip(),
        epilog="Keys: " + ", ".join(KEYS) + ". Short names: " + ", ".join(f"{k}={v}" for k, v in ALIASES.items())
        + ". Words: approval, auto, four-eyes (the approver may not be the plan's author).",
    )
    p.add_argument("wave", metavar="WAVE")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", metavar="FILE", help="JSON: a list of phases, or {\"phases\": [...], \"webhook_url\": ...} (- reads stdin)")
    source.add_argument("--phase", action="append", metavar="SPEC", help="one phase as key=value pairs; repeat for each phase, in order")
    source.add_argument("--template", metavar="NAME", help="apply a saved plan template")
    p.add_argument("--groups", metavar="G1,G2", help="with a per-group template: the groups to apply it to, in order")
    p.add_argument("--webhook", metavar="URL", help="POST JSON here when the plan halts, needs an approval or ends ('' removes it)")
    p.add_argument("--window", action="append", metavar="WINDOW", help="a maintenance window, e.g. 'mon-fri 02:00-05:00'; repeat for more")
    p.add_argument("--no-windows", action="store_true", help="remove the plan's maintenance windows (and the groups' own)")
    p.add_argument("--timezone", metavar="ZONE", help="the windows' time zone, e.g. Europe/Berlin (default UTC)")
    p.add_argument("--group-window", action="append", metavar="GROUP=WINDOW", help="a group's own window, replacing the plan's for its phases")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=plan_set)

    p = sub.add_parser("show", parents=[common], help="the plan: phases, gates, decisions and the forecast")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-n", "--decisions", type=int, default=10, metavar="N", help="show the last N decisions (default 10)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=plan_show)

    p = sub.add_parser(
        "start",
        parents=[common],
        help="start a drafted plan: its first phase rolls out now",
        description="Start a drafted plan. With --rollback and -k, a rollback (the tag's production build re-released "
        "above the wave) is signed here with the offline key in the same step and armed: if a failure gate halts the "
        "plan, the staged (or the failed) devices move back by themselves. The key never leaves this machine.",
    )
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("--rollback", choices=("staged", "failed"), help="arm a pre-signed rollback moving back the staged, or only the failed, devices on a halt")
    p.add_argument("-k", "--keys", metavar="KEYS.tgz", help="with --rollback: the offline keys archive to sign it with (locally)")
    p.set_defaults(handler=plan_start)

    p = sub.add_parser("approve", parents=[common], help="approve the phase awaiting approval; the next phase rolls out as you")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-r", "--reason", required=True, help="why the plan may go on (recorded with your name)")
    p.set_defaults(handler=plan_action, action="approve")

    p = sub.add_parser(
        "force",
        parents=[common],
        help="move the current phase on now: roll out one held by its window, or pass one still waiting",
        description="Force the current phase on: a phase waiting for its maintenance window rolls out now; a watched "
        "phase whose wait gates (the wait, devices reporting, the success ratio) are not met yet passes and the next "
        "phase rolls out as you. Refused for a phase failing a halting gate, one that advances by approval, or one "
        "still releasing paced batches.",
    )
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-r", "--reason", required=True, help="why it may go on now (recorded with your name)")
    p.set_defaults(handler=plan_action, action="force")

    p = sub.add_parser("skip", parents=[common], help="skip a phase that has not rolled out (default: the current one)")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("--phase", type=int, metavar="N", help="the phase's number (see `waves plan show`)")
    p.add_argument("-r", "--reason", required=True, help="why the phase is not needed (recorded with your name)")
    p.set_defaults(handler=plan_action, action="skip")

    p = sub.add_parser("pause", parents=[common], help="pause the plan: nothing advances until it resumes")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-r", "--reason", default="", help="why (recorded)")
    p.set_defaults(handler=plan_action, action="pause")

    p = sub.add_parser("resume", parents=[common], help="resume a paused or halted plan (a halted one needs --reason)")
    p.add_argument("wave", metavar="WAVE")
    p.add_argument("-r", "--reason", default="", help="why it is safe to go on (recorded)")
    p.set_defaults(handler=plan_action, action="resume")


def plan_path(ctx, wave, rest=""):
    return ctx.path(f"waves/{quote(wave, safe='')}/plan{rest}")


def _value(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def phase_parse(spec, index):
    """One `--phase` spec -> a phase dict for the API (the server checks the values)."""
    phase = {}
    position = 0
    spec = spec.strip()
    while position < len(spec):
        if spec[position] in " ,\t":
            position += 1
            continue
        match = TOKEN.match(spec, position)
        if not match or match.end() == position:
            raise UsageError(f"Phase {index}: cannot read {spec[position:position + 20]!r}; write key=value pairs")
        position = match.end()
        if match.group(3):
            word = match.group(3).lower()
            if word not in FLAGS:
                raise UsageError(f"Phase {index}: {word!r} is not a setting; write key=value, or one of {', '.join(FLAGS)}")
            key, value = FLAGS[word]
        else:
            key = match.group(1).lower().replace("-", "_")
            key = ALIASES.get(key, key)
            if key not in KEYS:
                raise UsageError(f"Phase {index}: unknown setting {match.group(1)!r}; use {', '.join(KEYS)}")
            value = _value(match.group(2))
            if key == "uuids" and value.startswith("@"):
                value = read_file_text(value[1:], what="UUID list file")
            if key == "approver_must_differ":
                value = value.lower() in ("1", "true", "yes", "on")
        if key in phase:
            raise UsageError(f"Phase {index}: {key} is given twice")
        phase[key] = value
    if not phase:
        raise UsageError(f"Phase {index} is empty")
    return phase


def _file_phases(path):
    text = read_file_text(path, what="plan file")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"The plan file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("phases"), list):
        return data["phases"], data.get("webhook_url"), {k: data[k] for k in ("windows", "timezone", "group_windows") if k in data}
    if isinstance(data, list):
        return data, None, {}
    raise CliError(f"The plan file {path} must hold a list of phases or an object with \"phases\"")


def plan_set(args, ctx):
    payload = {}
    webhook = args.webhook
    if args.template:
        payload["template"] = args.template
        if args.groups:
            payload["groups"] = [g for g in re.split(r"[,\s]+", args.groups) if g]
    else:
        if args.groups:
            raise UsageError("--groups goes with --template")
        if args.file:
            payload["phases"], file_webhook, file_windows = _file_phases(args.file)
            payload.update(file_windows)
            webhook = webhook if webhook is not None else file_webhook
        else:
            payload["phases"] = [phase_parse(spec, i) for i, spec in enumerate(args.phase, start=1)]
    if webhook is not None:
        payload["webhook_url"] = webhook
    payload.update(_windows_args(args))
    plan = ctx.client.request("PUT", plan_path(ctx, args.wave), payload=payload)
    if args.json:
        dump_json(plan)
        return 0
    out(f"Plan of wave {plan['wave']} set: {counted(len(plan['phases']), 'phase')}, {plan['status']}.")
    _phases_table(plan)
    if plan["status"] == "draft":
        err(f"\nStart it with: breakwater waves plan start {args.wave}")
    return 0


def _windows_args(args):
    """--window / --timezone / --group-window / --no-windows -> the API's keys (the server checks)."""
    if args.no_windows and (args.window or args.group_window):
        raise UsageError("--no-windows removes every window; give it without --window or --group-window")
    payload = {}
    if args.no_windows:
        payload["windows"], payload["group_windows"] = [], {}
    if args.window:
        payload["windows"] = args.window
    if args.timezone is not None:
        payload["timezone"] = args.timezone
    if args.group_window:
        groups = {}
        for item in args.group_window:
            group, sep, window = item.partition("=")
            if not sep or not group.strip() or not window.strip():
                raise UsageError(f"--group-window {item!r}: write GROUP=WINDOW, e.g. beta='sat 00:00-06:00'")
            groups.setdefault(group.strip(), []).append(_value(window.strip()))
        payload["group_windows"] = groups
    return payload


def plan_action(args, ctx):
    payload = {"reason": args.reason} if getattr(args, "reason", None) is not None else {}
    if getattr(args, "phase", None) is not None:
        payload["phase"] = args.phase
    plan = ctx.client.post(plan_path(ctx, args.wave, f"/{args.action}"), payload)
    current = plan["current_phase"]
    words = {"start": "started", "approve": "approved", "pause": "paused", "resume": "resumed", "force": "forced on", "skip": "skipped"}
    if args.action in ("approve", "force", "skip") and current is not None and plan["status"] == "running":
        phase = plan["phases"][current - 1]
        state = "is rolling out" if phase["status"] != "pending" else f"waits ({plan.get('windows_summary') or 'its window'})"
        out(f"{words[args.action].capitalize()}. Phase {current} ({_phase_title(phase)}) {state}.")
    else:
        out(f"Plan of wave {plan['wave']} {words[args.action]}: it is {plan['status']}.")
    if plan["status"] == "halted":
        out(f"HALTED: {plan['halted_reason']}")
    return 0


def plan_start(args, ctx):
    if bool(args.rollback) != bool(args.keys):
        raise UsageError("--rollback and -k go together: the rollback is signed with the offline key when the plan starts")
    payload = {}
    if args.rollback:
        signer = OfflineSigner.for_factory(ctx, read_binary(args.keys, what="keys archive"), args.keys)
        # The server hands out the exact bytes; only the signatures travel back.
        draft = ctx.client.post(plan_path(ctx, args.wave, "/rollback/prepare"), {"scope": args.rollback})
        payload = {"rollback": {"scope": args.rollback, **signer.sign_wave(draft)}}
    plan = ctx.client.post(plan_path(ctx, args.wave, "/start"), payload)
    out(f"Plan of wave {plan['wave']} started: it is {plan['status']}.")
    if plan.get("rollback"):
        out(f"Rollback: {plan['rollback']['description']}.")
    if plan["status"] == "halted":
        out(f"HALTED: {plan['halted_reason']}")
    return 0


def _percent(value):
    return "-" if value is None else f"{value * 100:.4g}%"


def _phase_title(phase):
    return phase["name"] or phase["label"]


def _gates(phase):
    parts = [f"wait {phase['wait_minutes']}m"]
    if phase["min_reporting"]:
        parts.append(f"reporting≥{phase['min_reporting']}")
    if phase["min_success_ratio"] is not None:
        parts.append(f"success≥{_percent(phase['min_success_ratio'])}")
    if phase["max_failure_ratio"] is not None:
        parts.append(f"failures≤{_percent(phase['max_failure_ratio'])}")
    if phase["stuck_after_minutes"] is not None:
        parts.append(f"stuck>{phase['stuck_after_minutes']}m")
    if phase["max_unhealthy"] is not None:
        parts.append(f"silent≤{phase['max_unhealthy']}")
    if phase.get("pace"):
        parts.append(f"pace {phase['pace']}")
    if phase.get("retry_failed"):
        parts.append(f"retry×{phase['retry_failed']}")
    if phase["advance"] == "approval":
        parts.append("approval" + (" (not the author)" if phase["approver_must_differ"] else ""))
    return " ".join(parts)


def _phases_table(plan):
    rows = []
    for phase in plan["phases"]:
        ev = phase["evidence"]
        devices = f"{ev['updated']}/{ev['staged']}" if ev else (f"~{phase['estimated_devices']}" if phase["estimated_devices"] is not None else "")
        trouble = f"{ev['failed']}/{ev['stuck']}/{ev['unhealthy']}" if ev else ""
        marker = "→" if phase["position"] == plan["current_phase"] and plan["status"] not in ("draft", "finished", "canceled") else ""
        rows.append([f"{marker}{phase['position']}", _phase_title(phase), phase["status"], devices, trouble, _gates(phase)])
    table(["#", "PHASE", "STATUS", "UPDATED", "FAILED/STUCK/SILENT", "GATES"], rows)


def plan_show(args, ctx):
    plan = ctx.client.get(plan_path(ctx, args.wave))
    if args.json:
        dump_json(plan)
        return 0
    if plan["status"] == "halted":
        out(f"HALTED: {plan['halted_reason']}")
        out(f"Resume with `breakwater waves plan resume {args.wave} --reason ...`, or cancel the wave.\n")
    forecast = plan["forecast"] or {}
    fields(
        [
            ("Wave", plan["wave"]),
            ("Status", plan["status"]),
            ("Author", plan["author"] or "-"),
            ("Webhook", plan["webhook_url"] or "-"),
            ("Windows", plan.get("windows_summary") or "any time"),
            *([("Next opening", when(plan["next_opening"]))] if plan.get("next_opening") and plan.get("windows_summary", "").split(" (")[0] != "any time" else []),
            ("Rollback", (plan.get("rollback") or {}).get("description") or "none (a halt stays a halt)"),
            ("Forecast", when(forecast.get("completion_at")) + (f" (+{counted(forecast['approvals_ahead'], 'approval')})" if forecast.get("approvals_ahead") else "")),
            ("Basis", forecast.get("basis") or "-"),
        ]
    )
    out()
    _phases_table(plan)
    current = plan["current_phase"]
    if current is not None and plan["status"] in ("running", "paused", "halted"):
        phase = plan["phases"][current - 1]
        if phase.get("pace_progress"):
            out(f"\nPhase {current}: {phase['pace_progress']}")
        if phase.get("window_wait"):
            out(f"\nPhase {current}: {phase['window_wait']}")
        if phase["evidence"]:
            out(f"\nPhase {current} gates:")
            for gate in phase["evidence"]["gates"]:
                mark = "ok " if gate["met"] else ("!! " if gate["on_fail"] == "halt" else ".. ")
                out(f"  {mark}{gate['label']}: {gate['observed']}")
    decisions = plan["decisions"][-args.decisions :] if args.decisions > 0 else []
    if decisions:
        out("\nDecisions:")
        table(
            ["WHEN", "PHASE", "DECISION", "BY", "REASON"],
            [[when(d["created_at"]), d["phase"] or "", d["kind"], d["actor"], d["reason"]] for d in decisions],
            indent=2,
        )
    return 0
