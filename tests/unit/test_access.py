"""Who may do what over the HTTP API: bearer parsing, scopes and domains, token definitions."""

from __future__ import annotations

import pytest

from grpod.daemon.access import PREFIX, Token, bearer, new_secret, permits, token_hash, validated
from grpod.schema.errors import OperatorError


def test_the_bearer_header_gives_the_token_and_nothing_else_does() -> None:
    assert bearer("Bearer grpod_abc") == "grpod_abc"
    assert bearer("bearer   grpod_abc  ") == "grpod_abc"
    for header in (None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "grpod_abc"):
        assert bearer(header) is None, header


def test_scopes_and_domains() -> None:
    reader = Token("agent", ("support",), ("read",))
    operator = Token("oncall", None, ("operate",))
    publisher = Token("ingest", ("support", "coding"), ("publish",))
    assert permits(reader, "read", "support") and not permits(reader, "read", "coding")
    assert not permits(reader, "operate", "support") and not permits(reader, "publish", "support")
    assert permits(operator, "read", "anything") and permits(operator, "operate", None)  # operate reads too
    assert not permits(operator, "publish", "support")
    assert permits(publisher, "publish", "coding") and not permits(publisher, "publish", "billing")


def test_a_secret_is_recognisable_random_and_stored_only_as_its_hash() -> None:
    one, two = new_secret(), new_secret()
    assert one.startswith(PREFIX) and one != two and len(one) > 40
    assert token_hash(one) == token_hash(one) != token_hash(two) and len(token_hash(one)) == 32


@pytest.mark.parametrize(
    ("name", "domains", "all_domains", "scopes", "message"),
    [
        ("bad name!", ["support"], False, ["read"], "a token name is 1 to 100 letters"),
        ("agent", [], False, ["read"], "give the domains the token may reach"),
        ("agent", ["support"], True, ["read"], "give the domains the token may reach"),
        ("agent", ["support"], False, [], "--scope must be publish, read or operate"),
        ("agent", ["support"], False, ["write"], "--scope must be publish, read or operate"),
    ],
)
def test_a_bad_definition_is_one_sentence(
    name: str, domains: list[str], all_domains: bool, scopes: list[str], message: str
) -> None:
    with pytest.raises(OperatorError, match=message):
        validated(name, domains, all_domains, scopes)


def test_a_definition_orders_its_scopes_and_drops_repeats() -> None:
    token = validated("agent", ["support", "support", "coding"], False, ["operate", "read", "read"])
    assert (token.domains, token.scopes) == (("support", "coding"), ("read", "operate"))
    assert validated("all", [], True, ["publish"]).domains is None
