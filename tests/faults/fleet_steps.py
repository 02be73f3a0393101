"""Steps run in their own process against a database other than the test database (the fault
tests' private PostgreSQL cluster):

    python -m tests.faults.fleet_steps seed KEYSTORE DEVICES   -> {"devices": [uuid, ...]}

`seed` creates factory acme with CI build 42 on tag production, DEVICES production devices on it,
and gives each a key and certificate in KEYSTORE (devices/simulator.py's layout: one folder per
device with client.pem and client.key, and gateway-ca.pem).
"""
import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

import django  # noqa: E402

django.setup()


def seed(keystore, devices):
    from devices.fleet import fleet_seed
    from devices.gateway_identity import gateway_identity_get
    from devices.fleet import take_over
    from devices.simulator import Keystore
    from factory.tuf.services.repository import ci_build_publish, factory_create

    factory = factory_create(name="acme")
    ci_build_publish(factory=factory, version=42, hardware_ids=["intel-corei7-64"], tags=["production"])
    fleet_seed(factory=factory, tag="production", ungrouped=int(devices), version=41, hardware_ids=["intel-corei7-64"])
    gateway_identity_get(hosts=["127.0.0.1", "localhost"])
    identities = take_over(factory=factory, keystore=Keystore(keystore))
    return {"devices": [identity.uuid for identity in identities]}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    print(json.dumps({"seed": seed}[command](*args)))
