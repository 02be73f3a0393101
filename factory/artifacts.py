"""Small synthetic target files for demo and simulated builds.

They are derived from the target name, so the gateway can serve them and devices can check the
hash and length that the targets metadata states, without storing blobs anywhere.
"""
import hashlib


def synthetic_artifact(factory_name, target_name, size=4096):
    seed = f"breakwater:{factory_name}:{target_name}".encode()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:size])
