"""Every error a person reads starts with a capital letter: the services' errors shown on pages and
in API bodies, form errors, flash messages, the device gateway's refusals and the CLI's errors.

The rule is checked on the source: a message written as a literal (or an f-string, or literals
joined with +) where it is raised or handed to a door, whose first character is a lower-case
letter, is a finding. A message that starts with a name as typed (`{wave.name} ...`) or with a
quoted command (`` `breakwater login` ...``) starts with no letter and is left alone.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("factory", "devices", "waves")

# Error classes by the position of their message argument; project classes that subclass one of
# these are found in the source and take their parent's position.
ERROR_CLASSES = {
    "ApplicationError": 0,  # factory/errors.py and every subclass: NotFound, Conflict, ...
    "CliError": 0,  # factory/cli/client.py: UsageError, ...
    "ValidationError": 0,  # Django's form errors, and ninja's
    "HttpError": 1,  # ninja: HttpError(status, message)
    "ReportError": 0,  # a device report the schema refuses (devices/reports.py)
    "Refused": 1,  # the device gateway's refusals: Refused(status, message)
    "BadRequest": 1,  # the gateway's HTTP/1.1 parser: BadRequest(status, message)
    "Http404": 0,  # Django's, whose message the API answers with
    "PermissionDenied": 0,
}
# Functions that put a message in front of a person, by the position of the message.
MESSAGE_CALLS = {
    "add_error": 1,  # form.add_error(field, message)
    "error_response": 3,  # the API's error body: error_response(request, status, code, detail)
    "error": 1,  # messages.error(request, message); logger.error is skipped below
    "warning": 1,
    "success": 1,
    "info": 1,
    "_error": 0,  # the registration endpoint's error body (devices/registration.py)
    "_refuse": 1,  # the device gateway's answer to a request it cannot parse: _refuse(status, message)
    "error_bytes": 1,  # the same, written by the HTTP/1.1 layer: error_bytes(status, message, date=...)
}
# Calls that answer with a JSON body, and the keys of the message in it: {"detail": ...} (API),
# {"error": ...} (device gateway).
BODY_CALLS = {"_json", "JsonResponse", "create_response"}
BODY_KEYS = {"detail", "error"}
LOGGERS = {"logger", "log", "logging", "self.logger"}
# Messages built before they are raised: assigned to a name like these, or returned by a
# function (or property) whose name ends in "message".
MESSAGE_NAMES = {"message", "detail"}
# A device report's refusal of one event or field is a predicate the event and field complete
# ("In event 3, detail must be text"), so it starts in lower case on purpose.
PREDICATES = {"ReportError": ("event", "field")}


def _error_classes(trees):
    """ERROR_CLASSES plus the project's subclasses of them, however deep."""
    known = dict(ERROR_CLASSES)
    classes = [node for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for node in classes:
            if node.name in known:
                continue
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
                if name in known:
                    known[node.name] = known[name]
                    grew = True
                    break
    return known


def _first_text(node):
    """The literal text a message starts with, or None when it starts with a value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return first.value if isinstance(first, ast.Constant) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _first_text(node.left)
    if isinstance(node, (ast.IfExp, ast.BoolOp)):
        # Every branch (`a if c else b`, `a or b`) may be the message: report one that breaks the rule.
        for branch in (node.body, node.orelse) if isinstance(node, ast.IfExp) else node.values:
            text = _first_text(branch)
            if text is not None and text[:1].islower():
                return text
        return None
    return None


def _callee(node):
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr, ast.unparse(func.value)
    if isinstance(func, ast.Name):
        return func.id, ""
    return None, ""


def _message_args(node, classes):
    """The message argument(s) of a call that shows one, else nothing."""
    name, owner = _callee(node)
    if name == "refuse" or any(kw.arg in PREDICATES.get(name, ()) for kw in node.keywords):
        return []
    if name in BODY_CALLS:
        bodies = [arg for arg in node.args if isinstance(arg, ast.Dict)]
        return [v for body in bodies for k, v in zip(body.keys, body.values) if isinstance(k, ast.Constant) and k.value in BODY_KEYS]
    if name in classes:
        index = classes[name]
    elif name in MESSAGE_CALLS and owner not in LOGGERS:
        index = MESSAGE_CALLS[name]
    else:
        return []
    found = [node.args[index]] if len(node.args) > index else []
    found += [kw.value for kw in node.keywords if kw.arg in ("message", "detail", "msg")]
    return found


def _target_name(node):
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)


def _built_messages(tree):
    """Messages assigned to `message`/`detail`, and returned by `*message` functions."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_target_name(t) in MESSAGE_NAMES for t in targets):
                yield node.value
        elif isinstance(node, ast.keyword) and node.arg in MESSAGE_NAMES:
            yield node.value
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.endswith("message"):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    yield inner.value


def findings(sources):
    """[(path, line, text)] of messages starting in lower case, over {path: source text}."""
    trees = {path: ast.parse(text, str(path)) for path, text in sources.items()}
    classes = _error_classes(trees.values())
    found = []
    for path, tree in trees.items():
        messages = list(_built_messages(tree))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                messages += _message_args(node, classes)
        for message in {id(m): m for m in messages}.values():
            text = _first_text(message)
            if text is not None and text[:1].islower():
                found.append((path, message.lineno, text.split("\n")[0][:60]))
    return sorted(found)


def project_sources():
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                sources[path.relative_to(ROOT)] = path.read_text()
    return sources


def test_every_error_message_starts_with_a_capital_letter():
    found = findings(project_sources())
    assert not found, "messages that start in lower case:\n" + "\n".join(f"{p}:{line}: {text!r}" for p, line, text in found)


def _example_findings(source):
    """The rule over the project with one more module, whose findings it returns."""
    example = Path("waves/example_module.py")
    return [(line, text) for path, line, text in findings({**project_sources(), example: source}) if path == example]


def test_the_rule_finds_a_lower_case_message_wherever_it_is_shown():
    source = '''
from factory.errors import Conflict


class Stale(Conflict):
    pass


def wave_cancel(wave, form, request):
    raise Stale(f"wave {wave.name} is complete; it cannot be canceled")


def view(form, request, error):
    form.add_error(None, "choose a group")
    messages.error(request, "nothing was rolled out: " + error)
    return JsonResponse({"detail": "no such wave", "code": "not_found"}, status=404)


def cli(args):
    raise UsageError("Give a group" if args.group else "give a limit")


def network_message(url):
    return f"cannot reach {url}"


def job_failed(save, total):
    detail = f"the worker stopped at {total}"
    save(status="failed", message="nothing was staged")
'''
    assert _example_findings(source) == [
        (10, "wave "),
        (14, "choose a group"),
        (15, "nothing was rolled out: "),
        (16, "no such wave"),
        (20, "give a limit"),
        (24, "cannot reach "),
        (28, "the worker stopped at "),
        (29, "nothing was staged"),
    ]


def test_names_as_typed_and_loggers_are_not_findings():
    source = '''
def f(wave, logger):
    raise Conflict(f"{wave.name} is complete")
    raise CliError("`breakwater login` first: no token is saved")
    logger.error("worker %s stopped", wave)
    raise ReportError("must be text", event=3, field="detail")
    events.append({"type": "install-applied", "detail": "reboot required"})
    raise NotFound(f"Wave {wave.name} does not exist")
'''
    assert _example_findings(source) == []
