"""Links on the board: only ``http`` and ``https`` URLs are ever rendered as links.

Reported rows and submissions are untrusted text; a ``javascript:`` or ``data:`` URL in a paper
link must never become a clickable link. Every renderer passes a URL through :func:`safe_url`
(the submission schema validates URLs too, but the renderers do not rely on it).
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def safe_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) URL with a host and no whitespace or control
    characters, else None."""
    if not isinstance(url, str) or not url or len(url) > 2000 or _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url
