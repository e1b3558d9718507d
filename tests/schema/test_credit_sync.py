"""schema/credit_sync.py: the two token versions a sync body may carry."""

import re
from pathlib import Path
from typing import Any

from creditrelay.schema.credit_sync import parse_sync_body, sync_token, sync_token_v2, token_matches

SECRET = "media-bot-secret-0123456789abcdef"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "credit-api.md"


def body(token: str, reference: str | None = "video_12345", amount: int = 100) -> dict[str, Any]:
    fields: dict[str, Any] = {"telegram_id": 987654321, "amount": amount, "source": "media_bot", "reason": "",
                              "timestamp": 1767225600, "token": token}  # fmt: skip
    return fields if reference is None else fields | {"external_reference": reference}


def test_either_version_is_accepted_and_only_v2_signs_the_reference() -> None:
    """A v1 token holds whatever the reference; a v2 token only for the reference it signed (or none)."""
    v1 = sync_token(SECRET, 987654321, 100, "media_bot", 1767225600)
    v2 = sync_token_v2(SECRET, 987654321, 100, "media_bot", 1767225600, "video_12345")
    unreferenced = sync_token_v2(SECRET, 987654321, 100, "media_bot", 1767225600, None)
    assert token_matches(SECRET, parse_sync_body(body(v1)))
    assert token_matches(SECRET, parse_sync_body(body(v1, "another")))
    assert token_matches(SECRET, parse_sync_body(body(v2.upper())))
    assert not token_matches(SECRET, parse_sync_body(body(v2, "another")))
    assert not token_matches(SECRET, parse_sync_body(body(v2, None)))
    assert not token_matches(SECRET, parse_sync_body(body(v2, amount=101)))
    assert token_matches(SECRET, parse_sync_body(body(unreferenced, None)))
    assert not token_matches("another-secret-0123456789abcdef", parse_sync_body(body(v2)))


def test_the_documented_v2_example_is_what_the_server_computes() -> None:
    """docs/credit-api.md's worked v2 example: its message and secret give its token, by sync_token_v2."""
    example = re.search(
        r'echo -n "(v2:[^"]*)" \| openssl dgst -sha256 -hmac "([^"]+)" -hex \| cut -d. . -f2\n([0-9a-f]{64})\n',
        DOCS.read_text(),
    )
    assert example is not None, "the worked example is missing from docs/credit-api.md"
    message, secret, token = example.groups()
    _, telegram_id, amount, source, timestamp, reference = message.split(":")
    assert sync_token_v2(secret, int(telegram_id), int(amount), source, int(timestamp), reference) == token
