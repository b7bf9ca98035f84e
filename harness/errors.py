"""One exception type for every bad input.

The CLI prints ``HarnessError`` as a single line (``error: ...``) and exits non-zero, without a
traceback. Raise it wherever a submission, a checkpoint, a data folder or a record is wrong, and
name the field or the cause in the message.
"""
from __future__ import annotations


class HarnessError(Exception):
    """A bad input or a failed check, reported to the user as one line."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        text = " ".join(str(message).split())  # always one line
        super().__init__(f"{field}: {text}" if field else text)


class SandwichViolation(HarnessError):
    """certified <= robust <= clean was broken for some example: a bug in a bound or an attack."""
