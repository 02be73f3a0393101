"""Counts in words (factory/plurals.py), in Python and in templates: 1 device, 2 devices."""
from django.template import Context, Template

from factory.plurals import counted, plural


def test_one_is_singular_and_every_other_count_plural():
    assert counted(1, "device") == "1 device"
    assert counted(0, "device") == "0 devices"
    assert counted(2, "failed device") == "2 failed devices"
    assert counted(1204, "device") == "1,204 devices"
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"
    assert plural(1, "is", "are") == "is" and plural(2, "is", "are") == "are"


def test_templates_say_counts_through_the_same_helper():
    template = Template('{{ one|counted:"device" }}; {{ many|counted:"device" }}; {{ hours|plural:"hour" }}; {{ four|plural:"hour" }}; {{ n|plural:"is,are" }}')
    context = Context({"one": 1, "many": 1204, "hours": 1.5, "four": 4.0, "n": 1})
    assert template.render(context) == "1 device; 1,204 devices; hours; hours; is"
    assert Template('{{ n|counted:"entry,entries" }}').render(Context({"n": 1.0})) == "1 entry"
