"""Bounded uploads: a request too large for the upload limit is refused with a page that says so,
instead of its file being dropped silently (Django's in-memory handler skips files it cannot hold,
so a form would see "no file" and carry on without it)."""
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler
from django.shortcuts import render


def _megabytes(size):
    return f"{size / (1024 * 1024):g} MB"


class RefuseTooLargeUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: refuses the request before any handler drops a file."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.received = 0
        if content_length and content_length > settings.FILE_UPLOAD_MAX_MEMORY_SIZE:
            raise RequestDataTooBig(f"upload of {content_length} bytes is over the limit")

    def receive_data_chunk(self, raw_data, start):
        # Counted too, in case the declared length and the body disagree.
        self.received += len(raw_data)
        if self.received > settings.FILE_UPLOAD_MAX_MEMORY_SIZE:
            raise RequestDataTooBig("upload is over the limit")
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler keeps the file


def bad_request(request, exception=None):
    """handler400: says why, and answers 413 for a request over the size limits."""
    if isinstance(exception, RequestDataTooBig):
        limit = max(settings.FILE_UPLOAD_MAX_MEMORY_SIZE, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        message = (
            f"The request is too large: uploads and forms are limited to {_megabytes(limit)}. "
            "A key archive is a few kilobytes, and a list of 10,000 device UUIDs about 370 kB. Nothing was changed."
        )
        status = 413
    else:
        message = "The request could not be understood (malformed form or upload). Nothing was changed."
        status = 400
    return render(request, "400.html", {"message": message}, status=status)
