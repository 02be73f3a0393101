"""Downloads: a file name from user text makes a safe Content-Disposition, CSV cells stay text."""
import csv
import io

import pytest

from factory.downloads import attachment, csv_attachment, download_filename


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("canary.lst", 'attachment; filename="canary.lst"'),
        ('"; filename=evil.sh.lst', 'attachment; filename="\\"; filename=evil.sh.lst"'),
        ("a\r\nSet-Cookie: x=1.lst", 'attachment; filename="a__Set-Cookie: x=1.lst"'),
        ("../../etc/passwd", 'attachment; filename="_.._etc_passwd"'),
        ("Ünïcode 名前.lst", "attachment; filename*=utf-8''%C3%9Cn%C3%AFcode%20%E5%90%8D%E5%89%8D.lst"),
        ("bidi\u202etxt.exe", 'attachment; filename="bidi_txt.exe"'),
        (" . ", 'attachment; filename="download"'),
    ],
)
def test_the_attachment_header_holds_the_name_as_one_quoted_value(name, header):
    response = attachment("x", filename=name, content_type="text/plain")
    assert response["Content-Disposition"] == header


def test_a_long_name_keeps_its_extension():
    name = download_filename("x" * 300 + ".csv")
    assert len(name) == 150 and name.endswith("x.csv")


def test_csv_cells_that_would_start_a_formula_are_text():
    rows = [["group", "n"], ["=HYPERLINK(\"https://evil.example\")", 1], ["+1", -2], ["@SUM(A1)", 0], ["\tx", 0], ["＝1+1", 0], ["ok - fine", 3]]
    response = csv_attachment(rows, filename="x.csv")
    got = list(csv.reader(io.StringIO(response.content.decode())))
    assert [r[0] for r in got[1:]] == ["'=HYPERLINK(\"https://evil.example\")", "'+1", "'@SUM(A1)", "'\tx", "'＝1+1", "ok - fine"]
    assert got[2][1] == "-2"  # numbers are numbers
