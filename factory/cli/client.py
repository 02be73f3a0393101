"""The CLI's HTTP client for the Breakwater API, and the configuration it runs with.

Configuration comes from command-line options, then BREAKWATER_URL / BREAKWATER_TOKEN /
BREAKWATER_FACTORY, then the file `breakwater login` writes. Every failure becomes a `CliError`
whose message is one sentence a person can act on.
"""
import json
import os
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import urllib3

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 300


class CliError(Exception):
    """A failure to report on stderr; exit status 1 (2 for usage errors)."""

    def __init__(self, message, *, exit_code=1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(CliError):
    def __init__(self, message):
        super().__init__(message, exit_code=2)


class ApiError(CliError):
    """The server answered with an error: status, code and its one-sentence detail."""

    def __init__(self, status, code, detail, body=None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.body = body or {}


def config_path(explicit=None):
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("BREAKWATER_CONFIG"):
        return Path(os.environ["BREAKWATER_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "breakwater" / "config.json"


def config_load(path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"Cannot read the configuration file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise CliError(f"The configuration file {path} is not valid JSON; run `breakwater login` again") from None
    return data if isinstance(data, dict) else {}


def config_save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file holds a secret: create it readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(path, 0o600)


def check_url(url):
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"The server URL {url!r} must start with http:// or https://")
    return url.rstrip("/")


class Settings:
    """The server, token and factory to use, with where each came from (for error messages)."""

    def __init__(self, *, url=None, token=None, factory=None, config=None):
        self.path = config_path(config)
        stored = config_load(self.path)
        self.url = url or os.environ.get("BREAKWATER_URL") or stored.get("url")
        self.token = token or os.environ.get("BREAKWATER_TOKEN") or stored.get("token")
        self.factory = factory or os.environ.get("BREAKWATER_FACTORY") or stored.get("factory")
        self.ca_bundle = os.environ.get("BREAKWATER_CA_BUNDLE") or stored.get("ca_bundle")

    def client(self):
        if not self.url:
            raise CliError("No Breakwater server is configured: run `breakwater login --url URL` or set BREAKWATER_URL")
        if not self.token:
            raise CliError("No API token is configured: run `breakwater login` or set BREAKWATER_TOKEN")
        return Client(self.url, self.token, factory=self.factory, ca_bundle=self.ca_bundle)


class Client:
    def __init__(self, url, token, *, factory=None, ca_bundle=None, timeout=DEFAULT_TIMEOUT):
        self.url = check_url(url)
        self.token = token.strip()
        self._factory = factory
        # Retry only failures to connect: the request never reached the server, so it is safe
        # even for writes. A read timeout on a write is never retried.
        retries = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0, backoff_factor=0.3)
        kwargs = {"retries": retries, "timeout": urllib3.Timeout(connect=10, read=timeout)}
        if ca_bundle:
            kwargs["ca_certs"] = ca_bundle
        self.pool = urllib3.PoolManager(**kwargs)

    def close(self):
        """Close the kept-alive connections now, not whenever the garbage collector finds them."""
        self.pool.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def factory(self):
        if not self._factory:
            # A token belongs to one factory; ask the server which one.
            self._factory = self.get("/whoami")["factory"]
        return self._factory

    def factory_path(self, path):
        return f"/factories/{quote(self.factory, safe='')}/{path.lstrip('/')}"

    def get(self, path, params=None):
        return self.request("GET", path, params=params)

    def get_bytes(self, path, params=None):
        """The exact bytes of a download (an error still comes back as the API's JSON message)."""
        return self.request("GET", path, params=params, raw=True)

    def post(self, path, payload=None):
        return self.request("POST", path, payload=payload if payload is not None else {})

    def patch(self, path, payload):
        return self.request("PATCH", path, payload=payload)

    def delete(self, path, payload=None):
        return self.request("DELETE", path, payload=payload)

    def upload(self, path, filename, params=None):
        """POST the file at `filename` as the raw body (streamed, not read into memory)."""
        with open(filename, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            return self.request("POST", path, params=params, body=handle, headers=headers)

    def request(self, method, path, *, params=None, payload=None, body=None, headers=None, raw=False):
        url = f"{self.url}{API_PREFIX}{path}"
        if params:
            query = {k: _param(v) for k, v in params.items() if v is not None}
            if query:
                url += "?" + urlencode(query, doseq=True)
        headers = {"Authorization": f"Token {self.token}", "Accept": "application/json", "User-Agent": "breakwater-cli", **(headers or {})}
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self.pool.request(method, url, body=body, headers=headers)
        except urllib3.exceptions.MaxRetryError as exc:
            raise CliError(_network_message(self.url, exc.reason)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise CliError(_network_message(self.url, exc)) from None
        if raw and response.status < 400:
            return response.data
        return self._decode(response)

    def _decode(self, response):
        status = response.status
        if status == 204:
            return None
        content_type = response.headers.get("Content-Type", "")
        data = None
        if "json" in content_type:
            try:
                data = json.loads(response.data)
            except ValueError:
                data = None
        if data is None:
            if status >= 500:
                raise CliError(f"The server at {self.url} failed (HTTP {status}); try again, or ask its operator to check the logs")
            raise CliError(
                f"{self.url} answered HTTP {status} with {content_type or 'no content type'}, not the Breakwater API; "
                "check BREAKWATER_URL (or `breakwater login --url`)"
            )
        if status < 400:
            return data
        detail = data.get("detail") if isinstance(data, dict) else None
        code = data.get("code", "error") if isinstance(data, dict) else "error"
        if not isinstance(detail, str):
            detail = f"The server refused the request (HTTP {status})"
        if status == 401:
            detail = f"The server rejected the API token ({detail}); run `breakwater login` or set BREAKWATER_TOKEN to a valid token"
        elif status >= 500:
            detail = f"The server at {self.url} failed (HTTP {status}): {detail}"
        raise ApiError(status, code, detail, body=data)


def _param(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _network_message(url, reason):
    text = str(reason)
    errors = urllib3.exceptions
    if isinstance(reason, errors.SSLError):
        return f"The TLS connection to {url} failed ({text}); set BREAKWATER_CA_BUNDLE if the server uses a private CA"
    # NewConnectionError is a kind of ConnectTimeoutError in urllib3: test the specific cases first.
    if isinstance(reason, errors.NameResolutionError):
        return f"Cannot resolve the host of {url}; check BREAKWATER_URL (or `breakwater login --url`)"
    if isinstance(reason, errors.NewConnectionError):
        return f"Cannot connect to the Breakwater server at {url} (connection refused); is it running, and is BREAKWATER_URL right?"
    if isinstance(reason, errors.ConnectTimeoutError):
        return f"Cannot connect to the Breakwater server at {url} (timed out); check the network and BREAKWATER_URL"
    if isinstance(reason, (errors.ReadTimeoutError, errors.TimeoutError)):
        return f"The server at {url} did not answer in time; it may still be working on the request, so check before retrying"
    return f"Cannot reach the Breakwater server at {url}: {text}"
