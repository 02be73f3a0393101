"""Device-side processes of `make demo`: the gateway and a simulated fleet.

The simulator drives the demo factory's seeded fleet (1,000 production and 50 test devices on
tag production): it takes the seeded devices over by having new certificates issued to keys it
generates (the renewal an admin does when a device is re-keyed), and it registers 5 more devices
through the real registration endpoint, so both doors are exercised. 10% of the devices stay
offline, 2 production devices never come back after an update, and 20% of installs in group beta
fail, so the wave status has something to show.
"""
import os


def demo_processes(python_executable):
    """(name, argv) of the gateway (on BREAKWATER_GATEWAY_URL, https://127.0.0.1:8443 by default)
    and the simulator."""
    web = os.environ.get("BREAKWATER_WEB_ADDR", "127.0.0.1:8000")
    return [
        ("gateway", [python_executable, "manage.py", "gateway", "--workers", "2", "--threads", "8"]),
        (
            "simulator",
            [
                python_executable, "manage.py", "simulate_fleet",
                "--factory", "demo",
                "--web-url", f"http://{web}",
                "--register", "5",
                "--initial-version", "41",
                "--interval", "30",
                "--offline-ratio", "0.1",
                "--never-return", "2",
                "--fail-rate", "beta=0.2",
                "--reboot-delay", "10",
                "--progress", "15",
            ],
        ),
    ]
