"""Sizes in bytes: ``8G``, ``512M``, ``16GiB`` parsed and printed (the limits and the submission schema use them)."""
from __future__ import annotations

import re
from typing import Any

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(value: Any) -> int | None:
    """Bytes from ``8G``, ``512M``, ``16GiB``, ``2.5G`` or a plain number of bytes; ``none`` or 0:
    no limit (None)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '8G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size must not be negative")
        return value or None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("none", "unlimited", "0"):
            return None
        m = re.fullmatch(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([KMGT]?)(?:i?B)?", text, flags=re.IGNORECASE)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]) or None
    raise ValueError(f"a size must be a number of bytes or a string like '8G', got {str(value)[:40]!r}")


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        if n >= _SIZE_UNITS[unit]:
            return f"{n / _SIZE_UNITS[unit]:.3g} {unit}iB"
    return f"{n} B"

