"""One exception type for every bad input.

The CLI prints ``HarnessError`` as a single line (``error: ...``) and exits non-zero, without a
traceback. Raise it wherever a submission, a checkpoint, a data folder or a record is wrong, and
name the field or the cause in the message.
"""
from __future__ import annotations

MAX_MESSAGE = 2000


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one printable line: whitespace runs become one space, other non-printable
    characters (NUL, terminal escape sequences from a stranger's file) are shown escaped, and the
    line is cut at ``limit`` characters."""
    s = " ".join(str(text).split())
    if not s.isprintable():
        s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def field_path(loc: tuple[object, ...]) -> str:
    """A pydantic error location as a field path: ``("model", "checkpoint", 0)`` -> ``model.checkpoint[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


class HarnessError(Exception):
    """A bad input or a failed check, reported to the user as one line."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        text = one_line(f"{field}: {message}" if field else message)  # always one line
        super().__init__(text)


class SandwichViolation(HarnessError):
    """certified <= robust <= clean was broken for some example: a bug in a bound or an attack."""
