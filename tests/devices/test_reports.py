"""The report schema on its own (devices/reports.py): what it refuses and why, without a gateway."""
from datetime import datetime, timedelta, timezone

import pytest
from django.test import override_settings

from devices import reports
from devices.reports import ReportError, checkin_tag, checkin_target, events_parse, json_depth

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)


def refused(body):
    with pytest.raises(ReportError) as caught:
        events_parse(body, now=NOW)
    return caught.value


def test_depth_is_counted_on_the_bytes_and_ignores_brackets_in_strings():
    assert json_depth(b'[{"a": "[[[[{{{{"}]') == 2
    assert json_depth(b'["\\"[[[["]') == 1
    assert json_depth(b"[" * 20_000) == reports.MAX_DEPTH + 1  # stops counting past the limit


def test_deep_nesting_is_refused_before_parsing(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the parser must not see it")

    monkeypatch.setattr(reports.json, "loads", never)
    assert "nested" in refused(b"[" * 20_000 + b"]" * 20_000).message


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x0b", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\ud800", "\udfff"])
def test_text_refuses_nul_controls_and_unpaired_surrogates(char):
    # As a JSON escape, the way a lone surrogate can arrive at all.
    error = refused(f'[{{"type": "install-completed", "detail": "a\\u{ord(char):04x}b"}}]'.encode())
    assert (error.event, error.field) == (0, "detail")


def test_detail_keeps_tab_and_newline_and_a_valid_surrogate_pair():
    [event] = events_parse(b'[{"type": "install-completed", "detail": "line 1\\n\\tline 2 \\ud83d\\ude00"}]', now=NOW)
    assert event.detail == "line 1\n\tline 2 \U0001f600"


def test_times_are_normalised_to_utc_and_kept_within_the_window():
    [event] = events_parse(b'[{"type": "install-started", "time": "2030-06-01T14:00:00+02:00"}]', now=NOW)
    assert event.reported_at == NOW and event.reported_at.tzinfo == timezone.utc
    for stamp in ("2030-06-03T12:00:01Z", "2030-05-24T11:59:59Z", "9999-12-31T23:00-05:00", "0001-01-01T00:00+01:00", "2030-06-01T12:00+23:00"):
        assert refused(f'[{{"type": "install-started", "time": "{stamp}"}}]'.encode()).field == "time", stamp


@override_settings(BREAKWATER_EVENT_TIME_WINDOW=(30, 0))
def test_the_window_is_a_setting():
    [event] = events_parse(f'[{{"type": "install-started", "time": "{(NOW - timedelta(days=20)).isoformat()}"}}]'.encode(), now=NOW)
    assert event.reported_at == NOW - timedelta(days=20)
    assert refused(f'[{{"type": "install-started", "time": "{(NOW + timedelta(hours=1)).isoformat()}"}}]'.encode()).field == "time"


def test_unknown_fields_are_ignored_but_bounded():
    [event] = events_parse(b'[{"type": "install-started", "ecu": "main", "extra": {"a": [1]}}]', now=NOW)
    assert event.event_type == "install-started"
    many = "{" + ", ".join(f'"f{i}": 1' for i in range(40)) + ', "type": "install-started"}'
    assert "fields" in refused(f"[{many}]".encode()).message
    assert refused(b'{"events": [], "more": 1}').field == "more"


@pytest.mark.parametrize(
    "raw, header",
    [
        ("prod\x01", "x-ats-tags"),
        ("prod\x7f", "x-ats-tags"),
        ("x" * 2000, "x-ats-tags"),
        ("tag with space", "x-ats-tags"),
        ("\xff", "x-ats-tags"),  # a latin-1 byte that is not UTF-8
    ],
)
def test_tag_headers_with_control_characters_or_too_long_are_refused(raw, header):
    with pytest.raises(ReportError) as caught:
        checkin_tag(raw)
    assert caught.value.field == header


def test_headers_decode_as_utf8_and_name_the_first_tag():
    assert checkin_tag("caf\xc3\xa9, other") == "café"  # UTF-8 bytes as WSGI hands them over
    assert checkin_tag(None) is None
    assert checkin_target(" intel-corei7-64-lmp-42 ") == "intel-corei7-64-lmp-42"
    for raw in ("a" * 300, "lmp\x0742", "../etc"):
        with pytest.raises(ReportError):
            checkin_target(raw)
