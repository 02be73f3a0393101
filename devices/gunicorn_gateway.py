"""gunicorn configuration of the device gateway (`-c python:devices.gunicorn_gateway`).

Mutual TLS itself comes from the command line (--certfile --keyfile --ca-certs --cert-reqs 2);
this module adds what a plain command line cannot: one TLS context per worker instead of one per
connection, the check-in flusher thread in each worker with a last flush on exit, and the short
in-memory cache of each tag's view rows.
"""
import os
import ssl

# Every device on a tag shares its view rows: keep them a second in each worker instead of reading
# them on every poll (see factory.tuf.selectors._tag_view_rows).
os.environ.setdefault("BREAKWATER_GATEWAY_VIEW_CACHE_SECONDS", "1")

worker_class = "gthread"
# Devices poll in short bursts (root, timestamp, maybe snapshot and targets): keep the
# connection for the burst, not for the minutes between polls.
keepalive = 15
accesslog = None

_context = None
_flusher = None


def ssl_context(conf, default_ssl_context_factory):
    global _context
    if _context is None:
        context = default_ssl_context_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _context = context
    return _context


def post_worker_init(worker):
    global _flusher
    from devices.checkins import Flusher

    _flusher = Flusher()
    _flusher.start()


def worker_exit(server, worker):
    if _flusher is not None:
        _flusher.stop()
