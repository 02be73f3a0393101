"""The rule for names users give to things: one check, the same answer at every door."""
import pytest
from django.core.exceptions import ValidationError
from pydantic import TypeAdapter
from pydantic import ValidationError as SchemaError

from factory.errors import ApplicationError
from factory.names import NameValidator, api_name, name_clean, name_problem

# Shapes the product already accepts for lists, templates, phases and groups.
ALLOWED = ["canary", "canary picks", "us-east large fleet", "canary then 5% 25% all", "{group}: canary 5", "Ünïcode 名前", "<b>x</b>", 'say "hi"']
REFUSED = {
    "a\r\nb": "printable",
    "a\nb": "printable",
    "tab\there": "printable",
    "esc\x1b[31m": "printable",
    "nul\x00": "printable",
    "bidi\u202etxt.exe": "printable",
    "line\u2028sep": "printable",
    "x" * 101: "at most 100",
    "   ": "required",
}


@pytest.mark.parametrize("name", ALLOWED)
def test_the_names_in_use_stay_valid(name):
    assert name_problem(name) is None
    assert name_clean(f"  {name} ", what="a name") == name


@pytest.mark.parametrize(("name", "reason"), REFUSED.items())
def test_names_that_could_end_a_header_or_forge_a_line_are_refused_with_the_reason(name, reason):
    with pytest.raises(ApplicationError, match=reason) as raised:
        name_clean(name, what="A device list name")
    assert raised.value.message.startswith("A device list name ") and raised.value.code == "invalid"


def test_forbidden_characters_are_named():
    with pytest.raises(ApplicationError, match="may not contain / a space"):
        name_clean("a/b c", what="a name", forbidden="/ ")


def test_an_optional_name_may_be_empty_but_not_hostile():
    assert name_clean("  ", what="a phase name", required=False) == ""
    with pytest.raises(ApplicationError, match="printable"):
        name_clean("x\ny", what="a phase name", required=False)


def test_form_and_schema_give_the_same_reason_as_the_service():
    with pytest.raises(ValidationError, match="A device list name may only hold printable"):
        NameValidator("A device list name")("a\r\nb")
    NameValidator("A device list name")("canary picks")
    schema = TypeAdapter(api_name("A device list name"))
    assert schema.validate_python(" canary ") == "canary"
    with pytest.raises(SchemaError, match="A device list name may only hold printable"):
        schema.validate_python("a\r\nb")
