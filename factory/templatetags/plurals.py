"""Templates say counts through factory.plurals too: {{ n|counted:"device" }} is "1 device"
or "1,204 devices"; {{ n|plural:"device" }} is the noun alone, for a count shown apart.
An irregular plural follows a comma: {{ n|counted:"entry,entries" }}."""
from django import template

from factory import plurals

register = template.Library()


def _number(value):
    """A count from a template value (an int, a float of hours, None); 4.0 says "4"."""
    number = float(value or 0)
    return int(number) if number.is_integer() else number


def _nouns(arg):
    noun, _, plural_noun = str(arg).partition(",")
    return noun, plural_noun or None


@register.filter
def counted(count, arg):
    return plurals.counted(_number(count), *_nouns(arg))


@register.filter
def plural(count, arg):
    return plurals.plural(_number(count), *_nouns(arg))
