"""The one exception type for mistakes a user can fix.

The CLI turns a ``UserError`` into a single ``error: ...`` line and exit status 2; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input. The message must say what to do about it."""


class Cancelled(Exception):
    """Raised by a progress callback to stop long work between its steps (the page's cancel
    button, a background job past its deadline)."""
