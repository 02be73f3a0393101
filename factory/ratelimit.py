"""Failed-attempt limits (dashboard logins, API tokens) counted in the Django cache.

The counts live in the shared cache (Redis, or the file cache every process on the machine
shares), so a limit holds across web processes. Each attempt is counted before it is checked, so
parallel requests cannot all slip in under the limit; an attempt that succeeds gives its count back.
"""
import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches

from .errors import ApplicationError
from .plurals import counted

# Tests point this at a fresh namespace so counts from one test never leak into another.
NAMESPACE = "ratelimit"


class Throttled(ApplicationError):
    status = 429
    code = "throttled"


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    retry_after: int  # seconds until the fullest window closes; 0 when not blocked

    @property
    def message(self):
        minutes = max(1, math.ceil(self.retry_after / 60))
        return f"Too many failed attempts; try again in {counted(minutes, 'minute')}"


class FailureLimiter:
    """At most `attempts` failures per `window` seconds for each key kind (e.g. ip, username).

    A window opens at the first attempt counted and does not slide: attempts refused while blocked
    do not prolong the block.
    """

    def __init__(self, scope, *, attempts, window, cache_alias="default"):
        self.scope = scope
        self.attempts = attempts
        self.window = window
        self.cache_alias = cache_alias

    @property
    def cache(self):
        return caches[self.cache_alias]

    def _base(self, kind, value):
        # Hash so any client-supplied string (long, spaces, control characters) makes a valid key.
        digest = hashlib.sha256(str(value).strip().casefold().encode()).hexdigest()[:32]
        return f"{NAMESPACE}:{self.scope}:{kind}:{digest}"

    def _counter(self, base, now, *, open_window):
        start = self.cache.get(base)
        if start is None:
            if not open_window:
                return None, None
            # add() is atomic on Redis, so concurrent first attempts agree on one window.
            self.cache.add(base, now, timeout=self.window)
            start = self.cache.get(base, now)
        return f"{base}:{start!r}", start

    def _count(self, kind, value, now):
        counter, start = self._counter(self._base(kind, value), now, open_window=False)
        if counter is None:
            return 0, 0
        return self.cache.get(counter, 0), max(0, start + self.window - now)

    def _verdict(self, counts):
        # `count` is the failures already counted before this attempt.
        waits = [remaining for count, remaining in counts if count >= self.attempts]
        return Verdict(blocked=bool(waits), retry_after=math.ceil(max(waits)) if waits else 0)

    def check(self, **keys):
        """Whether these keys are blocked now, without counting an attempt."""
        now = time.time()
        return self._verdict([self._count(kind, value, now) for kind, value in keys.items() if value])

    def attempt(self, **keys):
        """Count one attempt against every key; blocked when any key is past its limit."""
        now = time.time()
        counts = []
        for kind, value in keys.items():
            if not value:
                continue
            counter, start = self._counter(self._base(kind, value), now, open_window=True)
            self.cache.add(counter, 0, timeout=self.window)
            try:
                count = self.cache.incr(counter)
            except ValueError:  # expired between add() and incr()
                self.cache.set(counter, 1, timeout=self.window)
                count = 1
            # Backends without a native increment (file, database) rewrite the entry with the
            # default timeout; the counter's name is unique to its window, so a full window is right.
            self.cache.touch(counter, self.window)
            counts.append((count, max(0, start + self.window - now)))
        return self._verdict([(count - 1, remaining) for count, remaining in counts])

    def succeeded(self, *, reset=(), **keys):
        """An attempt passed: give its count back, and clear the kinds named in `reset`."""
        now = time.time()
        for kind, value in keys.items():
            if not value:
                continue
            base = self._base(kind, value)
            if kind in reset:
                self.cache.delete(base)
                continue
            counter, _ = self._counter(base, now, open_window=False)
            if counter is not None:
                try:
                    if self.cache.decr(counter) < 0:
                        self.cache.set(counter, 0, timeout=self.window)
                    self.cache.touch(counter, self.window)
                except ValueError:
                    pass


def client_ip(request):
    """The client's address. Behind N trusted reverse proxies (BREAKWATER_TRUSTED_PROXY_HOPS=N),
    the Nth address from the right of X-Forwarded-For; never an address the client can choose."""
    hops = int(getattr(settings, "BREAKWATER_TRUSTED_PROXY_HOPS", 0) or 0)
    if hops > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def login_limiter():
    return FailureLimiter("login", attempts=settings.BREAKWATER_LOGIN_FAILURES, window=settings.BREAKWATER_LOGIN_FAILURE_WINDOW_SECONDS)


def api_token_limiter():
    # Tokens are too long to guess; this bounds the database work a token-guessing client causes.
    return FailureLimiter("api-token", attempts=settings.BREAKWATER_API_TOKEN_FAILURES, window=settings.BREAKWATER_LOGIN_FAILURE_WINDOW_SECONDS)
