"""What every CLI command shares: the lazily-built API client and reading `@file` arguments."""
import re
import sys
from pathlib import Path

from .client import CliError, Settings

# The same separators the server accepts in a UUID list.
UUID_SEPARATORS = re.compile(r"[,;|\s]+")


class Context:
    def __init__(self, args):
        self.args = args
        self._client = None
        self.settings = Settings(
            url=getattr(args, "url", None),
            token=getattr(args, "token", None),
            factory=getattr(args, "factory", None),
            config=getattr(args, "config", None),
        )

    @property
    def client(self):
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def close(self):
        if self._client is not None:
            self._client.close()

    def path(self, path):
        """A path under the factory, e.g. ctx.path("waves/") -> /factories/acme/waves/."""
        return self.client.factory_path(path)


def read_file_text(path, *, what="file"):
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).expanduser().read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CliError(f"The {what} {path} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"The {what} {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise CliError(f"The {what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"Cannot read the {what} {path}: {exc.strerror}") from None


def uuids_arg(value):
    """`--uuids` as given: a list, or `@path` (read here, on this machine; `@-` reads stdin)."""
    if value is None:
        return None
    if value.startswith("@"):
        return read_file_text(value[1:], what="UUID list file")
    return value


def uuid_tokens(text):
    return [t for t in UUID_SEPARATORS.split(text or "") if t]


def read_binary(path, *, what):
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise CliError(f"The {what} {path} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"The {what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise CliError(f"Cannot read the {what} {path}: {exc.strerror}") from None
