"""Device and user text in logs stays on its line: no forged lines, no terminal escapes."""
import logging

import pytest

from factory.logs import one_line

logger = logging.getLogger("breakwater.test")
FORGED = "no space left\r\n2026-03-01 12:00:00 INFO waves.plans plan approved by alice\x1b[2K"


def test_log_text_writes_line_breaks_and_control_characters_as_escapes():
    assert one_line(FORGED) == "no space left\\r\\n2026-03-01 12:00:00 INFO waves.plans plan approved by alice\\x1b[2K"
    assert one_line("bidi\u202etxt line\u2028sep") == "bidi\\u202etxt line\\u2028sep"
    assert one_line("plain text, ünïcode 名前") == "plain text, ünïcode 名前"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((FORGED,), "install failed: " + one_line(FORGED)),
        ((ValueError(FORGED),), "install failed: " + one_line(FORGED)),
        ((42,), "install failed: 42"),
    ],
)
def test_every_logger_writes_text_from_outside_on_one_line(caplog, args, expected):
    with caplog.at_level(logging.INFO, logger="breakwater.test"):
        logger.warning("install failed: %s", *args)
    assert caplog.records[-1].getMessage() == expected
    assert len(caplog.text.splitlines()) == 1


def test_mapping_arguments_and_messages_without_arguments_too(caplog):
    with caplog.at_level(logging.INFO, logger="breakwater.test"):
        logger.info("device %(name)s reported", {"name": "a\nb"})
        logger.error(FORGED)
    assert [r.getMessage() for r in caplog.records] == ["device a\\nb reported", one_line(FORGED)]
