"""The `sota.toml` a device registered through lmp-device-register receives: where its gateway,
TUF repository and OSTree server are, its tag and hardware ID, and the files it was given.

TOML is written by hand with one escaper for every value: a device name or path with quotes,
backslashes or line breaks stays inside its string and can never add a key or a section.
"""
from django.conf import settings

# TOML basic strings: backslash and quote are escaped, every control character as \uXXXX.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value):
    """`value` as a TOML basic string, quotes included."""
    out = []
    for char in str(value):
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F or 0xD800 <= ord(char) <= 0xDFFF:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return toml_string(value)


def toml_write(sections):
    """{"section": {"key": value}} as TOML text (values: text, integers, booleans)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def sota_toml(*, tag, hardware_id, config_dir):
    """The client configuration for one device: aktualizr-lite's keys (notes: aklite rules, f.2)."""
    server = settings.BREAKWATER_GATEWAY_URL.rstrip("/")
    config_dir = config_dir.rstrip("/") or "/"
    base = config_dir if config_dir == "/" else config_dir + "/"
    return toml_write(
        {
            "tls": {"server": server, "ca_source": "file", "pkey_source": "file", "cert_source": "file"},
            "provision": {"server": server, "primary_ecu_hardware_id": hardware_id},
            "uptane": {"repo_server": f"{server}/repo", "polling_sec": int(settings.BREAKWATER_DEVICE_POLLING_SECONDS), "key_source": "file"},
            "pacman": {"type": "ostree", "ostree_server": f"{server}/treehub", "tags": tag},
            "storage": {"type": "sqlite", "path": base},
            # aktualizr-lite's TUF client reads these files whatever the sources say; unset, it
            # trusts an empty CA file and every request fails.
            "import": {
                "base_path": config_dir,
                "tls_cacert_path": f"{base}root.crt",
                "tls_clientcert_path": f"{base}client.pem",
                "tls_pkey_path": f"{base}pkey.pem",
            },
            "bootloader": {"reboot_command": "/sbin/reboot"},
        }
    )
