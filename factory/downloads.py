"""Files the dashboard and the API hand out: one attachment header, and CSV cells that a
spreadsheet shows as text. Wave, list and group names come from users and devices."""
import csv
import unicodedata

from django.http import HttpResponse
from django.utils.http import content_disposition_header

# Spreadsheet programs run a cell that starts like a formula (the full-width forms too, which
# some of them fold to ASCII); a leading quote makes the cell text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")
FILENAME_MAX = 150


def download_filename(name):
    """`name` as a file name a browser saves as it is: no control or format characters (a CR/LF
    would end the header), no path separators; quotes and non-ASCII are left to
    `content_disposition_header`, which quotes them or uses filename*."""
    kept = "".join("_" if c in "/\\" or not c.isprintable() else c for c in unicodedata.normalize("NFC", str(name))).strip(" .")
    if len(kept) > FILENAME_MAX:
        stem, dot, extension = kept.rpartition(".")
        kept = stem[: FILENAME_MAX - len(extension) - 1] + dot + extension if dot and len(extension) <= 8 else kept[:FILENAME_MAX]
    return kept or "download"


def attachment(content, *, filename, content_type):
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=download_filename(filename))
    return response


def csv_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_attachment(rows, *, filename):
    response = attachment(b"", filename=filename, content_type="text/csv; charset=utf-8")
    writer = csv.writer(response)
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return response
