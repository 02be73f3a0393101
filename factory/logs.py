"""Log records hold device and user text (reasons, names, paths) on one line: line breaks and
control characters in a record's arguments are written as escapes, so no text can forge a log line
or send a terminal escape sequence to whoever reads the log. Installed once per process (web,
gateway, workers) as the record factory, so every logger and handler gets it."""
import logging

# Python's own string escapes for the characters people know; \xNN / \uNNNN for the rest.
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(value, *, keep=""):
    """`value` on one line: every character that is not printable (but those in `keep`) written
    as an escape."""
    if value.isprintable():
        return value
    return "".join(
        c if c.isprintable() or c in keep else ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in value
    )


def _safe(arg):
    if isinstance(arg, str):
        return one_line(arg)
    if isinstance(arg, (int, float, bool)) or arg is None:
        return arg
    # An exception or object whose text comes from outside (str(exc) quotes a device's report).
    text = str(arg)
    return arg if text.isprintable() else one_line(text)


def _record_factory(base):
    def make(*args, **kwargs):
        record = base(*args, **kwargs)
        if isinstance(record.args, dict):
            record.args = {key: _safe(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(_safe(arg) for arg in record.args)
        if isinstance(record.msg, str) and not record.args:
            record.msg = one_line(record.msg)
        return record

    make.breakwater_one_line = True
    return make


def log_records_one_line():
    """Install the record factory (once: a second call leaves it as it is)."""
    base = logging.getLogRecordFactory()
    if not getattr(base, "breakwater_one_line", False):
        logging.setLogRecordFactory(_record_factory(base))
