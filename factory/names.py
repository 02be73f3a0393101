"""The rule for names users give to things (device lists, plan templates and phases, groups,
tokens): trimmed, bounded, printable. Services apply it where a name is created or renamed;
forms and API schemas use the same check, so every door refuses the same names the same way.

Names reach page titles, file names of exports, HTTP headers, logs, charts and terminals: a line
break or control character would end a header or forge a log line, and a bidirectional override
would show a name other than the one stored, so none of them is part of a name.
"""
from typing import Annotated

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible
from pydantic import AfterValidator, Field

from .errors import ApplicationError

NAME_MAX = 100


def name_problem(value, *, max_length=NAME_MAX, forbidden="", required=True):
    """Why the trimmed `value` cannot be a name (a phrase to follow "a … name"), or None."""
    if not value:
        return "is required" if required else None
    if len(value) > max_length:
        return f"may be at most {max_length} characters"
    if not value.isprintable():
        return "may only hold printable characters (no line breaks, tabs or control characters)"
    bad = [c for c in dict.fromkeys(value) if c in forbidden]
    if bad:
        return "may not contain " + " ".join("a space" if c == " " else c for c in bad)
    return None


def name_clean(value, *, what, max_length=NAME_MAX, forbidden="", required=True, code=None):
    """`value` trimmed, or ApplicationError("<what> may …") naming what is wrong; `what` starts
    the sentence ("A group name")."""
    value = value.strip() if isinstance(value, str) else ""
    problem = name_problem(value, max_length=max_length, forbidden=forbidden, required=required)
    if problem:
        raise ApplicationError(f"{what} {problem}", code=code)
    return value


@deconstructible
class NameValidator:
    """The rule as a Django validator, for form fields."""

    def __init__(self, what, *, max_length=NAME_MAX, forbidden="", required=True):
        self.what, self.max_length, self.forbidden, self.required = what, max_length, forbidden, required

    def __call__(self, value):
        problem = name_problem((value or "").strip(), max_length=self.max_length, forbidden=self.forbidden, required=self.required)
        if problem:
            raise ValidationError(f"{self.what} {problem}.", code="name")

    def __eq__(self, other):
        return isinstance(other, NameValidator) and vars(self) == vars(other)


def api_name(what, *, max_length=NAME_MAX, forbidden="", required=True):
    """The rule as an API schema type: a trimmed str, or a 400 naming the field and the problem."""

    def check(value: str) -> str:
        value = value.strip()
        problem = name_problem(value, max_length=max_length, forbidden=forbidden, required=required)
        if problem:
            raise ValueError(f"{what} {problem}")
        return value

    # The bounds are also documented in the OpenAPI schema (before trimming, so a padded name may
    # be refused for its length); the check gives the reason for everything else.
    return Annotated[str, Field(min_length=1 if required else 0, max_length=max_length), AfterValidator(check)]
