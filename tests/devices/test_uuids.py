"""The UUID-list parser every door uses."""
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factory.errors import ApplicationError
from devices.uuids import parse_uuid_list

A = "ab8ecb00-8ed4-42ff-90b2-815b371c0f86"
B = "7a733e81-f948-43a9-a358-56f3deb5f184"


@pytest.mark.parametrize(
    "text",
    [
        f"{A},{B}",
        f"{A};{B}",
        f"{A}|{B}",
        f"{A} {B}",
        f"{A}\t{B}",
        f"{A}\n{B}",
        f"{A}\r\n{B}\r\n",
        f"{A}\r{B}",
        f"{A}\v{B}",
        f"{A}\f{B}",
        f"{A}\x85{B}",
        f"{A}\u2028{B}",
        f"{A}\u2029{B}",
        f" ,;| {A} ,\n; {B} ;;",
    ],
)
def test_every_separator_splits_the_list(text):
    assert parse_uuid_list(text) == [uuid.UUID(A), uuid.UUID(B)]


def test_duplicates_collapse_in_first_seen_order_ignoring_case():
    assert parse_uuid_list(f"{B},{A},{B.upper()},{A}") == [uuid.UUID(B), uuid.UUID(A)]


def test_a_list_of_strings_and_bytes_are_accepted():
    assert parse_uuid_list([A, B]) == [uuid.UUID(A), uuid.UUID(B)]
    assert parse_uuid_list(f"\ufeff{A}\n{B}".encode()) == [uuid.UUID(A), uuid.UUID(B)]


def test_already_parsed_uuids_keep_the_same_rules():
    # A form hands over UUIDs it has parsed: they are deduplicated and capped all the same.
    a, b = uuid.UUID(A), uuid.UUID(B)
    assert parse_uuid_list([b, a, b]) == [b, a]
    with pytest.raises(ApplicationError, match="at most 10,000"):
        parse_uuid_list([uuid.uuid4() for _ in range(10_001)])
    with pytest.raises(ApplicationError, match="empty"):
        parse_uuid_list([])


@pytest.mark.parametrize("text", ["", "  \n ", ",;|", None])
def test_an_empty_list_is_an_error(text):
    with pytest.raises(ApplicationError, match="empty"):
        parse_uuid_list(text)


def test_malformed_tokens_are_named():
    with pytest.raises(ApplicationError) as exc:
        parse_uuid_list(f"{A},not-a-uuid,{B},12345")
    assert "'not-a-uuid'" in exc.value.message and "'12345'" in exc.value.message


def test_an_overlong_token_is_an_error_and_is_shortened_in_the_message():
    token = "a" * 5000
    with pytest.raises(ApplicationError) as exc:
        parse_uuid_list(token)
    assert len(exc.value.message) < 200


def test_many_bad_tokens_are_summarised():
    with pytest.raises(ApplicationError, match="and 7 more"):
        parse_uuid_list(",".join(f"bad{i}" for i in range(12)))


def test_ten_thousand_uuids_are_allowed_and_one_more_is_not():
    many = [str(uuid.uuid4()) for _ in range(10_001)]
    assert len(parse_uuid_list(many[:10_000])) == 10_000
    with pytest.raises(ApplicationError, match="at most 10,000"):
        parse_uuid_list(many)
    # duplicates do not count twice against the limit
    assert len(parse_uuid_list(many[:10_000] + many[:5])) == 10_000


separators = st.lists(st.sampled_from([",", ";", "|", " ", "\t", "\n", "\r\n", "\r", "\u2028", "\x85"]), min_size=1, max_size=3).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.uuids(), min_size=1, max_size=50), st.data())
def test_any_mix_of_separators_round_trips(ids, data):
    parts = []
    for u in ids:
        parts.append(str(u).upper() if data.draw(st.booleans()) else str(u))
        parts.append(data.draw(separators))
    text = data.draw(separators) + "".join(parts)
    expected = list(dict.fromkeys(ids))
    assert parse_uuid_list(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_either_parses_or_raises_application_error(text):
    try:
        result = parse_uuid_list(text)
    except ApplicationError:
        return
    assert result and all(isinstance(u, uuid.UUID) for u in result)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.lists(st.uuids().map(lambda u: str(u).encode()), max_size=5).map(b"\r\n".join)))
def test_arbitrary_bytes_either_parse_or_raise_application_error(data):
    # An uploaded file: any bytes at all, including invalid UTF-8, a BOM, NUL and lone surrogates.
    try:
        result = parse_uuid_list(data)
    except ApplicationError as error:
        assert error.code in ("uuids_empty", "uuids_invalid", "uuids_too_many") and error.message.isprintable()
        return
    assert result and all(isinstance(u, uuid.UUID) for u in result)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.uuids().map(str)), max_size=20))
def test_a_list_of_arbitrary_strings_either_parses_or_raises_application_error(items):
    # The API's JSON array of strings.
    try:
        result = parse_uuid_list(items)
    except ApplicationError:
        return
    assert result and all(isinstance(u, uuid.UUID) for u in result)
