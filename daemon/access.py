"""Who may do what over the HTTP API: bearer tokens, their domains and scopes. Plain data.

A token is shown once, when it is made; only its SHA-256 is stored (``daemon/token_store.py``).
Scopes: ``publish`` (send events), ``read`` (fetch libraries), ``operate`` (history, status and
every operator action; it reads what it operates on).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from grpod.schema.errors import OperatorError

Scope = Literal["publish", "read", "operate"]
SCOPES: tuple[Scope, ...] = ("publish", "read", "operate")
PREFIX = "grpod_"  # recognisable in a secret scanner's rules
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


@dataclass(frozen=True)
class Token:
    name: str
    domains: tuple[str, ...] | None  # None: every domain
    scopes: tuple[Scope, ...]
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "domains": list(self.domains) if self.domains is not None else "all",
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    return value.strip() or None if kind.lower() == "bearer" else None


def permits(token: Token, scope: Scope, domain: str | None = None) -> bool:
    """Whether ``token`` may act with ``scope`` (on ``domain``; None: not about one domain).
    ``operate`` includes ``read``: an operator reads what it operates on."""
    has_scope = scope in token.scopes or (scope == "read" and "operate" in token.scopes)
    in_domain = domain is None or token.domains is None or domain in token.domains
    return has_scope and in_domain


def validated(name: str, domains: Sequence[str], all_domains: bool, scopes: Sequence[str]) -> Token:
    """A token's definition from the command line, or one sentence naming what is wrong."""
    if not NAME.match(name):
        raise OperatorError(f"a token name is 1 to 100 letters, digits and _.@- (starting with one), not {name!r}.")
    if all_domains == bool(domains):
        raise OperatorError("give the domains the token may reach (--domain D, repeated) or --all-domains, not both.")
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if not scopes or unknown:
        raise OperatorError(f"--scope must be publish, read or operate (repeat it for several), not {unknown or '—'}.")
    ordered = tuple(scope for scope in SCOPES if scope in scopes)
    return Token(name, None if all_domains else tuple(dict.fromkeys(domains)), ordered)
