"""User-facing errors.

Every mistake a user can make (a bad file, an unknown model, a wrong shape) raises `UserError`
with a one-line message. The command line prints that line and exits with status 2; it never
shows a traceback for a user mistake. Anything else escaping is a bug in edgeweave.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
