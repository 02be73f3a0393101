"""The strict HTTP/1.x subset the device gateway speaks: request heads parsed, responses written.

Devices send GET and POST requests with small heads and, for event reports, a Content-Length body
of at most a few kilobytes. Everything else is refused with a 4xx before the gateway's handler sees
it: chunked or other transfer codings (411), a line without CRLF, a header line without a colon,
whitespace before the colon or folded lines (the forms request smuggling relies on), two
Content-Length headers, unknown methods and anything but HTTP/1.0 and HTTP/1.1. A parser this
small is read in one sitting and refuses what a general parser would have to accept.
"""
import json
import re
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

# The environ key under which the server hands the handler the verified client certificate (DER).
PEER_CERTIFICATE = "breakwater.peer_certificate"

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Visible ASCII, spaces and tabs, and obs-text: no control characters in a header value.
FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
TARGET = re.compile(rb"^/[\x21-\x7e]*$")
MAX_HEADERS = 64


class BadRequest(Exception):
    """A request the gateway refuses before its handler: answered with `status`, then closed."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = ("method", "target", "version", "headers", "content_length", "keep_alive", "expect_continue")

    def __init__(self, method, target, version, headers, content_length, keep_alive, expect_continue):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue

    def environ(self, *, body_stream, peer_der, remote_addr):
        """The WSGI-style environ the gateway's handler reads."""
        path, _, query = self.target.partition("?")
        environ = {
            "REQUEST_METHOD": self.method,
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": self.version,
            "REMOTE_ADDR": remote_addr,
            "CONTENT_LENGTH": str(self.content_length) if self.content_length else "",
            "wsgi.input": body_stream,
            "wsgi.url_scheme": "https",
            PEER_CERTIFICATE: peer_der,
        }
        for name, value in self.headers:
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
                continue
            if name == "content-length":
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


def parse_head(head):
    """Parse a request head (the bytes before the blank line, without it) or raise BadRequest."""
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        raise BadRequest(400, "Lines must end with CRLF")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "The request line must be: METHOD /path HTTP/1.1")
    raw_method, raw_target, raw_version = parts
    if not TOKEN.match(raw_method) or len(raw_method) > 16:
        raise BadRequest(400, "The request line does not start with a method")
    method = raw_method.decode("ascii")
    if method not in METHODS:
        raise BadRequest(405, f"Unknown method {method}")
    if raw_version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505 if raw_version.startswith(b"HTTP/") else 400, "Only HTTP/1.1 and HTTP/1.0 are spoken here")
    if not TARGET.match(raw_target):
        raise BadRequest(400, "The request target must be a path starting with /")
    version = raw_version.decode("ascii")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, f"At most {MAX_HEADERS} header lines")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadRequest(400, "A header line without a colon")
        if not TOKEN.match(name):
            # Also refuses folded lines and whitespace before the colon.
            raise BadRequest(400, "A header name must be a token, directly followed by a colon")
        value = value.strip(b" \t")
        if not FIELD_VALUE.match(value):
            # The name is a token (checked above), so it is safe to echo.
            raise BadRequest(400, f"The {name.decode('ascii').lower()} header holds a control character")
        if b"_" in name:
            # x_ats_tags would reach the handler as x-ats-tags: such headers are dropped, as nginx does.
            continue
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))

    content_length = 0
    lengths = [value for name, value in headers if name == "content-length"]
    if any(name == "transfer-encoding" for name, _ in headers):
        raise BadRequest(411, "Chunked or encoded request bodies are not accepted: send Content-Length")
    if len(lengths) > 1:
        raise BadRequest(400, "More than one Content-Length")
    if lengths:
        if not lengths[0].isdigit() or not lengths[0].isascii() or len(lengths[0]) > 18:
            raise BadRequest(400, "Content-Length must be a number of bytes")
        content_length = int(lengths[0])
    tokens = {t.strip().lower() for name, value in headers if name == "connection" for t in value.split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    expect = [value.lower() for name, value in headers if name == "expect"]
    if expect and expect != ["100-continue"]:
        raise BadRequest(417, "Only Expect: 100-continue is understood")
    return Request(method, raw_target.decode("ascii"), version, headers, content_length, keep_alive, bool(expect))


class Clock:
    """The Date header, formatted once a second rather than on every response."""

    def __init__(self, time_source):
        self.time_source = time_source
        self._second = None
        self._text = ""

    def date(self):
        second = int(self.time_source())
        if second != self._second:
            self._second, self._text = second, formatdate(second, usegmt=True)
        return self._text


def response_bytes(status, headers, body, *, keep_alive, version, date, head_only=False):
    """A complete response. The handler's headers are its own (it sets Content-Length); the
    server adds Date and the Connection header the client's version needs."""
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Date: {date}"]
    has_length = False
    for name, value in headers:
        has_length = has_length or name.lower() == "content-length"
        lines.append(f"{name}: {value}")
    if not has_length:
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_bytes(status, message, *, date):
    """A refusal from the server itself (malformed request, limits), always followed by a close."""
    body = json.dumps({"error": message}).encode()
    return response_bytes(status, [("Content-Type", "application/json")], body, keep_alive=False, version="HTTP/1.1", date=date)


def _phrase(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
