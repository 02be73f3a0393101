"""What a device's version means next to a re-release (a revert), for every door's status labels.

A revert's wave carries an earlier build's content at its own, higher, version; the versions above
that build and below the wave are the bad build(s) it takes devices back from. Only labels and a
count of those devices come from here: updated, newer and older stay as waves/outcomes.py says.
"""

# Roles of a version next to a re-release wave.
RERELEASE = "rerelease"  # the wave's version: the earlier build's content again
BAD_BUILD = "bad"  # above the re-released build, below the wave: what the revert takes devices back from
SAME_CONTENT = "same"  # the re-released build itself, under its old number


def _number(version):
    if version is None or version == "none":
        return None
    try:
        return int(version)
    except (TypeError, ValueError):
        return None


def version_role(version, wave):
    """RERELEASE, BAD_BUILD, SAME_CONTENT or None (any version of a wave that is not a re-release)."""
    number = _number(version)
    if wave.rerelease_of is None or number is None:
        return None
    if number == wave.version:
        return RERELEASE
    if wave.rerelease_of < number < wave.version:
        return BAD_BUILD
    if number == wave.rerelease_of:
        return SAME_CONTENT
    return None


def version_label(version, wave):
    """"45 (build 41 re-released)", "42 (bad build)", "41 (same content)", or the version itself."""
    number = _number(version)
    text = "none" if number is None else str(number)
    role = version_role(version, wave)
    if role == RERELEASE:
        return f"{text} (build {wave.rerelease_of} re-released)"
    if role == BAD_BUILD:
        return f"{text} (bad build)"
    if role == SAME_CONTENT:
        return f"{text} (same content)"
    return text


def version_labels(versions, wave):
    """{version as text: label} for `versions` and the wave's own version."""
    keys = {"none" if _number(v) is None else str(_number(v)) for v in versions} | {str(wave.version)}
    return {key: version_label(key, wave) for key in keys}


def on_bad_build(versions, wave):
    """Devices of {version: count} on a version the re-release takes them back from (0 for a
    wave that is not a re-release). They are among the older devices."""
    return sum(count for version, count in versions.items() if version_role(version, wave) == BAD_BUILD)
