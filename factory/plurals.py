"""Counts in words: "1 device", "2 devices", "1,204 failed devices". Every door (pages, API
messages, the CLI) says a count through these, so no message reads "1 devices"."""


def plural(count, noun, plural_noun=None):
    """`noun` as it goes with `count`: the noun for 1 (and -1), else `plural_noun` (noun + "s")."""
    return noun if abs(count) == 1 else (plural_noun or noun + "s")


def counted(count, noun, plural_noun=None):
    """`count` and its noun: counted(1, "device") == "1 device", counted(1204, "device") == "1,204 devices"."""
    return f"{count:,} {plural(count, noun, plural_noun)}"
