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


def read_json(path, what: str):
    """Parse a JSON file a user gave us; a missing or broken file is a one-line UserError."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc


def validated(model_cls, data, origin: str):
    """`model_cls.model_validate(data)`, with the first pydantic problem as one line naming the field."""
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"{origin}: {where}: {msg}" if where else f"{origin}: {msg}") from exc
