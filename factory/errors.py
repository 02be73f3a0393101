"""The one error type services raise; every door turns it into its own kind of answer."""


class ApplicationError(Exception):
    """A rule was broken. `message` is written for the release manager who sees it."""

    status = 400
    code = "invalid"

    def __init__(self, message, *, code=None, extra=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra or {}


class NotFound(ApplicationError):
    status = 404
    code = "not_found"


class Conflict(ApplicationError):
    status = 409
    code = "conflict"


class Forbidden(ApplicationError):
    status = 403
    code = "forbidden"
