"""The device gateway's server: mutual TLS and HTTP/1.1 on an event loop, the handler in threads.

    python -m factory.project.gateway.server --app factory.project.gateway.worker:service --bind 127.0.0.1:8443 \\
        --certfile server.crt --keyfile server.key --ca-certs device-root.pem [--workers 2] [--threads 8]

(`manage.py gateway` writes the TLS files and runs this.)

Why this design. A thread-per-connection server (gunicorn's gthread) does the TLS handshake and
reads the request in its worker threads: fifty connections that open and send nothing hold every
thread and real devices wait. Here one asyncio loop per process owns every connection, so an idle
or slow connection costs a file descriptor and a few kilobytes, never a thread, and each phase of a
connection has a deadline of its own:

    TLS handshake   --handshake-timeout   from accept to a verified client certificate
    request head    --header-timeout      from the first byte of a request (or the handshake) to the blank line
    request body    --body-timeout        from the head to the last byte of the body; also a
                                          response the client does not read
    keep-alive      --keepalive-timeout   between requests on one connection
    lingering close --linger-timeout      after a refusal, while the client may still be sending

The deadlines are totals, not per read: a client trickling a byte a second gains nothing. A head
larger than --max-header-bytes is a 431 (414 for the request line), a Content-Length above
--max-body-bytes a 413 before a byte of the body is read, and what the gateway does not speak
(http1) a 4xx; each is followed by a lingering close (below). Open connections are capped per process and
per client address; at the process cap the oldest connection that is not in the middle of a
request makes room, as nginx reuses its keep-alive connections, so a flood cannot lock devices out.

The gateway handler is synchronous Django code that may read the database: it runs in a pool of
--threads threads (one request in flight per connection), so the loop never waits on it. Only the
verified certificate DER reaches the handler (`http1.PEER_CERTIFICATE`), which decides who
the device is on every request. The TLS context is built once per process: CERT_REQUIRED against
the device root CA, TLS 1.2 or newer, run over memory BIOs on the plain TCP transport rather than
asyncio's start_tls, so the handshake deadline is the connection's own and a refused certificate
still gets its TLS alert; session tickets stay OpenSSL's default, so resumption across
processes needs only a shared ticket key later. The loop is uvloop's when it is installed
(`--loop auto`), else asyncio's.

Processes. The parent binds the listening socket and forks --workers processes that share it (the
kernel hands each connection to one of the processes waiting in accept); it restarts a worker
that dies, and on SIGTERM or SIGINT tells every worker to stop. A worker stops accepting, closes
its idle connections, lets requests in flight finish (at most --graceful-timeout seconds) and calls
the app's stop() (the gateway's last check-in flush). A worker whose parent is gone stops too.
"""
import argparse
import asyncio
import importlib
import io
import os
import resource
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import http1

try:
    import uvloop
except ImportError:  # optional: asyncio's own loop serves the same, slower
    uvloop = None

BOOT_FAILED = 3


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 15.0
    linger_timeout: float = 5.0
    max_header_bytes: int = 8192
    max_request_line: int = 4096
    max_body_bytes: int = 64 * 1024
    max_connections: int = 10_000
    max_connections_per_address: int = 1_000


class AccessLog:
    """`status microseconds "path"` per request, appended in whole lines by every worker."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else None
        self.lines = []

    def add(self, status, micros, path):
        if self.fd is not None:
            self.lines.append(f'{status} {micros} "{path}"\n')

    def flush(self):
        if self.fd is not None and self.lines:
            data, self.lines = "".join(self.lines).encode("utf-8", "replace"), []
            os.write(self.fd, data)


# Connection states.
HANDSHAKE, HEAD, BODY, BUSY, LINGER, CLOSED = range(6)
# Connections that hold no request and may be closed to make room, or when stopping.
IDLE_STATES = (HANDSHAKE, HEAD, LINGER)


class Connection(asyncio.Protocol):
    """One client: the TLS handshake, then requests one at a time until a deadline or a close."""

    __slots__ = (
        "worker", "loop", "transport", "address", "state", "buffer", "timer", "request", "peer_der",
        "started", "reading", "writing", "idle", "incoming", "outgoing", "tls",
    )  # fmt: skip

    def __init__(self, worker):
        self.worker = worker
        self.loop = worker.loop
        self.transport = None
        self.address = ""
        self.state = HANDSHAKE
        self.buffer = bytearray()
        self.timer = None
        self.request = None
        self.peer_der = None
        self.started = 0.0
        self.reading = True
        self.writing = True
        self.idle = True  # nothing of a request read yet: may be closed to make room
        self.incoming = self.outgoing = self.tls = None

    # --- TCP and TLS --------------------------------------------------------------------------
    # TLS runs over memory BIOs on the plain TCP transport: the handshake has the connection's
    # own deadline, a refused certificate gets its alert (CERTIFICATE_REQUIRED, UNKNOWN_CA) before
    # the close, and nothing of a failed handshake is logged as a server error.

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if peer else ""
        if not self.worker.admit(self):
            self.state = CLOSED
            self.worker = None
            transport.abort()
            return
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = self.worker.ssl_context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self._deadline(self.worker.limits.handshake_timeout)

    def data_received(self, data):
        if self.state in (CLOSED, LINGER):
            return  # lingering: read and dropped
        self.incoming.write(data)
        if self.state == HANDSHAKE:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError:
                # Refused (no certificate, another CA, an old protocol): the alert, then close.
                self._flush()
                self._finish()
                return
            self._flush()
            self.peer_der = self.tls.getpeercert(binary_form=True)
            if not self.peer_der:  # CERT_REQUIRED makes this unreachable; refuse rather than trust it
                self.close()
                return
            self.state = HEAD
            self._deadline(self.worker.limits.header_timeout)
        chunks = []
        try:
            while True:
                chunk = self.tls.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLError):
            # close_notify or a broken record: nothing more will come on this connection.
            self._flush()
            self.close()
            return
        self._flush()  # TLS 1.3 session tickets, key updates
        if chunks:
            self._received(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def write(self, data):
        self.tls.write(data)
        self._flush()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.transport.write(data)

    def eof_received(self):
        if self.state == LINGER:
            # The client has read our answer and closed: let the transport send what it still
            # holds, then close.
            self._lost()
            self.transport.close()
            return False
        if self.state == BUSY and self.request is not None:
            # The client has sent all it will: answer the request in flight, then close.
            self.request.keep_alive = False
            return True
        self.close()

    def connection_lost(self, exc):
        self._lost()

    def _lost(self):
        if self.worker is None:
            return
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.worker.release(self)
        self.worker = None

    def close(self):
        """Closed by the server (a deadline, a refusal, making room, stopping)."""
        if self.state == CLOSED:
            return
        self._lost()
        self.transport.abort()

    # --- requests -----------------------------------------------------------------------------

    def _received(self, data):
        if self.idle and self.state == HEAD:
            self.idle = False
            # The first byte of a request ends keep-alive: the head has its own deadline.
            if self.request is not None:
                self._deadline(self.worker.limits.header_timeout)
        self.buffer += data
        if self.state == BUSY:
            limits = self.worker.limits
            if len(self.buffer) > limits.max_header_bytes + limits.max_body_bytes:
                self._pause_reading()
            return
        self._advance()

    def _advance(self):
        limits = self.worker.limits
        if self.state == HEAD:
            # Blank lines before a request line are allowed (RFC 9112, 2.2).
            while self.buffer.startswith(b"\r\n"):
                del self.buffer[:2]
            if not self.buffer:
                return
            self.idle = False
            end = self.buffer.find(b"\r\n\r\n", 0, limits.max_header_bytes + 4)
            if end < 0:
                line_end = self.buffer.find(b"\r\n", 0, limits.max_request_line + 2)
                if line_end < 0 and len(self.buffer) > limits.max_request_line:
                    return self._refuse(414, f"The request line is longer than {limits.max_request_line} bytes")
                if len(self.buffer) > limits.max_header_bytes:
                    return self._refuse(431, f"The request head is larger than {limits.max_header_bytes} bytes")
                if b"\n\n" in self.buffer:
                    return self._refuse(400, "Lines must end with CRLF")
                return
            if self.buffer.find(b"\r\n", 0, end + 2) > limits.max_request_line:
                return self._refuse(414, f"The request line is longer than {limits.max_request_line} bytes")
            try:
                request = http1.parse_head(bytes(self.buffer[:end]))
            except http1.BadRequest as exc:
                return self._refuse(exc.status, exc.message)
            del self.buffer[: end + 4]
            if request.content_length > limits.max_body_bytes:
                return self._refuse(413, f"A request body may have at most {limits.max_body_bytes} bytes")
            self.request = request
            self.state = BODY
            if request.content_length:
                self._deadline(limits.body_timeout)
                if request.expect_continue and len(self.buffer) < request.content_length:
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.state == BODY:
            length = self.request.content_length
            if len(self.buffer) < length:
                return
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            self._dispatch(body)

    def _dispatch(self, body):
        self.state = BUSY
        self._cancel_deadline()
        self.started = time.perf_counter()
        environ = self.request.environ(body_stream=io.BytesIO(body), peer_der=self.peer_der, remote_addr=self.address)
        future = self.loop.run_in_executor(self.worker.executor, self.worker.app.respond, environ)
        future.add_done_callback(self._responded)

    def _responded(self, future):
        if self.state == CLOSED:
            return
        worker, request = self.worker, self.request
        try:
            status, headers, body = future.result()
        except Exception:
            status, headers, body = 500, [("Content-Type", "application/json")], b'{"error": "Internal error"}'
        keep_alive = request.keep_alive and not worker.stopping
        self.write(
            http1.response_bytes(
                status, headers, body, keep_alive=keep_alive, version=request.version, date=worker.clock.date(),
                head_only=request.method == "HEAD",
            )
        )
        worker.access_log.add(status, int((time.perf_counter() - self.started) * 1e6), request.target)
        if not keep_alive:
            self._finish()
            return
        self.state = HEAD
        self.idle = True
        self._resume_reading()
        if not self.writing:
            return  # resume_writing() goes on once the client has read the response
        self._next_request()

    def _next_request(self):
        if self.buffer:
            self._deadline(self.worker.limits.header_timeout)
            self.idle = False
            self._advance()
        else:
            self._deadline(self.worker.limits.keepalive_timeout)

    def _refuse(self, status, message):
        """A request the server answers itself, then closes the connection."""
        self.write(http1.error_bytes(status, message, date=self.worker.clock.date()))
        self.worker.access_log.add(status, 0, "-")
        self._finish()

    def _finish(self):
        """Send what is written, then a lingering close, as nginx does.

        A client may still be sending a body we refused unread (a 413 before the body). Closing
        the socket with its bytes unread makes the kernel answer with a reset, which can discard
        our answer before the client reads it: the device sees a broken connection instead of the
        413 and sends the same body again. So our side of the stream ends (close_notify, then a TCP
        half-close), and what still arrives is read and dropped until the client closes or
        --linger-timeout passes.
        """
        self.state = LINGER
        self.idle = True
        self._deadline(self.worker.limits.linger_timeout)
        if self.peer_der is not None:
            try:
                self.tls.unwrap()  # our close_notify; the client's is not waited for
            except ssl.SSLError:
                pass
            self._flush()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._resume_reading()

    # --- flow control and deadlines -----------------------------------------------------------

    def pause_writing(self):
        self.writing = False
        if self.state != CLOSED:
            self._deadline(self.worker.limits.body_timeout)

    def resume_writing(self):
        self.writing = True
        if self.state == HEAD:
            self._next_request()

    def _pause_reading(self):
        if self.reading:
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self):
        if not self.reading:
            self.reading = True
            self.transport.resume_reading()

    def _deadline(self, seconds):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._expired)

    def _cancel_deadline(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self):
        self.timer = None
        if self.state in (HEAD, BODY) and not self.idle:
            # A head or body that did not arrive in time: say so, then close.
            self.write(http1.error_bytes(408, "The request did not arrive in time", date=self.worker.clock.date()))
            self.worker.access_log.add(408, 0, "-")
        self.close()


class Worker:
    """One process's event loop, connections and handler threads."""

    def __init__(self, *, loop, sock, ssl_context, app, limits, threads, access_log, parent):
        self.loop = loop
        self.parent = parent
        self.sock = sock
        self.ssl_context = ssl_context
        self.app = app
        self.limits = limits
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="gateway")
        self.access_log = access_log
        self.clock = http1.Clock(time.time)
        self.connections = {}  # in accept order: the oldest first when room is needed
        self.per_address = Counter()
        self.stopping = False
        self._stopped = None
        self._server = None

    def admit(self, connection):
        limits = self.limits
        if limits.max_connections_per_address and self.per_address[connection.address] >= limits.max_connections_per_address:
            return False
        if len(self.connections) >= limits.max_connections and not self._make_room():
            return False
        self.connections[connection] = None
        self.per_address[connection.address] += 1
        return True

    def _make_room(self):
        for connection in self.connections:
            if connection.idle and connection.state in IDLE_STATES:
                connection.close()
                return True
        return False

    def release(self, connection):
        if connection in self.connections:
            del self.connections[connection]
            self.per_address[connection.address] -= 1
            if self.per_address[connection.address] <= 0:
                del self.per_address[connection.address]

    async def serve(self, graceful_timeout):
        self._stopped = self.loop.create_future()
        self._server = await self.loop.create_server(lambda: Connection(self), sock=self.sock, backlog=2048)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop)
        self.loop.call_later(1.0, self._tick)
        await self._stopped
        self._server.close()
        try:
            await asyncio.wait_for(self._drained(), graceful_timeout)
        except asyncio.TimeoutError:
            pass
        for connection in list(self.connections):
            connection.close()
        self.access_log.flush()

    async def _drained(self):
        while self.connections:
            await asyncio.sleep(0.05)

    def stop(self):
        if self.stopping:
            return
        self.stopping = True
        self._server.close()
        for connection in list(self.connections):
            if connection.idle and connection.state in IDLE_STATES:
                connection.close()
        if not self._stopped.done():
            self._stopped.set_result(None)

    def _tick(self):
        self.access_log.flush()
        if os.getppid() != self.parent:
            self.stop()
        if not self.stopping:
            self.loop.call_later(1.0, self._tick)


def ssl_context_build(*, certfile, keyfile, ca_certs):
    """Mutual TLS: a client certificate chaining to the device root CA, TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile, keyfile)
    context.load_verify_locations(cafile=ca_certs)
    return context


def new_loop(kind):
    if kind == "uvloop" and uvloop is None:
        raise RuntimeError("--loop uvloop: uvloop is not installed")
    if kind != "asyncio" and uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def app_load(spec):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main(args, sock, parent):
    """In a forked worker: load the app, serve until stopped; never returns."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    code = 0
    try:
        app = app_load(args.app)
        context = ssl_context_build(certfile=args.certfile, keyfile=args.keyfile, ca_certs=args.ca_certs)
        loop = new_loop(args.loop)
        asyncio.set_event_loop(loop)
        worker = Worker(
            loop=loop, sock=sock, ssl_context=context, app=app, limits=limits_from(args), threads=args.threads,
            access_log=AccessLog(args.access_log), parent=parent,
        )  # fmt: skip
        start = getattr(app, "start", None)
        if start:
            start()
        print(f"gateway worker {os.getpid()} serving {args.bind}", file=sys.stderr, flush=True)
    except Exception:
        sys.excepthook(*sys.exc_info())
        os._exit(BOOT_FAILED)
    try:
        loop.run_until_complete(worker.serve(args.graceful_timeout))
        worker.executor.shutdown(wait=True)
    except Exception:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        stop = getattr(app, "stop", None)
        if stop:
            stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def limits_from(args):
    return Limits(
        handshake_timeout=args.handshake_timeout, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        keepalive_timeout=args.keepalive_timeout, linger_timeout=args.linger_timeout, max_header_bytes=args.max_header_bytes, max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections, max_connections_per_address=args.max_connections_per_address,
    )  # fmt: skip


def listen(bind):
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Arbiter:
    """The parent: forks the workers, restarts one that dies, stops them all on a signal."""

    def __init__(self, args):
        self.args = args
        self.sock = listen(args.bind)
        self.workers = {}  # pid -> slot
        self.stopping = False

    def spawn(self, slot):
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            worker_main(self.args, self.sock, parent)
        self.workers[pid] = slot

    def run(self):
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.args.workers):
            self.spawn(slot)
        failed = False
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                # Polled, not a blocking wait: a signal handler cannot interrupt that (PEP 475),
                # and a worker that does not stop in time is killed.
                if self.stopping and time.monotonic() > self.kill_at:
                    for pid in self.workers:
                        os.kill(pid, signal.SIGKILL)
                    self.kill_at = float("inf")
                time.sleep(0.1)
                continue
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if code == BOOT_FAILED:
                # A worker that cannot start will not start the next time either.
                print(f"gateway worker {pid} failed to start; stopping", file=sys.stderr, flush=True)
                failed = True
                self._stop()
                continue
            print(f"gateway worker {pid} exited ({code}); starting another", file=sys.stderr, flush=True)
            time.sleep(0.2)
            self.spawn(slot)
        self.sock.close()
        return 1 if failed else 0

    def _stop(self, *_):
        if not self.stopping:
            self.kill_at = time.monotonic() + self.args.graceful_timeout + 10
        self.stopping = True
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def parser_build():
    defaults = Limits()
    parser = argparse.ArgumentParser(prog="python -m factory.project.gateway.server", description=__doc__.splitlines()[0])
    parser.add_argument("--app", required=True, help="module:object with respond(environ) -> (status, headers, body), optional start() and stop()")
    parser.add_argument("--bind", required=True, help="host:port")
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--ca-certs", required=True, help="the CA client certificates must chain to")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="handler threads per worker")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--access-log", default="", help='append `status microseconds "path"` per request to this file')
    parser.add_argument("--graceful-timeout", type=float, default=10.0)
    for field in ("handshake_timeout", "header_timeout", "body_timeout", "keepalive_timeout", "linger_timeout"):
        parser.add_argument("--" + field.replace("_", "-"), type=float, default=getattr(defaults, field))
    for field in ("max_header_bytes", "max_body_bytes", "max_connections", "max_connections_per_address"):
        parser.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(defaults, field))
    return parser


def main(argv=None):
    args = parser_build().parse_args(argv)
    # Every open connection is a file descriptor.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    return Arbiter(args).run()


if __name__ == "__main__":
    sys.exit(main())
