"""Printing for the CLI: fioctl-like tables, times, JSON, and progress on stderr."""
import json
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from factory.logs import one_line
from factory.plurals import counted


def out(text=""):
    # The CLI's own line breaks stay; a control character from a name or a reason (an escape
    # sequence, a carriage return that hides a line) is printed as an escape.
    print(one_line(str(text), keep="\n\t"), file=sys.stdout)


def err(text=""):
    print(one_line(str(text), keep="\n\t"), file=sys.stderr)


def dump_json(data):
    out(json.dumps(data, indent=2, sort_keys=False))


def table(headers, rows, *, indent=0):
    """Columns padded to their widest cell, a dashed rule under the headers (like fioctl's tabby)."""
    # Cells hold device text (names, failure reasons): a line break or an escape sequence would
    # forge a row or drive the terminal.
    cells = [[("" if c is None else one_line(str(c))) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    pad = " " * indent

    def line(values):
        return (pad + "  ".join(v.ljust(widths[i]) for i, v in enumerate(values))).rstrip()

    out(line(headers))
    out(line(["-" * len(h) for h in headers]))
    for row in cells:
        out(line(row))


def fields(pairs):
    """Aligned `Label:  value` lines."""
    width = max((len(label) for label, _ in pairs), default=0) + 1
    for label, value in pairs:
        out(f"{(label + ':').ljust(width)}  {'' if value is None else one_line(str(value))}")


def when(value):
    """An API timestamp as `YYYY-MM-DD HH:MM:SS UTC`; '-' when empty."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def bad_build(bad):
    """The API's `bad` field as the server words it: 'build 42 is marked bad (reason, by bob on 2026-12-03)'."""
    return f"build {bad['version']} is marked bad ({bad['reason']}, by {bad['by']} on {str(bad['at'])[:10]})"


def ago(value):
    if not value:
        return "never"
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    seconds = max(0, (datetime.now(timezone.utc) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def pages(page, next_page, total=None):
    if next_page:
        more = f" of {counted(total, 'result')}" if total is not None else ""
        err(f"\nPage {page}{more}; next page: --page {next_page}")


@contextmanager
def progress(label):
    """Show elapsed time on a terminal's stderr while a long request runs; silent otherwise."""
    if not sys.stderr.isatty():
        yield
        return
    done = threading.Event()
    start = time.monotonic()

    def tick():
        while not done.wait(1.0):
            sys.stderr.write(f"\r{label}… {int(time.monotonic() - start)}s")
            sys.stderr.flush()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if time.monotonic() - start >= 1.0:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
