"""URLs and connection strings in logs and messages, with their secrets hidden."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
# Query parameters and libpq keywords whose values are secrets.
SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|api[_-]?key|sslpassword)$", re.IGNORECASE)
KEYWORD_SECRET = re.compile(r"\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with every secret replaced by ``***``: the password of its user part, secret query
    parameters (``?password=``), and ``password=`` in a libpq keyword string. Never raises, whatever
    the text (a port that is not a number, no scheme at all)."""
    if "://" not in url:
        return KEYWORD_SECRET.sub(lambda match: f"{match.group(1)}={HIDDEN}", url)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced [ in the host: nothing after the scheme is shown
        return url.split("://", 1)[0] + "://" + HIDDEN
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_KEYS.search(key) for key, _ in pairs):
            query = urlencode([(key, HIDDEN if SECRET_KEYS.search(key) else value) for key, value in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
