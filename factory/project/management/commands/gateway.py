import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand

from devices import pki
from devices.gateway_identity import gateway_identity_get
from factory.management.commands._base import application_errors


class Command(BaseCommand):
    help = "Run the device gateway: mutual TLS (clients must chain to the device root CA) on an event loop per worker."

    def add_arguments(self, parser):
        url = urlsplit(settings.BREAKWATER_GATEWAY_URL)
        parser.add_argument("--bind", default=f"{url.hostname or '127.0.0.1'}:{url.port or 443}")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--threads", type=int, default=8)
        parser.add_argument("--tls-dir", default=str(settings.VAR_DIR / "gateway"), help="where the TLS files are written")
        parser.add_argument("--print-command", action="store_true", help="write the TLS files, print the server's command, do not run it")
        parser.add_argument("--access-log", default="", help='append `status microseconds "path"` per request to this file (default: none)')

    def handle(self, *args, bind, workers, threads, tls_dir, print_command, access_log, **options):
        argv = self.prepare(bind=bind, workers=workers, threads=threads, tls_dir=Path(tls_dir))
        if access_log:
            argv += ["--access-log", access_log]
        if print_command:
            self.stdout.write(" ".join(argv))
            return
        self.stdout.write(f"Device gateway on https://{bind}/ (mutual TLS)")
        sys.stdout.flush()
        os.execv(argv[0], argv)

    @staticmethod
    def prepare(*, bind, workers, threads, tls_dir):
        """Write the server certificate, its key and the device root CA; return the server's argv
        (factory.project.gateway.server), its limits taken from the BREAKWATER_GATEWAY_* settings."""
        with application_errors():
            identity = gateway_identity_get()
        tls_dir.mkdir(parents=True, exist_ok=True)
        if settings.BREAKWATER_GATEWAY_CERTFILE:
            certfile, keyfile = settings.BREAKWATER_GATEWAY_CERTFILE, settings.BREAKWATER_GATEWAY_KEYFILE
        else:
            certfile, keyfile = tls_dir / "server.crt", tls_dir / "server.key"
            _write(certfile, identity.certificate, 0o644)
            _write(keyfile, pki.key_pem(pki.key_decrypt(identity.private_key)), 0o600)
        root = tls_dir / "device-root.pem"
        _write(root, identity.device_root_certificate, 0o644)
        return [
            sys.executable, "-m", "factory.project.gateway.server", "--app", "factory.project.gateway.worker:service",
            "--bind", bind, "--workers", str(workers), "--threads", str(threads),
            "--certfile", str(certfile), "--keyfile", str(keyfile), "--ca-certs", str(root),
            "--handshake-timeout", f"{settings.BREAKWATER_GATEWAY_HANDSHAKE_TIMEOUT:g}",
            "--header-timeout", f"{settings.BREAKWATER_GATEWAY_HEADER_TIMEOUT:g}",
            "--body-timeout", f"{settings.BREAKWATER_GATEWAY_BODY_TIMEOUT:g}",
            "--keepalive-timeout", f"{settings.BREAKWATER_GATEWAY_KEEPALIVE_TIMEOUT:g}",
            "--linger-timeout", f"{settings.BREAKWATER_GATEWAY_LINGER_TIMEOUT:g}",
            "--max-header-bytes", str(settings.BREAKWATER_GATEWAY_MAX_HEADER_BYTES),
            "--max-body-bytes", str(settings.BREAKWATER_GATEWAY_MAX_BODY_BYTES),
            "--max-connections", str(settings.BREAKWATER_GATEWAY_MAX_CONNECTIONS),
            "--max-connections-per-address", str(settings.BREAKWATER_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS),
        ]  # fmt: skip


def _write(path, text, mode):
    """Replace the file in one step: gateways started together on one machine share the folder,
    and one of them may be reading a file while another rewrites it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)
