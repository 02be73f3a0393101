"""Device activity for rollout plan tests, at times the test chooses.

Reports go through the writers the device gateway's flusher uses (devices.checkins): check-ins
move last_seen and the running target, events are the steps a device reports while updating.
Nothing here waits in real time: the test passes the moment of every report and evaluation.
"""
import random

import pytest
from datetime import timedelta

from devices.checkins import Checkin, checkins_write, events_write
from devices.models import Device
from waves.models import PlanPhase
from waves.plans.selectors import phase_devices

STEPS = ("download-started", "download-completed", "install-started", "install-applied")


class Fleet:
    def __init__(self, factory, wave, *, seed=7):
        self.factory = factory
        self.wave = wave
        self.random = random.Random(seed)
        # Devices that stopped checking in: they report nothing from now on.
        self.silent = set()

    def staged(self, position):
        phase = PlanPhase.objects.select_related("plan__wave", "rollout").get(plan__wave=self.wave, position=position)
        return list(phase_devices(phase).order_by("name"))

    def checkin(self, devices, at):
        checkins_write({d.pk: Checkin(seen=at.timestamp()) for d in devices if d.pk not in self.silent})

    def checkin_all(self, at):
        """Every device that is still alive checks in (the fleet's regular polling)."""
        self.checkin(Device.objects.filter(factory=self.factory, is_production=True), at)

    def _events(self, device, steps, at, *, success=True, detail=""):
        name = f"{device.hardware_id}-lmp-{self.wave.version}"
        rows = []
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            rows.append(
                {
                    "factory_id": self.factory.pk,
                    "device_id": device.pk,
                    "event_type": step,
                    "target_name": name,
                    "target_version": self.wave.version,
                    "success": (success if last else True) if step != "download-started" and step != "install-started" else None,
                    "detail": detail if last else "",
                    # the steps lead up to `at`, when the last one is reported
                    "reported_at": (at - timedelta(seconds=len(steps) - 1 - i)).isoformat(),
                }
            )
        return rows

    def start_download(self, devices, at):
        events_write([row for d in devices for row in self._events(d, STEPS[:1], at)])
        self.checkin(devices, at)

    def update(self, devices, at, *, fail_rate=0.0, never_return=0):
        """Devices download and install the wave's target. A share `fail_rate` fails its health
        check and rolls back; `never_return` of the successful ones go silent right after.
        Returns (updated, failed)."""
        devices = list(devices)
        failing = set(self.random.sample(range(len(devices)), round(len(devices) * fail_rate)))
        rows, checkins, updated, failed = [], {}, [], []
        for index, device in enumerate(devices):
            ok = index not in failing
            rows += self._events(device, STEPS + ("install-completed",), at, success=ok, detail="" if ok else "health check failed, rolled back")
            seen = at.timestamp()
            if ok:
                name = f"{device.hardware_id}-lmp-{self.wave.version}"
                checkins[device.pk] = Checkin(seen=seen, target_name=name, target_version=self.wave.version)
                updated.append(device)
            else:
                checkins[device.pk] = Checkin(seen=seen)
                failed.append(device)
        events_write(rows)
        checkins_write(checkins)
        for device in updated[: int(never_return)]:
            self.silent.add(device.pk)
        return updated, failed


class _Receiver:
    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                calls.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/breakwater"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    """A local HTTP endpoint that records the JSON bodies POSTed to it."""
    receiver = _Receiver()
    yield receiver
    receiver.close()
